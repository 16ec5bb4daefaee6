"""``metabench run`` end to end (smoke profile, every framework): the results folder's
schema, a failing plugin adapter contained in its own cell, and ``metabench report``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

RUN_ID = "test-smoke"

FAKE_PLUGIN = '''
import numpy as np
from bench.core.adapter import Adapter, AdapterInfo
from bench.core.registry import AdapterEntry

class Broken(Adapter):
    """Builds, then fails on every outer step: its cell must fail alone."""
    framework = "fake"
    algorithms = ("maml",)
    def describe(self):
        return AdapterInfo("fake", "0", "cpu", "none", "eager", "float32", 1)
    def to_device(self, batch): return batch
    def sync(self, outputs=None): pass
    def get_params(self): return {}
    def set_params(self, params): pass
    def inner_step(self, batch): return None
    def outer_step(self, batch): raise RuntimeError("deliberate failure in outer_step")
    def adapt(self, batch): return None
    def predict(self, batch): return np.zeros_like(batch.query_y)
    def probe(self, batch): return {}

ENTRIES = [AdapterEntry("fake-broken", "fake", ("maml",), "metabench_fake_plugin:Broken")]
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A plugin installed the way pip would: a module and a dist-info with an entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "metabench_fake_plugin.py").write_text(FAKE_PLUGIN)
    dist = site / "metabench_fake_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: metabench-fake-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metabench.adapters]\nfake = metabench_fake_plugin:ENTRIES\n")
    return site


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_env, plugin_path) -> Path:
    results = tmp_path_factory.mktemp("results")
    env = {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}:{plugin_path}"}
    adapters = "torch-maml,torch-protonet,jax-maml,jax-protonet,tensorflow-maml,tensorflow-protonet,fake-broken"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--profile", "smoke", "--adapters", adapters,
           "--algorithms", "maml,protonet", "--specs", "sinusoid-10shot,omniglot-5w1s",
           "--results-dir", str(results), "--run-id", RUN_ID, "--device", "cpu",
           # smoke's quick parity is tested with a run in tests/test_plugin.py
           "--phases", "timing,memory,accuracy"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    # exit 1: the broken plugin's two cells failed; everything else must still be complete
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "metabench: 2 failure(s)" in proc.stdout and "fake-broken__maml__sinusoid-10shot" in proc.stdout
    return results / RUN_ID


CELLS = {(fw, algo, spec) for fw in ("torch", "jax", "tensorflow")
         for algo, spec in (("maml", "sinusoid-10shot"), ("maml", "omniglot-5w1s"), ("protonet", "omniglot-5w1s"))}


def test_results_folder_has_every_artifact(run_dir):
    for name in ("timings.csv", "steps.csv", "memory.csv", "accuracy.csv", "curves.csv", "manifest.json",
                 "datapackage.json", "benchmark.json", "summary.md", "step_times.png", "learning_curves.png"):
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name


def test_timings_have_one_row_per_round_for_every_phase(run_dir):
    t = pd.read_csv(run_dir / "timings.csv")
    assert list(t.columns) == ["run_id", "framework", "algorithm", "adapter", "spec", "phase", "process", "round",
                               "seconds", "device"]
    assert (t["process"] == 0).all()  # smoke: one timing process a cell
    assert (t["run_id"] == RUN_ID).all() and (t["seconds"] > 0).all()
    got = {(r.framework, r.algorithm, r.spec, r.phase) for r in t.itertuples()}
    for fw, algo, spec in CELLS:
        phases = ("inner_step", "outer_step") if algo == "maml" else ("outer_step", "adapt")
        for phase in (*phases, "sample_episodes"):
            assert (fw, algo, spec, phase) in got
    assert t.groupby(["adapter", "spec", "algorithm", "phase"]).size().eq(3).all()  # smoke: 3 rounds


def test_steps_record_compile_time_apart(run_dir):
    s = pd.read_csv(run_dir / "steps.csv")
    steps = s[s["phase"] != "sample_episodes"]
    assert (steps["first_step_seconds"] > 0).all()
    assert set(steps["compilation"]) >= {"eager", "jit", "graph"}
    compiled = steps[steps["framework"].isin(["jax", "tensorflow"])]
    assert len(compiled) == 12 and (compiled["recompilations"] == 0).all()


def test_accuracy_has_one_row_per_cell_with_a_confidence_interval(run_dir):
    a = pd.read_csv(run_dir / "accuracy.csv")
    assert list(a.columns) == ["run_id", "framework", "algorithm", "adapter", "spec", "episodes", "metric", "mean",
                               "ci95", "train_steps", "train_seconds", "eval_seconds", "seed", "target",
                               "target_direction", "steps_to_target", "time_to_target_seconds", "first_step_seconds"]
    # every test episode's metric is kept, for paired comparisons across frameworks and seeds
    e = pd.read_csv(run_dir / "episodes.csv")
    assert len(e) == 8 * len(a) and set(e["seed"]) == {0}
    assert {(r.framework, r.algorithm, r.spec) for r in a.itertuples()} == CELLS
    assert (a["episodes"] == 8).all() and (a["train_steps"] == 2).all()
    acc = a[a["metric"] == "accuracy"]
    assert ((acc["mean"] >= 0) & (acc["mean"] <= 1)).all() and (a["ci95"] > 0).all()
    assert set(a.loc[a["spec"] == "sinusoid-10shot", "metric"]) == {"mse"}


def test_curves_and_memory(run_dir):
    c = pd.read_csv(run_dir / "curves.csv")
    assert set(c["step"]) == {0, 1, 2} and c["val_mean"].notna().all()
    m = pd.read_csv(run_dir / "memory.csv")
    assert len(m) == len(CELLS) and (m["peak_bytes"] >= 0).all() and m["source"].notna().all()
    # on Linux the peak is reset after the first (compiling) step, which is read apart
    assert m["source"].str.startswith("process peak RSS growth over the steps after the first").all()
    tf = m["adapter"].str.startswith("tensorflow")  # TF's steps reuse memory its first step kept
    assert m.loc[tf, "source"].str.contains("lower bound").all()
    assert not m.loc[~tf, "source"].str.contains("(", regex=False).any()
    assert (m["first_step_mib"] >= 0).all()


def test_manifest_records_environment_fingerprints_and_status(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["profile"] == "smoke" and m["device"] == "cpu" and m["finished"]
    from bench.report.report import SCHEMA_VERSION

    assert m["schema_version"] == SCHEMA_VERSION
    # as the user typed it (the test launched `python -m bench.cli`), no interpreter path
    assert m["command"].startswith("metabench run --profile smoke --adapters torch-maml,"), m["command"]
    assert sys.executable not in m["command"]
    assert m["harness_environment"]["git"]["sha"]
    fp = m["specs"]["omniglot-5w1s"]["episodes"]
    assert len(fp["test"]["fingerprint"]) == 64 and fp["test"]["count"] == 8
    cells = {c["cell_id"]: c for c in m["cells"]}
    assert len(cells) == len(CELLS) + 2  # and the broken plugin's two cells
    for cid, c in cells.items():
        if cid.startswith("fake-broken"):
            continue
        assert {p: s["status"] for p, s in c["phases"].items()} == {"timing": "ok", "memory": "ok", "accuracy": "ok"}
        env = c["environment"]
        assert env["threads"] >= 1 and env["adapter_info"]["framework"] == c["framework"]
        assert env["packages"].get(c["framework"] if c["framework"] != "tensorflow" else "keras")


def test_failing_plugin_cell_is_contained(run_dir):
    """The entry-point plugin was found, ran in its own processes, and failed alone."""
    m = json.loads((run_dir / "manifest.json").read_text())
    broken = [c for c in m["cells"] if c["adapter"] == "fake-broken"]
    assert len(broken) == 2  # maml on sinusoid and on omniglot
    for c in broken:
        assert c["phases"]["timing"]["status"] == "failed"
        assert c["phases"]["memory"]["status"] == "failed" and c["phases"]["accuracy"]["status"] == "failed"
    cell_dir = run_dir / "cells" / broken[0]["cell_id"]
    assert "deliberate failure in outer_step" in (cell_dir / "memory.error.txt").read_text()
    summary = (run_dir / "summary.md").read_text()
    assert "fake-broken" in summary.split("## Failures")[1]


def test_summary_tables(run_dir):
    summary = (run_dir / "summary.md").read_text()
    assert "#### omniglot-5w1s / maml / `outer_step`" in summary
    for adapter in ("torch-maml", "jax-maml", "tensorflow-maml"):
        assert adapter in summary
    assert "x fastest" in summary and "## Accuracy" in summary


def test_report_rebuilds_from_cells(run_dir, data_env):
    (run_dir / "summary.md").unlink()
    r = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(run_dir)], capture_output=True,
                       text=True, env=data_env)
    assert r.returncode == 0 and (run_dir / "summary.md").exists()


def test_pytest_benchmark_compare_reads_the_json(run_dir, data_env):
    cli = str(Path(sys.executable).parent / "pytest-benchmark")  # its console script, in this venv
    r = subprocess.run([cli, "compare", str(run_dir / "benchmark.json"), "--group-by", "group"],
                       capture_output=True, text=True, env=data_env)
    assert r.returncode == 0, r.stderr
    assert "torch-maml[outer_step]" in r.stdout


def test_unknown_framework_is_a_one_line_error(data_env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--frameworks", "mxnet", "--results-dir",
                        str(tmp_path)], capture_output=True, text=True, env=data_env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "known adapters" in r.stderr
    assert textwrap.dedent(r.stderr).count("\n") == 1


def test_parity_phase_runs_before_the_cells_and_lands_in_the_summary(data_env, tmp_path):
    """``--phases parity`` (on by default in every profile; smoke's is the quick comparison)
    compares the run's adapters with torch before any cell runs; the summary says whether
    their maths agree."""
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--profile", "smoke", "--phases", "parity,timing",
                        "--adapters", "torch-maml,jax-maml", "--algorithms", "maml", "--specs", "sinusoid-10shot",
                        "--results-dir", str(tmp_path), "--run-id", "p", "--device", "cpu"],
                       capture_output=True, text=True, env=data_env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.index("[parity]") < r.stdout.index("[1/2]")
    table = pd.read_csv(tmp_path / "p" / "parity.csv")
    assert list(table["adapter"]) == ["jax-maml"] and table["ok"].all()
    section = (tmp_path / "p" / "summary.md").read_text().split("## Parity")[1].split("## Step times")[0]
    assert "every adapter computes torch's function" in section and "jax-maml" in section
    assert not (tmp_path / "p" / "cells" / "jax-maml__maml__sinusoid-10shot" / "accuracy.json").exists()


def test_unknown_phase_is_a_one_line_error(data_env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--phases", "timing,speed", "--results-dir",
                        str(tmp_path)], capture_output=True, text=True, env=data_env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--phases: unknown 'speed'" in r.stderr


def test_failures_lists_failed_cells_and_parity(tmp_path):
    """What makes ``metabench run`` exit 1: a failed phase, a parity row, a parity phase with no table."""
    from bench.run.runner import failures

    cell = tmp_path / "cells" / "a__maml__s"
    cell.mkdir(parents=True)
    (cell / "status.json").write_text(json.dumps({"phases": {"timing": {"status": "ok"},
                                                             "memory": {"status": "failed"}}}))
    (tmp_path / "parity.log").write_text("parity failed: AdapterError: unknown adapter\n")
    assert failures(tmp_path) == ["a__maml__s (memory)", "parity (see parity.log)"]
    pd.DataFrame({"adapter": ["x", "y"], "ok": [True, False]}).to_csv(tmp_path / "parity.csv", index=False)
    assert failures(tmp_path) == ["a__maml__s (memory)", "parity y"]
