"""Statistics over timing rounds and evaluation episodes (numpy only)."""

from __future__ import annotations

import math

import numpy as np


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval (1.96 standard
    errors, as the MAML and ProtoNet papers report over 600 test episodes)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


def bootstrap_median_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(v, size=(n_boot, v.size), replace=True), axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarize_rounds(seconds) -> dict[str, float]:
    v = np.asarray(seconds, dtype=np.float64)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    lo, hi = bootstrap_median_ci(v)
    return {"rounds": int(v.size), "median": float(med), "iqr": float(q3 - q1), "q1": float(q1),
            "q3": float(q3), "min": float(v.min()), "mean": float(v.mean()),
            "median_ci_low": lo, "median_ci_high": hi}
