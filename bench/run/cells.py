"""A cell's processes: how each is started, watched and recorded, and the run's checks
before its cells (the contract and parity phases).

A cell runs in processes of its own (``bench.measure.worker``, the timing suite under
pytest), each under a watchdog (``--cell-timeout`` or the profile's limits) that kills its
process group, with a log of its own and the last lines kept in ``status.json``. The
executors (``bench.run.executors``) call these; the runner (``bench.run.runner``) plans and
orders them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.core import atomic, registry
from bench.core.cell import Cell
from bench.core.profiles import PROFILES
from bench.measure import machine_load
from bench.run import plan

SUITE_DIR = Path(__file__).resolve().parents[1] / "measure" / "suite"  # bench.measure.suite
TIMING_PLUGINS = ("pytest_benchmark.plugin",)  # the timing processes' only pytest plugins
LOG_TAIL_LINES = 20     # of a process's log, kept in status.json
POLL_SECONDS = 0.2      # how often the watchdog looks at a running cell


def placement(executor: str, job_id: str | None = None, **extra) -> dict:
    """Where a cell ran, for its ``status.json`` (and so the manifest): the executor, the
    host, the scheduler's job id, and the GPUs the scheduler gave it."""
    return {"executor": executor, "host": socket.gethostname(), "job_id": job_id,
            "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), **extra}


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


def child_env() -> dict[str, str]:
    """The environment of a cell's processes: this one's, the run's adapters as resolved when
    it started (``registry.child_env``), unbuffered output, and no ``PYTEST_*`` variable. The
    timing processes are pytest processes configured by their own pytest.ini: an outer
    pytest's variables must not reach them (``PYTEST_ADDOPTS`` adds options; pytest-xdist's
    ``PYTEST_XDIST_WORKER`` makes pytest-benchmark disable itself: the process passes and
    writes no timings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**env, **registry.child_env(), "PYTHONUNBUFFERED": "1"}


def _run_process(cmd: list[str], log_path: Path, limit: float | None, echo,
                 stop_now=lambda: False, env: dict[str, str] | None = None) -> ProcessOutcome:
    """Run ``cmd`` in a session of its own, teeing its output to ``log_path`` and its
    progress lines to ``echo``. The watchdog does not wait for output: at ``limit`` seconds,
    or as soon as ``stop_now()`` is true, it kills the whole process group (a framework's
    helper processes too), however silent the cell is. ``env``: variables added to
    ``child_env()`` for this process."""
    before = machine_load.snapshot()
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    timed_out = interrupted = False
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env={**child_env(), **(env or {})},
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
    # pytest-benchmark is the only plugin loaded (TIMING_PLUGINS): a plugin that happens to be
    # installed would run inside the timed process (pytest-cov traces every line; the test
    # venv's hypothesis plugin alone cost 1.3 s of imports per process)
    cmd = [sys.executable, "-m", "pytest", "-c", str(SUITE_DIR / "pytest.ini"), str(SUITE_DIR / "steps.py"),
           *[arg for plugin in TIMING_PLUGINS for arg in ("-p", plugin)],
           "--rootdir", str(SUITE_DIR), "--metabench-cell", str(cell_dir / "cell.json"), "-q",
           "--benchmark-json", str(part), "--benchmark-disable-gc", "--benchmark-sort=name"]
    out = _run_process(cmd, pdir / "timing.log", limit(["timing"]), echo, stop_now,
                       env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
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
    status = {"cell_id": cell.cell_id, **asdict(cell), "placement": placement or placement("local"),
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


def cell_finished(cell_dir: Path, phases) -> bool:
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


def time_limit(profile: str, timeout: float | None):
    """``limit(phases)``: seconds one process running ``phases`` may take before the watchdog
    kills it: ``--cell-timeout`` when given, else the profile's limits summed."""
    return lambda phases: timeout if timeout is not None else PROFILES[profile].time_limit(phases)


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


