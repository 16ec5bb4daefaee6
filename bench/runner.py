"""``metabench run``: plan cells, run each in processes of its own, collect, report.

Per cell, two processes of the cell's framework: the timing suite (pytest-benchmark),
then the memory probe and accuracy phase (``bench.worker``). A process that crashes or
times out marks that cell's phase failed; every other cell's results are kept. Each cell
writes ``<run>/cells/<cell_id>/``; the run's tables and plots are built from those folders
by ``bench.report``, so a partial run still reports what it measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import plan, registry
from bench.cell import Cell
from bench.errors import MetabenchError
from bench.spec import ALGORITHMS, load_spec

SUITE_DIR = Path(__file__).resolve().parent / "suite"
DEFAULT_SPECS = {"smoke": ("omniglot-5w1s", "sinusoid-10shot"), "cpu": ("omniglot-5w1s", "sinusoid-10shot"),
                 "paper": ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s",
                           "sinusoid-10shot")}
# smoke proves the pipeline: FOMAML is MAML's adapter with its inner gradients stopped, so
# by default smoke runs MAML and ProtoNet only (--algorithms fomaml adds it), which keeps
# `nox -s bench -- --profile smoke` (3 frameworks, every phase) within a few minutes.
DEFAULT_ALGORITHMS = {"smoke": ("maml", "protonet")}
PHASE_GROUPS = ("parity", "timing", "memory", "accuracy")
# Parity (once per run, before the cells: is every adapter's maths torch's?) takes ~3 min
# on 2 CPU cores, longer than a whole smoke run; the cpu and paper profiles run it.
DEFAULT_PHASES = {"smoke": ("timing", "memory", "accuracy"), "cpu": PHASE_GROUPS, "paper": PHASE_GROUPS}


def detect_device() -> str:
    """CUDA when an NVIDIA GPU is visible, else CPU (asked of nvidia-smi: no framework here)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return "cuda" if out.returncode == 0 and "GPU" in out.stdout else "cpu"
    except (OSError, subprocess.SubprocessError):
        return "cpu"


def plan_cells(*, profile: str, frameworks, algorithms, specs, adapters, device: str, threads: int,
               data_dir, cache_dir, seeds: int = 1) -> list[Cell]:
    """Every (adapter, algorithm, spec) the selection allows, once per training seed."""
    entries = registry.select(frameworks=frameworks, algorithms=algorithms, names=adapters)
    if not entries:
        raise MetabenchError("no adapter matches --frameworks/--algorithms/--adapters; "
                             f"known adapters: {', '.join(registry.entries())}")
    cells = []
    for spec_ref in specs:
        spec = load_spec(spec_ref)
        for entry in entries:
            for algorithm in entry.algorithms:
                if algorithms is not None and algorithm not in algorithms:
                    continue
                if algorithm not in spec.algorithms():
                    continue
                cells += [Cell(adapter=entry.name, framework=entry.framework, algorithm=algorithm,
                               spec=spec_ref, spec_name=spec.name, profile=profile, device=device,
                               threads=threads, data_dir=data_dir, cache_dir=cache_dir, seed=seed)
                          for seed in range(seeds)]
    # Group by framework: runs of one framework's processes stay together; seeds > 0
    # (accuracy only) after every seed-0 cell, so a run's timings come first.
    order = {f: i for i, f in enumerate(dict.fromkeys(e.framework for e in entries))}
    cells.sort(key=lambda c: (c.seed > 0, order[c.framework]))
    return cells


def _run_process(cmd: list[str], log_path: Path, timeout: float | None, echo) -> tuple[int | None, float]:
    """Run ``cmd``, teeing its output to ``log_path`` and progress lines to ``echo``."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("[") and "]" in line:
                    echo(line.rstrip())
                if timeout and time.perf_counter() - t0 > timeout:
                    proc.kill()
                    break
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return None, time.perf_counter() - t0
    rc = proc.returncode
    return (rc if rc is not None and rc >= 0 else None), time.perf_counter() - t0


def run_cell(cell: Cell, cell_dir: Path, phases, echo, timeout: float | None) -> dict:
    """Run one cell's processes; returns its status record (also written to status.json)."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    cell_json = cell_dir / "cell.json"
    cell_json.write_text(cell.to_json())
    status = {"cell_id": cell.cell_id, **asdict(cell), "phases": {}}
    if "timing" in phases:
        cmd = [sys.executable, "-m", "pytest", "-c", str(SUITE_DIR / "pytest.ini"), str(SUITE_DIR / "steps.py"),
               "--rootdir", str(SUITE_DIR), "--metabench-cell", str(cell_json), "-q",
               "--benchmark-json", str(cell_dir / "benchmark.json"), "--benchmark-disable-gc",
               "--benchmark-sort=name"]
        rc, secs = _run_process(cmd, cell_dir / "timing.log", timeout, echo)
        ok = rc == 0 and (cell_dir / "benchmark.json").exists()
        status["phases"]["timing"] = {"status": "ok" if ok else "failed", "returncode": rc, "seconds": secs}
        echo(f"[{cell.cell_id}] timing {'ok' if ok else 'FAILED (see timing.log)'} in {secs:.0f} s")
    rest = [p for p in ("memory", "accuracy") if p in phases]
    if rest:
        cmd = [sys.executable, "-m", "bench.worker", str(cell_json), str(cell_dir), "--phases", ",".join(rest)]
        rc, secs = _run_process(cmd, cell_dir / "worker.log", timeout, echo)
        for phase in rest:
            ok = (cell_dir / f"{phase}.json").exists()
            status["phases"][phase] = {"status": "ok" if ok else "failed", "returncode": rc, "seconds": secs}
    (cell_dir / "status.json").write_text(json.dumps(status, indent=1))
    return status


def _finished(cell_dir: Path, phases) -> bool:
    path = cell_dir / "status.json"
    if not path.exists():
        return False
    done = json.loads(path.read_text())["phases"]
    return all(done.get(p, {}).get("status") == "ok" for p in phases)


def run_parity_phase(run_dir: Path, cells, *, device: str, threads: int, data_dir, cache_dir, echo) -> None:
    """``metabench parity`` for the run's adapters, specs and algorithms, into
    ``parity.csv`` and ``parity.log``. A failure is reported, never fatal: the cells run."""
    from bench.parity import REFERENCE, run_parity

    adapters = sorted({c.adapter for c in cells if c.framework != REFERENCE})
    if not adapters:
        echo("[parity] only the reference framework in this run: nothing to compare")
        return
    specs = list(dict.fromkeys(c.spec for c in cells))
    algorithms = list(dict.fromkeys(c.algorithm for c in cells))
    echo(f"[parity] {', '.join(adapters)} against {REFERENCE} on {', '.join(specs)} (float32 and float64)")
    t0 = time.perf_counter()
    with open(run_dir / "parity.log", "w") as log:
        def write(line: str) -> None:
            log.write(line + "\n")
        try:
            rc = run_parity(specs=specs, algorithms=algorithms, adapters=adapters, data_dir=data_dir,
                            cache_dir=cache_dir, device=device, threads=threads, out=run_dir / "parity.csv",
                            echo=write)
        except Exception as e:  # a broken plugin or a missing reference framework
            write(f"parity failed: {type(e).__name__}: {e}")
            rc = 1
    verdict = "all within tolerance" if rc == 0 else "FAILED (see parity.log; summary.md lists which)"
    echo(f"[parity] {verdict} in {time.perf_counter() - t0:.0f} s")


def failures(run_dir: Path) -> list[str]:
    """What went wrong in a run: failed or unfinished cells, and adapters that failed parity."""
    out = []
    for status_path in sorted((run_dir / "cells").glob("*/status.json")):
        phases = json.loads(status_path.read_text())["phases"]
        bad = [p for p, s in phases.items() if s["status"] != "ok"]
        if bad:
            out.append(f"{status_path.parent.name} ({', '.join(bad)})")
    parity = run_dir / "parity.csv"
    if parity.exists():
        import pandas as pd

        table = pd.read_csv(parity)
        out += [f"parity {a}" for a in sorted(set(table.loc[~table["ok"].astype(bool), "adapter"]))]
    elif (run_dir / "parity.log").exists():  # the parity phase ran but produced no table
        out.append("parity (see parity.log)")
    return out


def new_run_id(profile: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{profile}"


class _Progress:
    """A progress bar over the run's estimated seconds (bench.plan), so that its ETA weighs
    a 10-minute training cell above a 10-second one; the cell's own progress lines (the
    worker's ``train i/n``) show beside it."""

    def __init__(self, cells, phases, profile):
        from tqdm import tqdm

        self.profile, self.phases = profile, phases
        self.tqdm = tqdm(total=round(plan.estimate_seconds(cells, [p for p in phases if p != "parity"], profile)),
                         unit="s", file=sys.stderr, dynamic_ncols=True, disable=not sys.stderr.isatty(),
                         bar_format="{l_bar}{bar}| {elapsed} elapsed, about {remaining} left {postfix}")

    def update(self, cell, phases) -> None:
        self.tqdm.update(round(plan.estimate_seconds([cell], phases, self.profile)))

    def line(self, text: str) -> None:
        self.tqdm.set_postfix_str(text[-60:], refresh=True)


@contextmanager
def progress_bar(cells, phases, profile, echo):
    """``(bar, say)``: ``say`` prints a line above the bar (or just prints, without a terminal)."""
    bar = _Progress(cells, phases, profile)

    def say(text: str) -> None:
        if bar.tqdm.disable:
            echo(text)
            return
        bar.line(text)
        if "] train " not in text:  # a worker's training progress only moves the bar's text
            bar.tqdm.write(text, file=sys.stderr)

    try:
        yield bar, say
    finally:
        bar.tqdm.close()


def run(*, profile: str, frameworks=None, algorithms=None, specs=None, adapters=None, device="auto",
        threads: int | None = None, data_dir=None, cache_dir=None, results_dir="results", run_id=None,
        phases=None, timeout: float | None = None, resume: bool = False, command: str | None = None,
        seeds: int = 1, dry_run: bool = False, echo=print) -> Path | None:
    """Run the benchmark; returns the run's results folder. ``phases`` defaults to the
    profile's. With ``resume``, cells of an existing run whose requested phases all
    succeeded are kept, not run again, and so is a parity table already written. ``command``
    is recorded in the manifest (the CLI passes the ``metabench ...`` line the user typed).
    ``seeds`` training seeds per cell (seeds > 0 run the accuracy phase only). With
    ``dry_run`` the plan is printed and nothing is run or written (returns None)."""
    if seeds < 1:
        raise MetabenchError(f"--seeds: must be at least 1, got {seeds}")
    command = command or "bench.runner.run() (called from Python, not the command line)"
    phases = tuple(phases or DEFAULT_PHASES[profile])
    unknown = [p for p in phases if p not in PHASE_GROUPS]
    if unknown:
        raise MetabenchError(f"--phases: unknown {unknown[0]!r}; allowed: {', '.join(PHASE_GROUPS)}")
    if algorithms is None and adapters is None:
        algorithms = DEFAULT_ALGORITHMS.get(profile)
    if algorithms is not None:
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown:
            raise MetabenchError(f"--algorithms: unknown {unknown[0]!r}; allowed: {', '.join(ALGORITHMS)}")
    device = detect_device() if device == "auto" else device
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    specs = list(specs or DEFAULT_SPECS[profile])
    cells = plan_cells(profile=profile, frameworks=frameworks, algorithms=algorithms, specs=specs,
                       adapters=adapters, device=device, threads=threads, data_dir=data_dir, cache_dir=cache_dir,
                       seeds=seeds)
    if "accuracy" not in phases:  # a training seed changes nothing else: one cell each
        cells = [c for c in cells if c.seed == 0]
    run_dir = Path(results_dir) / (run_id or new_run_id(profile))
    echo(plan.describe(cells, phases, profile=profile, device=device, threads=threads, run_dir=run_dir,
                       seeds=seeds))
    if dry_run:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    from bench.report import write_manifest, write_report

    started = time.time()
    write_manifest(run_dir, cells, profile=profile, device=device, threads=threads, started=started,
                   command=command, data_dir=data_dir, cache_dir=cache_dir)
    if "parity" in phases and not (resume and (run_dir / "parity.csv").exists()):
        run_parity_phase(run_dir, cells, device=device, threads=threads, data_dir=data_dir,
                         cache_dir=cache_dir, echo=echo)
    with progress_bar(cells, phases, profile, echo) as (bar, say):
        for i, cell in enumerate(cells, 1):
            cell_dir = run_dir / "cells" / cell.cell_id
            todo = plan.cell_phases(cell, phases)
            name = f"{cell.adapter} {cell.algorithm} {cell.spec_name}" + (f" seed {cell.seed}" if cell.seed else "")
            if resume and _finished(cell_dir, todo):
                say(f"[{i}/{len(cells)}] {name}: done before, kept")
                bar.update(cell, todo)
                continue
            say(f"[{i}/{len(cells)}] {name}")
            status = run_cell(cell, cell_dir, todo, say, timeout)
            bar.update(cell, todo)
            failed = [p for p, s in status["phases"].items() if s["status"] != "ok"]
            if failed:
                say(f"[{cell.cell_id}] failed phases: {', '.join(failed)} (other cells go on)")
    write_manifest(run_dir, cells, profile=profile, device=device, threads=threads, started=started,
                   command=command, data_dir=data_dir, cache_dir=cache_dir, finished=time.time())
    write_report(run_dir)
    echo(f"metabench: report in {run_dir / 'summary.md'}")
    return run_dir
