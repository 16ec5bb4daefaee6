"""Numbers that survive a rerun: timing in several processes per cell, interleaved in a
recorded, seeded order that ``--resume`` continues, and statistics at both levels.

- the two-level bootstrap on synthetic data with known variance components: its CI covers
  the true median about as often as it says, where the rounds of one process do not;
- scipy's percentile bootstrap agrees with ``bench.core.stats``'s one-level CI on fixtures;
- "too few to tell" below 2 processes or 10 rounds;
- the interleaved order: blocks of every comparable cell, drawn per block from the seed;
- end to end with the fake adapters (``tests/fake_adapters.py``): the order in plan.json is
  the order the processes ran in, and a run killed between repeats resumes without
  running a finished process again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core import stats
from bench.core.cell import Cell
from bench.run import plan
from tests.fake_adapters import metabench

# -- the two-level bootstrap ----------------------------------------------------------------------


def synthetic_processes(rng: np.random.Generator, processes: int, rounds: int, between: float,
                        within: float, true: float = 1.0) -> list[np.ndarray]:
    """Round times whose process effects have standard deviation ``between`` and whose
    rounds, ``within`` (both relative to ``true``, the population median)."""
    effects = rng.normal(0.0, between, processes)
    return [true * (1 + e + rng.normal(0.0, within, rounds)) for e in effects]


def coverage(ci, processes: int, trials: int = 150, between: float = 0.10, within: float = 0.02) -> float:
    rng = np.random.default_rng(2024)
    hits = 0
    for t in range(trials):
        groups = synthetic_processes(rng, processes, 20, between, within)
        lo, hi = ci(groups, t)
        hits += lo <= 1.0 <= hi
    return hits / trials


def test_two_level_ci_covers_the_process_to_process_variation_that_one_level_misses():
    """Process effects of 10% and round noise of 2%: pooling every round into a one-level
    bootstrap treats 160 rounds as independent and its CI is far too narrow; the two-level
    CI covers the true median near its nominal rate (the percentile bootstrap runs a
    little under it with 8 processes)."""
    two = coverage(lambda g, t: stats.two_level_median_ci(g, n_boot=400, seed=t)[1:], processes=8)
    one = coverage(lambda g, t: stats.bootstrap_median_ci(np.concatenate(g), n_boot=400, seed=t), processes=8)
    assert two >= 0.80, two
    assert one <= 0.40, one


def test_two_level_ci_widens_with_the_between_process_variance_and_not_with_rounds():
    rng = np.random.default_rng(7)
    quiet = synthetic_processes(rng, 5, 20, between=0.0, within=0.02)
    noisy = synthetic_processes(rng, 5, 20, between=0.15, within=0.02)
    width = lambda g: np.subtract(*stats.two_level_median_ci(g)[:0:-1])
    assert width(noisy) > 3 * width(quiet)
    # identical processes: the two levels reduce to the rounds' own spread
    same = [quiet[0]] * 5
    assert width(same) <= width(quiet) * 1.5


def test_two_level_ratio_ci_of_a_known_ratio():
    rng = np.random.default_rng(11)
    a = synthetic_processes(rng, 6, 20, between=0.03, within=0.02, true=0.100)
    b = synthetic_processes(rng, 6, 20, between=0.03, within=0.02, true=0.050)
    ratio, lo, hi = stats.two_level_ratio_ci(a, b)
    assert ratio == pytest.approx(2.0, rel=0.05) and lo < ratio < hi and lo > 1.7 and hi < 2.3


def test_too_few_processes_or_rounds_get_no_ci():
    rng = np.random.default_rng(3)
    one = synthetic_processes(rng, 1, 50, 0.1, 0.02)
    short = synthetic_processes(rng, 4, 9, 0.1, 0.02)
    enough = synthetic_processes(rng, 2, 10, 0.1, 0.02)
    assert stats.too_few(one) and stats.too_few(short) and not stats.too_few(enough)
    median, lo, hi = stats.two_level_median_ci(one)
    assert median == pytest.approx(np.median(one[0])) and np.isnan(lo) and np.isnan(hi)
    ratio, lo, hi = stats.two_level_ratio_ci(enough, short)
    assert np.isfinite(ratio) and np.isnan(lo) and np.isnan(hi)
    assert not np.isnan(stats.two_level_ratio_ci(enough, enough)[1])
    assert np.isnan(stats.process_spread(one)) and stats.process_spread(enough) >= 0


def test_the_same_inputs_give_the_same_intervals():
    rng = np.random.default_rng(5)
    g = synthetic_processes(rng, 3, 20, 0.05, 0.02)
    assert stats.two_level_median_ci(g) == stats.two_level_median_ci(g)


def test_scipy_percentile_bootstrap_agrees_with_the_one_level_ci():
    """scipy computes the one-level statistic too (not the two-level one): on fixtures both
    give the same percentile interval up to Monte Carlo error."""
    from scipy import stats as sps

    rng = np.random.default_rng(0)
    for data in (rng.lognormal(0, 0.1, 21), rng.normal(1.0, 0.05, 60), 1 + np.linspace(-0.1, 0.1, 21)):
        ours = stats.bootstrap_median_ci(data, n_boot=4000)
        res = sps.bootstrap((data,), np.median, n_resamples=4000, method="percentile", random_state=1)
        theirs = (res.confidence_interval.low, res.confidence_interval.high)
        scale = np.median(data)
        assert ours[0] == pytest.approx(theirs[0], abs=0.01 * scale)
        assert ours[1] == pytest.approx(theirs[1], abs=0.01 * scale)


# -- the interleaved order --------------------------------------------------------------------------

def cells(*adapters, spec="sine", algorithm="maml"):
    return [Cell(adapter=a, framework=a.split("-")[0], algorithm=algorithm, spec=spec, spec_name=spec,
                 profile="cpu", device="cpu", threads=1) for a in adapters]


def test_timing_order_runs_blocks_of_every_comparable_cell_in_drawn_orders():
    group_a = cells("torch-maml", "jax-maml", "tensorflow-maml")
    group_b = cells("torch-protonet", "jax-protonet", algorithm="protonet")
    order = plan.timing_order(group_a + group_b, repeats=4, seed=0)
    assert len(order) == 4 * 5 and len(set(order)) == 20
    first = [c for c, _ in order[:12]]
    assert set(first) == {c.cell_id for c in group_a}  # one group, then the next
    blocks = [order[i:i + 3] for i in range(0, 12, 3)]
    for k, block in enumerate(blocks):  # each block runs every cell of the group once, process k
        assert {c for c, _ in block} == {c.cell_id for c in group_a} and {p for _, p in block} == {k}
    assert len({tuple(c for c, _ in b) for b in blocks}) > 1  # orders drawn afresh per block
    # no cell runs two of its processes in a row, within a group or across its blocks
    ids = [c for c, _ in order]
    assert all(a != b for a, b in zip(ids, ids[1:]))


def test_timing_order_is_deterministic_by_seed_and_skips_training_seeds():
    cs = cells("torch-maml", "jax-maml", "tensorflow-maml")
    assert plan.timing_order(cs, 3, seed=1) == plan.timing_order(list(reversed(cs)), 3, seed=1)
    assert plan.timing_order(cs, 3, seed=1) != plan.timing_order(cs, 3, seed=2)
    seeded = Cell(**{**cs[0].__dict__, "seed": 1})
    assert all(c != seeded.cell_id for c, _ in plan.timing_order([*cs, seeded], 3))


# -- end to end: the recorded order, and --resume between repeats ------------------------------------

REPEAT_ADAPTERS = "fake-quick,fake-quick-b"


def repeat_run(results: Path, run_id: str, *extra: str) -> list[str]:
    return ["run", "--profile", "smoke", "--device", "cpu", "--specs", "sinusoid-10shot", "--adapters",
            REPEAT_ADAPTERS, "--algorithms", "maml", "--results-dir", str(results), "--run-id", run_id,
            "--phases", "timing", "--repeats", "3", *extra]


def started(cell_dir: Path, k: int) -> float:
    """When the k-th timing process of a cell started (its log's first write)."""
    return (cell_dir / "timing" / str(k) / "timing.log").stat().st_ctime


@pytest.mark.slow
def test_repeated_timing_runs_in_the_recorded_order_and_reports_every_process(tmp_path, plugin_env):
    out = metabench(*repeat_run(tmp_path, "rep"), env=plugin_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "rep"
    recorded = json.loads((run / "plan.json").read_text())
    assert recorded["repeats"] == 3 and recorded["order_seed"] == 0
    order = [tuple(x) for x in recorded["timing_order"]]
    assert len(order) == 6
    when = [started(run / "cells" / c, k) for c, k in order]
    assert when == sorted(when)  # they ran in the recorded order
    timings = pd.read_csv(run / "timings.csv")
    outer = timings[timings["phase"] == "outer_step"]
    assert sorted(outer.groupby("adapter")["process"].nunique()) == [3, 3]
    steps = pd.read_csv(run / "steps.csv")
    assert set(steps["processes"]) == {3}
    processes = pd.read_csv(run / "processes.csv")
    outer = processes[processes["phase"] == "outer_step"]
    assert len(outer) == 6 and outer["first_step_seconds"].notna().all() and outer["machine_pid"].nunique() == 6
    assert "timing in 3 processes per cell, interleaved" in out.stdout
    # smoke's 3 rounds a process are too few for a CI, whatever the processes
    assert "[too few to tell]" in (run / "summary.md").read_text()


@pytest.mark.slow
def test_a_run_killed_between_repeats_resumes_without_repeating_a_finished_process(tmp_path, plugin_env):
    args = repeat_run(tmp_path, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=plugin_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = tmp_path / "killed"
    t0 = time.monotonic()
    while True:  # wait for the second finished timing process, then kill the run
        done = list((run / "cells").glob("*/timing/*/status.json")) if (run / "cells").exists() else []
        if len(done) >= 2:
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    finished = {p: p.stat().st_mtime_ns for p in (run / "cells").glob("*/timing/*/status.json")}
    assert len(finished) >= 2 and not list((run / "cells").glob("*/status.json"))
    order = [tuple(x) for x in json.loads((run / "plan.json").read_text())["timing_order"]]

    resumed = metabench(*args, "--resume", env=plugin_env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for path, mtime in finished.items():  # kept, not run again
        assert path.stat().st_mtime_ns == mtime
    assert [tuple(x) for x in json.loads((run / "plan.json").read_text())["timing_order"]] == order
    ran_again = [line for line in resumed.stdout.splitlines() if "timing process" in line and " ok" in line]
    assert len(ran_again) == 6 - len(finished)
    steps = pd.read_csv(run / "steps.csv")
    assert set(steps["processes"]) == {3}
    statuses = [json.loads(p.read_text()) for p in (run / "cells").glob("*/status.json")]
    assert len(statuses) == 2 and all(len(s["phases"]["timing"]["processes"]) == 3 for s in statuses)


def test_repeats_are_validated_before_anything_is_written(tmp_path, plugin_env):
    for bad in ("0", "101"):
        out = metabench(*repeat_run(tmp_path, "bad")[:-2], "--repeats", bad, env=plugin_env)
        assert out.returncode == 2 and "--repeats: must be from 1 to 100" in out.stderr, out.stderr
    assert not (tmp_path / "bad").exists()
