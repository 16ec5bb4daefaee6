"""``python -m bench.check.baselines OUT_DIR``: metabench's default MAML adapters against MAML
written plainly in each framework (issue 12), on the same shapes, weights and episodes.

Each framework runs in a process of its own (``bench.check.baselines.worker``), pinned to the
same cores and thread count as the harness pins a cell, one after another. Writes
``baselines.csv`` (one row per framework x workload x implementation), ``baselines.md``
(the ratios metabench / plain with their CIs, the verdict, the agreement of the maths),
``baselines.json`` (raw round times) and each process's log into OUT_DIR. After each
framework's timing, a second process of that framework asks in float64 whether each pair
computes the same maths (``bench.check.baselines.maths``: ``<framework>-float64.json``).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from bench.check.baselines.worker import PAIRS, TOLERANCE, WARMUP_SECONDS
from bench.check.baselines.workloads import GRIDS, WORKLOADS
from bench.check.baselines.workloads import workload as workload_named
from bench.check.parity import TOLERANCE_64
from bench.core import atomic

FRAMEWORKS = tuple(PAIRS)
COLUMNS = ("workload", "spec", "framework", "implementation", "kind", "compared_with", "median_ms", "iqr_ms",
           "q1_ms", "q3_ms", "compile_s", "probe_s", "processes", "rounds", "warmup", "threads", "ratio",
           "ratio_ci_low", "ratio_ci_high", "max_rel_diff", "grad_rel_diff", "params_rel_diff", "loss_rel_diff",
           "agrees", "recompiled_while_timed", "batch_digest", "adapter_is_default", "grad_rel_diff_float64",
           "same_maths", "adapter_float32_error", "plain_float32_error")

# Why a plain version's meta-gradient differs from metabench's, where it does (Omniglot's
# BatchNorm): what the md says. Checked once on the Omniglot batch (graph mode, 1 thread):
# the plain torch version with metabench's written-out BatchNorm instead of F.batch_norm
# matches torch-maml exactly (2.3e-2 -> 0); the plain TF version with the variance written
# out instead of tf.nn.moments falls from 2.9e-1 to 3.8e-4 (TF's float32 reductions).
KNOWN_DIFFERENCES = {
    # keyed by the adapter where the adapter's side differs, else by the plain version
    # measured once on the Omniglot batch: float32 against torch's float64 meta-gradient,
    # eager torch 2.0e-6, torch.compile 3.5e-4, jax-maml 1.8e-4, tensorflow-maml-xla 1.3e-5
    # (all conv3.weight-worst where large; `python -m bench.check.baselines.precision`): 163 near-ties
    "torch-maml@compile=true": "float32 at this batch's max-pool near-ties: its 4 tasks x 75 query images hold "
                               "163 max-pool windows whose top two are closer than float32 can order "
                               "(`bench.check.near_ties`), where a float32 computation may pass the gradient to the "
                               "other input; against torch's float64 meta-gradient, eager torch is 2.0e-6 off, "
                               "torch.compile 3.5e-4 and jax-maml, which passes parity, 1.8e-4",
    "plain-tf-exactbn": "float32 rounding of TF's long reductions (one-stage means over N, H, W; metabench "
                        "sums them in three stages), and Keras' Adam, which puts epsilon before the bias "
                        "correction",
    "plain-tf-xla-exactbn": "as plain-tf-exactbn; under XLA, `tf.nn.max_pool2d`'s second derivative "
                            "(MaxPoolGradGrad) may add to it: XLA picks each window's maximum from "
                            "bfloat16-rounded inputs (metabench's XLA variant takes elementwise maxima)",
    "plain-torch": "torch 2.13's vmapped second derivative through `F.batch_norm` is wrong (metabench writes "
                   "BatchNorm out from mean and variance for that reason, `implementations/torch/common.py`; "
                   "with that BatchNorm this plain version matches metabench exactly)",
    "plain-tf": "`tf.nn.moments` stops the gradient through the mean inside the variance: exact to first "
                "order, not for second-order MAML's Hessian term (metabench writes the variance out); the rest "
                "is float32 rounding of TF's long reductions, and Keras' Adam, which puts epsilon before the "
                "bias correction",
    "plain-tf-xla": "as plain-tf; under XLA, `tf.nn.max_pool2d`'s second derivative (MaxPoolGradGrad) may "
                    "add to it: XLA picks each window's maximum from bfloat16-rounded inputs (metabench's XLA "
                    "variant takes elementwise maxima, `implementations/tensorflow/common.py`)",
}


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _tee(stream, log, framework: str) -> None:
    for line in stream:
        log.write(line)
        if line.startswith((f"[{framework}]", f"[{framework} float64]")):
            print(line.rstrip(), flush=True)


def run_framework(framework: str, out_dir: Path, args, float64: bool = False,
                  process: int = 0) -> tuple[dict | None, str | None]:
    """One framework's worker process (timing process ``process`` of ``--repeats``, or with
    ``float64`` the maths check, ``bench.check.baselines.maths``), its output teed to
    ``<framework>[-p<k>|-float64].log``; its whole process group killed after ``--timeout``
    seconds. Returns (its results, why it failed)."""
    stem = f"{framework}-float64" if float64 else (f"{framework}-p{process}" if args.repeats > 1 else framework)
    result_path = out_dir / f"{stem}.json"
    result_path.unlink(missing_ok=True)
    if float64:
        cmd = [sys.executable, "-m", "bench.check.baselines.maths", framework, str(result_path),
               "--workloads", ",".join(args.workloads), "--threads", str(args.threads)]
    else:
        cmd = [sys.executable, "-m", "bench.check.baselines.worker", framework, str(result_path),
               "--workloads", ",".join(args.workloads), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.data_dir:
        env["METABENCH_DATA_DIR"] = args.data_dir
    with open(out_dir / f"{stem}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        reader = threading.Thread(target=_tee, args=(proc.stdout, log, framework), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=args.timeout)  # a silent, hung process is killed all the same
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
            os.killpg(proc.pid, signal.SIGKILL)  # its group: whatever the framework started too
            proc.wait()
            if isinstance(e, KeyboardInterrupt):
                raise
            return None, f"killed after {args.timeout:g} s"
        finally:
            reader.join(timeout=10)
    why = None if proc.returncode == 0 else f"exit code {proc.returncode} (see {stem}.log)"
    if not result_path.exists():
        return None, why or "wrote no results"
    return json.loads(result_path.read_text()), why


def combine_processes(processes: list[dict]) -> dict | None:
    """One framework's timing processes as one result: each pair's rounds per process
    (``adapter_times_by_process``, ``plain_times_by_process``), ``adapter_times`` and
    ``plain_times`` all of them, first calls and agreement from the first process (the
    weights and the meta-batch are the same in each). A pair a process lost keeps the
    processes that ran it."""
    if len(processes) <= 1:
        return processes[0] if processes else None
    base = copy.deepcopy(processes[0])
    base["errors"] = [e for p in processes for e in p["errors"]]
    base["processes"] = len(processes)
    for workload, record in base["workloads"].items():
        for pair in record["pairs"]:
            same = [q for p in processes for q in p["workloads"].get(workload, {}).get("pairs", [])
                    if (q["adapter"], q["plain"]) == (pair["adapter"], pair["plain"])]
            for side in ("adapter", "plain"):
                pair[f"{side}_times_by_process"] = [q[f"{side}_times"] for q in same]
                pair[f"{side}_times"] = [t for q in same for t in q[f"{side}_times"]]
    return base


def merge_float64(result: dict, maths: dict) -> None:
    """Each timed pair gets its float64 check (``bench.check.baselines.maths``), matched by
    workload, adapter and plain form; a pair the check could not run keeps none."""
    for workload, record in result["workloads"].items():
        checks = {(m["adapter"], m["plain"]): m for m in maths.get("workloads", {}).get(workload, [])}
        for pair in record["pairs"]:
            m = checks.get((pair["adapter"], pair["plain"]))
            if m:
                pair.update({k: v for k, v in m.items() if k not in ("adapter", "plain")})


def _stats(times: list[float]):
    from pytest_benchmark.stats import Stats  # the harness's median and quartile conventions

    s = Stats()
    for t in times:
        s.update(t)
    return s


def pair_rows(framework: str, workload: str, record: dict, pair: dict, args) -> list[dict]:
    from bench.core.stats import paired_two_level_ratio_ci, ratio_of_medians_ci

    by_process = pair.get("adapter_times_by_process") or [pair["adapter_times"]]
    if len(by_process) > 1:  # processes drawn once for both sides: they shared each one
        ratio, low, high = paired_two_level_ratio_ci(by_process, pair["plain_times_by_process"])
    else:
        ratio, low, high = ratio_of_medians_ci(pair["adapter_times"], pair["plain_times"])
    worst = max(pair["grad_rel_diff"], pair["params_rel_diff"], pair["loss_rel_diff"])
    shared = {"workload": workload, "spec": record["spec"], "framework": framework, "processes": len(by_process),
              "rounds": args.rounds,
              "warmup": args.warmup, "threads": args.threads, "ratio": ratio, "ratio_ci_low": low,
              "ratio_ci_high": high, "max_rel_diff": worst, "grad_rel_diff": pair["grad_rel_diff"],
              "params_rel_diff": pair["params_rel_diff"], "loss_rel_diff": pair["loss_rel_diff"],
              "agrees": worst <= TOLERANCE, "batch_digest": record["batch_digest"],
              "adapter_is_default": pair.get("adapter_is_default"),  # None: recorded before it was
              # the float64 check: None where the run had none (recorded before it existed)
              "grad_rel_diff_float64": pair.get("grad_rel_diff_float64"),
              "same_maths": (None if pair.get("grad_rel_diff_float64") is None
                             else pair["grad_rel_diff_float64"] <= TOLERANCE_64),
              "adapter_float32_error": pair.get("adapter_float32_error"),
              "plain_float32_error": pair.get("plain_float32_error")}
    rows = []
    for kind, name, other, times, compile_s, probe_s, recompiled in (
            ("metabench", pair["adapter"], pair["plain"], pair["adapter_times"], pair["compile_adapter"],
             pair["probe_adapter"], pair["recompiled_adapter"]),
            ("plain", pair["plain"], pair["adapter"], pair["plain_times"], pair["compile_plain"],
             pair["probe_plain"], pair["recompiled_plain"])):
        s = _stats(times)
        rows.append({**shared, "implementation": name, "kind": kind, "compared_with": other,
                     "median_ms": 1e3 * s.median, "iqr_ms": 1e3 * s.iqr, "q1_ms": 1e3 * s.q1, "q3_ms": 1e3 * s.q3,
                     "compile_s": compile_s, "probe_s": probe_s, "recompiled_while_timed": recompiled})
    return rows


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def verdict(ratio: float, low: float | None = None) -> str:
    """At or below 1.0; above it, "level" while the ratio's CI still reaches 1.0 (not
    shown to be slower: the rule the run summaries' "faster" follows), else slower."""
    if ratio <= 1.0:
        return "<= 1.0"
    return "level (CI reaches 1.0)" if low is not None and low <= 1.0 else "**> 1.0**"


def defaults_verdict(by_pair: dict) -> list[str]:
    """Issue 12's test, per workload and framework: is the default adapter (on the device
    the run was on) at or below every plain version it was timed against? A ratio above
    1.0 whose plain version computes other maths is named as such, not excused."""
    verdicts: dict[tuple[str, str], list[dict]] = {}
    for (workload, framework, _, _), pair in by_pair.items():
        if pair["metabench"].get("adapter_is_default"):
            verdicts.setdefault((workload, framework), []).append(pair["metabench"])
    if not verdicts:
        return []
    lines = ["", "Each framework's default on this device (in bold) against every plain version it was timed "
                 "against:", ""]
    for (workload, framework), rows in verdicts.items():
        level = [r for r in rows if r["ratio"] > 1.0 and r["ratio_ci_low"] <= 1.0]
        above = [r for r in rows if r["ratio_ci_low"] > 1.0]
        if not level and not above:
            worst = max(rows, key=lambda r: r["ratio"])
            lines.append(f"- {workload}, {framework}: at or below all {len(rows)} (highest ratio "
                         f"{worst['ratio']:.3f}, against {worst['compared_with']})")
            continue

        def named(rs):
            return "; ".join(f"{r['compared_with']} {r['ratio']:.3f} [{r['ratio_ci_low']:.3f}, "
                             f"{r['ratio_ci_high']:.3f}]"
                             + ("" if computes_the_same_maths(r) else ", which computes other maths") for r in rs)
        parts = ([f"**above {len(above)} of {len(rows)}**: {named(above)}"] if above else []) + \
                ([f"level with {len(level)} of {len(rows)} (ratio above 1.0, CI reaching it): {named(level)}"]
                 if level else [])
        lines.append(f"- {workload}, {framework}: " + "; ".join(parts))
    return lines


def computes_the_same_maths(row: dict) -> bool:
    """Whether a pair's plain form computes the adapter's function: asked in float64
    (``bench.check.baselines.maths``: within parity's ``TOLERANCE_64``), where float32's rounding
    (max-pool near-ties, one-pass reductions, XLA's float32 max-pool second derivative)
    cannot blur the answer. A run recorded before the float64 check falls back to float32
    agreement within ``TOLERANCE``."""
    same = row.get("same_maths")
    return bool(row["agrees"]) if same is None else bool(same)


def grid_rows(rows: list[dict]) -> list[dict]:
    """Per shape and framework, the default adapter against the fastest plain form that
    computes the same maths (``computes_the_same_maths``), however precise that form's
    float32 is: its ratio and CI come from that pair, timed in alternation in one process;
    each side's float32 error from float64 is shown beside it."""
    best: dict[tuple[str, str], dict] = {}
    plain_ms = {(r["workload"], r["framework"], r["implementation"]): r["median_ms"] for r in rows
                if r["kind"] == "plain"}
    for r in rows:
        if r["kind"] != "metabench" or not r.get("adapter_is_default") or not computes_the_same_maths(r):
            continue
        key = (r["workload"], r["framework"])
        p = plain_ms[(r["workload"], r["framework"], r["compared_with"])]
        if key not in best or p < best[key]["plain_ms"]:
            best[key] = {"workload": r["workload"], "framework": r["framework"], "adapter": r["implementation"],
                         "adapter_ms": r["median_ms"], "plain": r["compared_with"], "plain_ms": p,
                         "ratio": r["ratio"], "ratio_ci_low": r["ratio_ci_low"], "ratio_ci_high": r["ratio_ci_high"],
                         "max_rel_diff": r["max_rel_diff"], "grad_rel_diff_float64": r.get("grad_rel_diff_float64"),
                         "adapter_float32_error": r.get("adapter_float32_error"),
                         "plain_float32_error": r.get("plain_float32_error")}
    return list(best.values())


def _sci(x) -> str:
    return "—" if x is None or x == "" else f"{float(x):.1e}"


def grid_markdown(grid: list[dict]) -> list[str]:
    """``## Per shape``: the grid's verdict table (at most 1.0, or a CI reaching it)."""
    if len({g["workload"] for g in grid}) < 2:
        return []
    over = [g for g in grid if g["ratio_ci_low"] > 1.0]
    lines = ["", "## Per shape: each default against the fastest plain form with the same maths", "",
             f"{len(grid) - len(over)} of {len(grid)} shape x framework rows at or below 1.0 or level (CI reaching "
             "1.0)" + (f"; above: {', '.join(g['workload'] + ' ' + g['framework'] for g in over)}" if over else "")
             + ". The same maths: the two meta-gradients agree in float64 within "
             f"{TOLERANCE_64:g} (`bench.check.baselines.maths`); float32 error: each side's float32 meta-gradient "
             "against the default's float64 one (how precise each side's float32 is).",
             "", "| shape | framework | default | ms | fastest plain form | ms | ratio [95% CI] | verdict | "
                 "float64 diff | float32 error: default / plain |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in grid:
        errors = (f"{_sci(g.get('adapter_float32_error'))} / {_sci(g.get('plain_float32_error'))}"
                  if g.get("grad_rel_diff_float64") is not None else f"{g['max_rel_diff']:.1e} apart")
        lines.append(f"| {g['workload']} | {g['framework']} | {g['adapter']} | {_ms(g['adapter_ms'])} | {g['plain']} | "
                     f"{_ms(g['plain_ms'])} | {g['ratio']:.2f} [{g['ratio_ci_low']:.2f}, {g['ratio_ci_high']:.2f}] | "
                     f"{verdict(g['ratio'], g['ratio_ci_low'])} | {_sci(g.get('grad_rel_diff_float64'))} | {errors} |")
    return lines


def grid_figure(grid: list[dict], path: Path) -> bool:
    """``grid.png``: the ratio per shape with its CI, one row per shape, one colour per
    framework, a line at 1.0. False when there is no grid to draw."""
    if len({g["workload"] for g in grid}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report.plots import framework_colour

    frameworks = sorted({g["framework"] for g in grid})
    shapes = list(dict.fromkeys(g["workload"] for g in grid))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(shapes) * len(frameworks) + 1.2))
    step = 0.8 / len(frameworks)
    for i, fw in enumerate(frameworks):
        mine = {g["workload"]: g for g in grid if g["framework"] == fw}
        ys = [k - 0.4 + step * (i + 0.5) for k, sh in enumerate(shapes) if sh in mine]
        gs = [mine[sh] for sh in shapes if sh in mine]
        ax.errorbar([g["ratio"] for g in gs], ys,
                    xerr=[[g["ratio"] - g["ratio_ci_low"] for g in gs], [g["ratio_ci_high"] - g["ratio"] for g in gs]],
                    fmt="o", color=framework_colour(fw), label=fw, capsize=2)
    ax.axvline(1.0, color="0.3", lw=1, ls="--")
    ax.set_yticks(range(len(shapes)), shapes)
    ax.invert_yaxis()
    ax.set_xlabel("default / fastest plain form (median outer step), 95% CI")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _warmup_text(results: dict, warmup: int) -> str:
    """The warm-up the run did: runs from before the worker recorded its warm-up rounds
    had no minimum duration."""
    counts = [pair["warmup_rounds"] for res in results.values() for rec in res["workloads"].values()
              for pair in rec["pairs"] if "warmup_rounds" in pair]
    if not counts:
        return f"{warmup} warm-up rounds"
    return f"{warmup} warm-up rounds and at least {WARMUP_SECONDS:g} s of them: {min(counts)}-{max(counts)} rounds"


def markdown(rows: list[dict], results: dict, failures: dict, args, argv: list[str]) -> str:
    processes = max((res.get("processes", 1) for res in results.values()), default=1)
    where = ("in one process per framework" if processes == 1 else
             f"in each of {processes} processes per framework (process k of every framework, then k + 1)")
    ci = ("95% percentile-bootstrap CI (`bench.core.stats.ratio_of_medians_ci`)" if processes == 1 else
          "95% two-level bootstrap CI over the processes and their rounds, the processes drawn once for both "
          "sides, which shared them (`bench.core.stats.paired_two_level_ratio_ci`): it covers what a new process "
          "changes")
    lines = ["# metabench's MAML adapters against plain MAML in each framework", "",
             "Second-order MAML's outer step (meta-gradient and the Adam update of the meta-parameters), "
             "timed per round with the step's outputs synchronised; metabench's adapter and the plain "
             f"version alternate round by round {where}, which one goes first "
             f"alternating too ({_warmup_text(results, args.warmup)}, then {args.rounds} timed rounds "
             f"each). Ratio: metabench median / plain median (of all rounds), "
             f"{ci}; at or below 1.0, "
             "metabench is at least as fast as the plain version; above 1.0 with a CI that reaches "
             "1.0, level (not shown to be slower).", ""]
    workloads = {}
    for res in results.values():
        for name, rec in res["workloads"].items():
            workloads.setdefault(name, rec)
    for name, rec in workloads.items():
        lines.append(f"- **{name}**: {rec['description']}; meta-batch digest `{rec['batch_digest']}`")
    lines += ["", "| workload | framework | metabench adapter | metabench median ms (IQR) | plain | "
              "plain median ms (IQR) | ratio [95% CI] | verdict | max rel diff |",
              "|---|---|---|---|---|---|---|---|---|"]
    by_pair = {}  # an adapter may be timed against two plain versions (as tutorials write it, exact BN)
    for r in rows:
        adapter, plain = ((r["compared_with"], r["implementation"]) if r["kind"] == "plain"
                          else (r["implementation"], r["compared_with"]))
        by_pair.setdefault((r["workload"], r["framework"], adapter, plain), {})[r["kind"]] = r
    for (workload, framework, adapter, _), pair in by_pair.items():
        m, p = pair["metabench"], pair["plain"]
        agree = f"{m['max_rel_diff']:.1e}" + ("" if m["agrees"] else " (differs)")
        shown = f"**{adapter}** (default)" if m.get("adapter_is_default") else adapter
        lines.append(f"| {workload} | {framework} | {shown} | {_ms(m['median_ms'])} ({_ms(m['iqr_ms'])}) | "
                     f"{p['implementation']} | {_ms(p['median_ms'])} ({_ms(p['iqr_ms'])}) | "
                     f"{m['ratio']:.3f} [{m['ratio_ci_low']:.3f}, {m['ratio_ci_high']:.3f}] | "
                     f"{verdict(m['ratio'], m['ratio_ci_low'])} | {agree} |")
    lines += defaults_verdict(by_pair)
    lines += grid_markdown(grid_rows(rows))
    lines += ["", "First calls, seconds: the meta-gradient at the initial weights (the agreement check, "
              "first: where it shares a compiled function with the step, as torch.compile's meta-gradient "
              "does, the compilation is here) and the first outer step (compile or trace of the step):", "",
              "| workload | implementation | first meta-gradient s | first outer step s | recompiled while timed |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['implementation']} | {r['probe_s']:.2f} | {r['compile_s']:.2f} | "
              f"{'n/a (eager)' if r['recompiled_while_timed'] is None else r['recompiled_while_timed']} |"
              for r in rows]
    lines += ["", "## Do they compute the same thing?", "",
              "From the same initial weights on the same meta-batch (float32), the plain version against "
              "metabench's adapter as `metabench parity` compares frameworks: max |x - x_metabench| / "
              "max |x_metabench| of the meta-gradient (all parameters together), of the parameters after "
              "one Adam step (leaving out entries whose gradient is float32 noise) and of the first loss. "
              f"They agree where every column is within {TOLERANCE:g} (float32: parity's tolerance). "
              "Float64 (`bench.check.baselines.maths`, a process of its own): the two meta-gradients in float64, "
              f"the same maths where within {TOLERANCE_64:g}; and each side's float32 meta-gradient against "
              "the adapter's float64 one (where they differ in float32, which side's float32 is the imprecise "
              "one).", "",
              "| workload | plain | meta-gradient | params after Adam | loss | worst parameter (meta-gradient) | "
              "float64 | float32 error: adapter / plain |",
              "|---|---|---|---|---|---|---|---|"]
    differ, rounding = set(), set()
    for res in results.values():
        for workload, rec in res["workloads"].items():
            for pair in rec["pairs"]:
                worst = max(pair["grad_rel_diff_by_param"].items(), key=lambda kv: kv[1])
                f64 = pair.get("grad_rel_diff_float64")
                form = "" if pair.get("plain_float64_form", "as timed") == "as timed" else " (graph mode)"
                lines.append(f"| {workload} | {pair['plain']} | {pair['grad_rel_diff']:.1e} | "
                             f"{pair['params_rel_diff']:.1e} | {pair['loss_rel_diff']:.1e} | "
                             f"{worst[0]} {worst[1]:.1e} | {_sci(f64)}{form if f64 is not None else ''} | "
                             f"{_sci(pair.get('adapter_float32_error'))} / {_sci(pair.get('plain_float32_error'))} |")
                if max(pair["grad_rel_diff"], pair["params_rel_diff"], pair["loss_rel_diff"]) > TOLERANCE:
                    if f64 is not None and f64 <= TOLERANCE_64:
                        rounding.add((workload, pair["adapter"], pair["plain"], pair["adapter_float32_error"],
                                      pair["plain_float32_error"], pair.get("plain_float64_form", "as timed")))
                    else:
                        differ.add((workload, pair["adapter"], pair["plain"]))
    if rounding:
        lines += ["", "Where the two differ in float32 but compute the same maths (float64 agrees): float32 "
                      "rounding, the larger error on the side named (timed, and judged, all the same):", ""]
        for workload, adapter, plain, a32, p32, form in sorted(rounding):
            side = f"{plain}'s float32" if p32 > a32 else f"{adapter}'s float32"
            note = "; its float64 asked in TF's graph mode, XLA:CPU having no float64 MaxPoolGradGrad" \
                if form != "as timed" else ""
            lines.append(f"- {workload}, {adapter} against {plain}: {side} ({max(a32, p32):.1e} from float64, "
                         f"the other {min(a32, p32):.1e}){note}")
    if differ:
        lines += ["", "Where a plain version computes something else (timed all the same, as written in its "
                      "framework's tutorials; its ratio then compares different maths):", ""]
        for workload, adapter, plain in sorted(differ):
            why = KNOWN_DIFFERENCES.get(adapter) or KNOWN_DIFFERENCES.get(plain, "not explained")
            lines.append(f"- {workload}, {adapter} against {plain}: {why}")
    digests = {rec["batch_digest"] for res in results.values() for rec in res["workloads"].values()}
    if len(digests) != len(workloads):
        lines += ["", "**The frameworks' processes sampled different meta-batches** (digests differ)."]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {fw}: {why}" for fw, why in failures.items()]
        for res in results.values():
            lines += [f"- {res['framework']} {e.get('workload')} {e.get('adapter', '')}: "
                      f"{e['error'].strip().splitlines()[-1]}" for e in res["errors"]]
            lines += [f"- {res['framework']} {e.get('workload')} {e.get('adapter', '')} float64 check: "
                      f"{e['error'].strip().splitlines()[-1]}" for e in res.get("float64_errors", [])]
    lines += ["", "## Where", ""]
    for fw, res in results.items():
        env = res["environment"]
        packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        lines.append(f"- {fw}: {env['cpu']} ({env['cpu_count']} cores), pinned to cores {env['pinned_cores']}, "
                     f"{env['threads']} threads; {env['platform']}, Python {env['python']}; {packages}; "
                     f"git {str(env['git'].get('sha'))[:12]}{' (dirty)' if env['git'].get('dirty') else ''}")
    lines += ["", "Command:", "", "    " + shlex.join(argv), ""]
    return "\n".join(_wrapped(line) for line in lines)


def _wrapped(line: str, width: int = 100) -> str:
    """A prose line (not a table row, not the indented command) wrapped at ``width``; a
    bullet's continuation lines indented under its text."""
    if len(line) <= width or line.startswith(("|", "    ")):
        return line
    if line.startswith("- **") and len(line) <= 400:  # a workload's one-line description: the grid's are
        return line                                   # near-copies, whose wrapped halves would repeat
    indent = "  " if line.startswith("- ") else ""
    return textwrap.fill(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def _known_workload(name: str) -> bool:
    try:
        workload_named(name)
    except KeyError:
        return False
    return True


def parse_args(argv, prog: str = "python -m bench.check.baselines"):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"subset of {','.join(FRAMEWORKS)}")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"subset of {','.join(WORKLOADS)}, or grid shapes by name "
                         "(bench/check/baselines/workloads.py)")
    ap.add_argument("--grid", choices=tuple(GRIDS),
                    help="time the grid of shapes instead of --workloads: each default against the plain forms "
                         "that compute its maths (maml: query x meta-batch, way, inner steps; protonet: way x shot)")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds of each implementation (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up rounds after the first call (default 3)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timing processes per framework, interleaved across frameworks (default 1); from 2, "
                         "each ratio's CI is a two-level bootstrap over the processes and their rounds, so it "
                         "covers what a new process changes")
    ap.add_argument("--threads", type=int, default=_available_cores(),
                    help="CPU threads (and cores) per framework process (default: all available cores)")
    ap.add_argument("--data-dir", help="Omniglot's folder (default: $METABENCH_DATA_DIR)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one framework's process may run")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite baselines.csv and baselines.md from OUT_DIR/baselines.json (an earlier run's "
                         "rounds; give that run's other flags)")
    ap.add_argument("--float64-only", action="store_true",
                    help="as --report-only, after running the float64 check of each pair (bench.check.baselines.maths) "
                         "on an earlier run's workloads: for a run made before the check existed")
    ap.add_argument("--no-float64", action="store_true",
                    help="skip the float64 check of each pair (the grid's verdict then asks float32 agreement)")
    args = ap.parse_args(argv)
    args.frameworks = [f for f in args.frameworks.split(",") if f]
    args.workloads = GRIDS[args.grid] if args.grid else [w for w in args.workloads.split(",") if w]
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown or not args.frameworks:
        ap.error(f"--frameworks: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(FRAMEWORKS)}")
    unknown = [w for w in args.workloads if not _known_workload(w)]
    if unknown or not args.workloads:
        ap.error(f"--workloads: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(WORKLOADS)}, "
                 f"or a grid shape such as {GRIDS['maml'][0]} or {GRIDS['protonet'][0]}")
    if args.rounds < 2:
        ap.error("--rounds: at least 2 (a median and its interval)")
    if args.warmup < 0:
        ap.error("--warmup: at least 0")
    if args.repeats < 1:
        ap.error("--repeats: at least 1 (timing processes per framework)")
    if not 1 <= args.threads <= _available_cores():
        ap.error(f"--threads: between 1 and the {_available_cores()} cores this process may use")
    return args


def main(argv=None, prog: str = "python -m bench.check.baselines") -> int:
    """Run the comparison; 0 when every framework's process ran every pair, else 1 (the
    files are written either way). The verdicts are in baselines.md, not in the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, failures, rows = {}, {}, []
    earlier = args.report_only or args.float64_only
    if earlier:  # the same flags as the run, its rounds from baselines.json: a changed report
        results = json.loads((out_dir / "baselines.json").read_text())
        argv = [a for a in argv if a not in ("--report-only", "--float64-only")]
    timed: dict[str, list[dict]] = {}
    for k in range(0 if earlier else args.repeats):  # process k of every framework, then k + 1: interleaved
        for framework in args.frameworks:
            result, why = run_framework(framework, out_dir, args, process=k)
            if why:
                failures[framework if args.repeats == 1 else f"{framework} process {k}"] = why
            if result is not None:
                timed.setdefault(framework, []).append(result)
    for framework in args.frameworks:
        result = results.get(framework) if earlier else combine_processes(timed.get(framework, []))
        if result is None:
            continue
        if (args.float64_only or not (earlier or args.no_float64)) and result["workloads"]:
            maths, why = run_framework(framework, out_dir, args, float64=True)  # after the timing: never beside it
            if why:
                failures[f"{framework} float64 check"] = why
            if maths is not None:
                merge_float64(result, maths)
                result["float64_errors"] = maths["errors"]
        results[framework] = result
        for workload, record in result["workloads"].items():
            for pair in record["pairs"]:
                rows.extend(pair_rows(framework, workload, record, pair, args))
    with atomic.atomic_open(out_dir / "baselines.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    atomic.write_json(out_dir / "baselines.json", results, default=str)
    if grid_figure(grid_rows(rows), out_dir / "grid.png"):
        print(f"wrote {out_dir / 'grid.png'}")
    command = [*prog.split(), *argv]
    atomic.write_text(out_dir / "baselines.md", markdown(rows, results, failures, args, command))
    print(f"wrote {out_dir / 'baselines.md'}")
    return 1 if failures or any(not math.isfinite(r["median_ms"]) for r in rows) else 0
