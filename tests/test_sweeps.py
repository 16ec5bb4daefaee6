"""``--set`` / ``--sweep``: spec references with overrides (validated like the file, the
profile's tables overridden too), and the report's growth exponents and sweep figure, from a
synthetic sweep run whose step times and memory follow planted power laws."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.core.errors import SpecError
from bench.core.spec import load_spec
from bench.report.report import write_report
from bench.report.sweeps import exponents, sweep_points
from bench.run.runner import expand_specs
from tests import synthetic as syn

# planted: outer_step time ~ steps^1 (torch) and ~ steps^0.5 (jax); memory ~ steps^1 and flat
LAWS = {"torch": (0.010, 1.0, 100.0, 1.0), "jax": (0.004, 0.5, 80.0, 0.0)}
STEPS = (1, 2, 5, 10)


def test_set_and_sweep_expand_to_validated_references():
    refs = expand_specs(["omniglot-5w1s"], ["budget.val_every=50"],
                        ["maml.inner_steps=1,5", "maml.meta_batch_size=2,16"])
    assert len(refs) == 4
    assert refs[0] == "omniglot-5w1s@budget.val_every=50@maml.inner_steps=1@maml.meta_batch_size=2"
    spec = load_spec(refs[-1])
    assert spec.name == "omniglot-5w1s_budget.val_every-50_maml.inner_steps-5_maml.meta_batch_size-16"
    assert (spec.maml.inner_steps, spec.budget.val_every) == (5, 50)
    # the cpu profile's own meta-batch (8 for MAML) does not undo the override; ProtoNet keeps its own
    assert spec.for_algorithm("maml").with_profile("cpu", "maml").meta_batch_size("maml") == 16
    assert spec.for_algorithm("protonet").with_profile("cpu", "protonet").meta_batch_size("protonet") == 1


def test_one_at_a_time_sweeps_vary_each_field_alone():
    """``--sweep-one-at-a-time``: 2 + 2 specs for two sweeps of two values, the other field
    at the spec's own value; the sweep tables read each as a series of its own."""
    refs = expand_specs(["omniglot-5w1s"], [], ["maml.inner_steps=1,5", "maml.meta_batch_size=2,16"],
                        one_at_a_time=True)
    assert refs == ["omniglot-5w1s@maml.inner_steps=1", "omniglot-5w1s@maml.inner_steps=5",
                    "omniglot-5w1s@maml.meta_batch_size=2", "omniglot-5w1s@maml.meta_batch_size=16"]
    assert expand_specs(["sinusoid-10shot"], [], [], one_at_a_time=True) == ["sinusoid-10shot"]


@pytest.mark.parametrize("flag, bad, says", [
    ("set", "maml.inner_step=5", "maml.inner_step: unknown field"),
    ("set", "maml.inner_steps=x", "maml.inner_steps: must be an integer"),
    ("set", "mam.inner_steps=5", "unknown section [mam]"),
    ("set", "maml.inner_steps", "must be section.field=value"),
    ("sweep", "protonet.train_n_way=5,20", "no [protonet] section"),
])
def test_bad_overrides_are_one_line_errors_naming_the_field(flag, bad, says):
    spec = "sinusoid-10shot" if "protonet" in bad else "omniglot-5w1s"
    with pytest.raises(SpecError) as e:
        expand_specs([spec], [bad] if flag == "set" else [], [bad] if flag == "sweep" else [])
    assert says in str(e.value) and "\n" not in str(e.value)


def _sweep_run(root: Path) -> Path:
    run = root / "sweep"
    for framework, (t1, b_time, m1, b_mem) in LAWS.items():
        adapter = f"{framework}-maml"
        for steps in STEPS:
            ref = f"omniglot-5w1s@maml.inner_steps={steps}"
            name = f"omniglot-5w1s_maml.inner_steps-{steps}"
            d = run / "cells" / f"{adapter}__maml__{name}"
            d.mkdir(parents=True)
            cell = {"adapter": adapter, "framework": framework, "algorithm": "maml", "spec": ref,
                    "spec_name": name, "profile": "cpu", "device": "cpu", "threads": 2, "seed": 0}
            (d / "cell.json").write_text(json.dumps(cell))
            data = np.full(5, t1 * steps ** b_time) * np.array([0.98, 0.99, 1.0, 1.01, 1.02])
            bench = {"benchmarks": [{"name": f"{adapter}[outer_step]", "stats": syn._stats(data), "extra_info": {
                "phase": "outer_step", "device": "cpu", "compilation": "eager", "first_step_seconds": 0.1}}],
                     "machine_info": {}, "commit_info": {}, "datetime": "2026-12-01T10:00:00+00:00"}
            (d / "benchmark.json").write_text(json.dumps(bench))
            peak = int(m1 * steps ** b_mem * 2**20)
            (d / "memory.json").write_text(json.dumps({"phase": "outer_step", "steps": 2, "peak_bytes": peak,
                                                       "source": "rss", "framework_api": False}))
            ok = {"status": "ok", "returncode": 0, "seconds": 1.0, "detail": None, "log_tail": []}
            (d / "status.json").write_text(json.dumps({**cell, "phases": {"timing": ok, "memory": ok}}))
    (run / "manifest.json").write_text(json.dumps({"run_id": "sweep", "threads": 2, "cells": []}))
    return run


def test_growth_exponents_recover_the_planted_laws(tmp_path):
    from bench.report.results import collect

    run = _sweep_run(tmp_path)
    tabs = collect(run)
    fits = exponents(sweep_points(run, tabs["steps"], tabs["memory"])).set_index(["quantity", "framework"])
    for framework, (_, b_time, _, b_mem) in LAWS.items():
        assert fits.loc[("outer_step", framework), "exponent"] == pytest.approx(b_time, abs=1e-9)
        assert fits.loc[("peak memory", framework), "exponent"] == pytest.approx(b_mem, abs=1e-3)
    assert set(fits["key"]) == {"maml.inner_steps"} and (fits["x_low"] == 1).all() and (fits["x_high"] == 10).all()


def test_the_report_shows_the_sweep_table_and_figure(tmp_path):
    run = _sweep_run(tmp_path)
    write_report(run)
    summary = (run / "summary.md").read_text()
    section = summary.split("## How cost grows (sweeps)")[1].split("## Step times")[0]
    assert "omniglot-5w1s / maml / maml.inner_steps" in section
    assert "b = 1.00" in section and "b = 0.50" in section and "b = 0.00" in section
    assert (run / "sweeps.png").stat().st_size > 0
    from bench.report.plots import _plt, sweep_figure
    from bench.report.results import collect

    tabs = collect(run)
    fig = sweep_figure(sweep_points(run, tabs["steps"], tabs["memory"]))
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["outer_step", "peak memory"]
    assert all(a.get_xscale() == "log" and a.get_yscale() == "log" and a.get_xlabel() == "inner_steps"
               for a in axes)
    assert all(len(a.containers) == 2 for a in axes)   # one line (with its CI bars) per framework
    # times in ms, as everywhere else: torch's planted 10 ms a step at one inner step
    time_ax = axes[0]
    assert time_ax.get_ylabel() == "median step time (ms)"
    torch_line = next(c.lines[0] for c in time_ax.containers if c.get_label().startswith("torch"))
    assert torch_line.get_ydata()[0] == pytest.approx(10.0)
    assert torch_line.get_color() == plots_colour("torch")
    # the swept values as plain tick labels, no 10^x
    fig.canvas.draw()
    assert [t.get_text() for t in time_ax.get_xticklabels()] == ["1", "2", "5", "10"]
    # one legend, below the panels, off the data: none inside an axes
    assert all(a.get_legend() is None for a in axes) and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["jax maml", "torch maml"]
    legend_top = fig.legends[0].get_window_extent().y1
    assert all(legend_top <= a.get_tightbbox().y0 + 1 for a in axes)
    _plt().close(fig)


def plots_colour(framework: str):
    from matplotlib.colors import to_rgb

    from bench.report.plots import framework_colour

    return to_rgb(framework_colour(framework))


def test_a_sweeps_speedups_name_its_specs_by_the_swept_value_in_numeric_order(tmp_path):
    """Not ``omniglot-5w1s_maml.inner_steps-10`` between 1 and 2: the field and its value,
    numbers sorted as numbers, the base spec once in the title; the tables sort the same way."""
    from bench.report import plots, tables
    from bench.report.results import collect
    from bench.report.sweeps import spec_labels

    run = _sweep_run(tmp_path)
    tabs = collect(run)
    cmp = tables.comparison(tabs["steps"], tabs["timings"], "torch")
    fig = plots.speedup_figure(cmp, "torch", spec_labels(run))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        f"inner_steps={n} / maml / outer_step" for n in STEPS]
    assert ax.get_title().startswith("omniglot-5w1s: speedup vs torch")
    assert ax.get_legend() is None and len(fig.legends) == 1
    step_fig = plots.step_time_figure(tabs["timings"], "torch", spec_labels(run))
    assert [a.get_title() for a in step_fig.axes if a.get_visible()] == [
        f"inner_steps={n} / maml / outer_step" for n in STEPS]
    plots._plt().close("all")
    write_report(run)
    rows = [line.split("|")[1].strip() for line in (run / "summary.md").read_text().splitlines()
            if line.startswith("| omniglot-5w1s_maml.inner_steps-") and "outer_step" in line]
    assert rows[:4] == [f"omniglot-5w1s_maml.inner_steps-{n} / maml / `outer_step`" for n in STEPS]


def test_a_narrow_log_axis_gets_a_few_round_labels_not_one_per_hundred():
    from bench.report.plots import _log_125_ticks

    assert _log_125_ticks(0.4, 12) == [0.5, 1, 2, 5, 10]
    narrow = _log_125_ticks(1100, 1900)  # holds no 1-2-5 value but 1000 and 2000 outside
    assert 2 <= len(narrow) <= 4 and all(1100 <= v <= 1900 for v in narrow), narrow
