"""``metabench compare RUN_A RUN_B`` on synthetic runs (``tests/synthetic.py``): a planted
30% slowdown fails the gate, a planted 1% change passes it, ratios and deltas are the
planted ones, and environment differences are named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import compare_runs
from tests import synthetic as syn


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("results")
    return {
        "a": syn.make_run(root, "a", failures=False),
        "slow": syn.make_run(root, "slow", failures=False, scale={"jax": 1.30},
                             env={"jax": syn.environment("jax", version="0.10.3", sha="def456")}),
        "noise": syn.make_run(root, "noise", failures=False, scale={"jax": 1.01}),
    }


def ratio(c, adapter: str, spec: str, phase: str):
    s = c.steps
    return s[(s["adapter"] == adapter) & (s["spec"] == spec) & (s["phase"] == phase)].iloc[0]


def test_ratio_is_b_over_a_with_a_ci_around_it(runs):
    c = compare_runs(runs["a"], runs["slow"])
    jax = ratio(c, "jax-maml", "omni", "outer_step")
    assert jax["ratio"] == pytest.approx(1.30) and jax["ratio_ci_low"] > 1.15 and jax["verdict"] == "slower"
    torch = ratio(c, "torch-maml", "omni", "outer_step")
    assert torch["ratio"] == pytest.approx(1.0) and torch["ratio_ci_low"] < 1 < torch["ratio_ci_high"]
    assert torch["verdict"] == "no change"


def test_a_planted_30_percent_slowdown_fails_the_gate(runs):
    c = compare_runs(runs["a"], runs["slow"])
    bad = c.regressions(10)
    assert set(bad["adapter"]) == {"jax-maml"}
    assert set(bad["phase"]) == {"outer_step", "inner_step"}  # sampling never gates
    assert c.regressions(35).empty  # 30% is not more than 35%


def test_a_planted_1_percent_change_passes_the_gate(runs):
    c = compare_runs(runs["a"], runs["noise"])
    jax = ratio(c, "jax-maml", "omni", "outer_step")
    assert jax["ratio"] == pytest.approx(1.01) and jax["ratio_ci_low"] < 1 < jax["ratio_ci_high"]
    assert c.regressions(0).empty  # not even at 0%: the CI includes no change
    assert c.environment.empty


def test_accuracy_and_time_to_target_deltas(tmp_path, runs):
    b = syn.make_run(tmp_path, "b", failures=False)
    acc = b / "cells" / "torch-maml__maml__omni" / "accuracy.json"
    acc.write_text(acc.read_text().replace('"time_to_target_seconds": 10.0', '"time_to_target_seconds": 16.0'))
    c = compare_runs(runs["a"], b)
    torch = c.accuracy[(c.accuracy["adapter"] == "torch-maml") & (c.accuracy["spec"] == "omni")].iloc[0]
    assert torch["delta"] == pytest.approx(0.0)
    assert torch["time_to_target_a"] == pytest.approx(11.0) and torch["time_to_target_b"] == pytest.approx(14.0)
    assert torch["time_to_target_delta"] == pytest.approx(3.0)


def test_environment_differences_are_named(runs):
    env = compare_runs(runs["a"], runs["slow"]).environment
    rows = {r.setting: (r.A, r.B) for r in env.itertuples()}
    assert rows["packages.jax"] == ("1.0", "0.10.3")
    assert rows["git.sha"] == ("abc123", "abc123, def456")  # the harness's commit, and the jax cells' one


def test_cli_exit_code_terminal_tables_and_markdown_file(runs, tmp_path):
    out = tmp_path / "compare.md"
    cmd = [sys.executable, "-m", "bench.cli", "compare", str(runs["a"]), str(runs["slow"]), "--fail-above", "10",
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert "Regression gate" in r.stdout and "FAILED: jax-maml omni / maml / outer_step x1.30" in r.stdout
    text = out.read_text()
    assert "| omni / maml / `outer_step`" in text and "1.30x [" in text and "| packages.jax" in text
    r = subprocess.run(cmd[:5] + [str(runs["noise"]), "--fail-above", "5"], capture_output=True, text=True)
    assert r.returncode == 0 and "passed" in r.stdout


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, runs):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "compare", str(tmp_path), str(runs["a"])],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "compare:" in r.stderr and str(tmp_path) in r.stderr and "holds no metabench run" in r.stderr
