"""``metabench run``: plan cells, run each in processes of its own, collect, report.

Per cell, two processes of the cell's framework: the timing suite (pytest-benchmark),
then the memory probe and accuracy phase (``bench.measure.worker``). A process that crashes, hangs
past its time limit (the watchdog kills its whole process group) or reports a non-finite
loss marks that cell's phases ``failed``, ``timeout`` or ``diverged``; every other cell's
results are kept. Each cell writes ``<run>/cells/<cell_id>/``, its ``status.json`` last;
the run's tables and plots are built from those folders by ``bench.report.report``, so a partial
run still reports what it measured.

Before anything is written, ``bench.run.preflight`` checks the data, the device, the
frameworks and the results folder. While a run writes, it holds ``<run>/.lock``
(``bench.run.lock``). Every file is written atomically (``bench.core.atomic``), so a run killed at
any moment is completed by ``--resume``: finished cells are kept, the others run again
from scratch. Ctrl-C stops after the current cell (twice: at once) and prints the resume
command.

Where the cells run is the executor's business (``bench.run.executors``: here one at a time,
as Slurm jobs, or as Ray tasks); everything above holds for each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.core import atomic, registry
from bench.core.cell import Cell
from bench.core.errors import AdapterError, MetabenchError
from bench.core.profiles import PHASE_GROUPS, PROFILES
from bench.core.spec import ALGORITHMS, EpisodeSpec, load_spec
from bench.measure import machine_load
from bench.run import executors, plan, preflight
from bench.run.lock import RunLock

SUITE_DIR = Path(__file__).resolve().parents[1] / "measure" / "suite"  # bench.measure.suite
DEFAULT_SPECS = {"smoke": ("omniglot-5w1s", "sinusoid-10shot"), "cpu": ("omniglot-5w1s", "sinusoid-10shot"),
                 "paper": ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s",
                           "sinusoid-10shot")}
# smoke proves the pipeline: FOMAML is MAML's adapter with its inner gradients stopped, so
# by default smoke runs MAML and ProtoNet only (--algorithms fomaml adds it), which keeps
# `nox -s bench -- --profile smoke` (3 frameworks, every phase) within a few minutes.
# ANIL runs when asked (--algorithms anil): its float32 parity on Omniglot is not settled
# (docs/fairness.md), and a default run must not fail on it.
DEFAULT_ALGORITHMS = {"smoke": ("maml", "protonet"), "cpu": ("maml", "fomaml", "protonet"),
                      "paper": ("maml", "fomaml", "protonet")}
# Parity runs once per run, before the cells: is every adapter's maths torch's? Every
# profile runs it (Profile.phases); smoke runs the quick comparison (Profile.quick_parity),
# so a wrong adapter is never timed without a warning.
DEFAULT_PHASES = {name: p.phases for name, p in PROFILES.items()}
LOG_TAIL_LINES = 20     # of a process's log, kept in status.json
POLL_SECONDS = 0.2      # how often the watchdog looks at a running cell
MAX_REPEATS = 100       # timing processes per cell: more is a typo, not a plan
MAX_RUN_ID_LENGTH = 128
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a folder name, never a path


def expand_specs(refs: list[str], overrides=(), sweeps=(), one_at_a_time: bool = False) -> list[str]:
    """Each spec reference with the ``--set`` overrides, then one reference per combination
    of the ``--sweep`` values (``omniglot-5w1s@maml.inner_steps=5``: ``bench.core.spec``); with
    ``one_at_a_time``, one per value of each sweep alone, the other fields at the spec's
    own values (4 + 4 specs for two sweeps of 4 values, not 16)."""
    import itertools

    from bench.core.spec import parse_override, with_overrides

    fixed = [parse_override(o, "--set") for o in overrides]
    axes = []
    for sweep in sweeps:
        key, values = parse_override(sweep, "--sweep")
        axes.append([(key, v.strip()) for v in values.split(",") if v.strip()])
    combos = [[point] for axis in axes for point in axis] if one_at_a_time and axes else itertools.product(*axes)
    combos = [list(c) for c in combos]
    out = []
    for ref in refs:
        for combo in combos:
            out.append(with_overrides(ref, fixed + combo))
    for ref in out:
        load_spec(ref)  # every override validated now, like a spec file: one line naming the field
    return out


def load_specs(refs) -> dict[str, EpisodeSpec]:
    """Each ``--specs`` entry loaded; cells are named after the spec's name, so two entries
    with the same name would write into the same cells' folders: refused."""
    out: dict[str, EpisodeSpec] = {}
    names: dict[str, str] = {}
    for ref in refs:
        if ref in out:
            raise MetabenchError(f"--specs: {ref} is given twice; give each spec once")
        spec = load_spec(ref)
        if spec.name in names:
            raise MetabenchError(f"--specs: {names[spec.name]} and {ref} are both named {spec.name!r} "
                                 f"(cells are named after it); rename one in its name = ... line")
        names[spec.name] = ref
        out[ref] = spec
    return out


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
    entries = registry.select(frameworks=frameworks, algorithms=algorithms, names=adapters, device=device)
    if not entries:
        raise MetabenchError("no adapter matches --frameworks/--algorithms/--adapters; "
                             f"known adapters: {', '.join(registry.entries())}")
    cells = []
    for spec_ref, spec in load_specs(specs).items():
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


@dataclass
class ProcessOutcome:
    """How one of a cell's processes ended."""

    returncode: int | None      # None: killed (by the watchdog, Ctrl-C or a signal)
    seconds: float
    timed_out: bool = False     # killed by the watchdog at the time limit
    interrupted: bool = False   # killed because the run is stopping now (Ctrl-C twice)
    killed_by: str | None = None  # the signal that ended it, when not the harness's own kill
    log_tail: list[str] = field(default_factory=list)
    log_path: Path | None = None
    machine: dict = field(default_factory=dict)  # what competed for the CPU (bench.measure.machine_load)


def _parent_death_signal():
    """A ``preexec_fn`` that makes the kernel SIGKILL a cell when the harness dies, even by
    SIGKILL: a killed run leaves no orphan writing into the folder ``--resume`` rebuilds."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded here: after fork, only a call
    except OSError:
        return None
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


_PREEXEC = _parent_death_signal()


def _tee(stream, log, tail: deque, echo) -> None:
    for line in stream:
        log.write(line)
        log.flush()  # a hung or killed cell still leaves its last lines
        tail.append(line.rstrip("\n"))
        if line.startswith("[") and "]" in line:
            echo(line.rstrip())


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass


def _run_process(cmd: list[str], log_path: Path, limit: float | None, echo,
                 stop_now=lambda: False) -> ProcessOutcome:
    """Run ``cmd`` in a session of its own, teeing its output to ``log_path`` and its
    progress lines to ``echo``. The watchdog does not wait for output: at ``limit`` seconds,
    or as soon as ``stop_now()`` is true, it kills the whole process group (a framework's
    helper processes too), however silent the cell is."""
    before = machine_load.snapshot()
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    timed_out = interrupted = False
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                # the run's adapters, as resolved when it started (registry.child_env)
                                env={**os.environ, **registry.child_env(), "PYTHONUNBUFFERED": "1"},
                                start_new_session=True,
                                preexec_fn=_PREEXEC)
        reader = threading.Thread(target=_tee, args=(proc.stdout, log, tail, echo), daemon=True)
        reader.start()
        while True:
            try:
                proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            if limit is not None and time.monotonic() - t0 > limit:
                timed_out = True
                break
            if stop_now():
                interrupted = True
                break
        seconds = time.monotonic() - t0
        _kill_group(proc)  # also what a finished cell left behind
        proc.wait()
        machine = machine_load.between(before, machine_load.snapshot())
        reader.join(timeout=10)
        if timed_out:
            note = f"metabench: killed after {int(seconds)} s: the time limit of this process is {limit:g} s"
            log.write(note + "\n")
            tail.append(note)
    rc = proc.returncode
    killed_by_us = timed_out or interrupted
    killed = killed_by_us or rc < 0
    return ProcessOutcome(returncode=None if killed else rc, seconds=seconds, timed_out=timed_out,
                          interrupted=interrupted, log_tail=list(tail), log_path=log_path, machine=machine,
                          killed_by=signal.Signals(-rc).name if rc < 0 and not killed_by_us else None)


def _last_line(path: Path) -> str | None:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def _failure_detail(phase: str, out: ProcessOutcome, cell_dir: Path) -> str:
    """One line saying why a phase failed: its error file, else what pytest reported, else
    the last line the process printed."""
    for name in (f"{phase}.error.txt", "build.error.txt"):
        line = _last_line(cell_dir / name)
        if line:
            return line if name.startswith(phase) else f"build failed: {line}"
    try:  # pytest's report of the failed test: its last "E   ..." line
        log = out.log_path.read_text(errors="replace").splitlines() if out.log_path else []
    except OSError:
        log = []
    errors = [line[1:].strip() for line in log if line.startswith("E ") and line[1:].strip()]
    if errors:
        return errors[-1]
    if out.killed_by:
        return f"killed by {out.killed_by}"
    said = [line.strip() for line in out.log_tail if line.strip()]
    return f"exit code {out.returncode}" + (f": {said[-1]}" if said else "")


def _phase_record(phase: str, ok: bool, out: ProcessOutcome, limit: float | None, cell_dir: Path) -> dict:
    """A phase's entry in status.json: status ok | failed | timeout | diverged, the exit
    code, the process's seconds, a one-line detail, the last lines of its log, and what
    else used the CPU meanwhile (``machine``)."""
    status, detail = "ok", None
    if not ok:
        diverged = cell_dir / f"{phase}.diverged.json"
        if diverged.exists():
            status, detail = "diverged", json.loads(diverged.read_text())["detail"]
        elif out.timed_out:
            status, detail = "timeout", f"killed after {int(out.seconds)} s (time limit {limit:g} s)"
        else:
            status, detail = "failed", _failure_detail(phase, out, cell_dir)
    return {"status": status, "returncode": out.returncode, "seconds": round(out.seconds, 3),
            "detail": " ".join(detail.split())[:300] if detail else None, "log_tail": out.log_tail,
            "machine": out.machine}


TIMING_DIR = "timing"   # cells/<id>/timing/<k>/: the k-th timing process of a cell


def timing_process_dir(cell_dir: Path, k: int) -> Path:
    return cell_dir / TIMING_DIR / str(k)


def _read_status(path: Path) -> dict | None:
    """A status record, or None when it is missing or damaged (the work runs again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def timing_process_done(cell_dir: Path, k: int) -> bool:
    record = _read_status(timing_process_dir(cell_dir, k) / "status.json")
    return bool(record) and record.get("status") == "ok"


def start_cell(cell: Cell, cell_dir: Path) -> None:
    """Make ``cell_dir`` ready for a (new or resumed) attempt: an earlier, unfinished
    attempt's files must not mix with the new ones, except its timing processes that
    finished ok, which ``--resume`` keeps (a run killed between repeats loses none)."""
    if cell_dir.exists():
        keep = {p.name for p in (cell_dir / TIMING_DIR).glob("*") if p.name.isdigit()
                and timing_process_done(cell_dir, int(p.name))}
        for child in cell_dir.iterdir():
            if child.name == TIMING_DIR:
                for process in child.iterdir():
                    if process.name not in keep:
                        shutil.rmtree(process) if process.is_dir() else process.unlink()
            elif child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    cell_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(cell_dir / "cell.json", cell.to_json())


def run_timing_process(cell: Cell, cell_dir: Path, k: int, echo, limit, stop_now=lambda: False) -> dict | None:
    """The cell's ``k``-th timing process (pytest-benchmark over ``bench/measure/suite``): writes
    ``timing/<k>/benchmark.json``, its log and, last, its ``status.json``. Returns that
    record, or None when the run is stopping now (``--resume`` runs it again)."""
    pdir = timing_process_dir(cell_dir, k)
    if pdir.exists():
        shutil.rmtree(pdir)
    pdir.mkdir(parents=True)
    (cell_dir / "timing.diverged.json").unlink(missing_ok=True)  # an earlier process's: not this one's
    # pytest-benchmark writes its JSON in place: it goes to a part file, renamed when whole
    part = pdir / f"{atomic.PART_PREFIX}benchmark.json"
    cmd = [sys.executable, "-m", "pytest", "-c", str(SUITE_DIR / "pytest.ini"), str(SUITE_DIR / "steps.py"),
           "--rootdir", str(SUITE_DIR), "--metabench-cell", str(cell_dir / "cell.json"), "-q",
           "--benchmark-json", str(part), "--benchmark-disable-gc", "--benchmark-sort=name"]
    out = _run_process(cmd, pdir / "timing.log", limit(["timing"]), echo, stop_now)
    if out.interrupted:
        return None
    ok = out.returncode == 0 and part.exists()
    if ok:
        os.replace(part, pdir / "benchmark.json")
    part.unlink(missing_ok=True)
    record = _phase_record("timing", ok, out, limit(["timing"]), cell_dir)
    atomic.write_json(pdir / "status.json", record)
    echo(f"[{cell.cell_id}] timing process {k + 1} {record['status']}"
         + (f": {record['detail']}" if record["detail"] else "") + f" in {out.seconds:.0f} s")
    return record


def _timing_record(cell_dir: Path, repeats: int) -> dict:
    """The cell's timing phase from its processes: ok when every one ended ok, else the
    first that did not (its status and detail, naming which process)."""
    records = [_read_status(timing_process_dir(cell_dir, k) / "status.json") or
               {"status": "failed", "returncode": None, "seconds": None, "detail": "did not run",
                "log_tail": [], "machine": {}} for k in range(repeats)]
    bad = next(((k, r) for k, r in enumerate(records) if r.get("status") != "ok"), None)
    record = dict(bad[1] if bad else records[-1])
    if bad and repeats > 1:
        record["detail"] = f"process {bad[0] + 1} of {repeats}: {record.get('detail')}"
    record["seconds"] = round(sum(r.get("seconds") or 0 for r in records), 3)
    record["processes"] = [{"status": r.get("status"), "seconds": r.get("seconds"), "machine": r.get("machine")}
                           for r in records]
    return record


def finish_cell(cell: Cell, cell_dir: Path, phases, echo, limit, stop_now=lambda: False,
                placement: dict | None = None, repeats: int = 1) -> dict | None:
    """Complete a started cell (``start_cell``): its timing processes not yet run, then its
    memory and accuracy process; writes its status record last (and atomically) to
    status.json, and returns it: a cell with a status.json is complete. None, writing no
    status, when the run is stopping now."""
    status = {"cell_id": cell.cell_id, **asdict(cell), "placement": placement or executors.placement("local"),
              "phases": {}}
    if "timing" in phases:
        for k in range(repeats):
            if not (timing_process_dir(cell_dir, k) / "status.json").exists():  # not yet run (a cluster job)
                if run_timing_process(cell, cell_dir, k, echo, limit, stop_now) is None:
                    return None
        record = status["phases"]["timing"] = _timing_record(cell_dir, repeats)
        if repeats > 1:
            echo(f"[{cell.cell_id}] timing {record['status']} ({repeats} processes)"
                 + (f": {record['detail']}" if record["detail"] else ""))
    rest = [p for p in ("memory", "accuracy") if p in phases]
    if rest:
        cmd = [sys.executable, "-m", "bench.measure.worker", str(cell_dir / "cell.json"), str(cell_dir),
               "--phases", ",".join(rest)]
        out = _run_process(cmd, cell_dir / "worker.log", limit(rest), echo, stop_now)
        if out.interrupted:
            return None
        for phase in rest:
            ok = (cell_dir / f"{phase}.json").exists()
            status["phases"][phase] = _phase_record(phase, ok, out, limit(rest), cell_dir)
    atomic.write_json(cell_dir / "status.json", status)
    return status


def run_cell(cell: Cell, cell_dir: Path, phases, echo, limit, stop_now=lambda: False,
             placement: dict | None = None, repeats: int = 1) -> dict | None:
    """Run one cell's processes: ``repeats`` timing processes one after another, then the
    memory and accuracy process (``start_cell`` then ``finish_cell``; the local executor
    interleaves the timing processes of comparable cells instead). ``limit(phases)`` is the
    time limit of a process running ``phases``. Returns its status record (None when the
    run is stopping now). ``placement`` says where it ran (``bench.run.executors.placement``)."""
    start_cell(cell, cell_dir)
    return finish_cell(cell, cell_dir, phases, echo, limit, stop_now, placement, repeats)


def _finished(cell_dir: Path, phases) -> bool:
    """Whether the cell's status.json says every one of ``phases`` ended ok (a missing or
    damaged status.json: not finished, the cell runs again)."""
    record = _read_status(cell_dir / "status.json")
    done = record.get("phases") if record else None
    if not isinstance(done, dict):
        return False
    return all(isinstance(done.get(p), dict) and done[p].get("status") == "ok" for p in phases)


def run_contract_phase(run_dir: Path, cells, *, device: str, cache_dir, echo) -> None:
    """Every adapter of the run through the contract checks that guard the timing
    (``bench.check.contract.RUN_CHECKS``: sync waits for the step, every outer step updates), cached
    per adapter and code version: ``contract.csv``, one row per (adapter, spec, algorithm)
    of the run's cells. Parity checks the maths."""
    import pandas as pd

    from bench.check import contract as check

    names = sorted({c.adapter for c in cells})
    t0 = time.perf_counter()
    try:  # single-threaded, as `metabench check` by default: the contract does not depend on threads
        results = check.cached_contract(names, device, 1, cache_dir, for_run=True)
    except Exception as e:  # noqa: BLE001 - a broken registry entry: said, never fatal
        echo(f"[contract] not checked: {type(e).__name__}: {e}")
        return
    rows = []
    for c in cells:
        found, cached = results[c.adapter]
        bad = [f"{r.check} ({r.case}): {r.detail}" for r in found if not r.ok]
        rows.append({"adapter": c.adapter, "spec": c.spec, "algorithm": c.algorithm, "ok": not bad,
                     "failed": "; ".join(bad), "cached": cached})
    table = pd.DataFrame(rows).drop_duplicates(["adapter", "spec", "algorithm"])
    atomic.write_csv(run_dir / "contract.csv", table, index=False)
    failed = sorted(set(table.loc[~table["ok"], "adapter"]))
    cached = sum(results[n][1] for n in names)
    echo(f"[contract] {len(names) - len(failed)} of {len(names)} adapters keep the contract ({cached} from the "
         f"cache) in {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))


def run_parity_phase(run_dir: Path, cells, *, device: str, threads: int, data_dir, cache_dir, echo,
                     quick: bool = False) -> None:
    """The contract check of every adapter in the run (``bench.check.contract``, cached), into
    ``contract.csv``, then ``metabench parity`` for the run's adapters, specs and
    algorithms, into ``parity.csv`` and ``parity.log``. A failure is reported and marked in
    every table, never fatal: the cells run."""
    from bench.check.parity import QUICK_TASKS, REFERENCE, reference_adapter, run_parity

    run_contract_phase(run_dir, cells, device=device, cache_dir=cache_dir, echo=echo)
    adapters = sorted({c.adapter for c in cells if c.adapter != reference_adapter(c.algorithm)})
    if not adapters:
        echo("[parity] only the reference adapters in this run: nothing to compare")
        return
    specs = list(dict.fromkeys(c.spec for c in cells))
    algorithms = list(dict.fromkeys(c.algorithm for c in cells))
    echo(f"[parity] {', '.join(adapters)} against {REFERENCE} on {', '.join(specs)} (float32 and float64"
         f"{'; quick: smaller models and episodes' if quick else ''})")
    t0 = time.perf_counter()
    with open(run_dir / "parity.log", "w") as log:
        def write(line: str) -> None:
            log.write(line + "\n")
        try:
            part = run_dir / f"{atomic.PART_PREFIX}parity.csv"
            rc = run_parity(specs=specs, algorithms=algorithms, adapters=adapters, data_dir=data_dir,
                            cache_dir=cache_dir, device=device, threads=threads, out=part, echo=write,
                            quick=quick, batch_size=QUICK_TASKS if quick else 4)
            if part.exists():  # whole: --resume keeps a parity.csv it finds
                os.replace(part, run_dir / "parity.csv")
        except Exception as e:  # a broken plugin or a missing reference framework
            write(f"parity failed: {type(e).__name__}: {e}")
            rc = 1
    verdict = "all within tolerance" if rc == 0 else "FAILED (see parity.log; summary.md lists which)"
    echo(f"[parity] {verdict} in {time.perf_counter() - t0:.0f} s")


def failures(run_dir: Path) -> list[str]:
    """What went wrong in a run: cells with a failed, timed-out or diverged phase
    (``cell (memory, timing timeout, accuracy diverged)``), unfinished cells, and adapters
    that failed parity."""
    out = []
    cells = run_dir / "cells"
    for cell_dir in sorted({p.parent for p in (*cells.glob("*/cell.json"), *cells.glob("*/status.json"))}):
        if not (cell_dir / "status.json").exists():
            out.append(f"{cell_dir.name} (did not finish)")
            continue
        phases = json.loads((cell_dir / "status.json").read_text())["phases"]
        bad = [p if s["status"] == "failed" else f"{p} {s['status']}" for p, s in phases.items()
               if s["status"] != "ok"]
        if bad:
            out.append(f"{cell_dir.name} ({', '.join(bad)})")
    parity = run_dir / "parity.csv"
    if parity.exists():
        import pandas as pd

        table = pd.read_csv(parity)
        out += [f"parity {a}" for a in sorted(set(table.loc[~table["ok"].astype(bool), "adapter"]))]
    elif (run_dir / "parity.log").exists():  # the parity phase ran but produced no table
        out.append("parity (see parity.log)")
    contract = run_dir / "contract.csv"
    if contract.exists():
        import pandas as pd

        table = pd.read_csv(contract)
        out += [f"contract {a}" for a in sorted(set(table.loc[~table["ok"].astype(bool), "adapter"]))]
    return out


def new_run_id(profile: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{profile}"


class _Progress:
    """A progress bar over the run's estimated seconds (bench.run.plan), so that its ETA weighs
    a 10-minute training cell above a 10-second one; the cell's own progress lines (the
    worker's ``train i/n``) show beside it."""

    def __init__(self, cells, phases, profile, repeats: int = 1):
        from tqdm import tqdm

        self.profile, self.phases = profile, phases
        self.tqdm = tqdm(total=round(plan.estimate_seconds(cells, [p for p in phases if p != "parity"], profile,
                                                           repeats)),
                         unit="s", file=sys.stderr, dynamic_ncols=True, disable=not sys.stderr.isatty(),
                         bar_format="{l_bar}{bar}| {elapsed} elapsed, about {remaining} left {postfix}")

    def update(self, cell, phases) -> None:
        self.tqdm.update(round(plan.estimate_seconds([cell], [p for p in phases if p != "parity"], self.profile)))

    def advance(self, seconds: float) -> None:
        self.tqdm.update(round(seconds))

    def line(self, text: str) -> None:
        self.tqdm.set_postfix_str(text[-60:], refresh=True)


@contextmanager
def progress_bar(cells, phases, profile, echo, repeats: int = 1):
    """``(bar, say)``: ``say`` prints a line above the bar (or just prints, without a terminal)."""
    bar = _Progress(cells, phases, profile, repeats)

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


@dataclass(frozen=True)
class RunPlan:
    """Everything a run will do and where, settled before anything is checked or written."""

    profile: str
    phases: tuple[str, ...]
    cells: tuple[Cell, ...]
    specs: dict[str, EpisodeSpec]       # --specs entry -> its spec
    device: str
    threads: int
    results_dir: Path
    run_id: str
    resume: bool
    data_dir: str | None
    command: str
    # where the cells run (bench.run.executors); not part of plan.json: a run started here may be
    # finished on a cluster, and the reverse
    executor: str = "local"
    cluster: executors.ClusterOptions = field(default_factory=executors.ClusterOptions)
    repeats: int = 1            # timing processes per cell (--repeats)
    order_seed: int = 0         # seeds the interleaved order of those processes (plan.timing_order)

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.run_id

    def record(self) -> dict:
        """``plan.json``: what ``--resume`` must match (same cells, same specs, same settings)."""
        return {"run_id": self.run_id, "command": self.command, "profile": self.profile,
                "phases": list(self.phases), "device": self.device, "threads": self.threads,
                "cells": [c.cell_id for c in self.cells],
                "specs": {s.name: _digest(s.to_dict()) for s in self.specs.values()},
                "repeats": self.repeats, "order_seed": self.order_seed,
                # the timing processes in the order they run: what --resume continues
                "timing_order": [[c, k] for c, k in plan.timing_order(
                    [c for c in self.cells if "timing" in plan.cell_phases(c, self.phases)],
                    self.repeats, self.order_seed)]}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_options(*, threads, timeout, run_id, resume, frameworks, adapters, here: bool = True) -> None:
    """The command-line values that no plan can satisfy, each refused in one line. ``here``:
    the cells run on this machine (its cores bound ``--threads``)."""
    if threads is not None and threads < 1:
        raise MetabenchError(f"--threads: must be at least 1, got {threads}")
    if here and threads is not None and threads > _available_cores():
        raise MetabenchError(f"--threads: {threads} exceeds the {_available_cores()} cores this process may "
                             f"use (every framework is pinned to that many); use at most {_available_cores()}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise MetabenchError(f"--cell-timeout: must be a positive number of seconds, got {timeout}")
    if run_id is not None and len(run_id) > MAX_RUN_ID_LENGTH:
        raise MetabenchError(f"--run-id: {len(run_id)} characters names a folder too long for most file systems; "
                             f"use at most {MAX_RUN_ID_LENGTH}")
    if run_id is not None and not RUN_ID_PATTERN.match(run_id):
        raise MetabenchError(f"--run-id: {run_id!r} names a folder: use letters, digits, '.', '_' and '-', "
                             f"starting with a letter or digit")
    if resume and run_id is None:
        raise MetabenchError("--resume needs --run-id NAME: the run to complete (a folder of --results-dir)")
    known = registry.entries()
    for name in adapters or ():
        try:
            registry.get(name)
        except AdapterError as e:
            raise MetabenchError(f"--adapters: {e}") from None
    frameworks_known = list(dict.fromkeys(e.framework for e in known.values()))
    for name in frameworks or ():
        if name not in frameworks_known:
            raise MetabenchError(f"--frameworks: unknown {name!r}; known: {', '.join(frameworks_known)} "
                                 f"(known adapters: metabench list)")


def time_limit(profile: str, timeout: float | None):
    """``limit(phases)``: seconds one process running ``phases`` may take before the watchdog
    kills it: ``--cell-timeout`` when given, else the profile's limits summed."""
    return lambda phases: timeout if timeout is not None else PROFILES[profile].time_limit(phases)


class _StopRequests:
    """Ctrl-C while cells run: the first lets the current cell finish (its status written)
    and then stops; the second (or a SIGTERM, as a scheduler sends) kills the current cell
    at once. The handler only counts: printing from a signal handler can deadlock on the
    output's lock, so the watchdog's polling loop says what will happen."""

    def __init__(self, echo):
        self.echo = echo
        self.count = 0
        self.by = "Ctrl-C"
        self._told = 0
        self._previous: dict = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            self.count, self.by = self.count + 2, "SIGTERM"
        else:
            self.count += 1

    @property
    def stopping(self) -> bool:
        return self.count >= 1

    def stop_now(self) -> bool:
        """Polled by the watchdog: True once the current cell must be killed."""
        if self.count == 1 and self._told < 1:
            self._told = 1
            self.echo("metabench: Ctrl-C: stopping after this cell (Ctrl-C again to stop it now)")
        return self.count >= 2


@dataclass(frozen=True)
class RunRequest:
    """What the user asked ``metabench run`` for, before anything is resolved: one frozen
    object from the command line (``from_args``) to ``run``, which resolves it into a
    ``RunPlan`` (cells, specs, device, threads). ``None``: the profile's default."""

    profile: str
    frameworks: tuple[str, ...] | None = None
    algorithms: tuple[str, ...] | None = None
    specs: tuple[str, ...] | None = None
    adapters: tuple[str, ...] | None = None
    device: str = "auto"
    threads: int | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    results_dir: str = "results"
    run_id: str | None = None
    phases: tuple[str, ...] | None = None
    timeout: float | None = None        # --cell-timeout
    resume: bool = False
    command: str | None = None          # recorded in the manifest: the line the user typed
    seeds: int = 1
    dry_run: bool = False
    overrides: tuple[str, ...] = ()     # --set
    sweeps: tuple[str, ...] = ()        # --sweep
    one_at_a_time: bool = False         # --sweep-one-at-a-time
    executor: str = "local"             # --executor: local | slurm | ray (bench.run.executors)
    cluster: executors.ClusterOptions = field(default_factory=executors.ClusterOptions)  # --slurm-*, --ray-*
    repeats: int | None = None          # --repeats: timing processes per cell (None: the profile's)
    order_seed: int = 0                 # --order-seed: the interleaved order of those processes

    @classmethod
    def from_args(cls, args) -> RunRequest:
        """From ``metabench run``'s parsed arguments."""
        tup = lambda v: tuple(v) if v is not None else None
        return cls(profile=args.profile, frameworks=tup(args.frameworks), algorithms=tup(args.algorithms),
                   specs=tup(args.specs), adapters=tup(args.adapters), device=args.device, threads=args.threads,
                   data_dir=args.data_dir, cache_dir=args.cache_dir, results_dir=args.results_dir,
                   run_id=args.run_id, phases=tup(args.phases), timeout=args.cell_timeout, resume=args.resume,
                   command=args.command_line, seeds=args.seeds, dry_run=args.dry_run,
                   overrides=tuple(args.set or ()), sweeps=tuple(args.sweep or ()),
                   one_at_a_time=args.sweep_one_at_a_time, executor=args.executor,
                   repeats=getattr(args, "repeats", None), order_seed=getattr(args, "order_seed", 0),
                   cluster=executors.ClusterOptions(
                       group_by=args.group_by, slurm_partition=args.slurm_partition, slurm_gpus=args.slurm_gpus,
                       slurm_cpus=args.slurm_cpus, slurm_mem_gb=args.slurm_mem_gb,
                       slurm_time_min=args.slurm_time_min, slurm_account=args.slurm_account,
                       slurm_constraint=args.slurm_constraint, slurm_exclusive=args.slurm_exclusive,
                       slurm_cluster=args.slurm_cluster, ray_address=args.ray_address))


def run(request: RunRequest | None = None, *, echo=print, **options) -> Path | None:
    """Run the benchmark; returns the run's results folder. ``request`` (or its fields as
    keywords) says what to run: ``phases`` defaults to the profile's. With ``resume``,
    cells of an existing run whose requested phases all succeeded are kept, not run again,
    and so is a parity table already written. ``command`` is recorded in the manifest (the
    CLI passes the ``metabench ...`` line the user typed). ``seeds`` training seeds per
    cell (seeds > 0 run the accuracy phase only). With ``dry_run`` the plan is printed and
    nothing is run or written (returns None). ``overrides`` (``--set``:
    ``"maml.inner_steps=5"``) change every spec of the run; ``sweeps`` (``--sweep``:
    ``"maml.inner_steps=1,2,5"``) make one spec per value, their combinations when there
    are several, or each alone with ``one_at_a_time`` (``expand_specs``).

    Bad options and failed preflight checks raise ``MetabenchError`` before anything is
    written; Ctrl-C raises ``KeyboardInterrupt`` after saying how to resume."""
    r = request or RunRequest(**options)
    profile, frameworks, algorithms, specs, adapters = r.profile, r.frameworks, r.algorithms, r.specs, r.adapters
    device, threads, data_dir, cache_dir, results_dir = r.device, r.threads, r.data_dir, r.cache_dir, r.results_dir
    run_id, phases, timeout, resume, command = r.run_id, r.phases, r.timeout, r.resume, r.command
    seeds, dry_run, overrides, sweeps = r.seeds, r.dry_run, r.overrides, r.sweeps
    if seeds < 1:
        raise MetabenchError(f"--seeds: must be at least 1, got {seeds}")
    repeats = PROFILES[profile].repeats if r.repeats is None else r.repeats
    if not 1 <= repeats <= MAX_REPEATS:
        raise MetabenchError(f"--repeats: must be from 1 to {MAX_REPEATS} timing processes per cell, got {repeats}")
    if r.order_seed < 0:
        raise MetabenchError(f"--order-seed: must be a non-negative integer, got {r.order_seed}")
    command = command or "bench.run.runner.run() (called from Python, not the command line)"
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
    if r.executor not in executors.EXECUTORS:
        raise MetabenchError(f"--executor: unknown {r.executor!r}; allowed: {', '.join(executors.EXECUTORS)}")
    r.cluster.check()
    here = executors.runs_here(r.executor, r.cluster)
    check_options(threads=threads, timeout=timeout, run_id=run_id, resume=resume, frameworks=frameworks,
                  adapters=adapters, here=here)
    if device == "auto":
        device = detect_device() if here else executors.cluster_device(r.executor, r.cluster)
    if threads is None:
        threads = _available_cores() if here else executors.cluster_threads(r.cluster)
    if r.executor == "slurm" and r.cluster.slurm_cpus is not None and threads > r.cluster.slurm_cpus:
        raise MetabenchError(f"--threads: {threads} exceeds the {r.cluster.slurm_cpus} CPUs a job asks for "
                             f"(--slurm-cpus); raise --slurm-cpus or lower --threads")
    specs = expand_specs(list(specs or DEFAULT_SPECS[profile]), overrides, sweeps, r.one_at_a_time)
    cells = plan_cells(profile=profile, frameworks=frameworks, algorithms=algorithms, specs=specs,
                       adapters=adapters, device=device, threads=threads, data_dir=data_dir, cache_dir=cache_dir,
                       seeds=seeds)
    if "accuracy" not in phases:  # a training seed changes nothing else: one cell each
        cells = [c for c in cells if c.seed == 0]
    if not cells:
        raise MetabenchError(f"no cell to run: no selected adapter serves an algorithm that --specs "
                             f"{','.join(specs)} configure; check --adapters/--frameworks/--algorithms "
                             f"against `metabench list`")
    run_plan = RunPlan(profile=profile, phases=phases, cells=tuple(cells), specs=load_specs(specs), device=device,
                       threads=threads, results_dir=Path(results_dir), run_id=run_id or new_run_id(profile),
                       resume=resume, data_dir=data_dir, command=command, executor=r.executor, cluster=r.cluster,
                       repeats=repeats, order_seed=r.order_seed)
    run_dir = run_plan.run_dir
    done = frozenset(c.cell_id for c in cells if resume and _finished(run_dir / "cells" / c.cell_id,
                                                                       plan.cell_phases(c, phases)))
    echo(plan.describe(cells, phases, profile=profile, device=device, threads=threads, run_dir=run_dir,
                       seeds=seeds, done=done, parity_done=resume and (run_dir / "parity.csv").exists(),
                       executor=r.executor, group_by=r.cluster.group_by, repeats=repeats))
    preflight.check(run_plan, dry_run=dry_run)  # nothing is written before this passes
    if dry_run:
        echo("  preflight: passed (data, frameworks, adapters and their options, results folder)")
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) as lock, _StopRequests(echo) as stops:
        if lock.stale:
            echo(f"metabench: {run_dir} was left by a run that was killed; its lock is cleared")
        try:
            _run_locked(run_plan, cache_dir=cache_dir, timeout=timeout, stops=stops, echo=echo)
        except KeyboardInterrupt:
            echo(f"metabench: stopped; resume with: {preflight.resume_command(command, run_plan.run_id)}")
            raise
    return run_dir


def _run_locked(run_plan: RunPlan, *, cache_dir, timeout, stops: _StopRequests, echo) -> None:
    """The run itself, holding its lock: plan.json, manifest, parity, cells, report."""
    from bench.report.report import write_manifest, write_report

    p, run_dir, cells = run_plan, run_plan.run_dir, list(run_plan.cells)
    for leftover in run_dir.glob(f"{atomic.PART_PREFIX}*"):  # a killed run's half-written files; ours now
        leftover.unlink()
    if not (run_dir / "plan.json").exists():
        atomic.write_json(run_dir / "plan.json", p.record())
    elif not p.resume:  # another command started this run id between our preflight and our lock
        raise MetabenchError(f"--run-id {p.run_id}: {run_dir} was just started by another command; "
                             f"choose another --run-id")
    started = time.time()
    about = dict(profile=p.profile, device=p.device, threads=p.threads, started=started, command=p.command,
                 data_dir=p.data_dir, cache_dir=cache_dir)
    write_manifest(run_dir, cells, **about)
    position = {c.cell_id: i for i, c in enumerate(cells, 1)}
    todo = []
    for cell in cells:
        if p.resume and _finished(run_dir / "cells" / cell.cell_id, plan.cell_phases(cell, p.phases)):
            echo(f"[{position[cell.cell_id]}/{len(cells)}] {cell.label}: done before, kept")
        else:
            todo.append(cell)
    jobs = []
    if "parity" in p.phases and not (p.resume and (run_dir / "parity.csv").exists()):
        jobs.append(executors.parity_job(cells, p.phases, profile=p.profile, timeout=timeout, executor=p.executor,
                                         quick=PROFILES[p.profile].quick_parity))
    jobs += executors.group_jobs(todo, p.phases, profile=p.profile, timeout=timeout, executor=p.executor,
                                 group_by=p.cluster.group_by, repeats=p.repeats)
    context = executors.RunContext(run_dir=run_dir, threads=p.threads, device=p.device, echo=echo, stops=stops,
                                   options=p.cluster, position=position, order_seed=p.order_seed)
    done = len(cells) - len(todo) + executors.make_executor(p.executor, p.cluster).run(jobs, context)
    if done < len(cells):  # stopped by Ctrl-C or SIGTERM: the statuses so far go into the manifest
        write_manifest(run_dir, cells, **about)
        echo(f"metabench: stopped by {stops.by} after {done} of {len(cells)} cells; {len(cells) - done} to run")
        raise KeyboardInterrupt
    write_manifest(run_dir, cells, **about, finished=time.time())
    from bench.report.html import install_assets

    install_assets(run_dir.parent)  # the results folder's one copy of the HTML pages' runtime
    write_report(run_dir)
    echo(f"metabench: report in {run_dir / 'summary.md'}")
