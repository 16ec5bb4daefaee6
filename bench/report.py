"""Results: tidy CSVs, the run's manifest, ``summary.md`` and seaborn plots.

Everything is rebuilt from the cells' own folders (``cells/<cell_id>/``), so a partial or
resumed run reports whatever its cells measured. Files written into the run folder:

- ``timings.csv``  one row per timed round
- ``steps.csv``    one row per (cell, phase): median, IQR, bootstrap CI, first step (compile)
- ``memory.csv``   one row per cell: peak bytes and which API measured them
- ``accuracy.csv`` one row per cell: mean and 95% CI over the test episodes
- ``curves.csv``   learning curves (validation metric every ``val_every`` steps, with time)
- ``benchmark.json`` every cell's pytest-benchmark records in one file (``pytest-benchmark compare``)
- ``manifest.json`` environment, specs with episode fingerprints, each cell's status
- ``summary.md``, ``step_times.png``, ``learning_curves.png``
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from bench.stats import summarize_rounds

CELL_COLUMNS = ["framework", "algorithm", "adapter", "spec"]
FINGERPRINT_TRAIN_CAP = 10_000  # training episodes hashed into the manifest, at most


# -- manifest ----------------------------------------------------------------------------

def _fingerprints(cells, data_dir, cache_dir) -> dict:
    from bench.episodes import sampler_for
    from bench.spec import load_spec

    out: dict = {}
    for cell in cells:
        key = cell.spec_name
        entry = out.setdefault(key, {"source": cell.spec, "episodes": {}})
        spec = load_spec(cell.spec).for_algorithm(cell.algorithm).with_profile(cell.profile, cell.algorithm)
        entry.setdefault("spec", spec.to_dict())
        try:
            if "test" not in entry["episodes"]:
                n = spec.budget.eval_episodes
                entry["episodes"]["test"] = {"count": n, "fingerprint": sampler_for(
                    spec, "test", data_dir=data_dir, cache_dir=cache_dir).fingerprint(n)}
            train_key = f"train/{cell.algorithm}"
            if train_key not in entry["episodes"]:
                n = min(spec.budget.meta_train_steps * spec.meta_batch_size(cell.algorithm), FINGERPRINT_TRAIN_CAP)
                entry["episodes"][train_key] = {"count": n, "fingerprint": sampler_for(
                    spec, "train", cell.algorithm, data_dir=data_dir, cache_dir=cache_dir).fingerprint(n)}
        except Exception as e:  # missing data: the cells will report it; the manifest says so
            entry["episodes"]["error"] = str(e)
    return out


def write_manifest(run_dir: Path, cells, *, profile, device, threads, started, command, data_dir, cache_dir,
                   finished=None) -> None:
    from bench.environment import collect_environment

    path = run_dir / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    manifest = {
        "run_id": run_dir.name,
        "command": command,
        "profile": profile, "device": device, "threads": threads,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)) if finished else None,
        "harness_environment": collect_environment(None, device, threads),
        "specs": old.get("specs") or _fingerprints(cells, data_dir, cache_dir),
        "cells": [],
    }
    for cell in cells:
        status_path = run_dir / "cells" / cell.cell_id / "status.json"
        status = json.loads(status_path.read_text()) if status_path.exists() else {
            "cell_id": cell.cell_id, **asdict(cell), "phases": {}}
        env_path = run_dir / "cells" / cell.cell_id / "environment.json"
        if env_path.exists():
            status["environment"] = json.loads(env_path.read_text())
        manifest["cells"].append(status)
    path.write_text(json.dumps(manifest, indent=1, default=str))


# -- collecting the cells' results ---------------------------------------------------------

def _cells(run_dir: Path):
    for cell_dir in sorted((run_dir / "cells").glob("*")):
        if (cell_dir / "cell.json").exists():
            yield cell_dir, json.loads((cell_dir / "cell.json").read_text())


def collect(run_dir: Path) -> dict[str, pd.DataFrame]:
    run_id = run_dir.name
    rounds, steps, memory, accuracy, curves, benchmarks = [], [], [], [], [], []
    machine_info = None
    for cell_dir, cell in _cells(run_dir):
        ident = {"framework": cell["framework"], "algorithm": cell["algorithm"], "adapter": cell["adapter"],
                 "spec": cell["spec_name"]}
        bench_path = cell_dir / "benchmark.json"
        if bench_path.exists():
            data = json.loads(bench_path.read_text())
            machine_info = machine_info or data.get("machine_info")
            for b in data.get("benchmarks", []):
                benchmarks.append(b)
                extra = b.get("extra_info", {})
                seconds = b["stats"].get("data", [])
                for i, s in enumerate(seconds):
                    rounds.append({"run_id": run_id, **ident, "phase": extra["phase"], "round": i,
                                   "seconds": s, "device": extra.get("device")})
                if seconds:
                    steps.append({"run_id": run_id, **ident, "phase": extra["phase"], "device": extra.get("device"),
                                  "compilation": extra.get("compilation"),
                                  "meta_batch_size": extra.get("meta_batch_size"),
                                  "first_step_seconds": extra.get("first_step_seconds"),
                                  "recompilations": extra.get("recompilations_while_timed"),
                                  **summarize_rounds(seconds)})
        mem_path = cell_dir / "memory.json"
        if mem_path.exists():
            m = json.loads(mem_path.read_text())
            memory.append({"run_id": run_id, **ident, "phase": m["phase"], "peak_bytes": m["peak_bytes"],
                           "peak_mib": m["peak_bytes"] / 2**20, "source": m["source"],
                           "framework_api": m["framework_api"]})
        acc_path = cell_dir / "accuracy.json"
        if acc_path.exists():
            a = json.loads(acc_path.read_text())
            accuracy.append({"run_id": run_id, **ident, "episodes": a["episodes"], "metric": a["metric"],
                             "mean": a["mean"], "ci95": a["ci95"], "train_steps": a["train_steps"],
                             "train_seconds": a["train_seconds"], "eval_seconds": a["eval_seconds"]})
        curve_path = cell_dir / "curve.csv"
        if curve_path.exists() and curve_path.stat().st_size:
            c = pd.read_csv(curve_path)
            for k, v in ident.items():
                c.insert(0, k, v)
            c.insert(0, "run_id", run_id)
            curves.append(c)
    if benchmarks:
        merged = {"machine_info": machine_info, "commit_info": {}, "benchmarks": benchmarks,
                  "datetime": time.strftime("%Y-%m-%dT%H:%M:%S"), "version": "metabench"}
        (run_dir / "benchmark.json").write_text(json.dumps(merged, indent=1))
    return {
        "timings": pd.DataFrame(rounds, columns=["run_id", *CELL_COLUMNS, "phase", "round", "seconds", "device"]),
        "steps": pd.DataFrame(steps),
        "memory": pd.DataFrame(memory),
        "accuracy": pd.DataFrame(accuracy, columns=["run_id", *CELL_COLUMNS, "episodes", "metric", "mean", "ci95",
                                                    "train_steps", "train_seconds", "eval_seconds"]),
        "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
            columns=["run_id", *CELL_COLUMNS, "step", "train_seconds", "val_mean", "val_ci95", "train_loss"]),
    }


# -- summary -------------------------------------------------------------------------------

def _fmt_seconds(s: float) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _steps_table(steps: pd.DataFrame) -> str:
    if steps.empty:
        return "_no timing results_\n"
    lines = []
    for (spec, algorithm, phase), g in steps.groupby(["spec", "algorithm", "phase"], sort=True):
        fastest = g["median"].min()
        t = pd.DataFrame({
            "adapter": g["adapter"], "compilation": g["compilation"],
            "median": g["median"].map(_fmt_seconds), "IQR": g["iqr"].map(_fmt_seconds),
            "median 95% CI": [f"{_fmt_seconds(lo)} - {_fmt_seconds(hi)}"
                              for lo, hi in zip(g["median_ci_low"], g["median_ci_high"])],
            "rounds": g["rounds"], "first step (compile)": g["first_step_seconds"].map(_fmt_seconds),
            "x fastest": (g["median"] / fastest).map(lambda r: f"{r:.2f}"),
        }).sort_values("adapter")
        lines.append(f"#### {spec} / {algorithm} / `{phase}`\n\n{t.to_markdown(index=False)}\n")
    return "\n".join(lines)


def _accuracy_table(acc: pd.DataFrame) -> str:
    if acc.empty:
        return "_no accuracy results_\n"
    t = acc.copy()
    t["result"] = [f"{m * 100:.2f} +- {c * 100:.2f} %" if metric == "accuracy" else f"{m:.4f} +- {c:.4f}"
                   for m, c, metric in zip(t["mean"], t["ci95"], t["metric"])]
    t["train time"] = t["train_seconds"].map(lambda s: f"{s:.0f} s")
    t = t[["spec", "algorithm", "adapter", "metric", "result", "episodes", "train_steps", "train time"]]
    return t.sort_values(["spec", "algorithm", "adapter"]).to_markdown(index=False) + "\n"


def _agreement(acc: pd.DataFrame) -> str:
    """Do the frameworks' results fall within each other's 95% confidence intervals?"""
    lines = []
    for (spec, algorithm), g in acc.groupby(["spec", "algorithm"]):
        if len(g) < 2:
            continue
        rows = list(g.itertuples())
        bad = [(a.adapter, b.adapter) for i, a in enumerate(rows) for b in rows[i + 1:]
               if abs(a.mean - b.mean) > a.ci95 + b.ci95]
        verdict = "all overlap" if not bad else "do NOT overlap: " + "; ".join(f"{x} vs {y}" for x, y in bad)
        lines.append(f"- {spec} / {algorithm}: 95% CIs {verdict}")
    if not lines:
        return ""
    # Why two correct adapters can miss each other's CI: it is one training run each.
    lines.append("\nEach CI covers the sampling of test episodes for one training run; it leaves out how "
                 "training runs vary. Adapters that pass parity start from the same weights and see the "
                 "same episodes, but float32 rounding makes their trajectories drift apart over thousands of "
                 "steps, most visibly where the learning curve is still steep (compare `curves.csv`).")
    return "\n".join(lines) + "\n"


def _memory_table(mem: pd.DataFrame) -> str:
    if mem.empty:
        return "_no memory results_\n"
    t = mem[["spec", "algorithm", "adapter", "phase", "peak_mib", "source"]].copy()
    t["peak_mib"] = t["peak_mib"].map(lambda v: f"{v:.1f}")
    return t.sort_values(["spec", "algorithm", "adapter"]).to_markdown(index=False) + "\n"


def _parity_section(run_dir: Path) -> str:
    """The run's parity table (``parity.csv``, written before the cells), one row per
    adapter x spec x algorithm: the meta-gradient's float32 error against torch (torch's
    own float32-vs-float64 error in brackets) and the largest float64 error."""
    path = run_dir / "parity.csv"
    if not path.exists():
        log = run_dir / "parity.log"
        return (f"not computed: {log.read_text().strip().splitlines()[-1]}\n" if log.exists()
                else "not run (`--phases parity`, or `metabench parity`)\n")
    from bench.parity import QUANTITIES, TOLERANCE_64

    t = pd.read_csv(path)
    rows = []
    for r in t.itertuples():
        if isinstance(getattr(r, "error", None), str):
            rows.append({"adapter": r.adapter, "spec": r.spec, "algorithm": r.algorithm, "ok": False,
                         "meta_grad float32 (torch floor)": r.error, "max float64": ""})
            continue
        rows.append({"adapter": r.adapter, "spec": r.spec, "algorithm": r.algorithm, "ok": bool(r.ok),
                     "meta_grad float32 (torch floor)": f"{r.meta_grad:.1e} ({r.meta_grad_floor:.1e})",
                     "max float64": f"{max(getattr(r, q + '_64') for q in QUANTITIES):.1e}"})
    failed = sorted({r["adapter"] for r in rows if not r["ok"]})
    verdict = ("every adapter computes torch's function (float64 within "
               f"{TOLERANCE_64:g}) and its float32 result is within tolerance"
               if not failed else f"FAILED for {', '.join(failed)}: their timings compare different maths")
    return f"{verdict}; all quantities in `parity.csv`.\n\n{pd.DataFrame(rows).to_markdown(index=False)}\n"


def _failures(run_dir: Path) -> str:
    lines = []
    for cell_dir, _ in _cells(run_dir):
        status_path = cell_dir / "status.json"
        if not status_path.exists():
            lines.append(f"- {cell_dir.name}: did not finish")
            continue
        for phase, s in json.loads(status_path.read_text())["phases"].items():
            if s["status"] != "ok":
                err = next(iter(sorted(cell_dir.glob(f"{phase}*.error.txt"))), None)
                last = err.read_text().strip().splitlines()[-1] if err else f"see {phase} log"
                lines.append(f"- {cell_dir.name} / {phase}: {last}")
    return "\n".join(lines) + "\n" if lines else "none\n"


def write_report(run_dir: Path) -> dict[str, pd.DataFrame]:
    run_dir = Path(run_dir)
    tables = collect(run_dir)
    for name in ("timings", "steps", "memory", "accuracy", "curves"):
        tables[name].to_csv(run_dir / f"{name}.csv", index=False)
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").exists() else {}
    env = manifest.get("harness_environment", {})
    plots = write_plots(run_dir, tables)
    fingerprints = []
    for name, s in manifest.get("specs", {}).items():
        for role, e in s.get("episodes", {}).items():
            if isinstance(e, dict):
                fingerprints.append(f"- {name} {role}: {e['count']} episodes, `{e['fingerprint'][:16]}`")
    text = f"""# metabench run {manifest.get('run_id', run_dir.name)}

- command: `{manifest.get('command', '?')}`
- profile: {manifest.get('profile')}, device: {manifest.get('device')}, threads per framework: {manifest.get('threads')}
- machine: {env.get('cpu')} ({env.get('cpu_count')} cores), {env.get('platform')}, Python {env.get('python')}
- git: {env.get('git', {}).get('sha')} (dirty: {env.get('git', {}).get('dirty')})
- started {manifest.get('started')}, finished {manifest.get('finished')}

Step times are rounds of one step each, the device synchronised inside the timed region,
after the first (compiling) step and the warm-up rounds; "x fastest" is the ratio of medians
within the table. Memory is measured in a process apart from timing.

## Parity against torch (same weights, same meta-batch of 4 tasks)

{_parity_section(run_dir)}
## Step times

{_steps_table(tables['steps'])}
## Peak memory (one outer step)

{_memory_table(tables['memory'])}
## Accuracy ({'mean +- 95% CI over test episodes'})

{_accuracy_table(tables['accuracy'])}
{_agreement(tables['accuracy'])}
## Episode fingerprints

{chr(10).join(fingerprints) or '_none_'}

## Failures

{_failures(run_dir)}
## Plots

{chr(10).join(f'![{p}]({p})' for p in plots) or '_none_'}
"""
    (run_dir / "summary.md").write_text(text)
    return tables


def write_plots(run_dir: Path, tables) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    written = []
    rounds = tables["timings"]
    if not rounds.empty:
        r = rounds.copy()
        r["ms"] = r["seconds"] * 1e3
        r["cell"] = r["spec"] + " / " + r["algorithm"] + " / " + r["phase"]
        g = sns.catplot(data=r, x="ms", y="adapter", col="cell", col_wrap=3, kind="box", sharex=False,
                        height=2.6, aspect=1.5, hue="framework", legend=False)
        g.set_titles("{col_name}")
        g.set_xlabels("step time (ms), rounds of one step")
        g.figure.suptitle("Step times", y=1.02)
        g.savefig(run_dir / "step_times.png", dpi=110, bbox_inches="tight")
        plt.close(g.figure)
        written.append("step_times.png")
    curves = tables["curves"]
    if not curves.empty:
        c = curves.copy()
        c["cell"] = c["spec"] + " / " + c["algorithm"]
        g = sns.relplot(data=c, x="train_seconds", y="val_mean", hue="framework", style="framework",
                        col="cell", col_wrap=3, kind="line", marker="o", height=2.8, aspect=1.3,
                        facet_kws={"sharey": False, "sharex": False})
        g.set_titles("{col_name}")
        g.set_axis_labels("meta-training wall-clock (s)", "validation metric")
        g.savefig(run_dir / "learning_curves.png", dpi=110, bbox_inches="tight")
        plt.close(g.figure)
        written.append("learning_curves.png")
    return written
