"""``metabench compare RUN_A RUN_B``: what changed from run A to run B.

Per cell and phase the ratio B/A of the median step time with a bootstrap CI (both sets of
rounds resampled), accuracy and time-to-target deltas, and what differs in the
environment (package versions, device, threads, git). ``--fail-above PCT`` makes it a
regression gate, like ``pytest-benchmark --benchmark-compare-fail`` and ``asv continuous``:
exit 1 when a step got slower by more than PCT percent *and* its CI excludes no change,
so noise alone never fails it. Host-side ``sample_episodes`` is shown but never gates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import stats, tables

KEYS = ["spec", "algorithm", "adapter", "phase"]


@dataclass
class RunComparison:
    run_a: str
    run_b: str
    steps: pd.DataFrame        # per spec x algorithm x adapter x phase: medians, ratio B/A and its CI
    accuracy: pd.DataFrame     # per spec x algorithm x adapter: metric and time-to-target deltas
    environment: pd.DataFrame  # one row per setting that differs: key, A, B

    def regressions(self, fail_above_pct: float) -> pd.DataFrame:
        """Steps slower by more than ``fail_above_pct`` percent whose CI excludes 1."""
        s = self.steps[self.steps["phase"] != tables.SAMPLING]
        return s[(s["ratio"] > 1 + fail_above_pct / 100) & (s["ratio_ci_low"] > 1)]


def _load(run_dir: Path) -> dict:
    from bench.preflight import require_run
    from bench.report import collect

    return collect(require_run(Path(run_dir), "compare"))


def _seed0(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["seed"] == frame["seed"].min()] if "seed" in frame and not frame.empty else frame


def compare_steps(a: dict, b: dict) -> pd.DataFrame:
    """Median step time of every cell and phase timed in both runs, B/A with its CI."""
    columns = [*KEYS, "framework", "median_a", "median_b", "ratio", "ratio_ci_low", "ratio_ci_high", "verdict"]
    sa, sb = _seed0(a["steps"]), _seed0(b["steps"])
    if sa.empty or sb.empty:
        return pd.DataFrame(columns=columns)
    rounds_a = {k: g["seconds"].to_numpy() for k, g in _seed0(a["timings"]).groupby(KEYS)}
    rounds_b = {k: g["seconds"].to_numpy() for k, g in _seed0(b["timings"]).groupby(KEYS)}
    both = sa.merge(sb, on=KEYS, suffixes=("_a", "_b"))
    rows = []
    for r in both.itertuples():
        key = (r.spec, r.algorithm, r.adapter, r.phase)
        ratio, lo, hi = stats.ratio_of_medians_ci(rounds_b.get(key, []), rounds_a.get(key, []))
        if math.isnan(ratio):
            ratio = r.median_b / r.median_a
        verdict = "slower" if lo > 1 else "faster" if hi < 1 else "no change"
        rows.append({"spec": r.spec, "algorithm": r.algorithm, "adapter": r.adapter, "phase": r.phase,
                     "framework": r.framework_a, "median_a": r.median_a, "median_b": r.median_b, "ratio": ratio,
                     "ratio_ci_low": lo, "ratio_ci_high": hi, "verdict": verdict})
    out = pd.DataFrame(rows, columns=columns)
    order = sorted(range(len(out)), key=lambda i: (*tables.row_key(out.spec[i], out.algorithm[i], out.phase[i]),
                                                   out.adapter[i]))
    return out.iloc[order].reset_index(drop=True)


def compare_accuracy(a: dict, b: dict) -> pd.DataFrame:
    """Test metric (across seeds where there are several) and time to target, B - A."""
    columns = ["spec", "algorithm", "adapter", "metric", "mean_a", "ci95_a", "mean_b", "ci95_b", "delta",
               "time_to_target_a", "time_to_target_b", "time_to_target_delta"]
    sa, sb = tables.accuracy_summary(a["accuracy"]), tables.accuracy_summary(b["accuracy"])
    if sa.empty or sb.empty:
        return pd.DataFrame(columns=columns)
    both = sa.merge(sb, on=["spec", "algorithm", "adapter"], suffixes=("_a", "_b"))
    both = both.iloc[sorted(range(len(both)), key=lambda i: (*tables.row_key(both.spec[i], both.algorithm[i]),
                                                             both.adapter[i]))].reset_index(drop=True)
    return pd.DataFrame({
        "spec": both["spec"], "algorithm": both["algorithm"], "adapter": both["adapter"], "metric": both["metric_a"],
        "mean_a": both["mean_a"], "ci95_a": both["ci95_a"], "mean_b": both["mean_b"], "ci95_b": both["ci95_b"],
        "delta": both["mean_b"] - both["mean_a"],
        "time_to_target_a": both["time_to_target_seconds_a"], "time_to_target_b": both["time_to_target_seconds_b"],
        "time_to_target_delta": both["time_to_target_seconds_b"] - both["time_to_target_seconds_a"],
    }, columns=columns)


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
        m = json.loads(manifest.read_text())
        envs.append(m.get("harness_environment", {}))
        envs += [c["environment"] for c in m.get("cells", []) if "environment" in c]
        envs.append({"profile": m.get("profile"), "threads": m.get("threads")})
    envs += [json.loads(p.read_text()) for p in sorted(run_dir.glob("cells/*/environment.json"))]
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


def compare_runs(run_a: Path, run_b: Path) -> RunComparison:
    a, b = _load(run_a), _load(run_b)
    return RunComparison(Path(run_a).name, Path(run_b).name, compare_steps(a, b), compare_accuracy(a, b),
                         compare_environment(run_a, run_b))


# -- rendering --------------------------------------------------------------------------------

def steps_table(steps: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "spec / algorithm / phase": [tables.row_label(s, a, p) for s, a, p in
                                     zip(steps["spec"], steps["algorithm"], steps["phase"])],
        "adapter": steps["adapter"],
        "A": steps["median_a"].map(tables.format_seconds), "B": steps["median_b"].map(tables.format_seconds),
        "B/A [95% CI]": [tables.format_ratio(r, lo, hi).replace("**", "") for r, lo, hi in
                         zip(steps["ratio"], steps["ratio_ci_low"], steps["ratio_ci_high"])],
        "verdict": steps["verdict"],
    })


def accuracy_table(acc: pd.DataFrame) -> pd.DataFrame:
    def delta(r):
        if r.metric == "accuracy":
            return f"{r.delta * 100:+.2f} points"
        return f"{r.delta:+.3g}"

    def ttt(a, b):
        if tables.is_missing(a) and tables.is_missing(b):
            return "-"
        return f"{tables.format_seconds(a)} -> {tables.format_seconds(b)}"
    return pd.DataFrame({
        "spec / algorithm": [tables.row_label(s, a) for s, a in zip(acc["spec"], acc["algorithm"])],
        "adapter": acc["adapter"],
        "A": [tables.format_metric(m, c, k) for m, c, k in zip(acc["mean_a"], acc["ci95_a"], acc["metric"])],
        "B": [tables.format_metric(m, c, k) for m, c, k in zip(acc["mean_b"], acc["ci95_b"], acc["metric"])],
        "B - A": [delta(r) for r in acc.itertuples()],
        "time to target": [ttt(a, b) for a, b in zip(acc["time_to_target_a"], acc["time_to_target_b"])],
    })


def markdown(c: RunComparison, fail_above: float | None = None, tablefmt: str = "pipe") -> str:
    def md(df):
        # disable_numparse: a version "2.10" must not print as 2.1
        return (df.to_markdown(index=False, tablefmt=tablefmt, disable_numparse=True) + "\n"
                if not df.empty else "_none_\n")
    gate = ""
    if fail_above is not None:
        bad = c.regressions(fail_above)
        gate = (f"\n**Regression gate** (slower by more than {fail_above:g}% with the CI excluding no change): "
                + ("passed.\n" if bad.empty else
                   "FAILED: " + "; ".join(f"{r.adapter} {r.spec} / {r.algorithm} / {r.phase} x{r.ratio:.2f}"
                                          for r in bad.itertuples()) + "\n"))
    return (f"# metabench compare: A = {c.run_a}, B = {c.run_b}\n{gate}\n"
            "## Step time, B / A (ratio of medians, 95% bootstrap CI; above 1: B is slower)\n\n"
            f"{md(steps_table(c.steps))}\n"
            "## Accuracy and time to target\n\n"
            f"{md(accuracy_table(c.accuracy))}\n"
            "## Environment differences\n\n"
            f"{md(c.environment)}")
