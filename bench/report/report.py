"""Results: tidy CSVs, the run's manifest, ``summary.md`` and seaborn plots.

Everything is rebuilt from the cells' own folders (``cells/<cell_id>/``), so a partial or
resumed run reports whatever its cells measured. Files written into the run folder:

- ``timings.csv``  one row per timed round, with the timing process it ran in
- ``steps.csv``    one row per (cell, phase): pytest-benchmark's statistics (median, IQR,
  quartiles, min, mean) of every round of every process, the two-level bootstrap CI of
  the median (processes, then rounds: NaN when too few to tell), how far apart the
  processes' medians are, first step (compile: median and range over the processes)
- ``processes.csv`` one row per (cell, phase, timing process): its median and first step
- ``memory.csv``   one row per cell: peak bytes and which API measured them
- ``accuracy.csv`` one row per cell and training seed: mean and 95% CI over the test
  episodes, target and time to target
- ``episodes.csv`` the test metric of every test episode, per cell and seed (paired tests)
- ``curves.csv``   learning curves (validation metric every ``val_every`` steps, with time)
- ``benchmark.json`` every cell's pytest-benchmark records in one file (``pytest-benchmark compare``)
- ``manifest.json`` environment, specs with episode fingerprints, each cell's status
- ``datapackage.json`` the CSVs' metadata (a Frictionless tabular data package): each
  table's columns and types, and the ``schema_version`` of the tables
- ``summary.md`` (parity verdict, comparison tables from ``bench.report.tables``, details),
  ``speedups.png``, ``step_times.png``, ``learning_curves.png`` (``bench.report.plots``)

Numbers from a cell are read only when the phase that wrote them ended "ok" in the
cell's ``status.json``: a failed, timed-out or diverged phase never enters a median.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.stats import TOO_FEW
from bench.measure import hardware
from bench.report import tables
from bench.report.results import (
    SCHEMA_VERSION,
    TABLES,
    adapter_info,
    cell_dirs,
    collect,
    merged_benchmark_json,
    read_json,
    read_manifest,
    read_parity,
    require_run,
)


def _marked(adapters, spec: str, algorithm: str, marks: dict) -> list[str]:
    """Adapter names with their parity mark (failed, or not checked)."""
    return [f"{a} {marks[(a, spec, algorithm)]}" if (a, spec, algorithm) in marks else a for a in adapters]


def _detail_steps_table(steps: pd.DataFrame, marks: dict) -> str:
    """Long format, one table per spec / algorithm / phase: every statistic of every adapter."""
    if steps.empty:
        return "_no timing results_\n"
    lines = []
    keyed = sorted(steps.groupby(["spec", "algorithm", "phase"], sort=False), key=lambda kg: tables.row_key(*kg[0]))
    for (spec, algorithm, phase), g in keyed:
        fastest = g["median"].min()
        t = pd.DataFrame({
            "adapter": _marked(g["adapter"], spec, algorithm, marks), "compilation": g["compilation"],
            "median": [tables.format_seconds(m, (lo, hi)) for m, lo, hi in
                       zip(g["median"], g["median_ci_low"], g["median_ci_high"])],
            "IQR": g["iqr"].map(tables.format_seconds), "min": g["min"].map(tables.format_seconds),
            "processes x rounds": [f"{int(p)} x {int(n)}" for p, n in zip(
                g.get("processes", pd.Series(1, index=g.index)).fillna(1),
                g.get("rounds_per_process", g["rounds"]).fillna(g["rounds"]))],
            # how far apart the processes' own medians are: what rounds in one process never show
            "spread": [("-" if tables.is_missing(v) else f"{100 * v:.0f}%" + (f" {tables.NOISY}" if tables.noisy(v)
                                                                             else ""))
                       for v in g.get("process_spread", pd.Series(math.nan, index=g.index))],
            "first step (compile)": [_first_step_text(r) for r in g.itertuples()],
        })
        if phase != tables.SAMPLING:  # host-side numpy is shown, never ranked
            t["x fastest"] = (g["median"] / fastest).map(lambda r: f"{r:.2f}")
            if "flops" in g and g["flops"].notna().any():  # analytic counts (bench.core.flops); older runs lack them
                rate = [f / m / 1e9 if not tables.is_missing(f) and m else math.nan
                        for f, m in zip(g["flops"], g["median"])]
                t["GFLOP/s"] = [f"{r:.1f}" if not math.isnan(r) else "" for r in rate]
                # the share of what this framework's matrix multiply does here: room left, or none
                t["% GEMM peak"] = [f"{100 * r / p:.0f}%" if not math.isnan(r) and not tables.is_missing(p) and p
                                    else "" for r, p in zip(rate, g.get("gemm_gflops", [None] * len(g)))]
        t = t.iloc[g["adapter"].to_numpy().argsort(kind="stable")]
        # as formatted: tabulate would re-parse "1.00" and "80.0" as numbers and drop their decimals
        lines.append(f"#### {spec} / {algorithm} / `{phase}`\n\n{t.to_markdown(index=False, disable_numparse=True)}\n")
    return "\n".join(lines)


def _first_step_text(r) -> str:
    """The first step's median over the processes, and their range when there are several."""
    text = tables.format_seconds(r.first_step_seconds)
    lo, hi = getattr(r, "first_step_min", None), getattr(r, "first_step_max", None)
    if ((getattr(r, "processes", 1) or 1) > 1 and not (tables.is_missing(lo) or tables.is_missing(hi))
            and tables.format_seconds(lo) != tables.format_seconds(hi)):
        text += f" ({tables.format_seconds(lo)} to {tables.format_seconds(hi)})"
    return text


def _accuracy_detail(acc: pd.DataFrame, marks: dict) -> str:
    """One row per cell and seed: the test result, training time, time to target."""
    if acc.empty:
        return "_no accuracy results_\n"
    t = acc.sort_values(["spec", "algorithm", "adapter", "seed"])
    out = pd.DataFrame({
        "spec": t["spec"], "algorithm": t["algorithm"],
        "adapter": [_marked([a], sp, al, marks)[0] for a, sp, al in zip(t["adapter"], t["spec"], t["algorithm"])],
        "seed": t["seed"],
        "result (mean ± 95% CI)": [tables.format_metric(m, c, metric)
                                   for m, c, metric in zip(t["mean"], t["ci95"], t["metric"])],
        "episodes": t["episodes"], "train steps": t["train_steps"],
        "train time": t["train_seconds"].map(tables.format_seconds),
        "time to target": [_reached_text(r) for r in t.itertuples()],
    })
    return out.to_markdown(index=False) + "\n"


def _reached_text(r) -> str:
    if tables.is_missing(r.target):
        return "no target"
    if tables.is_missing(r.time_to_target_seconds):
        return "not reached"
    return f"{tables.format_seconds(r.time_to_target_seconds)} ({int(r.steps_to_target)} steps)"


def _paired_section(tabs: dict, baseline: str) -> str:
    paired = tables.paired_comparisons(tabs["episodes"], baseline)
    if paired.empty:
        return ("Not available: this run saved no per-episode test metrics (`episodes.csv`), so "
                "frameworks are compared by their confidence intervals only.\n")
    metric_of = {(r.spec, r.algorithm): r.metric for r in tabs["accuracy"].itertuples()}
    return (f"{tables.paired_sentence(paired, metric_of, baseline)}\n\n"
            "Every framework is evaluated on the same test episodes; "
            "each row is a paired t-test of the per-episode metric (averaged over the seeds each "
            "adapter has) minus the baseline's, Holm-adjusted over the table.\n\n"
            f"{tables.paired_table(paired, metric_of).to_markdown(index=False)}\n")


def _memory_table(mem: pd.DataFrame) -> str:
    if mem.empty:
        return "_no memory results_\n"
    if "first_step_mib" not in mem:
        mem = mem.assign(first_step_mib=float("nan"))
    t = mem[["spec", "algorithm", "adapter", "phase", "peak_mib", "first_step_mib", "source"]].copy()
    t["peak_mib"] = t["peak_mib"].map(lambda v: f"{v:.1f}")
    # the first step alone, compilation and first-call allocations included
    t["first_step_mib"] = t["first_step_mib"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
    return t.sort_values(["spec", "algorithm", "adapter"]).to_markdown(index=False) + "\n"


def _parity_rows(t: pd.DataFrame) -> list[dict]:
    from bench.check.parity import QUANTITIES

    rows = []
    for r in t.itertuples():
        if isinstance(getattr(r, "error", None), str):
            rows.append({"adapter": r.adapter, "spec": r.spec, "algorithm": r.algorithm, "ok": False,
                         "meta_grad float32 (torch floor)": "", "max float64": "",
                         "diagnosis": r.error, "contract": getattr(r, "check", None) == "contract"})
            continue
        # numbers as numbers: a damaged (truncated) parity.csv may leave a column as text
        num = lambda v: float(pd.to_numeric(v, errors="coerce"))
        # a run from before a quantity was compared has no column for it
        errors64 = [num(getattr(r, q + "_64", np.nan)) for q in QUANTITIES]
        worst = max((e for e in errors64 if e == e), default=float("nan"))
        rows.append({"adapter": r.adapter, "spec": r.spec, "algorithm": r.algorithm, "ok": bool(r.ok),
                     "meta_grad float32 (torch floor)": f"{num(r.meta_grad):.1e} ({num(r.meta_grad_floor):.1e})",
                     "max float64": f"{worst:.1e}",
                     "diagnosis": d if isinstance(d := getattr(r, "diagnosis", None), str) else ""})
    return rows


def _parity_verdict(run_dir: Path) -> str:
    """One paragraph: whether every adapter computes torch's function, naming them."""
    t = read_parity(run_dir)
    if t is None:
        log = run_dir / "parity.log"
        return (f"not computed: {log.read_text().strip().splitlines()[-1]}\n" if log.exists()
                else "not run (`--phases parity`, or `metabench parity`): no timing below is "
                     "checked to compute the same maths.\n")
    from bench.check.parity import TOLERANCE_64

    failed = sorted({r["adapter"] for r in _parity_rows(t) if not r["ok"]})
    checked = ", ".join(sorted(set(t["adapter"])))
    if failed:
        return (f"FAILED for {', '.join(failed)}: their timings compare different maths, or not the whole "
                f"step (marked {tables.FAILED_PARITY} below; the comparisons and contract checks that failed are "
                f"under Failures). Checked: {checked}.\n")
    return (f"every adapter computes torch's function (float64 within {TOLERANCE_64:g}) and its float32 "
            f"result is within tolerance: {checked}. Details under Parity details and in `parity.csv`.\n")


def _parity_details(run_dir: Path) -> str:
    t = read_parity(run_dir)
    if t is None:
        return "_no parity table_\n"
    # the diagnoses of failed comparisons are under Failures, one line each
    rows = pd.DataFrame(_parity_rows(t)).drop(columns="diagnosis", errors="ignore")
    # a pass that needed the tie-free retry says so: the first batch's float32 did not agree
    notes = [f"- {r.adapter} on {r.spec} / {r.algorithm}: {r.note}" for r in t.itertuples()
             if isinstance(getattr(r, "note", None), str)]
    return f"{rows.to_markdown(index=False)}\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def _failures(run_dir: Path, status: pd.DataFrame) -> str:
    """Every non-ok phase with its status and reason, every unfinished cell, every failed
    parity comparison (adapter vs torch on spec / algorithm)."""
    lines = []
    seen = set(status["cell_id"])
    for cell_dir, _ in cell_dirs(run_dir):
        if cell_dir.name not in seen and not (cell_dir / "status.json").exists():
            lines.append(f"- {cell_dir.name}: did not finish")
    for r in status[status["status"] != "ok"].itertuples():
        why = f": {r.detail}" if r.detail else f" (see cells/{r.cell_id}/{r.phase} log)"
        rc = "" if tables.is_missing(r.returncode) else f", exit {int(r.returncode)}"
        lines.append(f"- {r.cell_id} / {r.phase}: {r.status}{rc}{why}")
    parity = read_parity(run_dir)
    if parity is not None:
        for r in _parity_rows(parity):
            if not r["ok"]:
                why = r.get("diagnosis") or (f"{r['meta_grad float32 (torch floor)']} (meta_grad float32 "
                                             f"error, torch floor)")
                if r.get("contract") is True:
                    lines.append(f"- contract {r['adapter']} on {r['spec']} / {r['algorithm']}: {why}")
                else:
                    lines.append(f"- parity {r['adapter']} vs torch on {r['spec']} / {r['algorithm']}: {why}")
    elif (run_dir / "parity.log").exists():
        lines.append(f"- parity: {(run_dir / 'parity.log').read_text().strip().splitlines()[-1]}")
    return "\n".join(lines) + "\n" if lines else "none\n"


def _fingerprints(manifest: dict) -> str:
    lines = []
    for name, s in (manifest.get("specs") or {}).items():
        episodes = s.get("episodes") if isinstance(s.get("episodes"), dict) else {}
        for role, e in episodes.items():
            if isinstance(e, dict) and isinstance(e.get("fingerprint"), str):
                lines.append(f"- {name} {role}: {e.get('count')} episodes, `{e['fingerprint'][:16]}`")
    return "\n".join(lines) or "_none_"


def thread_mismatches(run_dir: Path, asked) -> list[str]:
    """Adapters whose framework reports another intra-op thread count than the run asked
    for (a framework without a thread setting runs on whatever it likes): their times are
    not comparable with the others'."""
    out = {}
    for env_path in sorted((run_dir / "cells").glob("*/environment.json")):
        info = read_json(env_path).get("adapter_info", {})
        if asked is not None and info.get("threads") != asked:
            out[info.get("framework", env_path.parent.name)] = info.get("threads")
    return [f"{fw} reports {n if n is not None else 'no'} threads" for fw, n in sorted(out.items())]


def adapters_section(run_dir: Path) -> str:
    """``## How each adapter ran``: each adapter's own description (``Adapter.describe``'s
    notes) with the cells it held for. An adapter that picks its form by shape (torch-maml:
    a loop or vmap over tasks) says here which form ran where."""
    held: dict[tuple[str, str], list[str]] = {}
    for cell_dir in sorted(p for p in (run_dir / "cells").glob("*") if p.is_dir()):
        info = adapter_info(cell_dir)
        cell = read_json(cell_dir / "cell.json") if (cell_dir / "cell.json").exists() else {}
        adapter = cell.get("adapter") or cell_dir.name.split("__")[0]
        where = f"{cell.get('spec', '?')} / {cell.get('algorithm', '?')}"
        if info.get("notes"):
            held.setdefault((adapter, info["notes"]), []).append(where)
    if not held:
        return ""
    import textwrap

    lines = [textwrap.fill(f"- **{adapter}** ({', '.join(sorted(set(cells)))}): {notes}", 100,
                           subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
             for (adapter, notes), cells in held.items()]
    return "## How each adapter ran\n\n" + "\n".join(lines) + "\n\n"


def _sweep_section(run_dir: Path, tabs: dict) -> str:
    """``## How cost grows``, for a run with ``--sweep`` (``bench.report.sweeps``); else nothing."""
    from bench.report.sweeps import sweep_markdown, sweep_points

    text = sweep_markdown(sweep_points(run_dir, tabs["steps"], tabs["memory"]))
    return f"## How cost grows (sweeps)\n\n{text}\n" if text else ""


def defaults_section(steps: pd.DataFrame, device: str, marks: dict) -> str:
    """``## Defaults against the variants measured``: for each framework, algorithm and
    spec timed with more than one adapter, its default on this device (``bench.core.registry``)
    against the fastest adapter's outer step. A default should be its framework's fastest
    correct adapter; a faster variant is named, with its parity mark when it has one."""
    from bench.core import registry

    s = steps[steps["phase"] == "outer_step"] if not steps.empty else steps
    if s.empty:
        return ""
    known = registry.entries()
    rows = []
    for (spec, algorithm, framework), g in s.groupby(["spec", "algorithm", "framework"], sort=True):
        g = g.drop_duplicates("adapter").reset_index(drop=True)
        # an adapter that failed parity is never offered as the faster choice (issue 22)
        g = g[[marks.get((a, spec, algorithm)) != tables.FAILED_PARITY for a in g["adapter"]]].reset_index(drop=True)
        if len(g) < 2:
            continue
        defaults = [a for a in g["adapter"] if a in known and known[a].default_on(device)
                    and algorithm in known[a].algorithms]
        if not defaults:
            continue
        fastest = g.loc[g["median"].idxmin()]
        d = g[g["adapter"] == defaults[0]].iloc[0]
        ratio = d["median"] / fastest["median"]
        mark = marks.get((fastest["adapter"], spec, algorithm))
        # faster only where the medians' CIs do not overlap; else the two are level here
        apart = fastest.get("median_ci_high", math.nan) < d.get("median_ci_low", math.nan)
        told = not (tables.is_missing(fastest.get("median_ci_high")) or tables.is_missing(d.get("median_ci_low")))
        if fastest["adapter"] == d["adapter"]:
            verdict = "the default is the fastest"
        elif not told:  # one timing process a cell: no CI that covers process-to-process variation
            verdict = f"{fastest['adapter']} {ratio:.2f}x: {TOO_FEW} (one timing process each)"
        elif not apart:
            verdict = f"level: {fastest['adapter']} {ratio:.2f}x, the medians' CIs overlap"
        else:
            verdict = (f"**{fastest['adapter']} is {ratio:.2f}x faster**"
                       + (f" ({mark}: see the legend)" if mark else ""))
        rows.append({"workload": tables.row_label(spec, algorithm), "framework": framework,
                     f"default on {device}": d["adapter"], "its outer step": tables.format_seconds(d["median"]),
                     "fastest measured": fastest["adapter"],
                     "fastest's outer step": tables.format_seconds(fastest["median"]), "verdict": verdict})
    if not rows:
        return ""
    return ("## Defaults against the variants measured\n\nEach framework's default adapter on this device "
            "(`metabench list`, as registered in the code that wrote this report) against the fastest adapter "
            "of that framework timed in this run that did not fail parity (outer step median). A default is "
            "meant to be its framework's fastest adapter that passes parity.\n\n"
            f"{pd.DataFrame(rows).to_markdown(index=False)}\n\n")


def overhead_line(steps: pd.DataFrame) -> str:
    """The harness's cost: pytest-benchmark's median of each step over the median of the
    same step timed by a bare loop in the same process, right after (``bench.measure.suite``)."""
    if steps.empty or "bare_median" not in steps or steps["bare_median"].isna().all():
        return "Harness overhead: not measured (a run from before metabench measured it)."
    t = steps[steps["bare_median"].notna() & (steps["phase"] != tables.SAMPLING)]
    ratio = (t["median"] / t["bare_median"]).sort_values()
    worst = t.loc[(ratio - 1).abs().idxmax()]
    return (f"Harness overhead: pytest-benchmark's median over a bare loop's median of the same step in the "
            f"same process is {ratio.median():.3f} (median of {len(ratio)} steps; range "
            f"{ratio.iloc[0]:.3f} to {ratio.iloc[-1]:.3f}, the furthest from 1 {worst['adapter']} "
            f"{worst['spec']} `{worst['phase']}`).")


EARLY_ROUNDS = 5  # the first timed rounds of a process, set against the rest: is the warm-up enough?


def noise_line(timings: pd.DataFrame) -> str:
    """Where the step times' noise lives (``bench.core.stats.noise_components``), over the rows
    timed in several processes: between processes or between rounds, and whether the first
    timed rounds still run apart from the rest (a warm-up too short)."""
    from bench.core.stats import noise_components

    t = timings[timings["phase"] != tables.SAMPLING] if not timings.empty else timings
    if t.empty or "process" not in t or t["process"].nunique() < 2:
        return ("Timing noise: one timing process per cell, so how much a new process moves a step is not "
                "measured here (`--repeats 3` or more).")
    rows = []
    for key, g in t.groupby(["spec", "algorithm", "adapter", "phase"]):
        groups = [p["seconds"].to_numpy() for _, p in g.sort_values("round").groupby("process")]
        if len(groups) < 2:
            continue
        between, within = noise_components(groups)
        early = [np.median(v[:EARLY_ROUNDS]) / np.median(v[EARLY_ROUNDS:]) - 1 for v in groups
                 if v.size > 2 * EARLY_ROUNDS]
        rows.append((key, between, within, float(np.median(early)) if early else math.nan))
    if not rows:
        return "Timing noise: no row was timed in more than one process."
    between = np.array([r[1] for r in rows])
    within = np.array([r[2] for r in rows])
    early = np.array([r[3] for r in rows if not math.isnan(r[3])])
    worst = rows[int(np.nanargmax(between))]
    text = (f"Timing noise, over the {len(rows)} rows timed in several processes: a new process moves a "
            f"row's median by {100 * np.nanmedian(between):.1f}% (standard deviation across processes, median "
            f"over rows; largest {100 * worst[1]:.1f}%, {' / '.join(worst[0])}), where the rounds inside one "
            f"process pin its own median to {100 * np.nanmedian(within):.1f}%; processes dominate in "
            f"{int((between > within).sum())} of {len(rows)} rows, so more processes, not more rounds, "
            "narrow these CIs.")
    if early.size:
        text += (f" The first {EARLY_ROUNDS} timed rounds run {100 * np.median(early):+.1f}% from the rest "
                 f"(median over rows; within {100 * np.quantile(np.abs(early), 0.9):.1f}% in 9 rows of 10).")
    return text


def machine_load_line(run_dir: Path, most: int = 6) -> str:
    """One line on what else used the CPU while the cells ran (``bench.measure.machine_load``):
    quiet, or the phases whose numbers were taken on a busy machine."""
    from bench.measure.machine_load import FLAG_CORES, flagged

    busy, recorded, unrecorded = [], 0, 0
    for path in sorted((run_dir / "cells").glob("*/status.json")):
        for phase, s in read_json(path).get("phases", {}).items():
            recorded, unrecorded = (recorded + 1, unrecorded) if s.get("machine") else (recorded, unrecorded + 1)
            if why := flagged(s.get("machine")):
                busy.append(f"{path.parent.name} / {phase} ({why})")
    if not recorded:
        return "not recorded (a run from before metabench recorded it)"
    older = f"; not recorded for {unrecorded} phases run before metabench recorded it" if unrecorded else ""
    if not busy:
        return f"quiet: other processes used under {FLAG_CORES:g} cores in each of {recorded} phases{older}"
    more = f"; +{len(busy) - most} more (status.json, `machine`)" if len(busy) > most else ""
    return (f"**BUSY** in {len(busy)} of {recorded} phases, their times inflated: {'; '.join(busy[:most])}"
            f"{more}{older}")


def _continued(text: str, width: int = 110) -> str:
    """A long list item's text wrapped, its continuation lines indented under it: generated
    lines stay within the project's Markdown width limits (tests/test_docs.py)."""
    import textwrap

    return "\n  ".join(textwrap.wrap(text, width)) or text


SMOKE_NOTE = ("\n**A smoke run: its numbers prove that every phase runs and are not comparable** (tiny budgets "
              "and meta-batches, one timing process of 3 rounds a cell); time with `--profile cpu`.\n")


def summary_markdown(run_dir: Path, tabs: dict, plots: list[str], baseline: str = "torch") -> str:
    """``summary.md``: the parity verdict, the generated comparison tables (two screens),
    then the detail sections, the failures and the plots."""
    manifest = read_manifest(run_dir / "manifest.json") if (run_dir / "manifest.json").exists() else {}
    env = manifest.get("harness_environment", {})
    parity = read_parity(run_dir)
    cells = tabs["status"].drop_duplicates("cell_id") if not tabs["status"].empty else tabs["steps"]
    marks = tables.parity_marks(parity, cells)
    legend = tables.marks_legend(marks)
    unequal = thread_mismatches(run_dir, manifest.get("threads"))
    mixed = hardware.mixed_hardware_note(run_dir)
    threads = f"{manifest.get('threads')}" + (f" (**UNEQUAL**: {'; '.join(unequal)}: their step times are not "
                                              "comparable)" if unequal else "")
    command = manifest.get("command", "?")
    # a long command (a sweep's spec references, a dozen adapters) as a code block of its own
    command = f"`{command}`" if len(command) <= 300 else f"\n\n      {command}\n"
    defaults = defaults_section(tabs['steps'], manifest.get('device', 'cpu'), marks)
    return f"""# metabench run {manifest.get('run_id', run_dir.name)}
{SMOKE_NOTE if manifest.get('profile') == 'smoke' else ''}
- command: {command}
- profile: {manifest.get('profile')}, device: {manifest.get('device')}, threads per framework: {threads}
- machine: {env.get('cpu')} ({env.get('cpu_count')} cores), {env.get('platform')}, Python {env.get('python')}
- machine load: {_continued(machine_load_line(run_dir))}
- cells ran by: {hardware.placement_line(run_dir)}{mixed and chr(10) + '- ' + mixed}
- git: {env.get('git', {}).get('sha')} (dirty: {env.get('git', {}).get('dirty')})
- started {manifest.get('started')}, finished {manifest.get('finished')}
- tables: schema version {SCHEMA_VERSION}, each CSV's columns in `datapackage.json`{_manifest_version_note(manifest)}

## Parity against torch (same weights, same meta-batch)

{_parity_verdict(run_dir)}
## Comparison

{mixed and mixed + chr(10) + chr(10)}{tables.headline_sections(tabs, baseline, parity)}
Step times are rounds of one step each, the device synchronised inside the timed region;
`sample_episodes` (host-side numpy) is left out of these tables and shown in the details.
Memory is measured in a process apart from timing.

{_sweep_section(run_dir, tabs)}{defaults}{adapters_section(run_dir)}## Step times

{overhead_line(tabs['steps'])}

{tables._wrap(noise_line(tabs['timings']))}

{_detail_steps_table(tabs['steps'], marks)}{legend and chr(10) + legend + '.' + chr(10)}
## Peak memory (one outer step)

`peak_mib`: the outer steps after the first; `first_step_mib`: the first step alone, its
compilation and first-call allocations included (on a CPU, growth of the process's peak
resident set; `-`: not read apart).

{_memory_table(tabs['memory'])}
## Accuracy per cell and seed (mean ± 95% CI over test episodes)

{_accuracy_detail(tabs['accuracy'], marks)}
## Paired comparison on the same test episodes

{_paired_section(tabs, baseline)}
## Parity details

{_parity_details(run_dir)}
## Episode fingerprints

{_fingerprints(manifest)}

## Failures

{_failures(run_dir, tabs['status'])}
## Plots

{chr(10).join(f'![{p}]({p})' for p in plots) or '_none_'}
"""


def _manifest_version_note(manifest: dict) -> str:
    version = manifest.get("schema_version", 1)
    return "" if version == SCHEMA_VERSION else (
        f"; the manifest is of version {version}" + (" (recorded before versions were)" if version == 1 else ""))


def _data_rows(path: Path) -> int:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return max(sum(1 for line in f if line.strip()) - 1, 0)
    except OSError:
        return 0


def _refuse_to_shrink(run_dir: Path, frames: dict[str, pd.DataFrame]) -> None:
    """Never replace a table with fewer rows than it holds: the tables are rebuilt from the
    cells' folders, and a run whose cells/ went missing (or lost cells) would otherwise
    overwrite its committed numbers with less. Nothing is written when one would shrink."""
    from bench.core.errors import MetabenchError

    for name, frame in frames.items():
        path = run_dir / f"{name}.csv"
        held = _data_rows(path) if path.exists() else 0
        if held > len(frame):
            raise MetabenchError(f"report: {path} holds {held} rows and its cells now give {len(frame)}: "
                                 f"{run_dir / 'cells'} lacks what the tables were built from; restore it "
                                 f"(git checkout {run_dir}) or delete {path.name} to rebuild from what is there")


def write_report(run_dir: Path, baseline: str = "torch") -> dict[str, pd.DataFrame]:
    """Rebuild every table, plot and ``summary.md`` of ``run_dir`` from its cells' folders."""
    from bench.core import atomic
    from bench.report.plots import write_plots

    run_dir = require_run(Path(run_dir), "report")  # never write a summary into a folder that holds no run
    tabs = collect(run_dir)
    _refuse_to_shrink(run_dir, {name: tabs[name] for name in TABLES})
    for name in TABLES:
        atomic.write_csv(run_dir / f"{name}.csv", tabs[name])
    atomic.write_json(run_dir / "datapackage.json", data_package(run_dir.name, tabs))
    merged = merged_benchmark_json(run_dir)
    if merged:
        atomic.write_json(run_dir / "benchmark.json", merged)
    plots = write_plots(run_dir, tabs, baseline)
    summary = summary_markdown(run_dir, tabs, plots, baseline)
    atomic.write_text(run_dir / "summary.md", summary)
    from bench.report.html import write_run_html

    write_run_html(run_dir, tabs, summary)
    return tabs


def _field_type(dtype) -> str:
    """A pandas dtype as a Table Schema field type."""
    api = pd.api.types
    if api.is_bool_dtype(dtype):
        return "boolean"
    if api.is_integer_dtype(dtype):
        return "integer"
    return "number" if api.is_float_dtype(dtype) else "string"


def data_package(run_id: str, tabs: dict[str, pd.DataFrame]) -> dict:
    """The run's CSVs described as a Frictionless tabular data package
    (https://specs.frictionlessdata.io/): each file's columns and types, and the schema
    version of the tables, so a reader (or ``frictionless validate``) knows what it holds."""
    return {
        "profile": "tabular-data-package",
        "name": run_id.lower().replace("_", "-"),
        "schema_version": SCHEMA_VERSION,
        "resources": [{
            "name": name, "path": f"{name}.csv", "profile": "tabular-data-resource", "format": "csv",
            "rows": len(tabs[name]),
            "schema": {"fields": [{"name": str(c), "type": _field_type(t)} for c, t in tabs[name].dtypes.items()]},
        } for name in TABLES],
    }


def tables_schema_version(run_dir: Path) -> int:
    """The schema version of a run folder's tables: its datapackage.json's, else 1 (written
    before versions were recorded)."""
    path = Path(run_dir) / "datapackage.json"
    if not path.exists():
        return 1
    return int(read_json(path).get("schema_version", 1))


# -- results/README.md: the index of committed runs -----------------------------------------

INDEX_BEGIN, INDEX_END = "<!-- metabench:index -->", "<!-- /metabench:index -->"


def run_headline(run_dir: Path, baseline: str = "torch") -> str:
    """One line about a run: its cells, who is fastest on how many step phases (sampling
    left out), the parity verdict and the failures. Deterministic, from the cells' files."""
    tabs = collect(run_dir)
    status = tabs["status"]
    cells = status.drop_duplicates("cell_id") if not status.empty else status
    frameworks = sorted(set(cells["framework"]), key=lambda f: tables._label_key(f, baseline)) if len(cells) else []
    seeds = cells["seed"].nunique() if len(cells) else 0
    parts = [f"{len(cells)} cells, " + (f"{frameworks[0]} only" if len(frameworks) == 1 else ", ".join(frameworks))
             + (f", {seeds} seeds" if seeds > 1 else "")]
    steps = tabs["steps"]
    if len(frameworks) > 1 and not steps.empty:
        s = steps[steps["phase"] != tables.SAMPLING]
        s = s.assign(label=[tables.column_label(f, a, al) for f, a, al in
                            zip(s["framework"], s["adapter"], s["algorithm"])])
        groups = s.groupby(["spec", "algorithm", "phase"])
        fastest = s.loc[groups["median"].idxmin(), "label"].value_counts()
        wins = sorted(fastest.items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append(f"fastest of {len(groups)} step phases: " + ", ".join(f"{k} {v}" for k, v in wins))
    acc = tables.accuracy_summary(tabs["accuracy"])
    if len(frameworks) == 1 and not acc.empty:  # nothing to rank: say what it measured
        parts.append("accuracy " + ", ".join(f"{r.spec} / {r.algorithm} {tables.format_metric(r.mean, None, r.metric)}"
                                             for r in acc.itertuples()))
    parity = read_parity(run_dir)
    if parity is not None:
        bad = sorted(set(parity.loc[~parity["ok"].astype(bool), "adapter"]))
        parts.append("parity ok" if not bad else f"parity FAILED: {', '.join(bad)}")
    failed = tabs["status"][tabs["status"]["status"] != "ok"] if not tabs["status"].empty else tabs["status"]
    if not failed.empty:
        parts.append(f"{failed['cell_id'].nunique()} cells with failures")
    return "; ".join(parts)


def index_table(results_dir: Path, runs=None) -> pd.DataFrame:
    """One row per run folder under ``results_dir`` that has a manifest (or per folder named
    in ``runs``), newest first."""
    rows = []
    for manifest_path in sorted(Path(results_dir).glob("*/manifest.json")):
        run_dir = manifest_path.parent
        if runs is not None and run_dir.name not in runs:
            continue
        m = read_manifest(manifest_path)
        env = m.get("harness_environment", {})
        git = env.get("git", {})
        rows.append({
            "run": f"[`{run_dir.name}/`]({run_dir.name}/summary.md)",
            "date": (m.get("started") or "")[:10], "profile": m.get("profile"),
            "machine": f"{env.get('cpu')} x{env.get('cpu_count')}, {m.get('device')}, "
                       f"{m.get('threads')} thread{'s' if m.get('threads') != 1 else ''}",
            "git": f"`{(git.get('sha') or '?')[:7]}`" + (" (dirty)" if git.get("dirty") else ""),
            "headline": _stale_note(run_dir) + run_headline(run_dir),
            "_started": m.get("started") or "",
        })
    t = pd.DataFrame(rows, columns=["run", "date", "profile", "machine", "git", "headline", "_started"])
    return t.sort_values(["_started", "run"], ascending=False).drop(columns="_started")


def _stale_note(run_dir: Path) -> str:
    """A mark on an index row whose tables are of an older schema than this harness writes."""
    version = tables_schema_version(run_dir)
    return "" if version == SCHEMA_VERSION else (
        f"**tables of schema version {version}** (older than {SCHEMA_VERSION}: `metabench report "
        f"results/{run_dir.name}` re-renders them, where its cells allow); ")


def index_block(results_dir: Path, runs=None) -> str:
    """The generated block of ``results_dir/README.md``, markers included (``runs``: only
    these run folders)."""
    table = index_table(Path(results_dir), runs)
    return (f"{INDEX_BEGIN}\n{table.to_markdown(index=False) if not table.empty else '_no runs_'}\n"
            "\nGenerated by `metabench index` from each run's `manifest.json` and cells; do not edit.\n"
            f"{INDEX_END}")


def write_index(results_dir: Path) -> Path:
    """Regenerate the index table of ``results_dir/README.md`` from the runs' manifests. Only
    the text between the index markers is rewritten, so prose around it is kept; a README
    without markers gets them, after its text."""
    from bench.core import atomic

    results_dir = Path(results_dir)
    path = results_dir / "README.md"
    block = index_block(results_dir)
    text = path.read_text(encoding="utf-8") if path.exists() else (
        "# Committed runs\n\nEach run folder is written by `metabench run`; its `summary.md` names the "
        "command, machine, git state and profile that produced it.\n")
    if INDEX_BEGIN in text and INDEX_END in text:
        head, rest = text.split(INDEX_BEGIN, 1)
        text = head + block + rest.split(INDEX_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic.write_text(path, text)
    from bench.report.html import write_index_html

    write_index_html(results_dir, index_table(results_dir))
    return path
