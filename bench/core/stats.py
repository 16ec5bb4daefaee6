"""Statistics that pytest-benchmark does not compute: bootstrap CIs of a median and of a
ratio of medians (over one process's rounds, and over processes and their rounds: the
two-level bootstrap), intervals across seeds, and the paired test on test episodes.

Everything pytest-benchmark already reports for a set of rounds (median, IQR, quartiles,
min, mean, rounds) is read from its ``stats`` record, never recomputed here: two
quartile conventions once gave the same rounds two different IQRs (issue 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
SEED = 0  # fixed: a report rebuilt from the same rounds prints the same intervals


def mean_ci95(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% normal confidence interval (1.96 standard
    errors, as the MAML and ProtoNet papers report over 600 test episodes)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


def _boot_medians(v: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    return np.median(rng.choice(v, size=(n_boot, v.size), replace=True), axis=1)


def bootstrap_median_ci(values, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return math.nan, math.nan
    medians = _boot_medians(v, np.random.default_rng(seed), n_boot)
    lo, hi = np.quantile(medians, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def ratio_of_medians_ci(numerator, denominator, n_boot: int = N_BOOT, seed: int = SEED,
                        level: float = 0.95) -> tuple[float, float, float]:
    """``median(numerator) / median(denominator)`` and its percentile-bootstrap CI.

    Both sets of rounds are resampled, independently (they come from different processes),
    so the interval carries the noise of both. With ``numerator`` the baseline's rounds
    this is a speedup: above 1 means ``denominator`` is faster."""
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan
    ratio = float(np.median(a) / np.median(b))
    if a.size < 2 or b.size < 2:
        return ratio, math.nan, math.nan
    rng = np.random.default_rng(seed)
    ratios = _boot_medians(a, rng, n_boot) / _boot_medians(b, rng, n_boot)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return ratio, float(lo), float(hi)


# -- two levels: processes, then rounds within each (Kalibera & Jones 2013) -------------------
#
# On a shared VM a new process moves a step by 10-60% (memory layout, thread placement, the
# compiler's choices, what ran before), more than most differences between frameworks, and
# rounds inside one process never see it. So a step is timed in several processes, and its
# CIs resample both levels: processes with replacement, then each drawn process's rounds
# with replacement. Every process weighs the same, whatever its round count.

MIN_PROCESSES = 2   # below this (or MIN_ROUNDS rounds in a process) no CI: "too few to tell"
MIN_ROUNDS = 10
TOO_FEW = "too few to tell"


def _groups(groups) -> list[np.ndarray]:
    return [np.asarray(g, dtype=np.float64) for g in groups if len(g)]


def too_few(groups) -> bool:
    """Whether ``groups`` (one array of round times per process) are too few for a CI that
    covers run-to-run variation: fewer than ``MIN_PROCESSES`` processes, or a process with
    fewer than ``MIN_ROUNDS`` rounds."""
    g = _groups(groups)
    return len(g) < MIN_PROCESSES or min(v.size for v in g) < MIN_ROUNDS


def pooled_median(groups) -> float:
    """The median of every round of every process (processes time the same number of rounds)."""
    g = _groups(groups)
    return float(np.median(np.concatenate(g))) if g else math.nan


def process_spread(groups) -> float:
    """How far apart the processes' own medians are: ``max / min - 1`` (0.12: 12%); NaN for
    one process."""
    g = _groups(groups)
    if len(g) < 2:
        return math.nan
    medians = [float(np.median(v)) for v in g]
    return max(medians) / min(medians) - 1


def noise_components(groups) -> tuple[float, float]:
    """Where a step's noise lives, relative to its pooled median: ``(between, within)``, the
    standard deviation across processes of their true medians (their medians' spread less
    what each one's own rounds explain) and the standard error of one process's median
    from its rounds (1.2533 sd / sqrt(n), the normal approximation, with sd from the IQR
    so a stray round does not inflate it). Kalibera & Jones's allocation rule follows: when
    ``between`` dominates, more processes narrow the CI and more rounds do not. NaN with
    fewer than 2 processes."""
    g = _groups(groups)
    if len(g) < 2:
        return math.nan, math.nan
    centre = pooled_median(g)
    medians = np.array([np.median(v) for v in g])
    within = float(np.mean([1.2533 * (np.subtract(*np.quantile(v, [0.75, 0.25])) / 1.349) / math.sqrt(v.size)
                            for v in g])) / centre
    observed = float(np.var(medians, ddof=1)) / centre ** 2
    return math.sqrt(max(observed - within ** 2, 0.0)), within


def _two_level_medians(groups: list[np.ndarray], rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """``n_boot`` bootstrap medians: draw as many processes as there are, with replacement,
    then as many rounds as the longest process has, with replacement from each drawn one."""
    return _medians_of_picks(groups, rng.integers(len(groups), size=(n_boot, len(groups))), rng)


def _medians_of_picks(groups: list[np.ndarray], pick: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap median per row of ``pick`` (the drawn processes' indices): as many
    rounds as the longest process has, drawn with replacement from each drawn process."""
    p, n = len(groups), max(v.size for v in groups)
    padded = np.zeros((p, n))
    lengths = np.array([v.size for v in groups])
    for i, v in enumerate(groups):
        padded[i, :v.size] = v
    rows = (rng.random((*pick.shape, n)) * lengths[pick][:, :, None]).astype(np.int64)
    return np.median(padded[pick[:, :, None], rows].reshape(pick.shape[0], -1), axis=1)


def paired_two_level_ratio_ci(numerator, denominator, n_boot: int = N_BOOT, seed: int = SEED,
                              level: float = 0.95) -> tuple[float, float, float]:
    """For two implementations timed in the same processes, round by round in alternation
    (``metabench baselines``): ``pooled_median(numerator) / pooled_median(denominator)``
    and its two-level bootstrap CI, the processes drawn once for both sides (what a new
    process changes, the machine's state, both sides shared) and each side's rounds
    drawn within them. ``numerator[k]`` and ``denominator[k]`` are process k's rounds.
    NaN bounds when either side is ``too_few``."""
    a, b = _groups(numerator), _groups(denominator)
    if not a or len(a) != len(b):
        raise ValueError(f"paired processes: {len(a)} against {len(b)}")
    ratio = pooled_median(a) / pooled_median(b)
    if too_few(a) or too_few(b):
        return ratio, math.nan, math.nan
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(a), size=(n_boot, len(a)))
    ratios = _medians_of_picks(a, pick, rng) / _medians_of_picks(b, pick, rng)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return ratio, float(lo), float(hi)


def two_level_median_ci(groups, n_boot: int = N_BOOT, seed: int = SEED,
                        level: float = 0.95) -> tuple[float, float, float]:
    """The pooled median of ``groups`` (round times, one array per process) and its
    two-level percentile-bootstrap CI; NaN bounds when ``too_few``."""
    g = _groups(groups)
    median = pooled_median(g)
    if not g or too_few(g):
        return median, math.nan, math.nan
    medians = _two_level_medians(g, np.random.default_rng(seed), n_boot)
    lo, hi = np.quantile(medians, [(1 - level) / 2, 1 - (1 - level) / 2])
    return median, float(lo), float(hi)


def two_level_ratio_ci(numerator, denominator, n_boot: int = N_BOOT, seed: int = SEED,
                       level: float = 0.95) -> tuple[float, float, float]:
    """``pooled_median(numerator) / pooled_median(denominator)`` (each a list of per-process
    round arrays) and its two-level bootstrap CI, both sides resampled independently (they
    ran in different processes). NaN bounds when either side is ``too_few``."""
    a, b = _groups(numerator), _groups(denominator)
    if not a or not b:
        return math.nan, math.nan, math.nan
    ratio = pooled_median(a) / pooled_median(b)
    ratios = two_level_ratio_draws(a, b, np.random.default_rng(seed), n_boot)
    if ratios is None:
        return ratio, math.nan, math.nan
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return ratio, float(lo), float(hi)


def two_level_ratio_draws(numerator, denominator, rng: np.random.Generator,
                          n_boot: int = N_BOOT) -> np.ndarray | None:
    """``n_boot`` two-level bootstrap draws of ``pooled_median(numerator) /
    pooled_median(denominator)``; None when either side is ``too_few``."""
    a, b = _groups(numerator), _groups(denominator)
    if not a or not b or too_few(a) or too_few(b):
        return None
    return _two_level_medians(a, rng, n_boot) / _two_level_medians(b, rng, n_boot)


def welch_diff_ci(a, b) -> tuple[float, float, float]:
    """``mean(b) - mean(a)`` and its 95% Welch t interval (unequal variances): accuracy across
    training seeds of two runs. NaN bounds with fewer than 2 values on a side."""
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        return math.nan, math.nan, math.nan
    diff = float(y.mean() - x.mean())
    if x.size < 2 or y.size < 2:
        return diff, math.nan, math.nan
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        return diff, diff, diff
    df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    return diff, diff - half, diff + half


def t_interval95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval of the mean: for a handful of
    training seeds, where 1.96 standard errors would be far too narrow."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return (float(v[0]) if v.size else math.nan), math.nan
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``b - a`` over the same test episodes."""
    n: int                # episodes
    mean_diff: float      # mean of b - a (in the metric's units)
    ci_low: float         # 95% t interval of the mean difference
    ci_high: float
    t: float
    p: float              # two-sided

    @property
    def significant(self) -> bool:
        return self.p < 0.05


def paired_test(a, b) -> PairedTest:
    """Paired t-test of per-episode metrics ``b`` against ``a`` (same episodes, same order).

    Every framework is evaluated on the very same test episodes, so the episode-to-episode
    difficulty cancels in ``b - a``: far stronger than asking whether two CIs overlap."""
    from scipy import stats

    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = d.size
    if n < 2:
        return PairedTest(n, float(d.mean()) if n else math.nan, math.nan, math.nan, math.nan, math.nan)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # identical up to a constant: no noise to test against
        return PairedTest(n, mean, mean, mean, math.copysign(math.inf, mean) if mean else 0.0,
                          0.0 if mean else 1.0)
    se = sd / math.sqrt(n)
    t = mean / se
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return PairedTest(n, mean, mean - half, mean + half, t, float(2 * stats.t.sf(abs(t), n - 1)))


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): several framework pairs are
    tested at once, and "significant" must hold for the family, not for each test alone."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
