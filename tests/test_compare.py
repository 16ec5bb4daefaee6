"""``metabench compare RUN_A RUN_B`` on synthetic runs (``tests/synthetic.py``, three timing
processes a cell): a planted 30% slowdown fails the gate, a planted 1% change passes it,
ratios and deltas are the planted ones, rows in one run only are listed, a single-process
run cannot tell, and environment differences are named."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report.compare import compare_runs, markdown
from tests import synthetic as syn


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("results")
    return {
        "a": syn.make_run(root, "a", failures=False, processes=3),
        "slow": syn.make_run(root, "slow", failures=False, scale={"jax": 1.30}, processes=3,
                             env={"jax": syn.environment("jax", version="0.10.3", sha="def456")}),
        "noise": syn.make_run(root, "noise", failures=False, scale={"jax": 1.01}, processes=3),
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
    # B's speedup over A reads like the summary's speedups: above 1, B is faster
    assert jax["speedup"] == pytest.approx(1 / 1.30) and jax["speedup_ci_high"] < 1


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
    b = syn.make_run(tmp_path, "b", failures=False, processes=3)
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
    said = " ".join(r.stdout.split())  # prose is wrapped
    assert "Regression gate" in said and "FAILED: jax-maml omni / maml / outer_step x1.30" in said
    text = out.read_text()
    assert "| omni / maml / `outer_step`" in text and "0.769x [" in text and "| packages.jax" in text
    r = subprocess.run(cmd[:5] + [str(runs["noise"]), "--fail-above", "5"], capture_output=True, text=True)
    assert r.returncode == 0 and "passed" in r.stdout


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, runs):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "compare", str(tmp_path), str(runs["a"])],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "compare:" in r.stderr and str(tmp_path) in r.stderr and "holds no metabench run" in r.stderr


def test_accuracy_delta_has_a_ci_across_seeds_and_else_paired_on_the_same_episodes(tmp_path, runs):
    c = compare_runs(runs["a"], runs["noise"])
    torch = c.accuracy[(c.accuracy["adapter"] == "torch-maml") & (c.accuracy["spec"] == "omni")].iloc[0]
    assert torch["delta_by"].startswith("seeds (3 and 3)") and torch["delta_ci_low"] <= 0 <= torch["delta_ci_high"]
    # one seed each (sine): paired over the test episodes, only when both runs' fingerprints agree
    sine = c.accuracy[(c.accuracy["adapter"] == "torch-maml") & (c.accuracy["spec"] == "sine")].iloc[0]
    assert sine["delta_by"] == "-" and math.isnan(sine["delta_ci_low"])  # the synthetic manifests hold none
    for run in (runs["a"], runs["noise"]):
        m = json.loads((run / "manifest.json").read_text())
        m["specs"] = {"sine": {"episodes": {"test": {"count": 200, "fingerprint": "f" * 64}}}}
        (run / "manifest.json").write_text(json.dumps(m))
    try:
        c = compare_runs(runs["a"], runs["noise"])
        sine = c.accuracy[(c.accuracy["adapter"] == "torch-maml") & (c.accuracy["spec"] == "sine")].iloc[0]
        assert sine["delta_by"] == "paired, 200 episodes" and sine["delta_ci_low"] <= 0 <= sine["delta_ci_high"]
    finally:
        for run in (runs["a"], runs["noise"]):
            m = json.loads((run / "manifest.json").read_text())
            m["specs"] = {}
            (run / "manifest.json").write_text(json.dumps(m))


def test_rows_in_one_run_only_are_listed(tmp_path, runs):
    b = syn.make_run(tmp_path, "b", failures=False, processes=3)
    shutil.rmtree(b / "cells" / "jax-maml__maml__sine")  # jax left out of the sine spec in B
    c = compare_runs(runs["a"], b)
    only = c.only
    assert set(only["only in"]) == {"A"}
    assert "sine / maml / jax-maml / outer_step" in set(only["row"])
    assert "sine / maml / jax-maml" in set(only[only["what"] == "accuracy"]["row"])
    assert "## Only in one run" in markdown(c) and "sine / maml / jax-maml / outer_step" in markdown(c)


def test_a_single_process_run_cannot_tell_noise_from_change(tmp_path, runs):
    one = syn.make_run(tmp_path, "one", failures=False, scale={"jax": 1.30})  # one process a cell
    c = compare_runs(runs["a"], one)
    assert set(c.steps["verdict"]) == {"cannot tell (one process)"} and c.single_process
    assert c.regressions(10).empty  # never "slower" without a CI that covers processes
    assert "Cannot tell noise from change" in markdown(c, 10)


def test_runs_with_nothing_in_common_say_so(tmp_path, runs):
    other = syn.make_run(tmp_path, "other", failures=False, processes=3)
    for d in (other / "cells").iterdir():
        cell = json.loads((d / "cell.json").read_text())
        cell["spec_name"] = "renamed"
        (d / "cell.json").write_text(json.dumps(cell))
    c = compare_runs(runs["a"], other)
    assert c.steps.empty and "Nothing to compare" in markdown(c)
    r = subprocess.run([sys.executable, "-m", "bench.cli", "compare", str(runs["a"]), str(other)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "share no timed step and no accuracy row" in r.stderr


def test_cross_framework_speedups_of_b_fall_inside_as_cis(runs):
    c = compare_runs(runs["a"], runs["noise"])
    sp = c.speedups
    jax = sp[(sp["adapter"] == "jax-maml") & (sp["spec"] == "omni") & (sp["phase"] == "outer_step")].iloc[0]
    assert jax["speedup_a"] == pytest.approx(2.0) and jax["speedup_b"] == pytest.approx(2.0 / 1.01)
    assert jax["b_inside_a"]  # 1.98 inside A's [1.92, 2.08]
    slow = compare_runs(runs["a"], runs["slow"]).speedups
    jax = slow[(slow["adapter"] == "jax-maml") & (slow["spec"] == "omni") & (slow["phase"] == "outer_step")].iloc[0]
    assert not jax["b_inside_a"]  # 1.54: the 30% slowdown moved it out


def test_a_drift_common_to_every_adapter_is_adjusted_for_and_said(tmp_path, runs):
    """The machine ran 30% slower through run B (every framework scaled alike): no adapter
    is called slower, the drift is named; jax slower by a further 30% on top is caught."""
    drifted = syn.make_run(tmp_path, "drifted", failures=False, processes=3,
                           scale={"torch": 1.3, "jax": 1.3, "tensorflow": 1.3})
    c = compare_runs(runs["a"], drifted)
    ranked = c.steps[c.steps["phase"] != "sample_episodes"]
    assert set(ranked["verdict"]) == {"no change"} and c.regressions(10).empty
    assert (ranked["ratio"].round(6) == 1.3).all() and (ranked["adjusted"].round(6) == 1.0).all()
    assert "Every adapter of a workload moved together" in markdown(c)
    worse = syn.make_run(tmp_path, "worse", failures=False, processes=3,
                         scale={"torch": 1.3, "jax": 1.69, "tensorflow": 1.3})
    c = compare_runs(runs["a"], worse)
    bad = c.regressions(10)
    assert set(bad["adapter"]) == {"jax-maml"} and bad["adjusted"].round(6).eq(1.3).all()
    assert "x1.69 (x1.30 beside its workload's other adapters)" in " ".join(markdown(c, 10).split())
