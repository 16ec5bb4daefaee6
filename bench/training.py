"""The accuracy phase: meta-train for the budget, then evaluate on held-out episodes.

Training episode ``t`` of a run is meta-batch ``t`` of the train role's stream, so every
framework sees the same episodes in the same order. Validation episodes (the learning
curve) and test episodes come from their own streams and are the same at every point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bench.episodes import EpisodeSampler, sampler_for
from bench.stats import mean_ci95

EVAL_CHUNK = 50  # evaluation episodes moved to the device and evaluated at once


@dataclass
class AccuracyResult:
    metric: str                     # "accuracy" or "mse"
    mean: float
    ci95: float
    episodes: int
    train_steps: int
    train_seconds: float            # meta-training wall time, validation excluded
    eval_seconds: float
    curve: list[dict] = field(default_factory=list)  # step, train_seconds, val_mean, val_ci95, train_loss


def metric_name(spec) -> str:
    return "mse" if spec.is_regression else "accuracy"


def evaluate(adapter, sampler: EpisodeSampler, episodes: int) -> np.ndarray:
    """Per-episode metric over episodes ``0..episodes-1`` of the sampler's stream."""
    values = []
    for start in range(0, episodes, EVAL_CHUNK):
        batch = adapter.to_device(sampler.batch(start, min(EVAL_CHUNK, episodes - start)))
        values.append(np.asarray(adapter.evaluate(batch), dtype=np.float64))
    return np.concatenate(values)


def train_and_evaluate(adapter, spec, algorithm: str, *, data_dir=None, cache_dir=None,
                       progress=None) -> AccuracyResult:
    """``spec`` has its profile applied. ``progress(step, total, info)`` is called now and then."""
    budget = spec.budget
    kw = {"data_dir": data_dir, "cache_dir": cache_dir}
    train = sampler_for(spec, "train", algorithm, **kw)
    val = sampler_for(spec, "val", **kw)
    test = sampler_for(spec, "test", **kw)
    batch_size = spec.meta_batch_size(algorithm)
    curve: list[dict] = []
    train_seconds = 0.0
    recent_losses: list[float] = []

    def validate(step: int) -> None:
        values = evaluate(adapter, val, budget.val_episodes)
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
        train_seconds += time.perf_counter() - t0
        recent_losses.append(float(loss))  # every framework's scalar supports __float__
        if budget.val_every and budget.val_episodes and (step % budget.val_every == 0
                                                         or step == budget.meta_train_steps):
            validate(step)
        if progress is not None:
            progress(step, budget.meta_train_steps, curve[-1] if curve else None)
    t0 = time.perf_counter()
    values = evaluate(adapter, test, budget.eval_episodes)
    eval_seconds = time.perf_counter() - t0
    mean, ci = mean_ci95(values)
    return AccuracyResult(metric_name(spec), mean, ci, len(values), budget.meta_train_steps,
                          train_seconds, eval_seconds, curve)

