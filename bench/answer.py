"""The answer table: the README's first screen, generated from committed runs.

One row per workload (spec and algorithm): its shapes, the framework whose default has the
fastest outer step (meta-training step), that step's median and two-level CI, how much
faster it is than each other framework (ratio of medians, two-level bootstrap CI over the
processes and their rounds), and the test accuracy each framework's default reached.
Timing and accuracy may come from two runs (a timing run with repeated processes, a run
that trained), each named under the table with its machine and framework versions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench import stats, tables

OUTER = "outer_step"
SHORT = {"torch": "torch", "jax": "JAX", "tensorflow": "TF"}


def _versions(run_dir: Path) -> dict[str, str]:
    """framework -> version, from the cells' recorded adapter descriptions."""
    out: dict[str, str] = {}
    for path in sorted(run_dir.glob("cells/*/**/benchmark.json")):
        try:
            for b in json.loads(path.read_text()).get("benchmarks", []):
                info = b.get("extra_info", {}).get("adapter_info", {})
                if info.get("framework") and info.get("framework_version"):
                    out.setdefault(info["framework"], info["framework_version"])
        except (OSError, ValueError):
            continue
    return out


def _machine(run_dir: Path) -> str:
    m = json.loads((run_dir / "manifest.json").read_text())
    env = m.get("harness_environment", {})
    versions = ", ".join(f"{fw} {v}" for fw, v in sorted(_versions(run_dir).items()))
    link = f"{run_dir.parent.name}/{run_dir.name}/summary.md"  # from the repository root, as the README reads it
    return (f"[{run_dir.name}]({link}): {env.get('cpu')} ({env.get('cpu_count')} cores, "
            f"{m.get('threads')} threads per framework), {m.get('device')}, Python {env.get('python')}; {versions}")


def shapes(spec: dict, algorithm: str) -> str:
    """A workload's training shapes in a few words, from the manifest's spec."""
    e, m, p = spec.get("episode", {}), spec.get("maml", {}), spec.get("protonet", {})
    if algorithm == "reptile":  # its own section: the support set it fits, its SGD steps
        r = spec.get("reptile") or {}
        body = "MLP 40-40" if spec.get("data", {}).get("dataset") == "sinusoid" else f"Conv-4, {e.get('n_way')}-way"
        return (f"{body}, {r.get('train_shots') or e.get('k_shot')} shots, meta-batch {r.get('meta_batch_size')}, "
                f"{r.get('inner_steps')} SGD steps")
    if spec.get("data", {}).get("dataset") == "sinusoid":
        return f"MLP 40-40, {e.get('k_shot')} points, meta-batch {m.get('meta_batch_size')}"
    if algorithm == "protonet":
        return (f"Conv-4, {p.get('train_n_way')}-way {e.get('k_shot')}-shot {p.get('train_n_query')}-query training "
                f"episodes")
    return (f"Conv-4, {e.get('n_way')}-way {e.get('k_shot')}-shot, {m.get('train_n_query')} query/class, "
            f"meta-batch {m.get('meta_batch_size')}, {m.get('inner_steps')} inner step")


def _defaults(steps: pd.DataFrame, device: str) -> pd.DataFrame:
    """Outer-step rows of each framework's default adapter on ``device`` (plugins: all)."""
    from bench import registry

    known = registry.entries()
    s = steps[steps["phase"] == OUTER]
    keep = [a not in known or known[a].default_on(device) for a in s["adapter"]]
    return s[keep]


def answer_rows(timing_run: Path, accuracy_run: Path | None = None) -> list[dict]:
    from bench.report import collect

    timing_run = Path(timing_run)
    manifest = json.loads((timing_run / "manifest.json").read_text())
    tabs = collect(timing_run)
    steps = _defaults(tabs["steps"], manifest.get("device", "cpu"))
    rounds = tables.rounds_by_process(tabs["timings"].assign(seed=0), ["spec", "algorithm", "phase", "adapter", "seed"])
    acc = pd.DataFrame()
    if accuracy_run is not None:
        acc = tables.accuracy_summary(collect(Path(accuracy_run))["accuracy"])
    specs = manifest.get("specs", {})
    rows = []
    for (spec, algorithm), g in steps.groupby(["spec", "algorithm"], sort=False):
        g = g.sort_values("median")
        best = g.iloc[0]
        best_rounds = rounds.get((spec, algorithm, OUTER, best["adapter"], 0), [])
        others = []
        for r in g.iloc[1:].itertuples():
            ratio, lo, hi = stats.two_level_ratio_ci(rounds.get((spec, algorithm, OUTER, r.adapter, 0), []),
                                                     best_rounds)
            others.append((r.framework, r.median, ratio, lo, hi))
        a = acc[(acc["spec"] == spec) & (acc["algorithm"] == algorithm)] if not acc.empty else acc
        rows.append({"spec": spec, "algorithm": algorithm,
                     "shapes": shapes(specs.get(spec, {}).get("spec", {}), algorithm),
                     "fastest": best["framework"], "adapter": best["adapter"], "median": best["median"],
                     "ci": (best["median_ci_low"], best["median_ci_high"]), "others": others,
                     "accuracy": [(r.framework, r.metric, r.mean, r.ci95) for r in a.itertuples()]})
    rows.sort(key=lambda r: tables.row_key(r["spec"], r["algorithm"]))
    return rows


def _times(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.1f}x"


def _faster(framework: str, median: float, ratio: float, lo: float, hi: float) -> str:
    ci = f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else f" [{stats.TOO_FEW}]"
    bold = math.isfinite(lo) and lo > 1.0
    text = f"{_times(ratio)}{ci} vs {SHORT.get(framework, framework)} ({tables.format_seconds(median)})"
    return f"**{text}**" if bold else text


def _accuracy(items) -> str:
    if not items:
        return "not measured"
    parts = []
    for fw, metric, mean, half in items:
        value = f"{100 * mean:.1f} ± {100 * half:.1f} %" if metric == "accuracy" else f"MSE {mean:.2f} ± {half:.2f}"
        parts.append(f"{SHORT.get(fw, fw)} {value}")
    return "; ".join(parts)


def answer_markdown(timing_run: Path, accuracy_run: Path | None = None) -> str:
    """The table and the two lines naming its runs, deterministic (the README embeds it)."""
    rows = answer_rows(timing_run, accuracy_run)
    lines = ["| workload | training shapes | fastest outer step | how much faster (95% CI) | test accuracy |",
             "|---|---|---|---|---|"]
    for r in rows:
        name = SHORT.get(r["fastest"], r["fastest"])
        fastest = f"{name} `{r['adapter']}` {tables.format_seconds(r['median'], r['ci'])}"
        faster = "<br>".join(_faster(*o) for o in r["others"]) or "-"
        lines.append(f"| {r['spec']} {r['algorithm']} | {r['shapes']} | {fastest} | {faster} | "
                     f"{_accuracy(r['accuracy'])} |")
    lines += ["", _bullet(f"step times: {_machine(Path(timing_run))}")]
    if accuracy_run is not None:
        lines.append(_bullet(f"accuracy: {_machine(Path(accuracy_run))}"))
    return "\n".join(lines) + "\n"


def _bullet(text: str) -> str:
    import textwrap

    return textwrap.fill(text, 96, initial_indent="- ", subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False)
