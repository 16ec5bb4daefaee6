"""``metabench compare RUN_A RUN_B``: what changed from run A to run B.

Per cell and phase, B's speedup over A (``median A / median B``: above 1, B is faster, as
the summary's speedups read) with a two-level bootstrap CI: both runs' timing processes
and their rounds resampled (``bench.core.stats``).

Two runs happen at different times, and on a shared VM the machine itself drifts between
them: in the A/A runs of results/20261205-* every adapter of one workload ran 20-30%
slower in one run, host-side numpy sampling included. The processes of one run all share
its time window, so no CI from them covers that. What one run does cover is the adapters
timed beside each other: a workload's processes are interleaved (``bench.run.plan``), so the
drift falls on all of them alike. compare therefore adjusts each row for its workload's
drift (the median ``B / A`` of the other adapters of the same spec, algorithm and phase)
and judges the adjusted ratio, with a CI from the same bootstrap draws. A verdict of
"faster" or "slower" needs that CI to exclude no change *and* the change to exceed
``MIN_EFFECT``, calibrated by those A/A runs (docs/fairness.md). A change common to every
adapter of a workload (the harness, a shared library, the machine) cannot be told from
drift this way: the drift table shows it, unadjusted. A row with no other adapter beside
it is judged unadjusted. A run timed in one process per cell cannot tell noise from
change, and says so.

Also: the rows found in only one of the two runs, whether each run's cross-framework
speedups fall inside the other's CIs, accuracy and time-to-target deltas with CIs, and
what differs in the environment (package versions, device, threads, git). ``--fail-above
PCT`` makes it a regression gate, like ``pytest-benchmark --benchmark-compare-fail`` and
``asv continuous``: exit 1 when a step got slower by more than PCT percent with a
"slower" verdict, so noise alone never fails it. Host-side ``sample_episodes`` is shown
but never gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core import stats
from bench.report import tables
from bench.report.results import read_json, read_manifest

KEYS = ["spec", "algorithm", "adapter", "phase"]


# The smallest change compare calls "faster" or "slower", beyond a CI that excludes none.
# Calibrated by two runs of one commit on the 2-core VM (results/20261205-aa-1 and -aa-2):
# after the drift adjustment, the largest change whose CI excluded 1 there was 18% (TF
# ProtoNet's outer step, 0.85x, its neighbour torch's having moved the other way).
MIN_EFFECT = 0.20
SLOWER, FASTER, NO_CHANGE, CANNOT_TELL = "slower", "faster", "no change", "cannot tell (one process)"


@dataclass
class RunComparison:
    run_a: str
    run_b: str
    steps: pd.DataFrame        # per spec x algorithm x adapter x phase timed in both: medians, B/A, verdict
    accuracy: pd.DataFrame     # per spec x algorithm x adapter: metric and time-to-target deltas
    environment: pd.DataFrame  # one row per setting that differs: key, A, B
    only: pd.DataFrame = None  # rows timed or evaluated in one run only: run, what, row
    speedups: pd.DataFrame = None  # cross-framework speedups of A and B side by side (reproducibility)

    def regressions(self, fail_above_pct: float) -> pd.DataFrame:
        """Steps slower by more than ``fail_above_pct`` percent (after the drift adjustment,
        where there is one) with a "slower" verdict."""
        s = self.steps[self.steps["phase"] != tables.SAMPLING]
        change = s["adjusted"].where(s["adjusted"].notna(), s["ratio"])
        return s[(change > 1 + fail_above_pct / 100) & (s["verdict"] == SLOWER)]

    @property
    def single_process(self) -> bool:
        """Whether either run timed its cells in one process: its changes cannot be told from noise."""
        s = self.steps
        return not s.empty and bool((s[["processes_a", "processes_b"]].min(axis=1) < 2).any())


def _load(run_dir: Path) -> dict:
    from bench.report.results import collect, require_run

    return collect(require_run(Path(run_dir), "compare"))


def _seed0(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["seed"] == frame["seed"].min()] if "seed" in frame and not frame.empty else frame


def verdict(ratio: float, lo: float, hi: float, min_effect: float = MIN_EFFECT) -> str:
    """Slower or faster: the CI of ``B / A`` (step time) excludes 1 and the change exceeds
    ``min_effect``; no change otherwise; cannot tell without a CI (one process a side)."""
    if math.isnan(lo) or math.isnan(hi):
        return CANNOT_TELL
    if lo > 1 and ratio > 1 + min_effect:
        return SLOWER
    if hi < 1 and ratio < 1 / (1 + min_effect):
        return FASTER
    return NO_CHANGE


def _processes(steps: pd.DataFrame) -> pd.Series:
    return steps["processes"].fillna(1) if "processes" in steps else pd.Series(1, index=steps.index)


def _quantiles(draws: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(lo), float(hi)


def compare_steps(a: dict, b: dict, min_effect: float = MIN_EFFECT) -> pd.DataFrame:
    """Median step time of every cell and phase timed in both runs: ``B / A`` and B's
    speedup ``A / B`` with their two-level CIs; the drift, ``B / A`` of the other adapters
    timed beside it (the median of theirs: same spec, algorithm and phase, interleaved with
    it in each run, so what the machine did meanwhile is theirs too); the row's ratio
    adjusted for that drift, with a CI from the same bootstrap draws; and the verdict, on
    the adjusted ratio where there is a drift to adjust for."""
    columns = [*KEYS, "framework", "median_a", "median_b", "processes_a", "processes_b", "ratio", "ratio_ci_low",
               "ratio_ci_high", "speedup", "speedup_ci_low", "speedup_ci_high", "drift", "adjusted",
               "adjusted_ci_low", "adjusted_ci_high", "verdict"]
    sa, sb = _seed0(a["steps"]), _seed0(b["steps"])
    if sa.empty or sb.empty:
        return pd.DataFrame(columns=columns)
    sa, sb = sa.assign(processes=_processes(sa)), sb.assign(processes=_processes(sb))
    rounds_a = tables.rounds_by_process(_seed0(a["timings"]), KEYS)
    rounds_b = tables.rounds_by_process(_seed0(b["timings"]), KEYS)
    both = sa.merge(sb, on=KEYS, suffixes=("_a", "_b"))
    rng = np.random.default_rng(stats.SEED)
    keys = [(r.spec, r.algorithm, r.adapter, r.phase) for r in both.itertuples()]
    draws = {k: stats.two_level_ratio_draws(rounds_b.get(k, []), rounds_a.get(k, []), rng) for k in keys}
    point = {}
    for r, k in zip(both.itertuples(), keys):
        ratio = stats.pooled_median(rounds_b.get(k, [])) / stats.pooled_median(rounds_a.get(k, [])) \
            if rounds_a.get(k) and rounds_b.get(k) else math.nan
        point[k] = r.median_b / r.median_a if math.isnan(ratio) else ratio
    rows = []
    for r, k in zip(both.itertuples(), keys):
        ratio, d = point[k], draws[k]
        lo, hi = _quantiles(d) if d is not None else (math.nan, math.nan)
        others = [o for o in keys if o != k and (o[0], o[1], o[3]) == (k[0], k[1], k[3])]
        drift = adjusted = adj_lo = adj_hi = math.nan
        if others:
            drift = float(np.median([point[o] for o in others]))
            adjusted = ratio / drift
            if d is not None and all(draws[o] is not None for o in others):
                adj_lo, adj_hi = _quantiles(d / np.median(np.stack([draws[o] for o in others]), axis=0))
        judged = (adjusted, adj_lo, adj_hi) if others else (ratio, lo, hi)
        rows.append({"spec": r.spec, "algorithm": r.algorithm, "adapter": r.adapter, "phase": r.phase,
                     "framework": r.framework_a, "median_a": r.median_a, "median_b": r.median_b,
                     "processes_a": int(r.processes_a), "processes_b": int(r.processes_b), "ratio": ratio,
                     "ratio_ci_low": lo, "ratio_ci_high": hi, "speedup": 1 / ratio,
                     "speedup_ci_low": 1 / hi if hi else math.nan, "speedup_ci_high": 1 / lo if lo else math.nan,
                     "drift": drift, "adjusted": adjusted, "adjusted_ci_low": adj_lo, "adjusted_ci_high": adj_hi,
                     "verdict": verdict(*judged, min_effect)})
    out = pd.DataFrame(rows, columns=columns)
    order = sorted(range(len(out)), key=lambda i: (*tables.row_key(out.spec[i], out.algorithm[i], out.phase[i]),
                                                   out.adapter[i]))
    return out.iloc[order].reset_index(drop=True)


def drift_table(steps: pd.DataFrame) -> pd.DataFrame:
    """Per workload and phase, how every adapter moved together from A to B (the median of
    their ``B / A``): the machine's drift between the runs, or a change common to all."""
    s = steps[(steps["phase"] != tables.SAMPLING)] if not steps.empty else steps
    rows = [{"spec / algorithm / phase": tables.row_label(*key), "adapters": len(g),
             "median B / A": float(np.median(g["ratio"]))}
            for key, g in s.groupby(["spec", "algorithm", "phase"], sort=False)]
    return pd.DataFrame(rows, columns=["spec / algorithm / phase", "adapters", "median B / A"])


def only_in_one(a: dict, b: dict) -> pd.DataFrame:
    """Rows that one run has and the other lacks: step rows (an adapter renamed, a spec or
    algorithm left out, a timing phase that failed in one run) and accuracy rows."""
    rows = []
    for what, keys, frame in (("step time", KEYS, "steps"), ("accuracy", ["spec", "algorithm", "adapter"],
                                                             "accuracy")):
        fa, fb = _seed0(a[frame]), _seed0(b[frame])
        ka = set(map(tuple, fa[keys].drop_duplicates().to_numpy())) if not fa.empty else set()
        kb = set(map(tuple, fb[keys].drop_duplicates().to_numpy())) if not fb.empty else set()
        for run, missing in (("A", ka - kb), ("B", kb - ka)):
            for k in sorted(missing):
                rows.append({"only in": run, "what": what, "row": " / ".join(map(str, k))})
    return pd.DataFrame(rows, columns=["only in", "what", "row"])


def compare_speedups(a: dict, b: dict, baseline: str = "torch") -> pd.DataFrame:
    """Each run's cross-framework speedups against ``baseline`` (the summary's), side by
    side: does B's speedup fall inside A's CI, and A's inside B's? Two runs of one commit
    should agree on these, whatever the machine did in between."""
    columns = ["spec", "algorithm", "phase", "adapter", "speedup_a", "low_a", "high_a", "speedup_b", "low_b",
               "high_b", "b_inside_a", "a_inside_b"]
    ca = tables.comparison(_seed0(a["steps"]), _seed0(a["timings"]), baseline)
    cb = tables.comparison(_seed0(b["steps"]), _seed0(b["timings"]), baseline)
    if ca.empty or cb.empty:
        return pd.DataFrame(columns=columns)
    keys = ["spec", "algorithm", "phase", "adapter"]
    both = ca.merge(cb, on=keys, suffixes=("_a", "_b"))
    both = both[(both["phase"] != tables.SAMPLING) & (both["adapter"] != both["baseline_a"])
                & both["speedup_a"].notna() & both["speedup_b"].notna()]
    inside = lambda x, lo, hi: bool(lo <= x <= hi) if not (math.isnan(lo) or math.isnan(hi)) else None
    return pd.DataFrame({
        **{k: both[k] for k in keys}, "speedup_a": both["speedup_a"], "low_a": both["speedup_ci_low_a"],
        "high_a": both["speedup_ci_high_a"], "speedup_b": both["speedup_b"], "low_b": both["speedup_ci_low_b"],
        "high_b": both["speedup_ci_high_b"],
        "b_inside_a": [inside(x, lo, hi) for x, lo, hi in zip(both["speedup_b"], both["speedup_ci_low_a"],
                                                             both["speedup_ci_high_a"])],
        "a_inside_b": [inside(x, lo, hi) for x, lo, hi in zip(both["speedup_a"], both["speedup_ci_low_b"],
                                                             both["speedup_ci_high_b"])],
    }, columns=columns).reset_index(drop=True)


def compare_accuracy(a: dict, b: dict, same_test_episodes: bool = False) -> pd.DataFrame:
    """Test metric (across seeds where there are several) and time to target, B - A. The
    delta's 95% CI: across training seeds (Welch) when both runs have several; else, when
    both evaluated the very same test episodes (``same_test_episodes``: their fingerprints
    agree), a paired t interval over those episodes; else none."""
    columns = ["spec", "algorithm", "adapter", "metric", "mean_a", "ci95_a", "mean_b", "ci95_b", "delta",
               "delta_ci_low", "delta_ci_high", "delta_by", "time_to_target_a", "time_to_target_b",
               "time_to_target_delta"]
    sa, sb = tables.accuracy_summary(a["accuracy"]), tables.accuracy_summary(b["accuracy"])
    if sa.empty or sb.empty:
        return pd.DataFrame(columns=columns)
    both = sa.merge(sb, on=["spec", "algorithm", "adapter"], suffixes=("_a", "_b"))
    both = both.iloc[sorted(range(len(both)), key=lambda i: (*tables.row_key(both.spec[i], both.algorithm[i]),
                                                             both.adapter[i]))].reset_index(drop=True)
    rows = []
    for r in both.itertuples():
        key = (r.spec, r.algorithm, r.adapter)
        lo = hi = math.nan
        by = "-"
        seeds_a, seeds_b = _seed_means(a["accuracy"], key), _seed_means(b["accuracy"], key)
        if len(seeds_a) > 1 and len(seeds_b) > 1:
            _, lo, hi = stats.welch_diff_ci(seeds_a, seeds_b)
            by = f"seeds ({len(seeds_a)} and {len(seeds_b)})"
        elif same_test_episodes:
            ea, eb = _per_episode(a["episodes"], key), _per_episode(b["episodes"], key)
            common = ea.index.intersection(eb.index)
            if len(common) > 1:
                test = stats.paired_test(ea[common].to_numpy(), eb[common].to_numpy())
                lo, hi, by = test.ci_low, test.ci_high, f"paired, {test.n} episodes"
        rows.append({"spec": r.spec, "algorithm": r.algorithm, "adapter": r.adapter, "metric": r.metric_a,
                     "mean_a": r.mean_a, "ci95_a": r.ci95_a, "mean_b": r.mean_b, "ci95_b": r.ci95_b,
                     "delta": r.mean_b - r.mean_a, "delta_ci_low": lo, "delta_ci_high": hi, "delta_by": by,
                     "time_to_target_a": r.time_to_target_seconds_a, "time_to_target_b": r.time_to_target_seconds_b,
                     "time_to_target_delta": r.time_to_target_seconds_b - r.time_to_target_seconds_a})
    return pd.DataFrame(rows, columns=columns)


def _seed_means(accuracy: pd.DataFrame, key) -> list[float]:
    spec, algorithm, adapter = key
    a = accuracy[(accuracy["spec"] == spec) & (accuracy["algorithm"] == algorithm) & (accuracy["adapter"] == adapter)]
    return a["mean"].astype(float).tolist()


def _per_episode(episodes: pd.DataFrame, key) -> pd.Series:
    """The test metric per episode, averaged over the seeds the run has."""
    spec, algorithm, adapter = key
    if episodes.empty:
        return pd.Series(dtype=float)
    e = episodes[(episodes["spec"] == spec) & (episodes["algorithm"] == algorithm) & (episodes["adapter"] == adapter)]
    return e.groupby("episode")["value"].mean()


def fingerprints_of_test_episodes(run_dir: Path) -> dict[str, str]:
    """``{spec: fingerprint of its test episodes}`` from the run's manifest."""
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return {}
    out = {}
    for name, spec in (read_manifest(path).get("specs") or {}).items():
        test = (spec.get("episodes") or {}).get("test") if isinstance(spec, dict) else None
        if isinstance(test, dict) and test.get("fingerprint"):
            out[name] = test["fingerprint"]
    return out


def _flatten(env: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in env.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = str(v)
    return out


ENV_KEYS = ("python", "platform", "cpu", "cpu_count", "device", "gpu", "threads", "git.sha", "git.dirty")


def environment_of(run_dir: Path) -> dict[str, str]:
    """The settings that decide a step time, from the harness's and every cell's environment
    (package versions under ``packages.<name>``); a setting with several values lists them all."""
    run_dir = Path(run_dir)
    envs = []
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        m = read_manifest(manifest)
        envs.append(m.get("harness_environment", {}))
        envs += [c["environment"] for c in m.get("cells", []) if "environment" in c]
        envs.append({"profile": m.get("profile"), "threads": m.get("threads")})
    envs += [read_json(p) for p in sorted(run_dir.glob("cells/*/environment.json"))]
    values: dict[str, set[str]] = {}
    for env in envs:
        for k, v in _flatten(env).items():
            if k in ENV_KEYS or k.startswith("packages.") or k == "profile":
                values.setdefault(k, set()).add(v)
    # a resumed run may mix commits or versions across cells: show every value
    return {k: ", ".join(sorted(v)) for k, v in values.items()}


def compare_environment(run_a: Path, run_b: Path) -> pd.DataFrame:
    ea, eb = environment_of(run_a), environment_of(run_b)
    keys = sorted(set(ea) | set(eb))
    rows = [{"setting": k, "A": ea.get(k, "-"), "B": eb.get(k, "-")} for k in keys if ea.get(k) != eb.get(k)]
    return pd.DataFrame(rows, columns=["setting", "A", "B"])


def compare_runs(run_a: Path, run_b: Path, min_effect: float = MIN_EFFECT, baseline: str = "torch") -> RunComparison:
    a, b = _load(run_a), _load(run_b)
    fa, fb = fingerprints_of_test_episodes(run_a), fingerprints_of_test_episodes(run_b)
    same = bool(fa) and all(fb.get(k) == v for k, v in fa.items() if k in fb) and bool(set(fa) & set(fb))
    return RunComparison(Path(run_a).name, Path(run_b).name, compare_steps(a, b, min_effect),
                         compare_accuracy(a, b, same), compare_environment(run_a, run_b), only_in_one(a, b),
                         compare_speedups(a, b, baseline))


# -- rendering --------------------------------------------------------------------------------

def steps_table(steps: pd.DataFrame) -> pd.DataFrame:
    def adjusted(r):
        if tables.is_missing(r.adjusted):
            return "- (no other adapter beside it)"
        return tables.format_ratio(1 / r.adjusted, *(1 / v if v else math.nan for v in
                                                     (r.adjusted_ci_high, r.adjusted_ci_low)), bold=False)
    return pd.DataFrame({
        "spec / algorithm / phase": [tables.row_label(s, a, p) for s, a, p in
                                     zip(steps["spec"], steps["algorithm"], steps["phase"])],
        "adapter": steps["adapter"],
        "A": steps["median_a"].map(tables.format_seconds), "B": steps["median_b"].map(tables.format_seconds),
        "processes": [f"{a} / {b}" for a, b in zip(steps["processes_a"], steps["processes_b"])],
        "B's speedup [95% CI]": [tables.format_ratio(r, lo, hi, bold=False) for r, lo, hi in
                                 zip(steps["speedup"], steps["speedup_ci_low"], steps["speedup_ci_high"])],
        "adjusted for drift [95% CI]": [adjusted(r) for r in steps.itertuples()],
        "verdict": [f"**{v}**" if v in (SLOWER, FASTER) else v for v in steps["verdict"]],
    })


def speedups_table(sp: pd.DataFrame) -> pd.DataFrame:
    yes_no = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else ("yes" if v else "**no**")
    return pd.DataFrame({
        "spec / algorithm / phase": [tables.row_label(s, a, p) for s, a, p in
                                     zip(sp["spec"], sp["algorithm"], sp["phase"])],
        "adapter": sp["adapter"],
        "A [95% CI]": [tables.format_ratio(r, lo, hi, bold=False) for r, lo, hi in
                       zip(sp["speedup_a"], sp["low_a"], sp["high_a"])],
        "B [95% CI]": [tables.format_ratio(r, lo, hi, bold=False) for r, lo, hi in
                       zip(sp["speedup_b"], sp["low_b"], sp["high_b"])],
        "B inside A's CI": [yes_no(v) for v in sp["b_inside_a"]],
        "A inside B's CI": [yes_no(v) for v in sp["a_inside_b"]],
    })


def speedups_sentence(sp: pd.DataFrame) -> str:
    told = [v for v in sp["b_inside_a"] if v is not None]
    if not told:
        return "No speedup has a CI in run A (one process per cell): nothing to check.\n"
    inside = sum(bool(v) for v in told)
    return (f"B's speedup lies inside A's 95% CI on {inside} of {len(told)} rows ({100 * inside / len(told):.0f}%); "
            f"A's inside B's on {sum(bool(v) for v in sp['a_inside_b'] if v is not None)} of "
            f"{sum(v is not None for v in sp['a_inside_b'])}.\n")


def accuracy_table(acc: pd.DataFrame) -> pd.DataFrame:
    def delta(r):
        scale, unit = (100, " points") if r.metric == "accuracy" else (1, "")
        fmt = (lambda v: f"{v * scale:+.2f}") if r.metric == "accuracy" else (lambda v: f"{v:+.3g}")
        text = f"{fmt(r.delta)}{unit}"
        if tables.is_missing(r.delta_ci_low) or tables.is_missing(r.delta_ci_high):
            return f"{text} [no CI: one seed and different or unrecorded test episodes]"
        return f"{text} [{fmt(r.delta_ci_low)}, {fmt(r.delta_ci_high)}] ({r.delta_by})"

    def ttt(a, b):
        if tables.is_missing(a) and tables.is_missing(b):
            return "-"
        return f"{tables.format_seconds(a)} -> {tables.format_seconds(b)}"
    return pd.DataFrame({
        "spec / algorithm": [tables.row_label(s, a) for s, a in zip(acc["spec"], acc["algorithm"])],
        "adapter": acc["adapter"],
        "A": [tables.format_metric(m, c, k) for m, c, k in zip(acc["mean_a"], acc["ci95_a"], acc["metric"])],
        "B": [tables.format_metric(m, c, k) for m, c, k in zip(acc["mean_b"], acc["ci95_b"], acc["metric"])],
        "B - A [95% CI]": [delta(r) for r in acc.itertuples()],
        "time to target": [ttt(a, b) for a, b in zip(acc["time_to_target_a"], acc["time_to_target_b"])],
    })


def _formatted_drift(steps: pd.DataFrame) -> pd.DataFrame:
    t = drift_table(steps)
    return t.assign(**{"median B / A": t["median B / A"].map(lambda v: f"{v:.3f}")})


def notices(c: RunComparison) -> list[str]:
    """What a reader must know before the tables: nothing in common, one process, or a
    workload whose adapters all moved together beyond ``MIN_EFFECT``."""
    out = []
    moved = drift_table(c.steps)
    moved = moved[(moved["adapters"] > 1) & ((moved["median B / A"] > 1 + MIN_EFFECT)
                                             | (moved["median B / A"] < 1 / (1 + MIN_EFFECT)))]
    if not moved.empty:
        out.append("**Every adapter of a workload moved together** ("
                   + "; ".join(f"{r[0]}: B / A {r[2]:.2f}" for r in moved.itertuples(index=False))
                   + "): the machine drifted between the runs, or a change common to every adapter (the harness, a "
                   "shared library) did; this comparison cannot tell which. Verdicts are on each adapter's change "
                   "relative to the others.")
    if c.steps.empty and c.accuracy.empty:
        out.append("**Nothing to compare**: the two runs share no timed step and no accuracy row "
                   "(see \"Only in one run\"); check that both ran the same specs, algorithms and adapters.")
    if c.single_process:
        out.append("**Cannot tell noise from change**: a run here timed its cells in one process each, and a "
                   "new process alone moves a step by 10-60% on a shared machine. Rerun both with "
                   "`--repeats 3` (the cpu profile's default) for verdicts.")
    return out


def markdown(c: RunComparison, fail_above: float | None = None, tablefmt: str = "pipe") -> str:
    def md(df):
        # disable_numparse: a version "2.10" must not print as 2.1
        return (df.to_markdown(index=False, tablefmt=tablefmt, disable_numparse=True) + "\n"
                if df is not None and not df.empty else "_none_\n")
    gate = ""
    if fail_above is not None:
        bad = c.regressions(fail_above)
        gate = "\n" + tables._wrap(
            f"**Regression gate** (slower by more than {fail_above:g}% with a \"slower\" verdict): "
            + ("passed." if bad.empty else
               "FAILED: " + "; ".join(f"{r.adapter} {r.spec} / {r.algorithm} / {r.phase} x{r.ratio:.2f}"
                                      + ("" if tables.is_missing(r.adjusted) else
                                         f" (x{r.adjusted:.2f} beside its workload's other adapters)")
                                      for r in bad.itertuples()))) + "\n"
    said = "".join(f"\n{tables._wrap(n)}\n" for n in notices(c))
    speedups = c.speedups if c.speedups is not None else pd.DataFrame()
    counts = c.steps["verdict"].value_counts() if not c.steps.empty else pd.Series(dtype=int)
    tally = ", ".join(f"{n} {v}" for v, n in counts.items()) or "no rows"
    return (f"# metabench compare: A = {c.run_a}, B = {c.run_b}\n{gate}{said}\n"
            "## Step time: B's speedup over A\n\n"
            + tables._wrap(
                "Speedup = median A / median B: above 1, B is faster (as the summaries' speedups read). 95% CI "
                "from a two-level bootstrap of both runs (processes, then rounds). Adjusted for drift: the "
                "speedup relative to the median of the other adapters timed beside it (same workload and "
                "phase), which the machine's drift between the runs moved alike. A verdict of faster or slower "
                f"needs the adjusted CI to exclude 1 and the change to exceed {MIN_EFFECT:.0%} (calibrated by "
                f"two runs of one commit on the 2-core VM). Verdicts: {tally}.") + "\n\n"
            f"{md(steps_table(c.steps))}\n"
            "## Drift: how each workload's adapters moved together, B / A\n\n"
            f"{md(_formatted_drift(c.steps))}\n"
            "## Only in one run\n\n"
            f"{md(c.only)}\n"
            "## Cross-framework speedups in A and in B\n\n"
            f"{speedups_sentence(speedups) if not speedups.empty else ''}\n"
            f"{md(speedups_table(speedups) if not speedups.empty else None)}\n"
            "## Accuracy and time to target\n\n"
            f"{md(accuracy_table(c.accuracy))}\n"
            "## Environment differences\n\n"
            f"{md(c.environment)}")
