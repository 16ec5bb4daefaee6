"""``python -m bench.check.baselines``: metabench's default MAML adapters against plain MAML in
each framework (issue 12). The sinusoid workload for torch and JAX, 2 rounds: the files,
their columns, finite times, and that the plain versions compute metabench's maths."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest

from bench.check.baselines.run import COLUMNS, defaults_verdict, parse_args
from tests.conftest import REPO


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory, data_env):
    out = tmp_path_factory.mktemp("baselines")
    cmd = [sys.executable, "-m", "bench.check.baselines", str(out), "--frameworks", "torch,jax",
           "--workloads", "sinusoid", "--rounds", "2", "--warmup", "1", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=data_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "baselines.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return out, rows


def test_one_row_per_framework_and_implementation(sinusoid_run):
    out, rows = sinusoid_run
    assert tuple(rows[0]) == COLUMNS
    assert {(r["framework"], r["implementation"], r["kind"]) for r in rows} == {
        ("torch", "torch-maml", "metabench"), ("torch", "torch-maml@compile=true", "metabench"),
        ("torch", "plain-torch", "plain"), ("torch", "plain-torch-exactbn", "plain"),
        ("jax", "jax-maml", "metabench"), ("jax", "plain-jax", "plain")}
    for r in rows:
        assert r["workload"] == "sinusoid" and r["spec"] == "sinusoid-10shot"
        assert int(r["rounds"]) == 2 and int(r["threads"]) == 1
        for col in ("median_ms", "q1_ms", "q3_ms", "compile_s", "probe_s", "ratio"):
            assert math.isfinite(float(r[col])) and float(r[col]) > 0, (r["implementation"], col)
        assert float(r["q1_ms"]) <= float(r["median_ms"]) <= float(r["q3_ms"])
        assert float(r["ratio_ci_low"]) <= float(r["ratio_ci_high"])
    # every process drew the same meta-batch
    assert len({r["batch_digest"] for r in rows}) == 1


def test_the_ratio_is_metabench_over_plain(sinusoid_run):
    _, rows = sinusoid_run
    for fw in ("torch", "jax"):
        m, p = (next(r for r in rows if r["framework"] == fw and r["kind"] == k) for k in ("metabench", "plain"))
        assert m["compared_with"] == p["implementation"] and p["compared_with"] == m["implementation"]
        assert float(m["ratio"]) == pytest.approx(float(m["median_ms"]) / float(p["median_ms"]), rel=1e-9)


def test_plain_versions_compute_metabench_maths_on_the_sinusoid(sinusoid_run):
    """No BatchNorm in the MLP: both plain versions must agree with metabench in float32."""
    _, rows = sinusoid_run
    for r in rows:
        assert float(r["max_rel_diff"]) <= 1e-4, r
        assert float(r["max_rel_diff"]) == max(float(r[c]) for c in ("grad_rel_diff", "params_rel_diff",
                                                                     "loss_rel_diff"))
        assert r["agrees"] == "True"


def test_each_pair_is_asked_in_float64_whether_it_computes_the_same_maths(sinusoid_run):
    """The float64 check (``bench.check.baselines.maths``, a process per framework after its
    timing): both sides' float64 meta-gradients within parity's float64 tolerance, and
    each side's float32 error from float64 recorded."""
    out, rows = sinusoid_run
    for r in rows:
        assert float(r["grad_rel_diff_float64"]) <= 1e-9 and r["same_maths"] == "True", r
        assert 0 <= float(r["adapter_float32_error"]) < 1e-4 and 0 <= float(r["plain_float32_error"]) < 1e-4
    assert (out / "torch-float64.json").exists() and (out / "jax-float64.log").exists()
    assert "float64" in (out / "baselines.md").read_text()


def test_the_float64_check_is_what_the_grid_verdict_asks():
    """A plain form that differs in float32 but agrees in float64 is the same maths (float32
    rounding: judged); one that agrees in float32 but not in float64 is not; a run recorded
    before the check falls back to float32 agreement."""
    from bench.check.baselines.run import computes_the_same_maths, merge_float64

    assert computes_the_same_maths({"agrees": False, "same_maths": True})
    assert not computes_the_same_maths({"agrees": True, "same_maths": False})
    assert computes_the_same_maths({"agrees": True, "same_maths": None})
    assert not computes_the_same_maths({"agrees": False})
    result = {"workloads": {"w": {"pairs": [{"adapter": "a", "plain": "p"}, {"adapter": "a", "plain": "q"}]}}}
    merge_float64(result, {"workloads": {"w": [{"adapter": "a", "plain": "q", "grad_rel_diff_float64": 1e-14}]}})
    assert result["workloads"]["w"]["pairs"] == [{"adapter": "a", "plain": "p"},
                                                 {"adapter": "a", "plain": "q", "grad_rel_diff_float64": 1e-14}]


def test_markdown_has_the_table_machine_and_command(sinusoid_run):
    out, rows = sinusoid_run
    md = (out / "baselines.md").read_text()
    for fw, adapter in (("torch", "torch-maml"), ("jax", "jax-maml")):
        # the defaults on a CPU are marked; torch.compile's variant is not one
        line = next(line for line in md.splitlines()
                    if line.startswith(f"| sinusoid | {fw} | **{adapter}** (default) |"))
        ratio = float(next(r["ratio"] for r in rows if r["implementation"] == adapter))
        assert ("<= 1.0" if ratio <= 1.0 else "1.0") in line  # "> 1.0" or "level (CI reaches 1.0)"
        assert any(line.startswith(f"- sinusoid, {fw}: ") for line in md.splitlines())  # its verdict
    assert "| sinusoid | torch | torch-maml@compile=true |" in md
    defaults = {r["implementation"]: r["adapter_is_default"] for r in rows if r["kind"] == "metabench"}
    assert defaults == {"torch-maml": "True", "torch-maml@compile=true": "False", "jax-maml": "True"}
    assert "--frameworks torch,jax" in md  # the command line
    assert "cores" in md and "torch 2." in md  # the machine and versions
    assert (out / "torch.log").exists() and (out / "baselines.json").exists()


def test_options_are_checked_before_anything_runs():
    with pytest.raises(SystemExit):
        parse_args(["out", "--frameworks", "mxnet"])
    with pytest.raises(SystemExit):
        parse_args(["out", "--workloads", "cifar"])
    with pytest.raises(SystemExit):
        parse_args(["out", "--rounds", "1"])
    with pytest.raises(SystemExit):
        parse_args(["out", "--repeats", "0"])
    args = parse_args(["out", "--frameworks", "jax", "--rounds", "5"])
    assert args.frameworks == ["jax"] and args.workloads == ["sinusoid", "omniglot"] and args.rounds == 5


def _row(compared_with, ratio, agrees=True, default=True):
    return {"metabench": {"adapter_is_default": default, "compared_with": compared_with, "ratio": ratio,
                          "ratio_ci_low": ratio * 0.9, "ratio_ci_high": ratio * 1.1, "agrees": agrees}}


def test_the_defaults_verdict_names_every_plain_version_above_and_why():
    by_pair = {("omniglot", "torch", "torch-maml", "plain-torch"): _row("plain-torch", 1.4, agrees=False),
               ("omniglot", "torch", "torch-maml", "plain-torch-exactbn"): _row("plain-torch-exactbn", 0.93),
               ("omniglot", "torch", "torch-maml@compile=true", "plain-torch-exactbn"):
                   _row("plain-torch-exactbn", 0.4, default=False),
               ("omniglot", "jax", "jax-maml", "plain-jax"): _row("plain-jax", 0.22)}
    lines = defaults_verdict(by_pair)
    torch = next(line for line in lines if line.startswith("- omniglot, torch:"))
    assert "above 1 of 2" in torch and "plain-torch 1.400 [1.260, 1.540], which computes other maths" in torch
    assert "exactbn" not in torch  # below 1.0: not named; the compiled variant is not a default
    level = defaults_verdict({("sinusoid", "torch", "torch-maml", "plain-torch"): _row("plain-torch", 1.01)})
    assert "level with 1 of 1" in level[-1] and "**above" not in level[-1]  # CI [0.909, 1.111] reaches 1.0
    jax = next(line for line in lines if line.startswith("- omniglot, jax:"))
    assert "at or below all 1" in jax and "0.220" in jax
    assert defaults_verdict({k: v for k, v in by_pair.items() if k[2].endswith("true")}) == []


# -- the grid of shapes (issue 23) ---------------------------------------------------------

def test_grid_names_parse_back_to_their_shapes_and_cover_every_axis_value():
    from bench.check.baselines.workloads import GRIDS, MAML_SHAPES, PROTONET_SHAPES, maml_name, workload

    assert {s[2] for s in MAML_SHAPES} == {1, 5, 15} and {s[3] for s in MAML_SHAPES} == {1, 4, 8, 32}
    assert {s[0] for s in MAML_SHAPES} == {5, 20} and {s[4] for s in MAML_SHAPES} == {1, 5}
    assert {(w, s) for w, s, _ in PROTONET_SHAPES} == {(w, s) for w in (5, 20, 60) for s in (1, 5)}
    assert len(set(GRIDS["all"])) == len(MAML_SHAPES) + len(PROTONET_SHAPES)
    w = workload(maml_name(20, 1, 5, 4, 1))
    assert w.episode_overrides == {"n_way": 20, "k_shot": 1}
    assert w.maml_overrides == {"train_n_query": 5, "meta_batch_size": 4, "inner_steps": 1}
    p = workload("protonet-60w5s-5q")
    assert p.algorithm == "protonet" and p.protonet_overrides["train_n_way"] == 60
    assert p.episode_overrides == {"k_shot": 5}
    for bad in ("maml-5w1s-15q", "protonet-60w", "omniglot-5w1s"):
        with pytest.raises(KeyError):
            workload(bad)
    assert parse_args(["out", "--grid", "protonet"]).workloads == GRIDS["protonet"]
    assert parse_args(["out", "--workloads", "maml-5w1s-15q-mb4-1step"]).workloads == ["maml-5w1s-15q-mb4-1step"]
    with pytest.raises(SystemExit):
        parse_args(["out", "--workloads", "maml-5w1s-15q"])


def test_grid_shapes_build_the_episodes_their_names_say(data_env, monkeypatch):
    from bench.check.baselines.workloads import workload

    monkeypatch.setenv("METABENCH_DATA_DIR", data_env["METABENCH_DATA_DIR"])
    spec, config, params, batch = workload("maml-20w1s-5q-mb4-5step").build(data_dir=data_env["METABENCH_DATA_DIR"],
                                                                          cache_dir=data_env["METABENCH_CACHE_DIR"])
    assert batch.support_x.shape[:2] == (4, 20) and batch.query_x.shape[:2] == (4, 100)
    assert config.inner.steps == 5
    spec, config, params, batch = workload("protonet-20w5s-5q").build(data_dir=data_env["METABENCH_DATA_DIR"],
                                                                    cache_dir=data_env["METABENCH_CACHE_DIR"])
    assert batch.support_x.shape[:2] == (1, 100) and batch.query_x.shape[:2] == (1, 100)


def _grid_row(workload, framework, plain, adapter_ms, plain_ms, low, high, default=True, agrees=True, same=None):
    shared = {"workload": workload, "framework": framework, "max_rel_diff": 1e-6 if agrees else 1e-2,
              "adapter_is_default": default, "agrees": agrees, "same_maths": same,
              "grad_rel_diff_float64": None if same is None else (1e-14 if same else 1e-3),
              "adapter_float32_error": 1e-6, "plain_float32_error": 1e-6 if agrees else 1e-2}
    return [{**shared, "kind": "metabench", "implementation": f"{framework}-maml", "compared_with": plain,
             "median_ms": adapter_ms, "ratio": adapter_ms / plain_ms, "ratio_ci_low": low, "ratio_ci_high": high},
            {**shared, "kind": "plain", "implementation": plain, "compared_with": f"{framework}-maml",
             "median_ms": plain_ms}]


def test_the_grid_compares_each_default_with_its_fastest_plain_form(tmp_path):
    import matplotlib.colors as mcolors

    from bench.check.baselines.run import grid_figure, grid_markdown, grid_rows
    from bench.report.plots import framework_colour

    rows = (_grid_row("maml-5w1s-1q-mb8-1step", "torch", "plain-torch-loop", 100, 110, 0.85, 0.95)
            + _grid_row("maml-5w1s-1q-mb8-1step", "torch", "plain-torch-exactbn", 105, 90, 1.1, 1.3)
            + _grid_row("maml-5w1s-1q-mb8-1step", "torch", "plain-x", 50, 10, 4, 6, default=False)
            + _grid_row("maml-5w1s-1q-mb8-1step", "torch", "plain-imprecise", 105, 60, 1.6, 1.9, agrees=False)
            + _grid_row("maml-5w1s-1q-mb8-1step", "torch", "plain-other-maths", 105, 50, 1.9, 2.2, same=False)
            + _grid_row("maml-5w1s-15q-mb4-1step", "torch", "plain-torch-loop", 200, 190, 0.98, 1.12)
            + _grid_row("maml-5w1s-15q-mb4-1step", "jax", "plain-jax", 300, 200, 1.4, 1.6))
    grid = {(g["workload"], g["framework"]): g for g in grid_rows(rows)}
    assert len(grid) == 3  # a variant that is not a default is not judged
    first = grid[("maml-5w1s-1q-mb8-1step", "torch")]
    # the fastest plain form that agrees in float32 (a faster one that differs is not the same computation)
    assert first["plain"] == "plain-torch-exactbn" and first["ratio"] == pytest.approx(105 / 90)
    md = "\n".join(grid_markdown(list(grid.values())))
    assert "1 of 3 shape x framework rows at or below 1.0 or level" in md
    assert "above: maml-5w1s-1q-mb8-1step torch, maml-5w1s-15q-mb4-1step jax" in md
    assert "| maml-5w1s-15q-mb4-1step | torch | torch-maml | 200 | plain-torch-loop | 190 |" in md
    # with the float64 check: a plain form imprecise in float32 but of the same maths is judged
    rows += _grid_row("maml-5w1s-1q-mb8-1step", "torch", "plain-imprecise-same", 105, 70, 1.4, 1.6, agrees=False,
                      same=True)
    first = {(g["workload"], g["framework"]): g for g in grid_rows(rows)}[("maml-5w1s-1q-mb8-1step", "torch")]
    assert first["plain"] == "plain-imprecise-same" and first["plain_float32_error"] == 1e-2
    assert "| 1.0e-14 | 1.0e-06 / 1.0e-02 |" in "\n".join(grid_markdown([first, *grid.values()]))
    assert grid_figure(list(grid.values()), tmp_path / "grid.png") and (tmp_path / "grid.png").stat().st_size > 0
    assert grid_markdown(grid_rows(rows[:2])) == [] and not grid_figure(grid_rows(rows[:2]), tmp_path / "x.png")
    assert mcolors.to_hex(framework_colour("jax")) != mcolors.to_hex(framework_colour("torch"))


def test_the_plain_protonet_forms_of_jax_and_tensorflow_run_against_the_defaults(data_env, tmp_path):
    """The grid's plain ProtoNet in JAX (agrees with jax-protonet in float32) and in TF (graph
    and XLA: the tutorials' tf.nn.moments, shown but not judged where its float32 differs)."""
    cmd = [sys.executable, "-m", "bench.check.baselines", str(tmp_path), "--frameworks", "jax,tensorflow",
           "--workloads", "protonet-5w1s-5q", "--rounds", "2", "--warmup", "1", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=data_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / "baselines.csv", newline="") as f:
        rows = {r["implementation"]: r for r in csv.DictReader(f) if r["kind"] == "plain"}
    assert set(rows) == {"plain-jax-protonet", "plain-tf-protonet", "plain-tf-protonet-xla"}
    assert rows["plain-jax-protonet"]["agrees"] == "True" and float(rows["plain-jax-protonet"]["max_rel_diff"]) < 1e-4
    for r in rows.values():
        assert math.isfinite(float(r["ratio"])) and float(r["median_ms"]) > 0
        assert float(r["grad_rel_diff"]) < 0.1  # the same function, at worst float32's one-pass moments apart


def test_repeated_processes_pool_rounds_and_draw_processes_for_both_sides_at_once():
    """``--repeats``: a pair's rounds kept per process; its ratio's CI draws processes once
    for both sides (they shared each process), so a process that slowed both moves the
    ratio less than it moves either side."""
    import numpy as np

    from bench.check.baselines.run import combine_processes
    from bench.core.stats import paired_two_level_ratio_ci, two_level_ratio_ci

    rng = np.random.default_rng(1)
    slow = [1.0, 1.6, 1.0, 1.3]  # each process's machine state, shared by both sides
    adapter = [list(f * (0.9 + 0.01 * rng.random(12))) for f in slow]
    plain = [list(f * (1.0 + 0.01 * rng.random(12))) for f in slow]
    ratio, low, high = paired_two_level_ratio_ci(adapter, plain)
    assert ratio == pytest.approx(np.median(sum(adapter, [])) / np.median(sum(plain, [])))
    assert low <= ratio <= high and high < 1.0  # 10% faster, told apart although processes moved 60%
    _, ulow, uhigh = two_level_ratio_ci(adapter, plain)  # as if the sides had run apart
    assert uhigh - ulow > 3 * (high - low)
    with pytest.raises(ValueError):
        paired_two_level_ratio_ci(adapter, plain[:3])
    assert np.isnan(paired_two_level_ratio_ci(adapter[:1], plain[:1])[1])  # one process: too few to tell

    def process(k):
        return {"errors": [], "workloads": {"w": {"pairs": [{"adapter": "a", "plain": "p", "adapter_times": adapter[k],
                                                             "plain_times": plain[k], "grad_rel_diff": 1e-7}]}}}

    both = combine_processes([process(0), process(1)])
    pair = both["workloads"]["w"]["pairs"][0]
    assert both["processes"] == 2 and pair["adapter_times_by_process"] == adapter[:2]
    assert pair["plain_times"] == plain[0] + plain[1] and pair["grad_rel_diff"] == 1e-7
    assert combine_processes([process(0)]) == process(0) and combine_processes([]) is None


@pytest.mark.slow
def test_repeats_run_interleaved_processes_and_report_a_two_level_ci(tmp_path, data_env):
    cmd = [sys.executable, "-m", "bench.check.baselines", str(tmp_path), "--frameworks", "torch",
           "--workloads", "sinusoid", "--rounds", "10", "--warmup", "1", "--threads", "1", "--repeats", "2",
           "--no-float64"]
    proc = subprocess.run(cmd, cwd=REPO, env=data_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "torch-p0.json").exists() and (tmp_path / "torch-p1.log").exists()
    with open(tmp_path / "baselines.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["processes"] == "2" for r in rows)
    assert all(math.isfinite(float(r["ratio_ci_low"])) for r in rows)
    assert "2 processes per framework" in (tmp_path / "baselines.md").read_text()
