"""A results folder, read: the run's manifest, its cells' files, and the tidy tables
collected from them (``collect``), with the checks' tables (``read_parity``,
``read_contract``). The bottom of ``bench.report``: the tables, figures, pages and the
summary (``bench.report.report``) are all made from what this module reads; the runner
writes a run's manifest through it (``write_manifest``).

Numbers from a cell are read only when the phase that wrote them ended "ok" in the
cell's ``status.json``: a failed, timed-out or diverged phase never enters a median.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core.adapter import compilation_name
from bench.core.errors import MetabenchError
from bench.core.stats import process_spread, two_level_median_ci


class NotARun(MetabenchError):
    """A folder given as a run (``report``, ``compare``, ``--resume``) holds no run."""


def is_run(run_dir: Path) -> bool:
    """A folder written by ``metabench run``: its manifest, plan or cells are there."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and any((run_dir / name).exists() for name in ("manifest.json", "plan.json", "cells"))


def require_run(run_dir: Path, command: str = "report") -> Path:
    """``run_dir`` if it holds a run, else ``NotARun`` naming the folder and the fix."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise NotARun(f"{command}: no folder {run_dir}; give a run's folder, e.g. results/<run-id>")
    if not is_run(run_dir):
        raise NotARun(f"{command}: {run_dir} holds no metabench run (no manifest.json, plan.json or cells/); "
                      f"give a run's folder, e.g. results/<run-id>")
    return run_dir


CELL_COLUMNS = ["framework", "algorithm", "adapter", "spec"]
# The version of a run folder's format: the manifest and the report's tables. Raise it with
# any change to a table's columns or to summary.md's content, and re-render the committed
# runs in the same commit (``tests/test_results.py`` re-renders each one and requires its
# committed files back). Version 1: runs written before a version was recorded.
SCHEMA_VERSION = 2
TABLES = ("timings", "steps", "processes", "memory", "accuracy", "curves", "episodes")
FINGERPRINT_TRAIN_CAP = 10_000  # training episodes hashed into the manifest, at most


def read_json(path: Path) -> dict:
    """A run folder's JSON object, or one line naming the damaged file and the fix."""
    from bench.core.errors import MetabenchError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MetabenchError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:120]}); restore it (git "
                             f"checkout), or delete its cell's folder and complete the run with --resume") from None
    if not isinstance(data, dict):
        raise MetabenchError(f"{path}: holds {type(data).__name__}, not a JSON object; restore it (git checkout), "
                             f"or delete its cell's folder and complete the run with --resume")
    return data


def read_csv(path: Path, columns=()) -> pd.DataFrame:
    """A run folder's CSV table with at least ``columns``, or one line naming the damaged
    file and the fix."""
    from bench.core.errors import MetabenchError

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise MetabenchError(f"{path}: cannot read it as a table ({type(e).__name__}: {str(e)[:120]}); restore "
                             f"it (git checkout), or delete its cell's folder and complete the run with --resume"
                             ) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MetabenchError(f"{path}: no {missing[0]!r} column; restore it (git checkout), or delete its cell's "
                             f"folder and complete the run with --resume")
    return table


MANIFEST_SHAPE = {"cells": list, "specs": dict, "harness_environment": dict}


def read_manifest(path: Path) -> dict:
    """A run's manifest.json, its tables of the shape the report reads (or one line naming it)."""
    from bench.core.errors import MetabenchError

    m = read_json(path)
    for key, kind in MANIFEST_SHAPE.items():
        value = m.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is list and not all(
                isinstance(c, dict) for c in value)) or (kind is dict and key == "specs" and not all(
                isinstance(v, dict) for v in value.values()))):
            raise MetabenchError(f"{path}: damaged ({key!r} is not the {kind.__name__} a manifest holds); restore it "
                                 f"(git checkout), or rebuild it with `metabench report` from the run's cells")
    return m


@contextmanager
def reading(path: Path):
    """Inside it, a file whose JSON or columns lack what the report reads (a key, a type)
    is one line naming that file, not a traceback."""
    from bench.core.errors import MetabenchError

    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        raise MetabenchError(f"{path}: damaged ({type(e).__name__}: {str(e)[:100]}); restore it (git checkout), or "
                             f"delete its cell's folder and complete the run with --resume") from None


# -- manifest ----------------------------------------------------------------------------

def _episode_fingerprints(cells, data_dir, cache_dir) -> dict:
    from bench.core.episodes import sampler_for
    from bench.core.spec import load_spec

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
            seed = cell.seed
            train_key = f"train/{cell.algorithm}" + (f"/seed{seed}" if seed else "")
            if train_key not in entry["episodes"]:
                n = min(spec.budget.meta_train_steps * spec.meta_batch_size(cell.algorithm), FINGERPRINT_TRAIN_CAP)
                entry["episodes"][train_key] = {"count": n, "fingerprint": sampler_for(
                    spec, "train", cell.algorithm, train_seed=seed, data_dir=data_dir,
                    cache_dir=cache_dir).fingerprint(n)}
        except Exception as e:  # missing data: the cells will report it; the manifest says so
            entry["episodes"]["error"] = str(e)
    return out


def write_manifest(run_plan, started: float, finished: float | None = None) -> None:
    """``manifest.json`` of a run (``bench.run.plan.RunPlan``: its folder, cells, profile,
    device, threads, command, data and cache folders), started and finished at these
    times; each cell's status as its folder has it now."""
    from bench.measure.environment import collect_environment

    p = run_plan
    run_dir, cells, profile, device, threads, command = p.run_dir, p.cells, p.profile, p.device, p.threads, p.command
    data_dir, cache_dir = p.data_dir, p.cache_dir
    path = run_dir / "manifest.json"
    old = read_json(path) if path.exists() else {}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_dir.name,
        "command": command,
        "profile": profile, "device": device, "threads": threads,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)) if finished else None,
        "harness_environment": collect_environment(None, device, threads),
        "specs": old.get("specs") or _episode_fingerprints(cells, data_dir, cache_dir),
        "cells": [],
    }
    for cell in cells:
        status_path = run_dir / "cells" / cell.cell_id / "status.json"
        status = read_json(status_path) if status_path.exists() else {
            "cell_id": cell.cell_id, **asdict(cell), "phases": {}}
        env_path = run_dir / "cells" / cell.cell_id / "environment.json"
        if env_path.exists():
            status["environment"] = read_json(env_path)
        manifest["cells"].append(status)
    from bench.core import atomic

    atomic.write_json(path, manifest, default=str)


# -- collecting the cells' results ---------------------------------------------------------

# Which status.json phase vouches for which file: a file is read only when its phase ended
# "ok", so numbers from failed, timed-out or diverged cells never enter a median.
TIMING, MEMORY, ACCURACY = "timing", "memory", "accuracy"
STAT_KEYS = ("rounds", "median", "iqr", "q1", "q3", "min", "max", "mean", "stddev")
EPISODE_COLUMNS = ["run_id", *CELL_COLUMNS, "seed", "episode", "value"]
ACCURACY_COLUMNS = ["run_id", *CELL_COLUMNS, "episodes", "metric", "mean", "ci95", "train_steps", "train_seconds",
                    "eval_seconds", "seed", "target", "target_direction", "steps_to_target",
                    "time_to_target_seconds", "first_step_seconds"]


def cell_dirs(run_dir: Path):
    for cell_dir in sorted((run_dir / "cells").glob("*")):
        if (cell_dir / "cell.json").exists():
            yield cell_dir, read_json(cell_dir / "cell.json")


def _phase_status(cell_dir: Path) -> dict[str, dict]:
    path = cell_dir / "status.json"
    phases = read_json(path).get("phases", {}) if path.exists() else {}
    if not isinstance(phases, dict) or not all(isinstance(v, dict) for v in phases.values()):
        from bench.core.errors import MetabenchError

        raise MetabenchError(f"{path}: damaged (its phases are not a table of phase records); restore it (git "
                             f"checkout), or delete its cell's folder and complete the run with --resume")
    return phases


def _ok(phases: dict, phase: str) -> bool:
    return phases.get(phase, {}).get("status") == "ok"


def _timing_processes(cell_dir: Path) -> list[tuple[int, Path]]:
    """``(k, benchmark.json)`` of each timing process of a cell: ``timing/<k>/`` since runs
    repeat their timing processes; an older run's single ``benchmark.json`` is process 0."""
    repeated = sorted((int(d.name), d / "benchmark.json") for d in (cell_dir / "timing").glob("*")
                      if d.name.isdigit() and (d / "benchmark.json").exists())
    if repeated:
        return repeated
    return [(0, cell_dir / "benchmark.json")] if (cell_dir / "benchmark.json").exists() else []


def _pooled_stats(data: list[float]) -> dict:
    """pytest-benchmark's statistics of the pooled rounds of several processes, computed by
    its own ``Stats`` class: the same quartile convention as each process's record."""
    from pytest_benchmark.stats import Stats

    st = Stats()
    for value in data:
        st.update(value)
    return {k: getattr(st, k) for k in STAT_KEYS}


def _step_rows(processes: list[tuple], ident: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(rounds, steps, per-process rows) of one cell's timing processes. A step's median is
    the median of every round of every process; its CI the two-level bootstrap's
    (``bench.core.stats``), NaN when there are too few processes or rounds to tell. With one
    process the other statistics are pytest-benchmark's own record."""
    rounds, per_process, by_phase = [], [], {}
    for k, data, *path in processes:
        with reading(path[0] if path else Path("benchmark.json")):
            _process_rows(k, data, ident, rounds, per_process, by_phase)
    steps = []
    for phase, items in by_phase.items():
        steps.append(_step_row(phase, items, ident))
    return rounds, steps, per_process


def _process_rows(k: int, data: dict, ident: dict, rounds: list, per_process: list, by_phase: dict) -> None:
    """One timing process's benchmark.json into the rows: its rounds, its own median and
    first step, and its records by phase (for the pooled statistics)."""
    for b in data.get("benchmarks", []):
        extra, st = b.get("extra_info", {}), b["stats"]
        seconds = [float(x) for x in st.get("data", [])]
        if not seconds:
            continue
        phase = str(extra["phase"])
        rounds += [{**ident, "phase": phase, "process": k, "round": i, "seconds": x, "device": extra.get("device")}
                   for i, x in enumerate(seconds)]
        per_process.append({**ident, "phase": phase, "process": k, "rounds": len(seconds),
                            "median": st.get("median"), "first_step_seconds": extra.get("first_step_seconds"),
                            "machine_pid": (data.get("machine_info") or {}).get("metabench", {}).get("pid")})
        by_phase.setdefault(phase, []).append((extra, st, seconds))


def _step_row(phase: str, items: list, ident: dict) -> dict:
    """One (cell, phase) row from its processes' records: the pooled median, its two-level
    CI, pytest-benchmark's statistics (its own record with one process, its ``Stats`` over
    the pooled rounds with several), first step, spread, FLOPs and the harness's overhead."""
    extra, st, _ = items[0]
    groups = [seconds for _, _, seconds in items]
    median, lo, hi = two_level_median_ci(groups)
    pooled = st if len(items) == 1 else _pooled_stats([x for g in groups for x in g])
    first = [e.get("first_step_seconds") for e, _, _ in items if e.get("first_step_seconds") is not None]
    bare = [e.get("bare_loop_median_seconds") for e, _, _ in items if e.get("bare_loop_median_seconds")]
    gemm = [e.get("gemm_gflops") for e, _, _ in items if e.get("gemm_gflops")]
    recompiled = [e.get("recompilations_while_timed") for e, _, _ in items
                  if e.get("recompilations_while_timed") is not None]
    return {**ident, "phase": phase, "device": extra.get("device"),
            # the vocabulary's word (bench.core.adapter.COMPILATION), also for free text recorded before it
            "compilation": compilation_name(extra.get("compilation")),
            "meta_batch_size": extra.get("meta_batch_size"),
            "first_step_seconds": float(np.median(first)) if first else None,
            "first_step_min": min(first) if first else None, "first_step_max": max(first) if first else None,
            "recompilations": max(recompiled) if recompiled else None,
            **{k: pooled.get(k) for k in STAT_KEYS}, "median": median,
            "median_ci_low": lo, "median_ci_high": hi, "processes": len(items),
            "rounds_per_process": min(len(g) for g in groups), "process_spread": process_spread(groups),
            "flops": extra.get("flops"), "gemm_gflops": float(np.median(gemm)) if gemm else None,
            "bare_median": float(np.median(bare)) if bare else None}


def _accuracy_row(a: dict, ident: dict) -> dict:
    if not isinstance(a.get("metric"), str) or not isinstance(a.get("mean"), int | float):
        raise ValueError("no metric name and mean value")
    row = {**ident, **{k: a.get(k) for k in ("episodes", "metric", "mean", "ci95", "train_steps", "train_seconds",
                                             "eval_seconds", "target", "target_direction", "steps_to_target",
                                             "time_to_target_seconds", "first_step_seconds")}}
    if row["target_direction"] is None:
        row["target_direction"] = "min" if a.get("metric") == "mse" else "max"
    return row


def collect(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every cell's results as tidy frames; reads only, writes nothing.

    Frames: ``timings`` (one row per round), ``steps`` (per cell and phase, pytest-benchmark's
    statistics plus the bootstrap CI of the median), ``memory``, ``accuracy`` (per cell and
    seed), ``episodes`` (test metric per test episode), ``curves``, ``status`` (per cell and
    status.json phase). Old runs without seeds read as seed 0."""
    run_dir = Path(run_dir)
    run_id = run_dir.name
    rounds, steps, processes, memory, accuracy, episodes, curves, status = [], [], [], [], [], [], [], []
    for cell_dir, cell in cell_dirs(run_dir):
        with reading(cell_dir / "cell.json"):
            seed = int(cell.get("seed", 0) or 0)
            ident = {"run_id": run_id, "framework": str(cell["framework"]), "algorithm": str(cell["algorithm"]),
                     "adapter": str(cell["adapter"]), "spec": str(cell["spec_name"]), "seed": seed}
        phases = _phase_status(cell_dir)
        with reading(cell_dir / "status.json"):
            status += [{"cell_id": cell_dir.name, **ident, "phase": p, "status": s.get("status"),
                        "returncode": s.get("returncode"), "seconds": s.get("seconds"),
                        "detail": _detail(cell_dir, p, s)} for p, s in phases.items()]
        if _ok(phases, TIMING):
            r, s, p = _step_rows([(k, read_json(path), path) for k, path in _timing_processes(cell_dir)], ident)
            rounds += r
            steps += s
            processes += p
        if _ok(phases, MEMORY) and (cell_dir / "memory.json").exists():
            m = read_json(cell_dir / "memory.json")
            with reading(cell_dir / "memory.json"):
                if not isinstance(m["peak_bytes"], int | float) or not isinstance(m["phase"], str):
                    raise ValueError("peak_bytes is not a number of bytes")
                first = m.get("first_step_peak_bytes")  # None: not read apart (older runs, no reset)
                memory.append({**ident, "phase": m["phase"], "peak_bytes": m["peak_bytes"],
                               "peak_mib": m["peak_bytes"] / 2**20, "source": m["source"],
                               "framework_api": m["framework_api"],
                               "first_step_mib": float("nan") if first is None else first / 2**20})
        if not _ok(phases, ACCURACY):
            continue
        if (cell_dir / "accuracy.json").exists():
            with reading(cell_dir / "accuracy.json"):
                accuracy.append(_accuracy_row(read_json(cell_dir / "accuracy.json"), ident))
        ep_path = cell_dir / "episodes.csv"
        if ep_path.exists() and ep_path.stat().st_size:
            e = read_csv(ep_path, ["episode", "value"])
            episodes.append(e.assign(**ident)[EPISODE_COLUMNS])
        curve_path = cell_dir / "curve.csv"
        if curve_path.exists() and curve_path.stat().st_size:
            c = read_csv(curve_path, ["step", "train_seconds", "val_mean"])
            for k, v in reversed(ident.items()):
                c.insert(0, k, v)
            curves.append(c)
    return {
        # no seed column: timing runs at seed 0 only (bench.core.cell.Cell.seed)
        "timings": pd.DataFrame(rounds, columns=["run_id", *CELL_COLUMNS, "phase", "process", "round", "seconds",
                                                 "device"]),
        "steps": pd.DataFrame(steps),
        "processes": pd.DataFrame(processes, columns=["run_id", *CELL_COLUMNS, "seed", "phase", "process", "rounds",
                                                      "median", "first_step_seconds", "machine_pid"]),
        "memory": pd.DataFrame(memory),
        "accuracy": pd.DataFrame(accuracy, columns=ACCURACY_COLUMNS),
        "episodes": pd.concat(episodes, ignore_index=True) if episodes else pd.DataFrame(columns=EPISODE_COLUMNS),
        "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
            columns=["run_id", *CELL_COLUMNS, "seed", "step", "train_seconds", "val_mean", "val_ci95",
                     "train_loss"]),
        "status": pd.DataFrame(status, columns=["cell_id", "run_id", *CELL_COLUMNS, "seed", "phase", "status",
                                                "returncode", "seconds", "detail"]),
    }


def merged_benchmark_json(run_dir: Path) -> dict | None:
    """The cells' pytest-benchmark records in one file (``pytest-benchmark compare`` reads
    it), every timing process's (``name`` then ends in ``#k`` for the k-th process after
    the first). ``commit_info`` and ``datetime`` are the run's own (its earliest timed
    process), not the time the report was built; cells whose timing failed are left out."""
    records, heads = [], []
    for cell_dir, _ in cell_dirs(run_dir):
        if not _ok(_phase_status(cell_dir), TIMING):
            continue
        for k, path in _timing_processes(cell_dir):
            data = read_json(path)
            heads.append(data)
            for b in data.get("benchmarks", []):
                records.append({**b, "name": f"{b['name']}#{k}"} if k else b)
    if not records:
        return None
    first = min(heads, key=lambda d: d.get("datetime") or "")
    return {"machine_info": first.get("machine_info"), "commit_info": first.get("commit_info", {}),
            "benchmarks": records, "datetime": first.get("datetime"), "version": first.get("version", "metabench")}


def read_parity(run_dir: Path) -> pd.DataFrame | None:
    """``parity.csv``, with a failed row (``error``: which contract checks failed) added for
    each (adapter, spec, algorithm) whose adapter failed the run's contract check
    (``contract.csv``): every table marks both alike, as timings that are not of the
    reference maths, or not of the whole step."""
    path = Path(run_dir) / "parity.csv"
    parity = read_csv(path, ["adapter", "spec", "algorithm", "ok"]) if path.exists() else None
    contract = read_contract(run_dir)
    if contract is None:
        return parity
    bad = contract[~contract["ok"].astype(bool)]
    if bad.empty:
        return parity
    rows = pd.DataFrame({"adapter": bad["adapter"], "spec": bad["spec"], "algorithm": bad["algorithm"], "ok": False,
                         "check": "contract",
                         "error": "contract check failed: " + bad["failed"].fillna("").astype(str)})
    return rows if parity is None else pd.concat([parity, rows], ignore_index=True)


def read_contract(run_dir: Path) -> pd.DataFrame | None:
    """``contract.csv`` (``bench.run.cells.run_contract_phase``), or None for a run without it."""
    path = Path(run_dir) / "contract.csv"
    return read_csv(path, ["adapter", "spec", "algorithm", "ok"]) if path.exists() else None


# -- summary -------------------------------------------------------------------------------

def adapter_info(cell_dir: Path) -> dict:
    """A cell's ``Adapter.describe()``, from its memory/accuracy process (environment.json)
    or, in a timing-only run, from its timing process's benchmark.json."""
    if (cell_dir / "environment.json").exists():
        return read_json(cell_dir / "environment.json").get("adapter_info", {})
    for path in sorted(cell_dir.glob("**/benchmark.json")):
        for b in read_json(path).get("benchmarks", []):
            if b.get("extra_info", {}).get("adapter_info"):
                return b["extra_info"]["adapter_info"]
    return {}




def _detail(cell_dir: Path, phase: str, s: dict) -> str | None:
    """A failed phase's one-line reason: status.json's ``detail``, else (older runs) the
    last line of ``<phase>*.error.txt``."""
    if s.get("status") == "ok":
        return None
    if s.get("detail"):
        return s["detail"]
    err = next(iter(sorted(cell_dir.glob(f"{phase}*.error.txt"))), None)
    return err.read_text().strip().splitlines()[-1] if err and err.read_text().strip() else None
