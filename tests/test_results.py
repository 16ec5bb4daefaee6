"""Committed results never drift from the code: every committed run, re-rendered by today's
``metabench report`` into a temporary folder, gives back its committed tables, data package
and summary byte for byte. A change to the report's format re-renders the committed runs in
the same commit (``metabench report results/<run>``) and raises ``SCHEMA_VERSION``."""

from __future__ import annotations

import shutil

import pytest

from bench.report.report import SCHEMA_VERSION, tables_schema_version, write_report
from tests.conftest import REPO

RESULTS = REPO / "results"
# run folders with cells that the report renders (baselines and profile runs have no cells)
RUNS = sorted(p.parent.name for p in RESULTS.glob("*/summary.md") if (p.parent / "cells").is_dir())
RENDERED = ("summary.md", "datapackage.json", "benchmark.json", "report.html")


def test_there_are_committed_runs_to_check():
    assert len(RUNS) >= 10, RUNS


@pytest.mark.parametrize("name", RUNS)
def test_a_committed_run_re_renders_to_its_committed_files(name, tmp_path):
    src = RESULTS / name
    assert tables_schema_version(src) == SCHEMA_VERSION, (
        f"{name}: tables of schema version {tables_schema_version(src)}; re-render: metabench report {src}")
    run = shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("*.png"))
    shutil.copytree(RESULTS / "_static", tmp_path / "_static")  # report.html loads the results folder's runtime
    write_report(run)
    compared = [f.name for f in sorted(src.iterdir()) if f.suffix == ".csv" or f.name in RENDERED]
    assert {"summary.md", "datapackage.json", "steps.csv", "timings.csv", "report.html"} <= set(compared)
    drifted = [f for f in compared if (run / f).read_bytes() != (src / f).read_bytes()]
    assert not drifted, f"{name}: {drifted} differ from what the report writes today; metabench report {src}"
