"""The accuracy phase: meta-train for the budget, then evaluate on held-out episodes.

Training episode ``t`` of a run is meta-batch ``t`` of the train role's stream, so every
framework sees the same episodes in the same order. Validation episodes (the learning
curve) and test episodes come from their own streams and are the same at every point,
and for every training seed.

The curve's clock (``train_seconds``) counts synchronised outer steps 2..n only: step 1
is timed apart (``first_step_seconds``) because it compiles in JAX and TensorFlow when
nothing ran before it in the process, and not when the memory probe ran first. Leaving it
out of every clock makes curves and times to target comparable across runs and phases;
compile time is reported by the timing phase. Validation time is never on the clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from bench.core.algorithms import get as get_algorithm
from bench.core.episodes import EpisodeBatch, EpisodeSampler, sampler_for
from bench.core.errors import Diverged
from bench.core.stats import mean_ci95

EVAL_CHUNK = 50  # evaluation episodes moved to the device and evaluated at once


@dataclass
class AccuracyResult:
    metric: str                     # "accuracy" or "mse"
    mean: float
    ci95: float
    episodes: int
    train_steps: int
    train_seconds: float            # outer steps 2..n, synchronised; validation and step 1 excluded
    eval_seconds: float
    seed: int = 0                   # training seed (bench.core.cell.Cell.seed)
    first_step_seconds: float = float("nan")  # step 1, apart from the clock (it may compile)
    target: float | None = None     # validation metric that counts as good enough
    target_direction: str = "max"   # "max": reached when >= target (accuracy); "min": <= (MSE)
    steps_to_target: int | None = None           # first validation point at the target
    time_to_target_seconds: float | None = None  # its train_seconds
    curve: list[dict] = field(default_factory=list)  # step, train_seconds, val_mean, val_ci95, train_loss
    episode_values: list[float] = field(default_factory=list)  # test metric per test episode


def metric_name(spec) -> str:
    return "mse" if spec.is_regression else "accuracy"


def direction(metric: str) -> str:
    """Which way is better: accuracy up ("max"), MSE down ("min")."""
    return "min" if metric == "mse" else "max"


def reached(value: float, target: float, metric: str) -> bool:
    return value <= target if direction(metric) == "min" else value >= target


def time_to_target(curve: list[dict], target: float | None, metric: str) -> tuple[int | None, float | None]:
    """(step, train_seconds) of the first curve point whose validation metric reaches the
    target; (None, None) when none does. The resolution is the curve's ``val_every``."""
    if not target:
        return None, None
    for point in curve:
        if reached(point["val_mean"], target, metric):
            return int(point["step"]), float(point["train_seconds"])
    return None, None


def task_metrics(adapter, batch: EpisodeBatch, algorithm: str) -> np.ndarray:
    """Per-task metric of a (numpy) batch, float64 [B]: the adapter predicts the query set
    after test-time adaptation; the algorithm turns predictions into accuracy or MSE
    (regression when the targets are real numbers, classification when they are labels)."""
    outputs = adapter.predict(adapter.to_device(batch))
    regression = np.issubdtype(batch.query_y.dtype, np.floating)
    return get_algorithm(algorithm).metric(outputs, batch.query_y, regression)


def evaluate(adapter, sampler: EpisodeSampler, episodes: int, algorithm: str) -> np.ndarray:
    """Per-episode metric over episodes ``0..episodes-1`` of the sampler's stream."""
    return np.concatenate([task_metrics(adapter, sampler.batch(start, min(EVAL_CHUNK, episodes - start)), algorithm)
                           for start in range(0, episodes, EVAL_CHUNK)])


def train_and_evaluate(adapter, spec, algorithm: str, *, train_seed: int = 0, data_dir=None, cache_dir=None,
                       progress=None) -> AccuracyResult:
    """``spec`` has its profile applied; ``adapter`` holds the initial parameters of
    ``train_seed``. ``progress(step, total, info)`` is called after every step."""
    budget = spec.budget
    kw = {"data_dir": data_dir, "cache_dir": cache_dir}
    train = sampler_for(spec, "train", algorithm, train_seed=train_seed, **kw)
    val = sampler_for(spec, "val", **kw)
    test = sampler_for(spec, "test", **kw)
    batch_size = spec.meta_batch_size(algorithm)
    curve: list[dict] = []
    train_seconds = 0.0
    first_step_seconds = float("nan")
    recent_losses: list[float] = []

    def validate(step: int) -> None:
        values = evaluate(adapter, val, budget.val_episodes, algorithm)
        mean, ci = mean_ci95(values)
        curve.append({"step": step, "train_seconds": train_seconds, "val_mean": mean, "val_ci95": ci,
                      "train_loss": float(np.mean(recent_losses)) if recent_losses else float("nan")})
        recent_losses.clear()

    if budget.val_every and budget.val_episodes:
        validate(0)
    for step in range(1, budget.meta_train_steps + 1):
        batch = adapter.to_device(train.batch((step - 1) * batch_size, batch_size))
        t0 = time.perf_counter()
        loss = adapter.outer_step(batch)
        adapter.sync(loss)
        if step == 1:
            first_step_seconds = time.perf_counter() - t0
        else:
            train_seconds += time.perf_counter() - t0
        value = float(loss)  # every framework's scalar supports __float__
        if not math.isfinite(value):  # stop here: every later step would train on NaNs
            raise Diverged("accuracy", step, value)
        recent_losses.append(value)
        if budget.val_every and budget.val_episodes and (step % budget.val_every == 0
                                                         or step == budget.meta_train_steps):
            validate(step)
        if progress is not None:
            progress(step, budget.meta_train_steps, curve[-1] if curve else None)
    t0 = time.perf_counter()
    values = evaluate(adapter, test, budget.eval_episodes, algorithm)
    eval_seconds = time.perf_counter() - t0
    mean, ci = mean_ci95(values)
    metric = metric_name(spec)
    target = budget.target or None
    steps_to, time_to = time_to_target(curve, target, metric)
    return AccuracyResult(metric, mean, ci, len(values), budget.meta_train_steps, train_seconds, eval_seconds,
                          seed=train_seed, first_step_seconds=first_step_seconds, target=target,
                          target_direction=direction(metric), steps_to_target=steps_to,
                          time_to_target_seconds=time_to, curve=curve, episode_values=values.tolist())

