"""The run's figures, each returned as a matplotlib Figure (tests inspect them) and saved
by ``write_plots``.

- ``speedups.png``: speedup against the baseline per workload and phase, log scale, CI
  whiskers, one marker per framework. Sampling is left out (it stays in the tables).
- ``step_times.png``: distribution of the rounds, log axis, one row per workload, its
  phases left to right in a fixed order (no empty panel between them), each panel listing
  only its own adapters, the median drawn above the rounds.
- ``learning_curves.png``: one row per workload (its metric's direction in the y label,
  the target as a line, ``val_ci95`` as a band) and two views: against meta-training
  wall-clock (log axis) and against steps, so "slower per step" and "learns differently
  per step" can be told apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core import frameworks, stats
from bench.report import tables


def _horizontal() -> dict:
    import matplotlib

    # matplotlib 3.10 renamed boxplot's vert=False; 3.13 drops it
    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


_HORIZONTAL = _horizontal()
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*"]
STEP_PHASES = ["outer_step", "inner_step", "adapt"]  # columns of the step-time figure, in this order


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_125_ticks(vmin: float, vmax: float) -> list[float]:
    """Ticks at 1-2-5 steps inside [vmin, vmax]; a range too narrow to hold two of them
    (1100 to 1900 ms) gets two or three round values instead, never a label per 100."""
    from matplotlib.ticker import MaxNLocator

    vmin, vmax = sorted((vmin, vmax))
    if not (vmin > 0 and np.isfinite(vmax)):
        return []
    low, high = math.floor(math.log10(vmin)), math.ceil(math.log10(vmax))
    ticks = [m * 10.0 ** e for e in range(low, high + 1) for m in (1, 2, 5) if vmin <= m * 10.0 ** e <= vmax]
    if len(ticks) >= 2:
        return ticks
    return [v for v in MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax) if vmin <= v <= vmax]


def _log_axis(axis) -> None:
    """Log scale with plain labels at 1-2-5 steps (``_log_125_ticks``): matplotlib's default
    labels the minor ticks of a short range as overlapping ``2x10^-1 3x10^-1 ...``."""
    from matplotlib.ticker import FuncFormatter, Locator, NullFormatter

    class Log125(Locator):
        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            return _log_125_ticks(vmin, vmax)

    axis.set_major_locator(Log125())
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _short_specs(specs, spec_labels: dict[str, str] | None) -> tuple[dict[str, str], str]:
    """``({spec: its short name}, common)``: a sweep's specs by the fields they change
    (``sweeps.spec_labels``), less the base spec when every one shares it (``common``, for a
    title); other specs by their names."""
    names = {spec: (spec_labels or {}).get(spec, spec) for spec in specs}
    bases = {name.split(" ")[0] for name in names.values()}
    common = next(iter(bases)) if len(bases) == 1 and any(n != s for s, n in names.items()) else ""
    return {spec: name[len(common):].strip() or name for spec, name in names.items()}, common


# One colour per framework in every figure of every run, never picked from a run's own
# labels: its record's (bench.core.frameworks: torch vermillion, JAX blue, TensorFlow orange;
# a plugin framework one of the other Okabe-Ito hues, by its name's checksum); a framework's
# variants get shades of its hue and their own markers.
SHADES = (0.0, -0.35, 0.45, -0.6, 0.7)  # variant i of a framework: darker (< 0) or lighter (> 0)


def framework_colour(framework: str) -> str:
    return frameworks.get(framework).colour


def _shade(colour: str, amount: float) -> tuple:
    from matplotlib.colors import to_rgb

    rgb = np.array(to_rgb(colour))
    return tuple(rgb + (1 - rgb) * amount if amount > 0 else rgb * (1 + amount))


def _styles(labels, baseline: str) -> dict[str, tuple]:
    """(colour, marker) per column label: the framework's hue (``framework_colour``; the
    label's first word is its framework), its variants in shades; a marker of its own per
    label too, for print and colour-blind readers."""
    ordered = sorted(set(labels), key=lambda lb: tables._label_key(lb, baseline))
    seen: dict[str, int] = {}
    out = {}
    for n, lb in enumerate(ordered):
        fw = lb.split("-")[0]
        i = seen[fw] = seen.get(fw, -1) + 1
        out[lb] = (_shade(framework_colour(fw), SHADES[i % len(SHADES)]), MARKERS[n % len(MARKERS)])
    return out


def speedup_figure(cmp: pd.DataFrame, baseline: str = "torch", spec_labels: dict[str, str] | None = None):
    """Speedup vs ``baseline`` (from ``tables.comparison``) per workload and phase.
    ``spec_labels``: short names for a sweep's specs (``sweeps.spec_labels``), rows sorted
    by them with numbers as numbers."""
    plt = _plt()
    c = cmp[(cmp["phase"] != tables.SAMPLING) & cmp["speedup"].notna() & (cmp["adapter"] != cmp["baseline"])]
    short, common = _short_specs(set(c["spec"]), spec_labels)  # a sweep's base spec named once, in the title
    rows = sorted({(r.spec, r.algorithm, r.phase) for r in c.itertuples()},
                  key=lambda k: tables.row_key(short[k[0]], *k[1:]))
    ticks = [tables.row_label(short[k[0]], *k[1:]).replace("`", "") for k in rows]
    # the data's width stays about 5 inches however long the row labels are
    width = 5.0 + 0.075 * max((len(t) for t in ticks), default=30)
    fig, ax = plt.subplots(figsize=(width, 0.45 * max(len(rows), 2) + 1.4))
    styles = _styles(cmp["label"], baseline)
    labels = sorted(set(c["label"]), key=lambda lb: tables._label_key(lb, baseline))
    offsets = np.linspace(-0.25, 0.25, len(labels)) if len(labels) > 1 else [0.0]
    for offset, label in zip(offsets, labels):
        d = c[c["label"] == label]
        y = [rows.index((r.spec, r.algorithm, r.phase)) + offset for r in d.itertuples()]
        lo = (d["speedup"] - d["speedup_ci_low"]).fillna(0).clip(lower=0)
        hi = (d["speedup_ci_high"] - d["speedup"]).fillna(0).clip(lower=0)
        colour, marker = styles[label]
        ax.errorbar(d["speedup"], y, xerr=[lo, hi], fmt=marker, color=colour, label=label, capsize=3, ms=6)
    ax.axvline(1.0, color="grey", lw=1, ls="--")
    ax.set_xscale("log")
    _log_axis(ax.xaxis)
    ax.set_yticks(range(len(rows)), ticks)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first workload on top, as in the tables
    ax.set_xlabel(f"speedup vs {baseline} (ratio of median step times, log scale; > 1 is faster)")
    ax.set_title(f"{common + ': ' if common else ''}speedup vs {baseline}; whiskers: 95% CI where the run tells one",
                 fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    if labels:  # below the axes, off the data
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=min(len(labels), 4), fontsize=8,
                   frameon=False)
    return fig


def step_time_figure(timings: pd.DataFrame, baseline: str = "torch", spec_labels: dict[str, str] | None = None):
    """Rounds per adapter: one row per spec / algorithm, one column per phase (fixed order);
    a panel lists only the adapters timed in it; log axis. ``spec_labels``: a sweep's short
    spec names (``sweeps.spec_labels``)."""
    plt = _plt()
    t = timings[timings["phase"].isin(STEP_PHASES)].copy()
    t["label"] = [tables.column_label(f, a, al) for f, a, al in zip(t["framework"], t["adapter"], t["algorithm"])]
    short, common = _short_specs(set(t["spec"]), spec_labels)
    workloads = sorted({(r.spec, r.algorithm) for r in t.itertuples()},
                       key=lambda k: tables.row_key(short[k[0]], k[1]))
    # each row's own phases, left to right in the fixed order, with no gap where an algorithm
    # has no such phase (ProtoNet: outer step and adapt side by side); unused panels hidden
    row_phases = {w: [p for p in STEP_PHASES if ((t["spec"] == w[0]) & (t["algorithm"] == w[1])
                                                  & (t["phase"] == p)).any()] for w in workloads}
    ncols = max((len(v) for v in row_phases.values()), default=1)
    styles = _styles(t["label"], baseline)
    fig, axes = plt.subplots(len(workloads), ncols, figsize=(4.2 * ncols, 0.5 + 1.9 * len(workloads)),
                             squeeze=False)
    for i, (spec, algorithm) in enumerate(workloads):
        for ax in axes[i][len(row_phases[(spec, algorithm)]):]:
            ax.set_visible(False)
        for j, phase in enumerate(row_phases[(spec, algorithm)]):
            ax = axes[i][j]
            d = t[(t["spec"] == spec) & (t["algorithm"] == algorithm) & (t["phase"] == phase)]
            labels = sorted(set(d["label"]), key=lambda lb: tables._label_key(lb, baseline))
            data = [d.loc[d["label"] == lb, "seconds"].to_numpy() * 1e3 for lb in labels]
            # the median drawn above the points, so that a tight box's median stays visible
            box = ax.boxplot(data, widths=0.6, patch_artist=True, showfliers=False,
                             medianprops={"color": "black", "lw": 1.6, "zorder": 5}, **_HORIZONTAL)
            for patch, lb in zip(box["boxes"], labels):
                patch.set_facecolor(styles[lb][0])
                patch.set_alpha(0.5)
            for k, (values, lb) in enumerate(zip(data, labels), 1):
                jitter = np.random.default_rng(k).uniform(-0.15, 0.15, len(values))
                ax.scatter(values, k + jitter, s=6, color=styles[lb][0], zorder=3)
            ax.set_yticks(range(1, len(labels) + 1), labels)
            ax.set_xscale("log")
            _log_axis(ax.xaxis)
            ax.set_title(f"{short[spec]} / {algorithm} / {phase}", fontsize=9)
            ax.set_xlabel("step time (ms, log scale)")
            ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle((f"{common}: s" if common else "S") + "tep times: rounds of one step after the first step and warm-up")
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the suptitle
    return fig


def _targets(accuracy: pd.DataFrame) -> dict[tuple[str, str], float]:
    if accuracy.empty or "target" not in accuracy:
        return {}
    a = accuracy[accuracy["target"].notna()]
    return {(r.spec, r.algorithm): float(r.target) for r in a.drop_duplicates(["spec", "algorithm"]).itertuples()}


def _metric_label(metric: str) -> str:
    return ("validation accuracy (higher is better)" if metric == "accuracy"
            else f"validation {metric.upper()} (lower is better)")


def _mean_curve(g: pd.DataFrame) -> pd.DataFrame:
    """One adapter's learning curve: with several seeds, per step the mean over the seeds of
    the validation metric and of the wall-clock, and a 95% t interval across the seeds (the
    band: what another seed would do); with one seed, that seed and its ``val_ci95`` (over
    validation episodes)."""
    seeds = g["seed"].nunique()
    if seeds == 1:
        s = g.sort_values("step")
        return pd.DataFrame({"step": s["step"], "train_seconds": s["train_seconds"], "val_mean": s["val_mean"],
                             "band": s["val_ci95"].fillna(0), "seeds": 1})
    rows = []
    for step, at in g.groupby("step", sort=True):
        mean, half = stats.t_interval95(at["val_mean"])
        rows.append({"step": step, "train_seconds": float(at["train_seconds"].mean()), "val_mean": mean,
                     "band": 0.0 if tables.is_missing(half) else half, "seeds": len(at)})
    return pd.DataFrame(rows)


def learning_curve_figure(curves: pd.DataFrame, accuracy: pd.DataFrame, baseline: str = "torch"):
    """One row per spec / algorithm, two views: wall-clock (log) and steps. Each adapter's
    curve is the mean over its training seeds with a 95% band across them (one seed: its
    CI over the validation episodes); each seed is a thin line behind it."""
    plt = _plt()
    c = curves.copy()
    if "seed" not in c:
        c["seed"] = 0
    c["label"] = [tables.column_label(f, a, al) for f, a, al in zip(c["framework"], c["adapter"], c["algorithm"])]
    workloads = sorted({(r.spec, r.algorithm) for r in c.itertuples()}, key=lambda k: tables.row_key(*k))
    metric_of = {(r.spec, r.algorithm): r.metric for r in accuracy.itertuples()} if not accuracy.empty else {}
    targets = _targets(accuracy)
    styles = _styles(c["label"], baseline)
    fig, axes = plt.subplots(len(workloads), 2, figsize=(10, 0.6 + 2.8 * len(workloads)), squeeze=False)
    several = c.groupby(["spec", "algorithm", "label"])["seed"].nunique().max() > 1 if not c.empty else False
    for i, (spec, algorithm) in enumerate(workloads):
        d = c[(c["spec"] == spec) & (c["algorithm"] == algorithm)]
        metric = metric_of.get((spec, algorithm), "mse" if "sinusoid" in spec else "accuracy")
        wall, per_step = axes[i]
        for label, g in sorted(d.groupby("label"), key=lambda kv: tables._label_key(kv[0], baseline)):
            colour, marker = styles[label]
            n_seeds = g["seed"].nunique()
            if n_seeds > 1:  # the seeds themselves, faint, behind their mean
                for _seed, s in sorted(g.groupby("seed"), key=lambda kv: kv[0]):
                    s = s.sort_values("step")
                    timed = s[s["train_seconds"] > 0]
                    wall.plot(timed["train_seconds"], timed["val_mean"], color=colour, lw=0.6, alpha=0.35)
                    per_step.plot(s["step"], s["val_mean"], color=colour, lw=0.6, alpha=0.35)
            m = _mean_curve(g)
            timed = m[m["train_seconds"] > 0]  # step 0 sits at t = 0, off a log axis
            kw = {"color": colour, "lw": 1.6, "label": label + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else "")}
            wall.plot(timed["train_seconds"], timed["val_mean"], marker=marker, ms=3, **kw)
            per_step.plot(m["step"], m["val_mean"], marker=marker, ms=3, **kw)
            per_step.fill_between(m["step"], m["val_mean"] - m["band"], m["val_mean"] + m["band"], color=colour,
                                  alpha=0.15, lw=0)
            wall.fill_between(timed["train_seconds"], timed["val_mean"] - timed["band"],
                              timed["val_mean"] + timed["band"], color=colour, alpha=0.15, lw=0)
        target = targets.get((spec, algorithm))
        for ax in (wall, per_step):
            if target is not None:
                ax.axhline(target, color="black", ls=":", lw=1, label="target")
            ax.set_ylabel(_metric_label(metric))
            ax.set_title(f"{spec} / {algorithm}", fontsize=9)
            ax.grid(alpha=0.3)
        wall.set_xscale("log")
        _log_axis(wall.xaxis)
        wall.set_xlabel("meta-training wall-clock (s, log scale)")
        per_step.set_xlabel("meta-training step")
        wall.legend(fontsize=7, loc="best")
    fig.suptitle("Learning curves: mean over training seeds, 95% interval across them" if several else
                 "Learning curves: validation metric with 95% CI over validation episodes")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return fig


def _profile(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "manifest.json").read_text()).get("profile")
    except (OSError, ValueError, AttributeError):
        return None


def write_plots(run_dir: Path, tabs: dict, baseline: str = "torch") -> list[str]:
    """Save the figures the run's tables allow; returns their file names."""
    from bench.core import atomic

    plt = _plt()
    written = []
    cmp = tables.comparison(tabs["steps"], tabs["timings"], baseline)
    figures = []
    if not cmp.empty and cmp["speedup"].notna().any() and (cmp["adapter"] != cmp["baseline"]).any():
        from bench.report.sweeps import spec_labels

        figures.append(("speedups.png", speedup_figure(cmp, baseline, spec_labels(Path(run_dir)))))
    if not tabs["timings"][tabs["timings"]["phase"].isin(STEP_PHASES)].empty:
        from bench.report.sweeps import spec_labels

        figures.append(("step_times.png", step_time_figure(tabs["timings"], baseline, spec_labels(Path(run_dir)))))
    if not tabs["curves"].empty:
        figures.append(("learning_curves.png", learning_curve_figure(tabs["curves"], tabs["accuracy"], baseline)))
    from bench.report.sweeps import sweep_points

    sweep = sweep_figure(sweep_points(Path(run_dir), tabs["steps"], tabs["memory"]))
    if sweep is not None:  # a --sweep run: step time and memory against each swept value
        figures.append(("sweeps.png", sweep))
    smoke = _profile(Path(run_dir)) == "smoke"
    for name, fig in figures:
        if smoke:  # the first thing a reader sees says so, as summary.md's first line does
            fig.text(0.5, 1.0, "SMOKE RUN: these numbers prove the pipeline and are not comparable",
                     ha="center", va="bottom", color="firebrick", fontsize=11, weight="bold")
        atomic.save_figure(Path(run_dir) / name, fig, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)
    return written


def sweep_figure(points: pd.DataFrame):
    """A row of panels per swept key, a column per quantity (step phases in ms, peak memory
    in MiB), log-log with plain tick labels at the swept values; a line per framework and
    algorithm (the framework's colour, an algorithm's shade and marker the same in every
    panel), the median's 95% CI as error bars where the run tells one; one legend below
    the panels, off the data. None without a sweep."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    from bench.report.tables import PHASE_ORDER

    if points.empty:
        return None
    plt = _plt()
    keys = sorted(points["key"].unique())
    order = lambda q: (q == "peak memory", PHASE_ORDER.index(q) if q in PHASE_ORDER else len(PHASE_ORDER), q)
    quantities = sorted(points["quantity"].unique(), key=order)
    # a series' style: its framework's hue; the shade and marker of its workload within the framework
    workloads = {fw: sorted({(r.base, r.algorithm) for r in g.itertuples()})
                 for fw, g in points.groupby("framework")}
    several_bases = points["base"].nunique() > 1
    fig, axes = plt.subplots(len(keys), len(quantities), figsize=(3.6 * len(quantities), 2.9 * len(keys) + 0.4),
                             squeeze=False)
    handles: dict[str, object] = {}
    for row, key in enumerate(keys):
        for col, quantity in enumerate(quantities):
            ax = axes[row][col]
            g = points[(points["key"] == key) & (points["quantity"] == quantity)]
            series = []
            for (framework, base, algorithm, fixed), s in g.groupby(["framework", "base", "algorithm", "fixed"]):
                s = s.groupby("value", as_index=False).agg(y=("y", "median"), lo=("y_low", "min"),
                                                           hi=("y_high", "max")).sort_values("value")
                if len(s) >= 2:  # a one-at-a-time sweep's other points: a single value, no series
                    series.append((framework, base, algorithm, fixed, s))
            fixed_values = {fixed for _, _, _, fixed, _ in series}
            one_fixed = len(fixed_values) == 1  # then it goes in the axis label, not each line's
            scale = 1.0 if quantity == "peak memory" else 1e3  # seconds to ms
            values = set()
            for framework, base, algorithm, fixed, s in series:
                values |= set(s["value"])
                label = (f"{framework} " + (f"{base}/" if several_bases else "") + algorithm
                         + ("" if one_fixed or not fixed else f" ({fixed})"))
                i = workloads[framework].index((base, algorithm))
                y = s["y"] * scale
                err = [(y - s["lo"] * scale).clip(lower=0).fillna(0), (s["hi"] * scale - y).clip(lower=0).fillna(0)]
                handles[label] = ax.errorbar(s["value"], y, yerr=err, marker=MARKERS[i % len(MARKERS)], ms=5,
                                             capsize=2, lw=1.4, label=label,
                                             color=_shade(framework_colour(framework), SHADES[i % len(SHADES)]))
            if not values:
                ax.set_visible(False)
                continue
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(sorted(values)))  # the swept values, as plain numbers
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
            _log_axis(ax.yaxis)
            fixed = next(iter(fixed_values)) if one_fixed else ""
            ax.set_xlabel(key.split(".")[-1] + (f"  ({fixed.replace(key.split('.')[0] + '.', '')})" if fixed else ""))
            ax.set_ylabel("peak memory (MiB)" if quantity == "peak memory" else "median step time (ms)")
            ax.set_title(quantity, fontsize=10)
            ax.grid(which="major", alpha=0.3)
    rows_of_legend = math.ceil(len(handles) / 3)
    fig.tight_layout(rect=(0, (0.25 + 0.22 * rows_of_legend) / fig.get_figheight(), 1, 1))
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)), fontsize=8,
               frameon=False)
    return fig
