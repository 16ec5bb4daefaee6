"""The comparison tables a reader came for: which framework is faster at which step, by
how much, whether the difference is real, what compilation costs, and whether accuracy
agrees. pandas only; no framework is imported.

The tidy frames (one row per spec x algorithm x phase x adapter) carry the numbers; the
``*_pivot`` functions turn them into strings, rows ``spec / algorithm / phase``, one column
per framework (variants under their adapter's name). ``headline_markdown`` renders the
headline tables of a run folder: the README embeds its output and a test regenerates it,
so it is deterministic (fixed bootstrap seed, no timestamps, no absolute paths).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from bench.core import frameworks, stats
from bench.core.adapter import compilation_mode, compilation_name
from bench.core.algorithms import all_algorithms

SAMPLING = "sample_episodes"  # host-side numpy: shown in detail tables, never ranked
PHASE_ORDER = ["outer_step", "inner_step", "adapt", SAMPLING]


def compiled(recorded) -> bool:
    """Whether a recorded ``compilation`` is a mode that compiles (``bench.core.adapter.COMPILATION``);
    a word outside the vocabulary is not taken for one."""
    mode = compilation_mode(recorded)
    return mode is not None and mode.compiled


def compiles_nothing(recorded) -> bool:
    """Whether a recorded ``compilation`` is a mode that compiles nothing (eager, lazy)."""
    mode = compilation_mode(recorded)
    return mode is not None and not mode.compiled


FAILED_PARITY, UNCHECKED_PARITY = "†", "‡"
NOISY = "§"            # the row's timing processes disagree by more than LARGE_SPREAD
LARGE_SPREAD = 0.10    # processes' medians more than 10% apart (max / min - 1)


# -- formatting ---------------------------------------------------------------------------

def is_missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _decimals(x: float, digits: int = 3) -> int:
    """Decimals that show ``digits`` significant digits of ``x`` (never negative: 1234 s
    prints as 1234, not 1.23e+03)."""
    if x == 0 or not math.isfinite(x):
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(x))))


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit (µs, ms or s) in which ``seconds`` reads with 3 significant digits."""
    if abs(seconds) < 1e-3:
        return "µs", 1e6
    if abs(seconds) < 1:
        return "ms", 1e3
    return "s", 1.0


def format_seconds(seconds, ci: tuple[float, float] | None = None) -> str:
    """``0.000512`` -> ``512 µs``; with a CI, ``250 ms [248, 253]`` (bounds in the median's
    unit), and ``250 ms [too few to tell]`` where the CI is missing (one process, or too
    few rounds: ``bench.core.stats.too_few``)."""
    if is_missing(seconds):
        return "-"
    unit, scale = time_unit(seconds)
    d = _decimals(seconds * scale)
    text = f"{seconds * scale:.{d}f} {unit}"
    if ci is not None:
        if any(is_missing(c) for c in ci):
            return f"{text} [{stats.TOO_FEW}]"
        lo, hi = (c * scale for c in ci)
        text += f" [{lo:.{d}f}, {hi:.{d}f}]"
    return text


def format_ratio(ratio, lo=None, hi=None, bold: bool = True) -> str:
    """``1.45x [1.41, 1.49]``, in bold when the CI excludes 1 (a real difference: the
    two-level CI, so across processes); ``1.45x [too few to tell]`` without a CI."""
    if is_missing(ratio):
        return "-"
    d = _decimals(ratio)
    text = f"{ratio:.{d}f}x"
    if is_missing(lo) or is_missing(hi):
        return f"{text} [{stats.TOO_FEW}]"
    if bold and (lo > 1 or hi < 1):
        text = f"**{text}**"
    return text + f" [{lo:.{d}f}, {hi:.{d}f}]"


def noisy(spread) -> bool:
    """Whether a row's timing processes disagree enough to flag it (``NOISY``)."""
    return not is_missing(spread) and spread > LARGE_SPREAD


def format_metric(mean, half_width, metric: str) -> str:
    """Accuracy in percent with two decimals (as the papers print it); MSE with 3
    significant digits."""
    if is_missing(mean):
        return "-"
    if metric == "accuracy":
        ci = "" if is_missing(half_width) else f" ± {half_width * 100:.2f}"
        return f"{mean * 100:.2f}{ci} %"
    d = _decimals(mean)
    # "MSE" on every value: accuracy (higher is better) and MSE (lower) share the table
    return f"MSE {mean:.{d}f}" + ("" if is_missing(half_width) else f" ± {half_width:.{d}f}")


# -- identities and order -----------------------------------------------------------------

def family(algorithm: str) -> str:
    """The algorithm whose adapters serve ``algorithm`` (FOMAML: ``-maml`` adapters)."""
    known = all_algorithms()
    return known[algorithm].family if algorithm in known else algorithm


def _algorithm_rank(algorithm: str) -> int:
    """Tables list algorithms in the registry's order (built-ins first), unknown ones last."""
    order = list(all_algorithms())
    return order.index(algorithm) if algorithm in order else len(order)


def column_label(framework: str, adapter: str, algorithm: str) -> str:
    """A framework's default adapter (``jax-maml``, ``jax-protonet``) is shown as the
    framework; a variant (``tensorflow-maml-xla``) keeps its own name."""
    return framework if adapter == f"{framework}-{family(algorithm)}" else adapter


def _label_key(label: str, baseline: str) -> tuple:
    fw = label.split("-")[0]
    rank = frameworks.get(fw).order  # built-ins in their records' order, plugins after them
    return (label != baseline, rank, fw, label != fw, label)


def natural_key(text: str) -> tuple:
    """``text`` with its numbers compared as numbers: a sweep's specs sort
    ``meta_batch_size-4, -16, -32``, not as text (16, 32, 4)."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return tuple((0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(parts))


def row_key(spec: str, algorithm: str, phase: str | None = None) -> tuple:
    a = _algorithm_rank(algorithm)
    p = PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER)
    return (natural_key(spec), a, algorithm, p, phase or "")


def row_label(spec: str, algorithm: str, phase: str | None = None) -> str:
    return f"{spec} / {algorithm}" + (f" / `{phase}`" if phase else "")


# -- the comparison: one row per spec x algorithm x phase x adapter --------------------------

def break_even_steps(first_compiled: float, median_compiled: float, first_eager: float,
                     median_eager: float) -> float:
    """Steps (the first included) after which the compiled adapter's total time is no more
    than the eager one's: the smallest ``n >= 1`` with
    ``first_c + (n - 1) * median_c <= first_e + (n - 1) * median_e``. ``inf`` when the
    compiled adapter never catches up (slower per step and slower to start)."""
    extra = first_compiled - first_eager
    if extra <= 0:
        return 1.0
    saved_per_step = median_eager - median_compiled
    if saved_per_step <= 0:
        return math.inf
    return float(1 + math.ceil(extra / saved_per_step))


def _baseline_adapter(group: pd.DataFrame, baseline: str) -> str | None:
    """``baseline`` names an adapter, or a framework (its default adapter, else the first)."""
    names = set(group["adapter"])
    if baseline in names:
        return baseline
    of_framework = group[group["framework"] == baseline]
    if of_framework.empty:
        return None
    default = of_framework[of_framework["label"] == baseline]
    return (default if not default.empty else of_framework).sort_values("adapter")["adapter"].iloc[0]


COMPARISON_COLUMNS = ["spec", "algorithm", "phase", "framework", "adapter", "label", "compilation", "rounds",
                      "processes", "process_spread", "median", "median_ci_low", "median_ci_high",
                      "first_step_seconds", "first_step_min", "first_step_max", "baseline", "speedup",
                      "speedup_ci_low", "speedup_ci_high", "fastest_eager", "break_even_steps"]


def rounds_by_process(timings: pd.DataFrame, keys) -> dict:
    """``{key: [rounds of process 0, rounds of process 1, ...]}`` grouped by ``keys`` (an
    older timings table without a process column is one process)."""
    t = timings if "process" in timings else timings.assign(process=0)
    out: dict = {}
    for key, g in t.groupby([*keys, "process"], sort=True):
        out.setdefault(key[:-1], []).append(g["seconds"].to_numpy())
    return out


def comparison(steps: pd.DataFrame, timings: pd.DataFrame, baseline: str = "torch") -> pd.DataFrame:
    """Per spec x algorithm x phase x adapter: the median step time and its two-level CI
    (from ``steps``), the speedup ``median(baseline) / median(adapter)`` with a two-level
    bootstrap CI that resamples both adapters' processes and their rounds (from
    ``timings``; none with fewer than 2 processes), the first-step (compile) time,
    and the break-even step count against the fastest eager adapter of the same phase.
    ``sample_episodes`` keeps its median and CI but gets neither speedup nor break-even.

    ``steps`` rows come from cells whose timing phase succeeded (``bench.report.results.collect``
    drops the others). Timing runs at training seed 0 only; should a seed > 0 be timed too,
    the lowest seed is used: rounds from different processes are not pooled."""
    if steps.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    s = steps.assign(seed=steps["seed"] if "seed" in steps else 0)
    s = s.sort_values("seed", kind="stable").drop_duplicates(["spec", "algorithm", "phase", "adapter"])
    s["label"] = [column_label(f, a, al) for f, a, al in zip(s["framework"], s["adapter"], s["algorithm"])]
    t = timings.assign(seed=timings["seed"] if "seed" in timings else 0)
    rounds = rounds_by_process(t, ["spec", "algorithm", "phase", "adapter", "seed"])
    out = []
    for (spec, algorithm, phase), g in s.groupby(["spec", "algorithm", "phase"], sort=False):
        key = (spec, algorithm, phase)
        out += _compare_phase(g, baseline, lambda r, key=key: rounds.get((*key, r.adapter, r.seed), []))
    cmp = pd.DataFrame(out, columns=COMPARISON_COLUMNS)
    order = sorted(range(len(cmp)), key=lambda i: (*row_key(cmp.spec[i], cmp.algorithm[i], cmp.phase[i]),
                                                   _label_key(cmp.label[i], baseline)))
    return cmp.iloc[order].reset_index(drop=True)


def _compare_phase(g: pd.DataFrame, baseline: str, rounds_of) -> list[dict]:
    """The comparison rows of one spec x algorithm x phase (``g``: its steps rows)."""
    base = _baseline_adapter(g, baseline)
    base_row = next(g[g["adapter"] == base].itertuples()) if base else None
    eager = g[[compiles_nothing(c) for c in g["compilation"]]].sort_values(["median", "adapter"])
    fastest_eager = next(eager.itertuples()) if not eager.empty else None
    ranked = g["phase"].iloc[0] != SAMPLING  # host-side numpy: shown, never ranked
    rows = []
    for r in g.itertuples():
        row = {c: getattr(r, c, None) for c in COMPARISON_COLUMNS}
        if is_missing(row["processes"]):  # a steps table from before timing was repeated
            row["processes"] = 1
        row.update(baseline=base, speedup=math.nan, speedup_ci_low=math.nan, speedup_ci_high=math.nan,
                   fastest_eager=None, break_even_steps=math.nan)
        if ranked and base_row is not None:
            ratio, lo, hi = stats.two_level_ratio_ci(rounds_of(base_row), rounds_of(r))
            # without rounds (a steps table alone) the ratio of the recorded medians, with no CI
            row.update(speedup=base_row.median / r.median if is_missing(ratio) else ratio,
                       speedup_ci_low=lo, speedup_ci_high=hi)
        if (ranked and fastest_eager is not None and compiled(r.compilation)
                and not is_missing(r.first_step_seconds) and not is_missing(fastest_eager.first_step_seconds)):
            row.update(fastest_eager=fastest_eager.adapter, break_even_steps=break_even_steps(
                r.first_step_seconds, r.median, fastest_eager.first_step_seconds, fastest_eager.median))
        rows.append(row)
    return rows


# -- pivots (strings) ---------------------------------------------------------------------

def failed_cells(status: pd.DataFrame | None, phase: str) -> dict[tuple[str, str, str], str]:
    """``{(label, spec, algorithm): "failed" | "timeout" | "diverged"}`` for the cells whose
    ``phase`` (a status.json phase: timing, memory, accuracy) did not end ok, so a table can
    say why a cell is empty instead of a bare "-"."""
    if status is None or status.empty:
        return {}
    bad = status[(status["phase"] == phase) & (status["status"] != "ok")]
    return {(column_label(r.framework, r.adapter, r.algorithm), r.spec, r.algorithm): r.status
            for r in bad.itertuples()}


def _pivot(cmp: pd.DataFrame, cell, baseline: str, with_phase: bool = True, marks=None,
           drop_labels=(), failed=None) -> pd.DataFrame:
    """Rows spec / algorithm (/ phase) in the fixed order; one column per label. An empty
    place whose cell failed shows the status (``failed``, ``timeout``, ``diverged``)."""
    if cmp.empty:
        return pd.DataFrame()
    keys = ["spec", "algorithm", "phase"] if with_phase else ["spec", "algorithm"]
    failed = failed or {}
    labels = {lb for lb in cmp["label"] if lb not in drop_labels}
    labels |= {lb for lb, spec, algorithm in failed if lb not in drop_labels
               and ((cmp["spec"] == spec) & (cmp["algorithm"] == algorithm)).any()}
    labels = sorted(labels, key=lambda lb: _label_key(lb, baseline))
    headers = {lb: _header(cmp, lb) for lb in labels}
    rows = []
    for key, g in sorted(cmp.groupby(keys, sort=False), key=lambda kg: row_key(*kg[0])):
        row = {"spec / algorithm" + (" / phase" if with_phase else ""): row_label(*key)}
        by_label = {r.label: r for r in g.itertuples()}
        for lb in labels:
            r = by_label.get(lb)
            text = cell(r) if r is not None else failed.get((lb, key[0], key[1]), "-")
            mark = (marks or {}).get((r.adapter, key[0], key[1])) if r is not None else None
            row[headers[lb]] = f"{text} {mark}" if mark and text != "-" else text
        rows.append(row)
    return pd.DataFrame(rows)


def _header(cmp: pd.DataFrame, label: str) -> str:
    modes = sorted({compilation_name(c) for c in cmp.loc[cmp["label"] == label, "compilation"].dropna()}) \
        if "compilation" in cmp else []
    return f"{label} ({modes[0]})" if len(modes) == 1 else label


def step_time_pivot(cmp: pd.DataFrame, baseline: str = "torch", marks=None,
                    include_sampling: bool = False, failed=None) -> pd.DataFrame:
    """Median step time [95% two-level bootstrap CI of the median], ``§`` where the
    processes disagree by more than ``LARGE_SPREAD``."""
    c = cmp if include_sampling else cmp[cmp["phase"] != SAMPLING]

    def cell(r):
        text = format_seconds(r.median, (r.median_ci_low, r.median_ci_high))
        return f"{text} {NOISY}" if noisy(getattr(r, "process_spread", None)) else text
    return _pivot(c, cell, baseline, marks=marks, failed=failed)


def speedup_pivot(cmp: pd.DataFrame, baseline: str = "torch", marks=None, failed=None) -> pd.DataFrame:
    """Speedup against the baseline [95% two-level CI]; sampling is never ranked. An adapter
    marked for parity (failed, or not checked) is never bold: it is not "faster" at the same
    maths."""
    c = cmp[(cmp["phase"] != SAMPLING) & cmp["baseline"].notna()]
    base_labels = set(c.loc[c["adapter"] == c["baseline"], "label"])
    marked = marks or {}

    def cell(r):
        return format_ratio(r.speedup, r.speedup_ci_low, r.speedup_ci_high,
                            bold=(r.adapter, r.spec, r.algorithm) not in marked)
    return _pivot(c, cell, baseline, marks=marks, drop_labels=base_labels, failed=failed)


def _first_step_cell(r) -> str:
    text = format_seconds(r.first_step_seconds)
    lo, hi = getattr(r, "first_step_min", None), getattr(r, "first_step_max", None)
    if (getattr(r, "processes", 1) or 1) > 1 and not (is_missing(lo) or is_missing(hi)):
        unit, scale = time_unit(r.first_step_seconds)
        d = _decimals(r.first_step_seconds * scale)
        if f"{lo * scale:.{d}f}" != f"{hi * scale:.{d}f}":  # the processes' range, where they differ
            text += f" ({lo * scale:.{d}f}-{hi * scale:.{d}f})"
    if is_missing(r.break_even_steps):
        return text
    if math.isinf(r.break_even_steps):
        return f"{text}, never repaid"
    return f"{text}, repaid after {int(r.break_even_steps)} steps"


def first_step_pivot(cmp: pd.DataFrame, baseline: str = "torch", failed=None, marks=None) -> pd.DataFrame:
    """First-step (compile) time, and for compiled adapters the break-even step count
    against the fastest eager adapter of the same phase."""
    return _pivot(cmp[cmp["phase"] != SAMPLING], _first_step_cell, baseline, failed=failed, marks=marks)


# -- accuracy -----------------------------------------------------------------------------

def accuracy_summary(accuracy: pd.DataFrame) -> pd.DataFrame:
    """One row per spec x algorithm x adapter: with one seed, the mean and 95% CI over test
    episodes; with several, the mean of the seeds' means and a 95% t interval across seeds
    (run-to-run variation, which one training run cannot show)."""
    columns = ["spec", "algorithm", "framework", "adapter", "label", "metric", "seeds", "mean", "ci95",
               "across_seeds", "target", "target_direction", "reached", "time_to_target_seconds",
               "steps_to_target", "time_to_target_min", "time_to_target_max"]
    if accuracy.empty:
        return pd.DataFrame(columns=columns)
    a = accuracy.copy()
    for col, default in (("seed", 0), ("target", math.nan), ("target_direction", None),
                         ("time_to_target_seconds", math.nan), ("steps_to_target", math.nan)):
        if col not in a:
            a[col] = default
    rows = []
    for (spec, algorithm, adapter), g in a.groupby(["spec", "algorithm", "adapter"], sort=False):
        g = g.sort_values("seed")
        first = g.iloc[0]
        if len(g) > 1:
            mean, half = stats.t_interval95(g["mean"])
        else:
            mean, half = float(first["mean"]), float(first["ci95"])
        reached = g["time_to_target_seconds"].notna()
        rows.append({
            "spec": spec, "algorithm": algorithm, "framework": first["framework"], "adapter": adapter,
            "label": column_label(first["framework"], adapter, algorithm), "metric": first["metric"],
            "seeds": len(g), "mean": mean, "ci95": half, "across_seeds": len(g) > 1,
            "target": first["target"], "target_direction": first["target_direction"],
            "reached": int(reached.sum()),
            # over the seeds that reached it: how long "good enough" takes when it comes
            "time_to_target_seconds": float(g.loc[reached, "time_to_target_seconds"].mean()) if reached.any()
            else math.nan,
            "steps_to_target": float(g.loc[reached, "steps_to_target"].mean()) if reached.any() else math.nan,
            # the spread across those seeds: one seed's time to target is one draw of it
            "time_to_target_min": float(g.loc[reached, "time_to_target_seconds"].min()) if reached.any()
            else math.nan,
            "time_to_target_max": float(g.loc[reached, "time_to_target_seconds"].max()) if reached.any()
            else math.nan,
        })
    rows.sort(key=lambda r: (*row_key(r["spec"], r["algorithm"]), _label_key(r["label"], "torch")))
    return pd.DataFrame(rows, columns=columns)


def accuracy_pivot(summary: pd.DataFrame, baseline: str = "torch", marks=None, failed=None) -> pd.DataFrame:
    """Rows spec / algorithm; per framework ``mean ± 95% CI`` (``(n seeds)`` when across seeds)."""
    def cell(r):
        text = format_metric(r.mean, r.ci95, r.metric)
        return f"{text} ({r.seeds} seeds)" if r.across_seeds else text
    return _pivot(summary, cell, baseline, with_phase=False, marks=marks, failed=failed)


def time_to_target_pivot(summary: pd.DataFrame, baseline: str = "torch") -> pd.DataFrame:
    """Rows spec / algorithm (target); per framework the meta-training wall-clock until the
    validation metric first reached the target (compile time excluded), steps in brackets."""
    s = summary[summary["target"].notna()].copy() if "target" in summary else summary.iloc[0:0]
    if s.empty:
        return pd.DataFrame()

    def cell(r):
        if not r.reached:
            return "not reached" if r.seeds == 1 else f"not reached (0/{r.seeds})"
        text = f"{format_seconds(r.time_to_target_seconds)} ({int(round(r.steps_to_target))} steps)"
        if r.seeds == 1:
            return text
        spread = (f", range {format_seconds(r.time_to_target_min)} to {format_seconds(r.time_to_target_max)}"
                  if r.reached > 1 else "")
        return f"{text}, {r.reached}/{r.seeds} seeds{spread}"
    t = _pivot(s, cell, baseline, with_phase=False)
    targets = {row_label(r.spec, r.algorithm): _target_text(r) for r in s.itertuples()}
    t.insert(1, "target", [targets[k] for k in t.iloc[:, 0]])
    return t


def _target_text(r) -> str:
    sign = ">=" if r.target_direction != "min" else "<="
    value = f"{r.target * 100:g} %" if r.metric == "accuracy" else f"{r.target:g}"
    return f"{r.metric} {sign} {value}"


# -- paired comparison on the same test episodes --------------------------------------------

def paired_comparisons(episodes: pd.DataFrame, baseline: str = "torch") -> pd.DataFrame:
    """Per spec x algorithm, every adapter against the baseline on the same test episodes:
    per-episode metric averaged over the seeds each has, then a paired t-test of the
    differences (adapter - baseline). p-values are Holm-adjusted over the whole table."""
    columns = ["spec", "algorithm", "adapter", "label", "baseline", "seeds", "baseline_seeds", "episodes",
               "mean_diff", "ci_low", "ci_high", "t", "p", "p_holm", "significant"]
    if episodes.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (spec, algorithm), g in episodes.groupby(["spec", "algorithm"], sort=False):
        g = g.assign(label=[column_label(f, a, algorithm) for f, a in zip(g["framework"], g["adapter"])])
        base = _baseline_adapter(g.drop_duplicates("adapter"), baseline)
        if base is None:
            continue
        per_episode = g.groupby(["adapter", "episode"])["value"].mean().unstack("episode")
        seeds = g.groupby("adapter")["seed"].nunique()
        for adapter in per_episode.index:
            if adapter == base:
                continue
            pair = per_episode.loc[[base, adapter]].dropna(axis=1)  # episodes both evaluated
            test = stats.paired_test(pair.loc[base].to_numpy(), pair.loc[adapter].to_numpy())
            first = g[g["adapter"] == adapter].iloc[0]
            rows.append({"spec": spec, "algorithm": algorithm, "adapter": adapter, "label": first["label"],
                         "baseline": base, "seeds": int(seeds[adapter]), "baseline_seeds": int(seeds[base]),
                         "episodes": test.n, "mean_diff": test.mean_diff, "ci_low": test.ci_low,
                         "ci_high": test.ci_high, "t": test.t, "p": test.p})
    out = pd.DataFrame(rows, columns=columns)
    if not out.empty:
        valid = out["p"].notna()
        out.loc[valid, "p_holm"] = stats.holm(out.loc[valid, "p"])
        out["significant"] = out["p_holm"].fillna(1.0) < 0.05
    return out.sort_values(["spec", "algorithm", "adapter"], key=lambda c: c.map(
        _algorithm_rank) if c.name == "algorithm" else c
    ).reset_index(drop=True)


def paired_table(paired: pd.DataFrame, metric_of: dict) -> pd.DataFrame:
    """The paired comparisons as strings, saying plainly whether each is significant."""
    rows = []
    for r in paired.itertuples():
        metric = metric_of.get((r.spec, r.algorithm), "accuracy")
        scale, unit = (100, " points") if metric == "accuracy" else (1, "")
        width = (r.ci_high - r.ci_low) * scale
        # two significant digits of the CI's width: enough to read the difference against it
        d = 2 if metric == "accuracy" else min(6, _decimals(width, 2)) if width > 0 else 3
        rows.append({
            "spec / algorithm": row_label(r.spec, r.algorithm), "vs": f"{r.baseline} ({r.baseline_seeds} seeds)"
            if r.baseline_seeds > 1 else r.baseline, "adapter": r.adapter,
            "seeds": r.seeds, "episodes": r.episodes,
            "mean difference [95% CI]": f"{r.mean_diff * scale:+.{d}f}{unit} "
                                        f"[{r.ci_low * scale:+.{d}f}, {r.ci_high * scale:+.{d}f}]",
            "p (Holm)": _format_p(r.p_holm),
            "verdict": "**significant**" if r.significant else "not significant",
        })
    return pd.DataFrame(rows)


def _format_p(p) -> str:
    if is_missing(p):
        return "-"
    return "< 1e-4" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def paired_sentence(paired: pd.DataFrame, metric_of: dict | None = None, baseline: str | None = None) -> str:
    """One plain sentence: which accuracy differences are significant, and by how much
    (points of accuracy, or the metric's own units)."""
    if paired.empty:
        return ""
    baseline = baseline or paired["baseline"].iloc[0]
    sig = paired[paired["significant"]]
    if sig.empty:
        return (f"No test-metric difference from {baseline} is significant "
                "(paired t-test on the same test episodes, Holm-adjusted p < 0.05).")
    names = "; ".join(f"{r.adapter} on {r.spec} / {r.algorithm} ({_diff_text(r.mean_diff, metric_of, r)})"
                      for r in sig.itertuples())
    return (f"Significant differences from {baseline} (paired t-test on the same test "
            f"episodes, Holm-adjusted p < 0.05): {names}; every other difference is not significant.")


def _diff_text(diff: float, metric_of: dict | None, r) -> str:
    metric = (metric_of or {}).get((r.spec, r.algorithm), "accuracy")
    if metric == "accuracy":
        return f"{diff * 100:+.2f} points"
    return f"{diff:+.{_decimals(abs(diff) or 1.0)}f} {metric.upper()}"


# -- parity marks -------------------------------------------------------------------------

def parity_marks(parity: pd.DataFrame | None, cells: pd.DataFrame, reference: str = "torch") -> dict:
    """``{(adapter, spec, algorithm): mark}``: † failed parity, ‡ not checked although the
    run has a parity table. Runs without parity mark nothing (their summary says so once);
    the reference framework is what the others are checked against."""
    if parity is None or cells.empty:
        return {}
    ok: dict = {}
    for r in parity.itertuples():  # a contract row's failure stands over its parity row's pass
        key = (r.adapter, r.spec, r.algorithm)
        ok[key] = ok.get(key, True) and (bool(r.ok) if not is_missing(getattr(r, "ok", None)) else False)
    from bench.check.parity import reference_adapter

    marks = {}
    for r in cells.drop_duplicates(["adapter", "spec", "algorithm"]).itertuples():
        key = (r.adapter, r.spec, r.algorithm)
        if key in ok:  # the reference too, where it failed the contract check
            marks[key] = None if ok[key] else FAILED_PARITY
        elif not (r.framework == reference and _is_reference(r.adapter, r.algorithm, reference_adapter)):
            marks[key] = UNCHECKED_PARITY
    return {k: v for k, v in marks.items() if v}


def _is_reference(adapter: str, algorithm: str, reference_adapter) -> bool:
    """Whether ``adapter`` is what parity compares the others with (a torch variant is
    compared too). A registry that cannot say (a plugin gone) counts every torch adapter."""
    try:
        return adapter == reference_adapter(algorithm)
    except Exception:
        return True


def marks_legend(marks: dict) -> str:
    parts = []
    if FAILED_PARITY in marks.values():
        parts.append(f"{FAILED_PARITY} failed parity or the contract check (its timings compare different maths, "
                     "or not the whole step)")
    if UNCHECKED_PARITY in marks.values():
        parts.append(f"{UNCHECKED_PARITY} not checked by parity")
    return "; ".join(parts)


# -- the headline -------------------------------------------------------------------------

HEADLINE_SECTIONS = ("timing", "accuracy")


def _processes_text(cmp: pd.DataFrame) -> str:
    """How many timing processes the step rows rest on, for the headline's first sentence."""
    counts = sorted({int(p) for p in cmp["processes"].dropna()}) if "processes" in cmp else [1]
    if counts == [1]:
        return ("one timing process per cell: the CIs would show round-to-round noise only, so none is "
                f"given ({stats.TOO_FEW}: rerun with --repeats 3 or more)")
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (f"{n} timing processes per cell, interleaved; 95% CIs from a two-level bootstrap (processes, then "
            "their rounds), so they cover process-to-process variation")


def headline_sections(tables: dict, baseline: str = "torch", parity: pd.DataFrame | None = None,
                      sections=HEADLINE_SECTIONS) -> str:
    """The headline tables from a run's collected tables (``bench.report.results.collect``);
    ``sections``: timing (step time, speedup, first step), accuracy (accuracy, paired
    verdict, time to target), or both."""
    cmp = comparison(tables["steps"], tables["timings"], baseline)
    marks = parity_marks(parity, cmp)
    acc = accuracy_summary(tables["accuracy"]) if "accuracy" in sections else accuracy_summary(pd.DataFrame())
    status = tables.get("status")
    timing_failed, accuracy_failed = failed_cells(status, "timing"), failed_cells(status, "accuracy")
    parts = []
    noisy_rows = False
    if not cmp.empty and "timing" in sections:
        ranked = cmp[cmp["phase"] != SAMPLING]
        noisy_rows = any(noisy(v) for v in ranked["process_spread"])
        parts += [_para(f"**Step time**: median [95% CI] of rounds of one step, after the first step and the "
                        f"warm-up rounds; {_processes_text(ranked)}.",
                        step_time_pivot(cmp, baseline, marks, failed=timing_failed)),
                  _para(f"**Speedup vs {baseline}**: ratio of median step times [95% CI, both adapters' "
                        "processes and rounds resampled]; above 1 is faster; in bold where the CI excludes 1.",
                        speedup_pivot(cmp, baseline, marks, failed=timing_failed)),
                  _para("**First step** (compilation included; with several processes, their median and "
                        "range) and, for compiled adapters, the step count at which the extra first-step "
                        "time is repaid against the fastest eager adapter of the same phase.",
                        first_step_pivot(cmp, baseline, failed=timing_failed, marks=marks))]
    if not acc.empty:
        paired = paired_comparisons(tables.get("episodes", pd.DataFrame()), baseline)
        text = _para("**Accuracy** on the test episodes: mean ± 95% CI over the episodes (with several "
                     "training seeds: the mean over seeds ± a 95% t interval across them).",
                     accuracy_pivot(acc, baseline, marks, failed=accuracy_failed))
        metric_of = {(r.spec, r.algorithm): r.metric for r in acc.itertuples()}
        sentence = paired_sentence(paired, metric_of, baseline) or (
            "No per-episode metrics were saved in this run: the frameworks can be compared by their CIs only.")
        parts.append(f"{text}\n{_wrap(sentence)}\n")
        ttt = time_to_target_pivot(acc, baseline)
        if not ttt.empty:
            parts.append(_para("**Time to target**: meta-training wall-clock until the validation metric "
                               "first reached the target (compilation excluded), steps in brackets; with several "
                               "seeds, the mean over the seeds that reached it and their range.", ttt))
    legend = marks_legend(marks)
    if noisy_rows:
        legend = "; ".join(filter(None, [legend, noisy_legend()]))
    if legend:
        parts.append(_wrap(legend + ".") + "\n")
    return "\n".join(parts) if parts else "_no results_\n"


def noisy_legend() -> str:
    return (f"{NOISY} its timing processes' medians are more than {LARGE_SPREAD:.0%} apart (a noisy row: "
            "its CI is wide, or, with few processes, may still be too narrow)")


def headline_markdown(run_dir: Path, baseline: str = "torch", sections=HEADLINE_SECTIONS) -> str:
    """Deterministic Markdown of the headline tables of ``run_dir``: step time, speedup
    against ``baseline`` (a framework or an adapter name), first step and break-even,
    accuracy with the paired verdict, time to target. No timestamps, no absolute paths:
    the README embeds the output and a test regenerates it."""
    from bench.report.results import collect, read_parity

    run_dir = Path(run_dir)
    return headline_sections(collect(run_dir), baseline, read_parity(run_dir), sections)


def _para(text: str, table: pd.DataFrame) -> str:
    return f"{_wrap(text)}\n\n{_md(table)}"


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False) + "\n" if not df.empty else "_none_\n"


def _wrap(text: str, width: int = 96) -> str:
    """Prose in generated blocks wraps like the hand-written Markdown around it."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
