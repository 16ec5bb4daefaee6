"""Training seeds, time to target and the run plan (no framework imported).

A training seed changes the initial weights and the order of training episodes, never the
validation or test episodes, so every seed of every framework is evaluated on the same test
episodes and can be compared episode by episode.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from bench.core.cell import Cell
from bench.core.episodes import sampler_for
from bench.core.models import init_params
from bench.core.spec import load_spec
from bench.measure.training import time_to_target, train_and_evaluate
from bench.run import plan
from bench.run.runner import plan_cells

SINUSOID = load_spec("sinusoid-10shot").with_profile("smoke", "maml")
SINUSOID_TOML = resources.files("bench.core.specs") / "sinusoid-10shot.toml"


def test_training_seed_changes_weights_and_training_episodes_but_not_test_episodes():
    a, b = init_params(SINUSOID, "maml"), init_params(SINUSOID, "maml", train_seed=1)
    assert not np.allclose(a["fc1.weight"], b["fc1.weight"])
    assert np.array_equal(init_params(SINUSOID, "maml", train_seed=0)["fc1.weight"], a["fc1.weight"])
    train0, train1 = (sampler_for(SINUSOID, "train", "maml", train_seed=s) for s in (0, 1))
    assert train0.fingerprint(16) != train1.fingerprint(16)
    for role in ("val", "test"):
        assert (sampler_for(SINUSOID, role, train_seed=0).fingerprint(16)
                == sampler_for(SINUSOID, role, train_seed=3).fingerprint(16))


def test_seed_zero_keeps_the_episodes_of_runs_made_before_seeds_existed():
    # spawn key (role, index): what every committed run used
    rng = np.random.default_rng(np.random.SeedSequence(SINUSOID.seed, spawn_key=(0, 5)))
    expected_amplitude = rng.uniform(*SINUSOID.data.amplitude)
    batch = sampler_for(SINUSOID, "train", "maml").batch(5, 1)
    assert batch.provenance[0, 0] == pytest.approx(expected_amplitude)


@pytest.mark.parametrize("metric, target, expected", [
    ("accuracy", 0.80, (200, 20.0)),    # first point at or above
    ("accuracy", 0.95, (None, None)),   # never reached
    ("mse", 1.0, (300, 30.0)),          # first point at or below
])
def test_time_to_target_is_the_first_validation_point_that_reaches_it(metric, target, expected):
    values = [0.5, 0.7, 0.8, 0.9] if metric == "accuracy" else [3.0, 2.0, 1.5, 0.9]
    curve = [{"step": 100 * i, "train_seconds": 10.0 * i, "val_mean": v} for i, v in enumerate(values)]
    assert time_to_target(curve, target, metric) == expected


class _SlowFirstStep:
    """A numpy stand-in for an adapter whose first step compiles (sleeps 0.3 s); its
    predictions' MSE is 4, 2, 1 after 0, 1, 2 steps."""

    def __init__(self):
        self.steps = 0

    def to_device(self, batch):
        return batch

    def sync(self, outputs=None):
        pass

    def outer_step(self, batch):
        self.steps += 1
        time.sleep(0.3 if self.steps == 1 else 0.001)
        return np.float32(1.0 / self.steps)

    def predict(self, batch):
        return batch.query_y + np.sqrt(2.0 / (self.steps or 0.5))


def test_the_curve_clock_leaves_out_the_first_compiling_step():
    spec = load_spec("sinusoid-10shot").with_profile("smoke", "maml")
    result = train_and_evaluate(_SlowFirstStep(), spec, "maml")
    assert result.first_step_seconds >= 0.3
    assert result.train_seconds < 0.1          # steps 2..n only
    assert [p["train_seconds"] for p in result.curve][0] == 0.0
    assert len(result.episode_values) == spec.budget.eval_episodes
    # after 2 steps the stand-in's MSE is 1.0: the smoke target (1.0) is reached at step 2
    assert result.target == 1.0 and result.steps_to_target == 2 and result.target_direction == "min"


def test_seeds_plan_accuracy_only_cells_after_the_seed_zero_cells():
    cells = plan_cells(profile="smoke", frameworks=["torch"], algorithms=["maml"], specs=["sinusoid-10shot"],
                       adapters=None, device="cpu", threads=1, data_dir=None, cache_dir=None, seeds=3)
    assert [c.seed for c in cells] == [0, 1, 2]
    assert [c.cell_id for c in cells] == ["torch-maml__maml__sinusoid-10shot",
                                          "torch-maml__maml__sinusoid-10shot__seed1",
                                          "torch-maml__maml__sinusoid-10shot__seed2"]
    phases = ("timing", "memory", "accuracy")
    assert [plan.cell_phases(c, phases) for c in cells] == [phases, ("accuracy",), ("accuracy",)]
    assert Cell.from_json(cells[2].to_json()) == cells[2]


def test_a_resumed_plan_estimates_only_the_cells_left():
    cells = plan_cells(profile="cpu", frameworks=["torch"], algorithms=["maml"], specs=["sinusoid-10shot"],
                       adapters=None, device="cpu", threads=1, data_dir=None, cache_dir=None, seeds=3)
    phases = ("parity", "timing", "memory", "accuracy")
    p = plan.RunPlan(profile="cpu", phases=phases, cells=tuple(cells), specs={}, device="cpu", threads=1,
                     results_dir=Path("."), run_id="r", resume=False, data_dir=None, command="test", seeds=3)
    fresh = plan.describe(p)
    typical = plan.TYPICAL_SECONDS["cpu"]
    assert f"about {plan._duration(plan.estimate_seconds(cells, phases, 'cpu'))}" in fresh
    assert "resumed" not in fresh
    resumed = plan.describe(p, done=frozenset({cells[0].cell_id}), parity_done=True)
    assert "resumed: 1 of 3 cells finished before, kept; 2 to run; the parity table kept" in resumed
    assert f"estimated duration of the rest: about {plan._duration(2 * typical['accuracy'])}" in resumed


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--dry-run", "--profile", "cpu",
                           "--frameworks", "torch", "--specs", "sinusoid-10shot", "--seeds", "2",
                           "--results-dir", str(tmp_path / "results"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "4 cells (4 torch)" in proc.stdout and "estimated duration: about" in proc.stdout
    assert "metabench run --profile smoke" in proc.stdout   # the quicker first try
    assert not (tmp_path / "results").exists()


def test_targets_come_from_the_spec_per_algorithm_and_profiles_may_override_them(tmp_path):
    omniglot = load_spec("omniglot-5w1s")
    assert omniglot.with_profile("cpu", "maml").budget.target == 0.90
    assert omniglot.with_profile("cpu", "protonet").budget.target == 0.95
    text = SINUSOID_TOML.read_text()
    path = tmp_path / "s.toml"
    path.write_text(text + "\n[profiles.paper.maml]\ntarget = 0.7\n")
    spec = load_spec(path)
    assert spec.with_profile("cpu", "maml").budget.target == 1.0
    assert spec.with_profile("paper", "maml").budget.target == 0.7


@pytest.mark.parametrize("table, field", [
    ("[targets]\nleo = 0.9\n", "targets.leo"),    # not an algorithm at all
    ("[targets]\nprotonet = 0.9\n", "targets.protonet"),  # the sinusoid spec has no ProtoNet
    ("[targets]\nmaml = -1.0\n", "targets.maml"),
])
def test_a_bad_target_is_a_one_line_error_naming_the_field(tmp_path, table, field):
    from bench.core.errors import SpecError

    text = SINUSOID_TOML.read_text()
    path = tmp_path / "s.toml"
    path.write_text(re.sub(r"\[targets\][^\n]*\nmaml = 1.0\nfomaml = 1.0\n", table, text))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert e.value.field == field and "\n" not in str(e.value)



def test_the_estimate_is_calibrated_by_the_committed_runs():
    """Issue 25: ``--dry-run``'s estimate comes from what the committed runs recorded. The
    cpu profile's full run (20261130-cpu-all, 54 min), estimated from every other committed
    run, lands within 25% of its actual duration; with no history, the fixed typical
    durations are used."""
    import json

    from tests.conftest import REPO

    results = REPO / "results"
    run = results / "20261130-cpu-all"
    manifest, recorded = json.loads((run / "manifest.json").read_text()), json.loads((run / "plan.json").read_text())
    keys = ("adapter", "framework", "algorithm", "spec", "spec_name", "profile", "device", "threads")
    cells = [Cell(**{k: c[k] for k in keys}) for c in
             (json.loads((run / "cells" / cid / "cell.json").read_text()) for cid in recorded["cells"])]
    history = plan.History(results, exclude=run.name)
    estimate = plan.estimate_seconds(cells, recorded["phases"], "cpu", 1, history)
    actual = plan._seconds_between(manifest["started"], manifest["finished"])
    assert abs(estimate / actual - 1) <= 0.25, (estimate, actual)
    # memory and accuracy share one process: counted once, not twice
    both = plan.estimate_seconds(cells[:1], ("memory", "accuracy"), "cpu", 1, history)
    assert both < plan.estimate_seconds(cells[:1], ("memory",), "cpu", 1, history) + \
        plan.estimate_seconds(cells[:1], ("accuracy",), "cpu", 1, history)
    empty = plan.History(None)
    assert plan.estimate_seconds(cells[:1], ("timing",), "cpu", 3, empty) == 3 * plan.TYPICAL_SECONDS["cpu"]["timing"]
