"""The report from a small synthetic results folder (``tests/synthetic.py``; no framework
imported): the comparison pivot's medians, speedups, CIs and break-even counts, accuracy
across seeds, time to target, the paired test, the summary's structure and the figures,
each checked against numbers computed here from the planted data."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import plots, tables
from bench.report import collect, merged_benchmark_json, write_report
from tests import synthetic as syn

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Three timing processes per cell, as the cpu profile times them."""
    return syn.make_run(tmp_path_factory.mktemp("results"), processes=3)


@pytest.fixture(scope="module")
def reported(run) -> Path:
    """The synthetic run after ``write_report`` (once: it draws three figures)."""
    write_report(run)
    return run


@pytest.fixture(scope="module")
def tabs(run) -> dict:
    return collect(run)


@pytest.fixture(scope="module")
def cmp(tabs) -> pd.DataFrame:
    return tables.comparison(tabs["steps"], tabs["timings"], "torch")


def row(frame: pd.DataFrame, **where) -> pd.Series:
    mask = np.ones(len(frame), dtype=bool)
    for k, v in where.items():
        mask &= (frame[k] == v).to_numpy()
    assert mask.sum() == 1, (where, mask.sum())
    return frame[mask].iloc[0]


def two_level_draw(rng: random.Random, processes) -> float:
    """One two-level bootstrap median, written independently of bench.stats: draw processes
    with replacement, then each drawn process's rounds with replacement; pool; median."""
    drawn = [rng.choice(processes) for _ in processes]
    return float(np.median([v for p in drawn for v in rng.choices(list(p), k=len(p))]))


def processes_of(spec: str, phase: str, framework: str):
    return [syn.rounds(spec, phase, framework, shift=s) for s in syn.PROCESS_SHIFTS]


def brute_force_ratio_ci(a, b, n: int = 4000, seed: int = 12345) -> tuple[float, float]:
    """The two-level bootstrap CI of median(a)/median(b) (``a``, ``b``: lists of per-process
    rounds), with Python's own random generator."""
    rng = random.Random(seed)
    ratios = sorted(two_level_draw(rng, a) / two_level_draw(rng, b) for _ in range(n))
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


# -- the comparison pivot -----------------------------------------------------------------

def test_pivot_medians_are_pytest_benchmarks_and_the_planted_ones(cmp):
    for (spec, phase), medians in syn.MEDIANS.items():
        for fw, median in medians.items():
            if spec == "sine" and fw == "tensorflow":
                continue  # its timing failed
            assert row(cmp, spec=spec, phase=phase, framework=fw)["median"] == pytest.approx(median, rel=1e-9)


def test_failed_timing_never_enters_a_median_or_a_comparison(cmp, tabs):
    assert not ((cmp["spec"] == "sine") & (cmp["framework"] == "tensorflow")).any()
    assert tabs["timings"]["seconds"].max() < 1.0  # the planted 1000 s rounds were not read


def test_speedup_is_the_ratio_of_medians_with_a_two_level_ci_over_both_adapters(cmp):
    jax = row(cmp, spec="omni", phase="outer_step", framework="jax")
    tf = row(cmp, spec="omni", phase="outer_step", framework="tensorflow")
    assert jax["speedup"] == pytest.approx(2.0) and tf["speedup"] == pytest.approx(0.5)
    assert jax["processes"] == 3
    lo, hi = brute_force_ratio_ci(processes_of("omni", "outer_step", "torch"),
                                  processes_of("omni", "outer_step", "jax"))
    assert jax["speedup_ci_low"] == pytest.approx(lo, abs=0.03)
    assert jax["speedup_ci_high"] == pytest.approx(hi, abs=0.03)
    assert jax["speedup_ci_low"] < 2.0 < jax["speedup_ci_high"]
    # the baseline is 1 against itself, its CI the spread of two independent resamplings
    assert row(cmp, spec="omni", phase="outer_step", framework="torch")["speedup"] == pytest.approx(1.0)


def test_median_ci_is_a_two_level_bootstrap_of_processes_and_rounds(cmp):
    torch = row(cmp, spec="omni", phase="outer_step", framework="torch")
    rng = random.Random(1)
    medians = sorted(two_level_draw(rng, processes_of("omni", "outer_step", "torch")) for _ in range(4000))
    assert torch["median_ci_low"] == pytest.approx(medians[100], rel=0.02)
    assert torch["median_ci_high"] == pytest.approx(medians[3899], rel=0.02)


def test_one_process_is_too_few_to_tell(tmp_path):
    """A run timed in one process per cell (smoke, or from before repetition): no CI, no bold."""
    tabs = collect(syn.make_run(tmp_path, failures=False))
    c = tables.comparison(tabs["steps"], tabs["timings"], "torch")
    assert c["median_ci_low"].isna().all() and c["speedup_ci_low"].isna().all() and (c["processes"] == 1).all()
    text = tables.headline_sections(tabs)
    assert "[too few to tell]" in text and "**" not in text.split("**Accuracy**")[0].replace(
        "**Step time**", "").replace("**Speedup vs torch**", "").replace("**First step**", "")


def break_even_by_counting(first_c, m_c, first_e, m_e, limit=10**6):
    for n in range(1, limit):
        if first_c + (n - 1) * m_c <= first_e + (n - 1) * m_e:
            return n
    return math.inf


def test_break_even_counts_steps_until_compile_time_is_repaid_against_the_fastest_eager(cmp):
    jax = row(cmp, spec="omni", phase="outer_step", framework="jax")
    assert jax["fastest_eager"] == "torch-maml"
    assert jax["break_even_steps"] == break_even_by_counting(5.0, 0.05, 0.12, 0.100) == 99
    # tensorflow: slower per step and slower to start: never repaid
    assert math.isinf(row(cmp, spec="omni", phase="outer_step", framework="tensorflow")["break_even_steps"])
    assert math.isnan(row(cmp, spec="omni", phase="outer_step", framework="torch")["break_even_steps"])
    assert tables.break_even_steps(1.0, 0.1, 2.0, 0.2) == 1  # a compiled adapter that starts faster


def test_sampling_is_never_ranked(cmp):
    sampling = cmp[cmp["phase"] == tables.SAMPLING]
    assert len(sampling) == 5 and sampling["speedup"].isna().all() and sampling["break_even_steps"].isna().all()
    assert "sample_episodes" not in tables.speedup_pivot(cmp).to_string()


def test_speedup_pivot_rows_columns_and_marks(cmp, run):
    marks = tables.parity_marks(pd.read_csv(run / "parity.csv"), cmp)
    assert marks == {("tensorflow-maml", "omni", "maml"): "†", ("jax-maml", "sine", "maml"): "‡"}
    p = tables.speedup_pivot(cmp, "torch", marks)
    assert list(p.columns) == ["spec / algorithm / phase", "jax (jit)", "tensorflow (graph)"]
    assert list(p.iloc[:, 0]) == ["omni / maml / `outer_step`", "omni / maml / `inner_step`",
                                  "sine / maml / `outer_step`", "sine / maml / `inner_step`"]
    # tensorflow failed parity there (†): its ratio is shown, never bold (issue 22)
    assert p.iloc[0, 1].startswith("**2.00x** [") and p.iloc[0, 2].startswith("0.500x [")
    assert p.iloc[0, 2].endswith("†") and p.iloc[2, 1].endswith("‡") and p.iloc[2, 2] == "-"


@pytest.mark.parametrize("seconds, text", [(0.000512, "512 µs"), (0.0519, "51.9 ms"), (0.25, "250 ms"),
                                           (7.153, "7.15 s"), (1234.4, "1234 s"), (None, "-")])
def test_times_keep_three_significant_digits(seconds, text):
    assert tables.format_seconds(seconds) == text


def test_step_time_cell_shows_median_and_ci_in_the_medians_unit():
    assert tables.format_seconds(0.000529, (0.000473, 0.000566)) == "529 µs [473, 566]"


def test_each_frameworks_own_adapter_shows_as_the_framework_and_reptile_rows_sort_before_protonet():
    from bench.answer import shapes

    assert tables.column_label("torch", "torch-reptile", "reptile") == "torch"
    assert tables.column_label("jax", "jax-maml", "fomaml") == "jax"
    assert tables.column_label("jax", "jax-anil", "anil") == "jax-anil"      # a variant of the [maml] family
    assert tables.column_label("tensorflow", "tensorflow-maml-xla", "maml") == "tensorflow-maml-xla"
    keys = sorted(["protonet", "reptile", "maml", "anil"], key=lambda a: tables.row_key("omniglot-5w1s", a))
    assert keys == ["maml", "reptile", "protonet", "anil"]
    spec = {"episode": {"n_way": 5, "k_shot": 1}, "reptile": {"train_shots": 10, "meta_batch_size": 5,
                                                              "inner_steps": 5}, "data": {"dataset": "omniglot"}}
    assert shapes(spec, "reptile") == "Conv-4, 5-way, 10 shots, meta-batch 5, 5 SGD steps"


# -- accuracy, seeds, time to target, the paired test ---------------------------------------

def test_accuracy_across_seeds_is_the_mean_of_seed_means_with_a_t_interval(tabs):
    acc = tables.accuracy_summary(tabs["accuracy"])
    torch = row(acc, spec="omni", framework="torch")
    means = [syn.episode_values("omni", "torch", s).mean() for s in (0, 1, 2)]
    half = sps.t.ppf(0.975, 2) * np.std(means, ddof=1) / math.sqrt(3)
    assert torch["seeds"] == 3 and torch["mean"] == pytest.approx(np.mean(means))
    assert torch["ci95"] == pytest.approx(half)
    tf = row(acc, spec="omni", framework="tensorflow")  # one seed: the CI over episodes
    assert tf["seeds"] == 1 and tf["mean"] == pytest.approx(syn.episode_values("omni", "tensorflow", 0).mean())


def test_diverged_seed_stays_out_of_accuracy_and_episodes(tabs):
    assert 5 not in set(tabs["accuracy"]["seed"]) and 5 not in set(tabs["episodes"]["seed"])
    assert tabs["episodes"]["value"].max() < 2


def test_time_to_target_averages_the_seeds_that_reached_it(tabs):
    acc = tables.accuracy_summary(tabs["accuracy"])
    torch = row(acc, spec="omni", framework="torch")
    assert torch["reached"] == 2 and torch["time_to_target_seconds"] == pytest.approx(11.0)
    t = tables.time_to_target_pivot(acc)
    omni = t[t.iloc[:, 0] == "omni / maml"].iloc[0]
    assert omni["target"] == "accuracy >= 90 %"
    assert omni["torch"] == "11.0 s (55 steps), 2/3 seeds, range 10.0 s to 12.0 s"
    assert omni["jax"] == "not reached (0/3)"
    assert row(t, **{"spec / algorithm": "sine / maml"})["target"] == "mse <= 1"


def test_paired_test_on_the_same_episodes_averaged_over_seeds(tabs):
    paired = tables.paired_comparisons(tabs["episodes"], "torch")
    jax = row(paired, spec="omni", adapter="jax-maml")
    torch_avg = np.mean([syn.episode_values("omni", "torch", s) for s in (0, 1, 2)], axis=0)
    jax_avg = np.mean([syn.episode_values("omni", "jax", s) for s in (0, 1, 2)], axis=0)
    d = jax_avg - torch_avg
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert jax["episodes"] == syn.EPISODES and jax["seeds"] == 3 and jax["baseline_seeds"] == 3
    assert jax["mean_diff"] == pytest.approx(d.mean()) and jax["t"] == pytest.approx(t)
    assert jax["p"] == pytest.approx(2 * sps.t.sf(abs(t), d.size - 1))
    assert jax["significant"] and 0.018 < jax["mean_diff"] < 0.022
    tf = row(paired, spec="omni", adapter="tensorflow-maml")
    d_tf = syn.episode_values("omni", "tensorflow", 0) - torch_avg
    p_tf = sps.ttest_rel(syn.episode_values("omni", "tensorflow", 0), torch_avg).pvalue
    assert tf["mean_diff"] == pytest.approx(d_tf.mean()) and tf["p"] == pytest.approx(p_tf)
    # Holm over the table's four comparisons: the smallest p times 4, then monotone
    ps = paired["p"].to_numpy()
    order = np.argsort(ps)
    expected = np.maximum.accumulate([min(1, (len(ps) - i) * ps[j]) for i, j in enumerate(order)])
    assert paired["p_holm"].to_numpy()[order] == pytest.approx(expected)
    assert not tf["significant"]


def test_paired_sentence_speaks_in_the_metrics_units():
    paired = pd.DataFrame({"spec": ["sine"], "algorithm": ["maml"], "adapter": ["jax-maml"],
                           "baseline": ["torch-maml"], "mean_diff": [-0.0123], "significant": [True]})
    text = tables.paired_sentence(paired, {("sine", "maml"): "mse"})
    assert "jax-maml on sine / maml (-0.0123 MSE)" in text
    assert tables.paired_sentence(paired.assign(significant=False)).startswith(
        "No test-metric difference from torch-maml is significant")  # the adapter, when no baseline is named


def test_old_runs_without_seeds_or_episodes_still_report(tmp_path):
    run = syn.make_run(tmp_path, failures=False)
    for cell_dir in (run / "cells").iterdir():
        (cell_dir / "episodes.csv").unlink()
        acc = json.loads((cell_dir / "accuracy.json").read_text())
        for key in ("seed", "target", "target_direction", "steps_to_target", "time_to_target_seconds",
                    "first_step_seconds"):
            acc.pop(key)
        (cell_dir / "accuracy.json").write_text(json.dumps(acc))
        cell = json.loads((cell_dir / "cell.json").read_text())
        cell.pop("seed")
        (cell_dir / "cell.json").write_text(json.dumps(cell))
    text = tables.headline_markdown(run)
    assert "**Accuracy**" in text and "Time to target" not in text and "compared by their CIs only" in text


# -- the headline and summary.md -------------------------------------------------------------

def test_headline_markdown_is_deterministic_and_portable(run, tmp_path):
    first = tables.headline_markdown(run)
    moved = shutil.copytree(run, tmp_path / run.name)
    assert tables.headline_markdown(moved) == first  # no absolute path, no timestamp
    assert str(run) not in first and "2026-12-01" not in first
    for section in ("**Step time**", "**Speedup vs torch**", "**First step**", "**Accuracy**", "**Time to target**"):
        assert section in first
    assert "100 ms [" in first and "5.00 s, repaid after 99 steps" in first
    assert "jax-maml on omni / maml (+2.00 points); every other difference is not significant" in first
    # a cell whose timing failed says so where its numbers would be, in every timing table
    sine_rows = [line for line in first.splitlines() if line.startswith("| sine / maml / `outer_step`")]
    assert [[c.strip() for c in line.split("|")][-2] for line in sine_rows] == ["failed"] * 3
    # prose lines fit the hand-written Markdown that embeds them (tests/test_docs.py: 100 columns)
    assert max(len(line) for line in first.splitlines() if not line.startswith("|")) <= 100


def test_headline_baseline_can_be_another_framework(run):
    text = tables.headline_markdown(run, baseline="jax")
    assert "**Speedup vs jax**" in text and "**0.500x** [" in text  # torch is half jax's speed


def test_report_command_takes_a_baseline(tmp_path, capsys):
    from bench.cli import main

    run = syn.make_run(tmp_path, failures=False)
    assert main(["report", str(run), "--baseline", "jax"]) == 0
    summary = (run / "summary.md").read_text()
    assert "**Speedup vs jax**" in summary and "| jax (jit)" not in summary.split("**Speedup vs jax**")[1][:400]


def test_summary_opens_with_parity_then_comparison_then_details(reported):
    run = reported
    summary = (run / "summary.md").read_text()
    order = [summary.index(s) for s in ("## Parity against torch", "## Comparison", "## Step times",
                                        "## Accuracy per cell and seed", "## Paired comparison",
                                        "## Failures", "## Plots")]
    assert order == sorted(order)
    verdict = summary.split("## Parity")[1].split("## Comparison")[0]
    assert "FAILED for tensorflow-maml" in verdict
    head = summary.split("## Step times")[0]
    assert len(head.splitlines()) < 110  # verdict and comparison: about two screens
    assert "#### omni / maml / `outer_step`" in summary and "x fastest" in summary


def test_steps_show_achieved_gflops_and_the_share_of_the_gemm_peak(reported, tabs):
    """GFLOP/s = the step's analytic FLOPs over its median; the share is of the same
    framework's measured matrix-multiply speed. Sampling (no FLOPs) shows neither."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in (reported / "summary.md").read_text().splitlines() if line.startswith("|")]
    steps = tabs["steps"]
    checked = 0
    for r in steps[steps["phase"].isin(list(syn.STEP_FLOPS))].itertuples():
        rate = syn.STEP_FLOPS[r.phase] / r.median / 1e9
        assert r.flops == syn.STEP_FLOPS[r.phase] and r.gemm_gflops == syn.GEMM_GFLOPS[r.framework]
        want = [f"{rate:.1f}", f"{100 * rate / syn.GEMM_GFLOPS[r.framework]:.0f}%"]
        assert any(row[0].startswith(r.adapter) and row[-2:] == want for row in rows), (r.adapter, want)
        checked += 1
    assert checked >= 6


def test_the_summary_gives_the_harness_overhead_against_a_bare_loop(reported):
    summary = (reported / "summary.md").read_text()
    line = next(x for x in summary.splitlines() if x.startswith("Harness overhead:"))
    assert f"same process is {syn.HARNESS_OVERHEAD:.3f} (median of" in line
    assert f"range {syn.HARNESS_OVERHEAD:.3f} to {syn.HARNESS_OVERHEAD:.3f}" in line


def test_failures_list_every_non_ok_phase_and_parity_comparison(reported):
    run = reported
    failures = (run / "summary.md").read_text().split("## Failures")[1].split("## Plots")[0]
    assert "- tensorflow-maml__maml__sine / timing: failed, exit 1: RuntimeError: deliberate" in failures
    assert "- tensorflow-maml__maml__omni__seed5 / accuracy: diverged, exit 1: diverged at step 3" in failures
    assert "parity tensorflow-maml vs torch on omni / maml" in failures
    assert "jax-maml__maml__omni /" not in failures


def test_run_level_files(reported):
    run = reported
    ep = pd.read_csv(run / "episodes.csv")
    assert list(ep.columns) == ["run_id", "framework", "algorithm", "adapter", "spec", "seed", "episode", "value"]
    assert len(ep) == syn.EPISODES * (3 + 3 + 1 + 3)  # omni: 3+3+1 seeds, sine: one each
    acc = pd.read_csv(run / "accuracy.csv")
    assert {"seed", "target", "time_to_target_seconds", "steps_to_target", "first_step_seconds"} <= set(acc.columns)
    merged = json.loads((run / "benchmark.json").read_text())
    assert merged["commit_info"] == {"id": "abc123", "dirty": False}
    assert merged["datetime"] == "2026-11-28T09:50:00+00:00"  # the run's own, not the report's
    # three records a process, three processes a cell; the failed cell's records are left out
    assert len(merged["benchmarks"]) == 3 * 3 * 5
    assert {b["name"] for b in merged["benchmarks"]} >= {"jax-maml[outer_step]", "jax-maml[outer_step]#2"}


def test_merged_benchmark_json_keeps_the_earliest_cells_datetime(tmp_path):
    run = syn.make_run(tmp_path, failures=False)
    bench = run / "cells" / "jax-maml__maml__sine" / "benchmark.json"
    data = json.loads(bench.read_text())
    data["datetime"] = "2026-11-28T08:00:00+00:00"
    bench.write_text(json.dumps(data))
    assert merged_benchmark_json(run)["datetime"] == "2026-11-28T08:00:00+00:00"


# -- figures ---------------------------------------------------------------------------------

def test_speedup_figure_is_log_scaled_with_one_marker_per_framework_and_no_sampling(cmp):
    fig = plots.speedup_figure(cmp, "torch")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "speedup vs torch" in ax.get_xlabel()
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert ticks == ["omni / maml / outer_step", "omni / maml / inner_step", "sine / maml / outer_step",
                     "sine / maml / inner_step"]
    # the legend below the axes, off the data
    assert ax.get_legend() is None and [t.get_text() for t in fig.legends[0].get_texts()] == ["jax", "tensorflow"]
    markers = {c.get_label(): c.lines[0].get_marker() for c in ax.containers}
    assert len(set(markers.values())) == 2
    jax_x = ax.containers[0].lines[0].get_xdata()
    assert list(jax_x) == pytest.approx([2.0, 20 / 19, 80.0, 5.0])
    assert ax.containers[0].has_xerr


def test_step_time_figure_panels_in_fixed_phase_order_each_with_its_own_adapters(tabs):
    fig = plots.step_time_figure(tabs["timings"])
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["omni / maml / outer_step", "omni / maml / inner_step",
                                                  "sine / maml / outer_step", "sine / maml / inner_step"]
    for ax in visible:
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "step time (ms, log scale)"
    sine_ticks = [t.get_text() for t in visible[2].get_yticklabels()]
    assert sine_ticks == ["torch", "jax"]  # tensorflow failed there: no empty row
    assert "sample_episodes" not in " ".join(ax.get_title() for ax in fig.axes)


def test_learning_curves_have_a_panel_per_direction_and_view_with_targets_and_bands(tabs):
    fig = plots.learning_curve_figure(tabs["curves"], tabs["accuracy"])
    assert len(fig.axes) == 4  # two workloads x (wall-clock, steps): no blank canvas
    omni_wall, omni_steps, sine_wall, sine_steps = fig.axes
    assert omni_wall.get_ylabel() == "validation accuracy (higher is better)"
    assert sine_wall.get_ylabel() == "validation MSE (lower is better)"
    assert omni_wall.get_xscale() == "log" and omni_steps.get_xscale() == "linear"
    assert omni_steps.get_xlabel() == "meta-training step"
    targets = [line for line in omni_steps.get_lines() if line.get_label() == "target"]
    assert len(targets) == 1 and targets[0].get_ydata()[0] == pytest.approx(0.9)
    assert len(omni_steps.collections) == 3  # a band per framework


def test_learning_curves_draw_the_mean_over_seeds_not_seed_0(tmp_path):
    run = tmp_path / "seeds"
    run.mkdir()
    for seed, lift in ((0, 0.0), (1, 0.02), (2, 0.04)):  # seed 0 is the lowest curve
        d = syn.write_cell(run, "torch", "omni", seed)
        curve = pd.read_csv(d / "curve.csv")
        curve["val_mean"] += lift
        curve.to_csv(d / "curve.csv", index=False)
    t = collect(run)
    fig = plots.learning_curve_figure(t["curves"], t["accuracy"])
    per_step = fig.axes[1]
    main = [line for line in per_step.get_lines() if line.get_label() == "torch (mean of 3 seeds)"]
    assert len(main) == 1
    assert main[0].get_ydata() == pytest.approx(0.5 + 0.004 * main[0].get_xdata() + 0.02)  # the mean, not seed 0
    mean = plots._mean_curve(t["curves"])  # the band drawn: a 95% t interval across the seeds
    assert mean["band"].to_numpy() == pytest.approx(sps.t.ppf(0.975, 2) * 0.02 / np.sqrt(3))  # of +0, 2, 4 points
    assert (mean["seeds"] == 3).all()
    assert "mean over training seeds" in fig._suptitle.get_text()


def test_single_cell_run_fills_its_canvas(tmp_path):
    run = tmp_path / "one"
    run.mkdir()
    syn.write_cell(run, "torch", "omni")
    t = collect(run)
    fig = plots.learning_curve_figure(t["curves"], t["accuracy"])
    assert len(fig.axes) == 2 and all(ax.has_data() for ax in fig.axes)
    fig = plots.step_time_figure(t["timings"])
    assert all(ax.get_visible() and ax.has_data() for ax in fig.axes)


def test_write_report_writes_the_figures(reported):
    run = reported
    for name in ("speedups.png", "step_times.png", "learning_curves.png"):
        assert (run / name).stat().st_size > 10_000
        assert f"![{name}]({name})" in (run / "summary.md").read_text()


def test_the_data_package_describes_every_csv_as_written(reported):
    """datapackage.json: each table's file, row count and columns in order, with types a
    reader can load by, and the schema version of the tables."""
    from bench.report import SCHEMA_VERSION, TABLES

    package = json.loads((reported / "datapackage.json").read_text())
    assert package["profile"] == "tabular-data-package" and package["schema_version"] == SCHEMA_VERSION
    assert [r["name"] for r in package["resources"]] == list(TABLES)
    numeric = {"integer", "number"}
    for resource in package["resources"]:
        frame = pd.read_csv(reported / resource["path"])
        fields = resource["schema"]["fields"]
        assert [f["name"] for f in fields] == list(frame.columns) and resource["rows"] == len(frame), resource["name"]
        for f in fields:  # a numeric field reads back as numbers (an all-empty column reads as float)
            if f["type"] in numeric:
                assert pd.api.types.is_numeric_dtype(frame[f["name"]]), (resource["name"], f)
    types = {f["name"]: f["type"] for f in package["resources"][0]["schema"]["fields"]}
    assert types["seconds"] == "number" and types["round"] == "integer" and types["adapter"] == "string"
    tables_line = f"- tables: schema version {SCHEMA_VERSION}, each CSV's columns in `datapackage.json`"
    assert tables_line in (reported / "summary.md").read_text()


def test_the_index_marks_a_run_whose_tables_are_of_an_older_schema(tmp_path):
    from bench.report import SCHEMA_VERSION, index_block

    current, old = syn.make_run(tmp_path, "20261202-current"), syn.make_run(tmp_path, "20261201-old")
    for run in (current, old):
        write_report(run)
    (old / "datapackage.json").unlink()  # as a run reported before versions were recorded
    rows = {line.split("`")[1]: line for line in index_block(tmp_path).splitlines() if line.startswith("| [`")}
    assert f"**tables of schema version 1** (older than {SCHEMA_VERSION}: `metabench report" in rows["20261201-old/"]
    assert "schema version" not in rows["20261202-current/"]


# -- the committed run ---------------------------------------------------------------------------

def test_committed_cpu_run_reports_from_a_copy(tmp_path):
    """The real file formats: the committed run (no seeds, no episodes.csv) reports."""
    src = REPO / "results" / "20261128-cpu-all"
    if not src.exists():
        pytest.skip("committed run not present")
    run = shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("*.png"))
    text = tables.headline_markdown(run)
    # timed in one process a cell: a speedup without a CI that covers processes, never bold
    assert "| omniglot-5w1s / maml / `outer_step`" in text and "1.45x [too few to tell]" in text
    assert "**1.45x**" not in text
    assert "90.94 ± 0.56 %" in text
    # issue 9: summary.md said IQR 21.2 ms here, pytest-benchmark 25.2 ms; now it is pytest-benchmark's
    steps = collect(run)["steps"]
    jax = row(steps, adapter="jax-maml", algorithm="fomaml", spec="omniglot-5w1s", phase="outer_step")
    cell = json.loads((run / "cells" / "jax-maml__fomaml__omniglot-5w1s" / "benchmark.json").read_text())
    own = next(b["stats"] for b in cell["benchmarks"] if b["extra_info"]["phase"] == "outer_step")
    assert jax["iqr"] == own["iqr"] and jax["q1"] == own["q1"] and jax["median"] == own["median"]


# -- results/README.md ---------------------------------------------------------------------------

def test_index_lists_every_run_newest_first_and_keeps_the_prose_around_it(tmp_path):
    from bench.report import write_index

    syn.make_run(tmp_path, "20261201-synthetic")
    old = syn.make_run(tmp_path, "20261130-torch-only", failures=False)
    for cell_dir in (old / "cells").iterdir():
        if not cell_dir.name.startswith("torch"):
            shutil.rmtree(cell_dir)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["started"] = "2026-11-30T08:00:00Z"
    (old / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "README.md").write_text("# Committed runs\n\nHand-written prose.\n")
    text = write_index(tmp_path).read_text()
    assert text.startswith("# Committed runs\n\nHand-written prose.\n")
    lines = [line for line in text.splitlines() if line.startswith("| [`")]
    assert [line.split("`")[1] for line in lines] == ["20261201-synthetic/", "20261130-torch-only/"]
    assert "| 2026-12-01 | smoke" in lines[0] and "`abc123`" in lines[0]
    assert "11 cells, torch, jax, tensorflow, 4 seeds; fastest of 4 step phases: jax 4; parity FAILED: " \
           "tensorflow-maml; 2 cells with failures" in lines[0]
    assert "4 cells, torch only, 3 seeds; accuracy omni / maml 89.05 %, sine / maml MSE 0.502" in lines[1]
    from bench.cli import main

    assert main(["index", str(tmp_path)]) == 0
    assert (tmp_path / "README.md").read_text() == text  # regenerating replaces the block, never appends


def test_a_framework_on_other_threads_is_flagged(tmp_path):
    from bench.report import thread_mismatches

    run = tmp_path / "run"
    for name, threads in (("torch-maml__maml__s", 2), ("mylib-maml__maml__s", None)):
        (run / "cells" / name).mkdir(parents=True)
        (run / "cells" / name / "environment.json").write_text(
            json.dumps({"adapter_info": {"framework": name.split("-")[0], "threads": threads}}))
    assert thread_mismatches(run, 2) == ["mylib reports no threads"]
    assert thread_mismatches(run, None) == []


def test_defaults_section_names_a_variant_faster_than_the_default():
    """A default (on the run's device) against the fastest adapter of its framework timed
    in the run: on a CPU TF's default MAML is the XLA variant; on a GPU graph mode is, and
    a faster XLA variant is named with its ratio and parity mark."""
    from bench.report import defaults_section

    def rows(spec, width):
        return [{"spec": spec, "algorithm": "maml", "framework": "tensorflow", "adapter": a, "phase": phase,
                 "median": m, "median_ci_low": m - width, "median_ci_high": m + width}
                for a, m in (("tensorflow-maml", 0.176), ("tensorflow-maml-xla", 0.088))
                for phase in ("outer_step", "inner_step")]

    steps = pd.DataFrame(rows("omni", 0.01) + rows("noisy", 0.1)
                         + [{"spec": "omni", "algorithm": "maml", "framework": "torch", "adapter": "torch-maml",
                             "phase": "outer_step", "median": 0.15}])
    squeeze = lambda text: " ".join(text.split())  # the table's column padding aside
    cpu = squeeze(defaults_section(steps, "cpu", {}))
    assert "| omni / maml | tensorflow | tensorflow-maml-xla | 88.0 ms |" in cpu and "the default is the fastest" in cpu
    assert "torch-maml" not in cpu  # one adapter of a framework: nothing to compare
    gpu = squeeze(defaults_section(steps, "cuda", {("tensorflow-maml-xla", "omni", "maml"): "‡"}))
    assert "**tensorflow-maml-xla is 2.00x faster** (‡: see the legend)" in gpu
    assert "| noisy / maml | tensorflow | tensorflow-maml |" in gpu and "level: tensorflow-maml-xla 2.00x" in gpu
    # an adapter that failed parity is never the faster choice (issue 22: it was, in bold)
    failed = squeeze(defaults_section(steps, "cuda", {("tensorflow-maml-xla", "omni", "maml"): "†"}))
    assert "| omni / maml |" not in failed and "faster**" not in failed
    assert defaults_section(steps[steps["framework"] == "torch"], "cpu", {}) == ""


# -- repeated timing: where the noise lives; what report refuses ------------------------------------

def test_the_noise_line_puts_a_planted_process_shift_between_processes(tabs):
    """Processes 10% apart, rounds 1% apart inside each, the first rounds level with the
    rest: the line says processes dominate, by about 10%, and no warm-up trend."""
    from bench.report import noise_line

    rng = np.random.default_rng(0)
    rows = [{"spec": "omni", "algorithm": "maml", "adapter": f"a{i}", "phase": "outer_step", "process": p,
             "round": r, "seconds": 0.1 * (1 + shift) * (1 + rng.normal(0, 0.01))}
            for i in range(4) for p, shift in enumerate((-0.1, 0.0, 0.1)) for r in range(20)]
    text = noise_line(pd.DataFrame(rows))
    between = float(text.split("moves a row's median by ")[1].split("%")[0])
    assert 8.0 < between < 12.0 and "processes dominate in 4 of 4 rows" in text
    early = float(text.split("timed rounds run ")[1].split("%")[0])
    assert abs(early) < 2.0
    # the synthetic run's shifts (2%) are within what its rounds (10% spread) can resolve
    assert "over the 10 rows timed in several processes" in noise_line(tabs["timings"])
    assert "one timing process per cell" in noise_line(tabs["timings"].assign(process=0))


def test_report_refuses_to_replace_a_table_with_fewer_rows(tmp_path):
    from bench.errors import MetabenchError

    run = syn.make_run(tmp_path, processes=3)
    write_report(run)
    before = (run / "timings.csv").read_text()
    shutil.rmtree(run / "cells")
    (run / "cells").mkdir()
    with pytest.raises(MetabenchError, match=r"timings.csv holds \d+ rows and its cells now give 0"):
        write_report(run)
    assert (run / "timings.csv").read_text() == before  # nothing written


def test_a_corrupt_status_or_manifest_is_one_line_naming_the_file(tmp_path):
    import subprocess
    import sys

    run = syn.make_run(tmp_path, processes=3)
    status = run / "cells" / "torch-maml__maml__omni" / "status.json"
    status.write_text('{"phases": ')
    r = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(run)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(status) in r.stderr, r.stderr
    status.write_text("[1, 2]")
    r = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(run)], capture_output=True, text=True)
    assert r.returncode == 2 and "not a JSON object" in r.stderr


def test_a_smoke_summary_says_first_that_its_numbers_are_not_comparable(tmp_path):
    run = syn.make_run(tmp_path)  # the synthetic manifest says profile smoke
    write_report(run)
    lines = (run / "summary.md").read_text().splitlines()
    assert lines[2].startswith("**A smoke run: its numbers prove that every phase runs and are not comparable**")


def test_an_adapter_marked_for_parity_is_never_bold(cmp):
    """tensorflow-maml failed parity on omni (†): its 0.5x is shown, marked, never bold."""
    marks = {("tensorflow-maml", "omni", "maml"): tables.FAILED_PARITY}
    text = tables.speedup_pivot(cmp, "torch", marks).to_string()
    assert "0.500x [" in text and "**0.500x**" not in text and "**2.00x**" in text


def test_each_framework_keeps_its_colour_whatever_else_the_run_holds():
    """One palette keyed by framework (issue 25): two runs with different adapter sets give
    torch, JAX and TF the same colours; a variant gets a shade of its framework's hue; a
    plugin framework gets a colour of its own, the same in every run."""
    from matplotlib.colors import to_hex

    a = plots._styles(["torch", "jax", "tensorflow"], "torch")
    b = plots._styles(["tensorflow-maml-xla", "tensorflow", "jax", "mlx-maml"], "torch")
    for fw in ("jax", "tensorflow"):
        assert to_hex(a[fw][0]) == to_hex(b[fw][0]) == to_hex(plots.framework_colour(fw))
    assert to_hex(a["torch"][0]) == to_hex(plots.framework_colour("torch"))
    assert len({to_hex(c) for c, _ in a.values()}) == 3
    variant = b["tensorflow-maml-xla"][0]
    assert to_hex(variant) != to_hex(b["tensorflow"][0])
    r, g, bl = variant  # a shade of orange, not another hue
    assert r > bl and g > bl
    mlx = to_hex(b["mlx-maml"][0])
    assert mlx == to_hex(plots._styles(["mlx-maml"], "torch")["mlx-maml"][0])
    assert mlx not in {to_hex(plots.framework_colour(f)) for f in ("torch", "jax", "tensorflow")}


def test_step_time_rows_have_no_gap_and_medians_stay_visible():
    """Issue 25: a ProtoNet row (outer step, adapt) sits left-aligned beside a MAML row
    (outer step, inner step): no hidden panel between two visible ones; every box's median
    is drawn above its rounds."""
    rows = [{"framework": fw, "adapter": f"{fw}-{algo}", "algorithm": algo, "spec": "omni", "phase": phase,
             "process": 0, "round": r, "seconds": 0.01 * (1 + r % 3) * (2 if fw == "jax" else 1)}
            for algo, phases in (("maml", ("outer_step", "inner_step")), ("protonet", ("outer_step", "adapt")))
            for phase in phases for fw in ("torch", "jax") for r in range(12)]
    fig = plots.step_time_figure(pd.DataFrame(rows))
    grid = np.array(fig.axes).reshape(2, -1)
    assert grid.shape == (2, 2)
    titles = [[ax.get_title() if ax.get_visible() else None for ax in row] for row in grid]
    assert titles == [["omni / maml / outer_step", "omni / maml / inner_step"],
                      ["omni / protonet / outer_step", "omni / protonet / adapt"]]
    for ax in fig.axes:
        points = max(c.get_zorder() for c in ax.collections)
        medians = [line for line in ax.get_lines() if line.get_linewidth() == 1.6]  # the medians
        assert len(medians) == 2 and all(m.get_zorder() > points for m in medians)


def test_the_summary_says_how_each_adapter_ran(tmp_path):
    """An adapter that picks its form by shape says which form ran on which cells."""
    from bench.report import adapters_section

    for cell, spec, notes in (("torch-maml__maml__a", "a", "loop"), ("torch-maml__maml__b", "b", "vmap"),
                              ("torch-maml__fomaml__a", "a", "loop")):
        d = tmp_path / "cells" / cell
        d.mkdir(parents=True)
        adapter, algorithm, _ = cell.split("__")
        (d / "cell.json").write_text(json.dumps({"adapter": adapter, "algorithm": algorithm, "spec": spec}))
        (d / "environment.json").write_text(json.dumps({"adapter_info": {"framework": "torch", "notes": notes}}))
    timing_only = tmp_path / "cells" / "jax-maml__maml__a" / "timing" / "0"  # a run without memory/accuracy
    timing_only.mkdir(parents=True)
    (timing_only / "benchmark.json").write_text(json.dumps(
        {"benchmarks": [{"extra_info": {"adapter_info": {"framework": "jax", "notes": "jit"}}}]}))
    (timing_only.parent.parent / "cell.json").write_text(json.dumps({"adapter": "jax-maml", "algorithm": "maml",
                                                                      "spec": "a"}))
    text = adapters_section(tmp_path)
    assert text.startswith("## How each adapter ran") and "- **jax-maml** (a / maml): jit" in text
    assert "- **torch-maml** (a / fomaml, a / maml): loop" in text and "- **torch-maml** (b / maml): vmap" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert adapters_section(tmp_path / "nothing") == ""
