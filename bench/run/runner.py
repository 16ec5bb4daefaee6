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

import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.core import atomic, registry
from bench.core.algorithms import all_algorithms
from bench.core.algorithms import names as algorithms_known
from bench.core.cell import Cell
from bench.core.errors import AdapterError, MetabenchError
from bench.core.profiles import PHASE_GROUPS, PROFILES
from bench.core.spec import EpisodeSpec, load_spec
from bench.run import executors, plan, preflight
from bench.run.cells import cell_finished
from bench.run.lock import RunLock
from bench.run.plan import RunPlan

DEFAULT_SPECS = {"smoke": ("omniglot-5w1s", "sinusoid-10shot"), "cpu": ("omniglot-5w1s", "sinusoid-10shot"),
                 "paper": ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s",
                           "sinusoid-10shot")}


def default_algorithms(profile: str) -> tuple[str, ...]:
    """The algorithms a run of ``profile`` runs when the user names none: each algorithm
    says in which profiles (``Algorithm.default_profiles``). Smoke proves the pipeline, so
    it leaves out FOMAML (MAML's adapter with the inner gradients stopped) and keeps `nox -s
    bench -- --profile smoke` within minutes; ANIL runs only when asked (its module says why)."""
    return tuple(name for name, a in all_algorithms().items() if profile in a.default_profiles)

# Parity runs once per run, before the cells: is every adapter's maths torch's? Every
# profile runs it (Profile.phases); smoke runs the quick comparison (Profile.quick_parity),
# so a wrong adapter is never timed without a warning.
DEFAULT_PHASES = {name: p.phases for name, p in PROFILES.items()}
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

    profile: str | None = None          # None: paper on a GPU, cpu without (``resolve``)
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


def resolve_device(r: RunRequest) -> str:
    """``--device``, with ``auto`` resolved where the cells run: this machine's GPU, or the
    cluster's (``--slurm-gpus``, a Ray cluster with GPUs). The one place a run's device is
    decided; the profile follows from it."""
    if r.device != "auto":
        return r.device
    if executors.runs_here(r.executor, r.cluster):
        return detect_device()
    return executors.cluster_device(r.executor, r.cluster)


def resolve(r: RunRequest) -> RunPlan:
    """The request checked and resolved, once: device, then profile (paper on a GPU, cpu
    without), phases, algorithms, threads, specs and cells. Every bad value is a
    ``MetabenchError`` naming the flag, before anything is written."""
    if r.seeds < 1:
        raise MetabenchError(f"--seeds: must be at least 1, got {r.seeds}")
    if r.executor not in executors.EXECUTORS:
        raise MetabenchError(f"--executor: unknown {r.executor!r}; allowed: {', '.join(executors.EXECUTORS)}")
    if r.profile is not None and r.profile not in PROFILES:
        raise MetabenchError(f"--profile: unknown {r.profile!r}; allowed: {', '.join(PROFILES)}")
    r.cluster.check()
    here = executors.runs_here(r.executor, r.cluster)
    check_options(threads=r.threads, timeout=r.timeout, run_id=r.run_id, resume=r.resume, frameworks=r.frameworks,
                  adapters=r.adapters, here=here)
    device = resolve_device(r)
    profile = r.profile or ("paper" if device == "cuda" else "cpu")
    repeats = PROFILES[profile].repeats if r.repeats is None else r.repeats
    if not 1 <= repeats <= MAX_REPEATS:
        raise MetabenchError(f"--repeats: must be from 1 to {MAX_REPEATS} timing processes per cell, got {repeats}")
    if r.order_seed < 0:
        raise MetabenchError(f"--order-seed: must be a non-negative integer, got {r.order_seed}")
    phases = tuple(r.phases or DEFAULT_PHASES[profile])
    unknown = [p for p in phases if p not in PHASE_GROUPS]
    if unknown:
        raise MetabenchError(f"--phases: unknown {unknown[0]!r}; allowed: {', '.join(PHASE_GROUPS)}")
    algorithms = r.algorithms
    if algorithms is None and r.adapters is None:
        algorithms = default_algorithms(profile) or None
    if algorithms is not None:
        unknown = [a for a in algorithms if a not in algorithms_known()]
        if unknown:
            raise MetabenchError(f"--algorithms: unknown {unknown[0]!r}; allowed: {', '.join(algorithms_known())}")
    threads = r.threads if r.threads is not None else (_available_cores() if here else
                                                          executors.cluster_threads(r.cluster))
    if r.executor == "slurm" and r.cluster.slurm_cpus is not None and threads > r.cluster.slurm_cpus:
        raise MetabenchError(f"--threads: {threads} exceeds the {r.cluster.slurm_cpus} CPUs a job asks for "
                             f"(--slurm-cpus); raise --slurm-cpus or lower --threads")
    specs = expand_specs(list(r.specs or DEFAULT_SPECS[profile]), r.overrides, r.sweeps, r.one_at_a_time)
    cells = plan_cells(profile=profile, frameworks=r.frameworks, algorithms=algorithms, specs=specs,
                       adapters=r.adapters, device=device, threads=threads, data_dir=r.data_dir,
                       cache_dir=r.cache_dir, seeds=r.seeds)
    if "accuracy" not in phases:  # a training seed changes nothing else: one cell each
        cells = [c for c in cells if c.seed == 0]
    if not cells:
        raise MetabenchError(f"no cell to run: no selected adapter serves an algorithm that --specs "
                             f"{','.join(specs)} configure; check --adapters/--frameworks/--algorithms "
                             f"against `metabench list`")
    return RunPlan(profile=profile, phases=phases, cells=tuple(cells), specs=load_specs(specs), device=device,
                   threads=threads, results_dir=Path(r.results_dir), run_id=r.run_id or new_run_id(profile),
                   resume=r.resume, data_dir=r.data_dir,
                   command=r.command or "bench.run.runner.run() (called from Python, not the command line)",
                   executor=r.executor, cluster=r.cluster, repeats=repeats, order_seed=r.order_seed, seeds=r.seeds,
                   timeout=r.timeout, cache_dir=r.cache_dir)


def run(request: RunRequest | None = None, *, echo=print, **options) -> Path | None:
    """Run the benchmark; returns the run's results folder. ``request`` (or its fields as
    keywords) says what to run (``resolve`` turns it into the run's one ``RunPlan``):
    ``phases`` defaults to the profile's. With ``resume``, cells of an existing run whose
    requested phases all succeeded are kept, not run again, and so is a parity table
    already written. ``command`` is recorded in the manifest (the CLI passes the
    ``metabench ...`` line the user typed). ``seeds`` training seeds per cell (seeds > 0 run
    the accuracy phase only). With ``dry_run`` the plan is printed and nothing is run or
    written (returns None). ``overrides`` (``--set``: ``"maml.inner_steps=5"``) change every
    spec of the run; ``sweeps`` (``--sweep``: ``"maml.inner_steps=1,2,5"``) make one spec per
    value, their combinations when there are several, or each alone with
    ``one_at_a_time`` (``expand_specs``).

    Bad options and failed preflight checks raise ``MetabenchError`` before anything is
    written; Ctrl-C raises ``KeyboardInterrupt`` after saying how to resume."""
    r = request or RunRequest(**options)
    p = resolve(r)
    run_dir = p.run_dir
    done = frozenset(c.cell_id for c in p.cells if p.resume and cell_finished(run_dir / "cells" / c.cell_id,
                                                                           plan.cell_phases(c, p.phases)))
    echo(plan.describe(p, done=done, parity_done=p.resume and (run_dir / "parity.csv").exists()))
    preflight.check(p, dry_run=r.dry_run)  # nothing is written before this passes
    if r.dry_run:
        echo("  preflight: passed (data, frameworks, adapters and their options, results folder)")
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) as lock, _StopRequests(echo) as stops:
        if lock.stale:
            echo(f"metabench: {run_dir} was left by a run that was killed; its lock is cleared")
        try:
            _run_locked(p, stops=stops, echo=echo)
        except KeyboardInterrupt:
            echo(f"metabench: stopped; resume with: {preflight.resume_command(p.command, p.run_id)}")
            raise
    return run_dir


def _run_locked(run_plan: RunPlan, *, stops: _StopRequests, echo) -> None:
    """The run itself, holding its lock: plan.json, manifest, parity, cells, report."""
    from bench.report.report import write_report
    from bench.report.results import write_manifest

    p, run_dir, cells = run_plan, run_plan.run_dir, list(run_plan.cells)
    for leftover in run_dir.glob(f"{atomic.PART_PREFIX}*"):  # a killed run's half-written files; ours now
        leftover.unlink()
    if not (run_dir / "plan.json").exists():
        atomic.write_json(run_dir / "plan.json", p.record())
    elif not p.resume:  # another command started this run id between our preflight and our lock
        raise MetabenchError(f"--run-id {p.run_id}: {run_dir} was just started by another command; "
                             f"choose another --run-id")
    started = time.time()
    write_manifest(p, started)
    position = {c.cell_id: i for i, c in enumerate(cells, 1)}
    todo = []
    for cell in cells:
        if p.resume and cell_finished(run_dir / "cells" / cell.cell_id, plan.cell_phases(cell, p.phases)):
            echo(f"[{position[cell.cell_id]}/{len(cells)}] {cell.label}: done before, kept")
        else:
            todo.append(cell)
    jobs = []
    if "parity" in p.phases and not (p.resume and (run_dir / "parity.csv").exists()):
        jobs.append(executors.parity_job(cells, p.phases, profile=p.profile, timeout=p.timeout, executor=p.executor,
                                         quick=PROFILES[p.profile].quick_parity))
    jobs += executors.group_jobs(todo, p.phases, profile=p.profile, timeout=p.timeout, executor=p.executor,
                                 group_by=p.cluster.group_by, repeats=p.repeats)
    context = executors.RunContext(run_dir=run_dir, threads=p.threads, device=p.device, echo=echo, stops=stops,
                                   options=p.cluster, position=position, order_seed=p.order_seed)
    done = len(cells) - len(todo) + executors.make_executor(p.executor, p.cluster).run(jobs, context)
    if done < len(cells):  # stopped by Ctrl-C or SIGTERM: the statuses so far go into the manifest
        write_manifest(p, started)
        echo(f"metabench: stopped by {stops.by} after {done} of {len(cells)} cells; {len(cells) - done} to run")
        raise KeyboardInterrupt
    write_manifest(p, started, finished=time.time())
    from bench.report.html import install_assets

    install_assets(run_dir.parent)  # the results folder's one copy of the HTML pages' runtime
    write_report(run_dir)
    echo(f"metabench: report in {run_dir / 'summary.md'}")
