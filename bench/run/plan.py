"""What a run will do, said before it starts: its cells, their phases, a duration estimate,
and a quicker command to try first (``metabench run`` prints it; ``--dry-run`` stops there).

Estimates come from what the committed runs in the results folder recorded (``History``:
each cell's phase durations, each run's time outside its cells), per profile, framework,
algorithm, spec and phase; ``TYPICAL_SECONDS`` where none matches. A GPU runs the
``paper`` profile, whose budget is GPU hours per cell; its estimate is flagged as
unmeasured.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.core.cell import Cell
from bench.core.errors import MetabenchError
from bench.core.spec import EpisodeSpec

# Seconds per cell and phase on a 2-core CPU (timing: per timing process), rounded up from
# the committed runs: 20261128-cpu-all (median timing ~12 s, accuracy 10-590 s a cell),
# 20261205-aa-1 (51 timing processes, 13.6 s each on average) and the smoke runs (3 min 19 s
# for 9 cells, 56 s of it the quick parity). The parity phase is per run.
TYPICAL_SECONDS = {
    "smoke": {"timing": 12, "memory": 4, "accuracy": 8, "parity": 60},
    "cpu": {"timing": 15, "memory": 10, "accuracy": 300, "parity": 200},
    "paper": {"timing": 60, "memory": 30, "accuracy": 6 * 3600, "parity": 200},
}


def cell_phases(cell: Cell, phases) -> tuple[str, ...]:
    """The phases a cell runs: a training seed > 0 only changes training, so its cell runs
    the accuracy phase alone (timing and memory are measured at seed 0)."""
    cell_level = tuple(p for p in phases if p != "parity")
    return cell_level if cell.seed == 0 else tuple(p for p in cell_level if p == "accuracy")


def timing_order(cells, repeats: int, seed: int = 0) -> list[tuple[str, int]]:
    """The order of the run's timing processes, ``(cell_id, k)`` for the ``k``-th process of
    a cell: cells compared with each other (same spec and algorithm) are interleaved, in
    ``repeats`` blocks that each run every such cell once, in an order drawn afresh per
    block from ``seed``. So no cell runs all its processes in a row, and what drifts on
    the machine over minutes (another tenant, the heat) falls on every adapter alike
    (Google Benchmark's random interleaving, asv's interleaved processes). The groups run
    in the plan's order of their first cell. Deterministic: ``--resume`` continues it."""
    import random

    groups: dict[tuple[str, str], list[str]] = {}
    for cell in cells:
        if cell.seed == 0:  # timing runs at seed 0 only
            groups.setdefault((cell.spec_name, cell.algorithm), []).append(cell.cell_id)
    rng = random.Random(seed)
    order = []
    for ids in groups.values():
        for k in range(repeats):
            block = sorted(ids)
            rng.shuffle(block)
            if order and len(block) > 1 and block[0] == order[-1][0]:  # never one cell twice in a row
                block[0], block[1] = block[1], block[0]
            order += [(cell_id, k) for cell_id in block]
    return order


def _seconds_between(start: str, end: str) -> float:
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


# The memory probe and the accuracy phase of a cell run in one process, whose record both
# phases carry: one duration, counted once
SHARED = "memory+accuracy"


def _same_process(a: dict | None, b: dict | None) -> bool:
    return bool(a and b) and a.get("seconds") == b.get("seconds") and a.get("machine") == b.get("machine")


class History:
    """Phase durations that committed runs recorded (``cells/*/status.json``), by profile,
    device, framework, algorithm, spec and phase (timing: per timing process), and each
    run's time outside its cells (parity, the contract checks, the report). The estimate
    takes the median of the closest match: the same cell, else the same framework and
    phase, else ``TYPICAL_SECONDS``."""

    def __init__(self, results_dir: Path | None = None, exclude: str | None = None):
        self.cell: dict[tuple, list[float]] = {}
        self.framework: dict[tuple, list[float]] = {}
        self.overhead: dict[tuple, list[float]] = {}
        if results_dir is None or not Path(results_dir).is_dir():
            return
        for manifest_path in sorted(Path(results_dir).glob("*/manifest.json")):
            if manifest_path.parent.name == exclude:
                continue
            try:
                self._read_run(manifest_path)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a run folder from another version, or half written: not history

    def _read_run(self, manifest_path: Path) -> None:
        run = manifest_path.parent
        manifest = json.loads(manifest_path.read_text())
        in_cells = 0.0
        profile = None
        for status_path in run.glob("cells/*/status.json"):
            st = json.loads(status_path.read_text())
            profile, device = st["profile"], st["device"]
            processes = max(1, len(list(status_path.parent.glob("timing/*/status.json"))))
            phases = dict(st.get("phases", {}))
            if _same_process(phases.get("memory"), phases.get("accuracy")):
                phases = {k: v for k, v in phases.items() if k not in ("memory", "accuracy")}
                phases[SHARED] = st["phases"]["accuracy"]
            for phase, rec in phases.items():
                if rec.get("status") != "ok" or not rec.get("seconds"):
                    continue
                in_cells += rec["seconds"]
                seconds = rec["seconds"] / (processes if phase == "timing" else 1)
                self.cell.setdefault((profile, device, st["framework"], st["algorithm"], st["spec_name"], phase),
                                     []).append(seconds)
                self.framework.setdefault((profile, device, st["framework"], phase), []).append(seconds)
        if profile and manifest.get("started") and manifest.get("finished"):
            rest = _seconds_between(manifest["started"], manifest["finished"]) - in_cells
            self.overhead.setdefault((profile, (run / "parity.csv").exists()), []).append(rest)

    def phase_seconds(self, cell: Cell, phase: str, profile: str, device: str) -> float:
        for table, key in ((self.cell, (profile, device, cell.framework, cell.algorithm, cell.spec_name, phase)),
                           (self.framework, (profile, device, cell.framework, phase))):
            if table.get(key):
                return statistics.median(table[key])
        if phase == SHARED:
            return sum(self.phase_seconds(cell, p, profile, device) for p in ("memory", "accuracy"))
        return TYPICAL_SECONDS[profile][phase]

    def outside_cells(self, profile: str, parity: bool) -> float:
        """Parity, the contract checks and the report: what a run spends outside its cells."""
        if self.overhead.get((profile, parity)):
            return max(0.0, statistics.median(self.overhead[(profile, parity)]))
        return TYPICAL_SECONDS[profile]["parity"] if parity else 0.0


def estimate_seconds(cells, phases, profile: str, repeats: int = 1, history: History | None = None,
                     device: str = "cpu") -> float:
    """Seconds the run should take on a 2-core CPU: each cell's phases (timing once per
    timing process), from the committed runs' records where there are some (``History``),
    plus the time outside the cells (parity, contract, report)."""
    history = history or History()
    total = history.outside_cells(profile, "parity" in phases) if cells else 0.0
    for cell in cells:
        mine = list(cell_phases(cell, phases))
        if "memory" in mine and "accuracy" in mine:  # one process (``SHARED``)
            mine = [p for p in mine if p not in ("memory", "accuracy")] + [SHARED]
        total += sum(history.phase_seconds(cell, p, profile, device) * (repeats if p == "timing" else 1)
                     for p in mine)
    return float(total)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(p: RunPlan, done: frozenset = frozenset(), parity_done: bool = False) -> str:
    """The plan as a few lines of text: what runs, for how long, and a quicker first try.
    ``done``: ids of cells a resumed run keeps (finished before); the estimate is of the rest.
    Cells that run elsewhere (``p.executor``) are said so; the estimate stays the serial one."""
    cells, phases, profile, device, threads, run_dir = p.cells, p.phases, p.profile, p.device, p.threads, p.run_dir
    seeds, executor, group_by, repeats = p.seeds, p.executor, p.cluster.group_by, p.repeats
    frameworks = Counter(c.framework for c in cells)
    workloads = sorted({f"{c.spec_name}/{c.algorithm}" for c in cells})
    todo = [c for c in cells if c.cell_id not in done]
    history = History(Path(run_dir).parent)  # the committed runs beside this one
    est = estimate_seconds(todo, [p for p in phases if not (p == "parity" and parity_done)], profile, repeats,
                           history, "cpu" if device == "cuda" else device)
    lines = [
        f"metabench: {len(cells)} cells ({', '.join(f'{n} {fw}' for fw, n in frameworks.items())}), "
        f"profile {profile}, device {device}, {threads} threads per framework -> {run_dir}",
        f"  workloads: {', '.join(workloads)}",
        f"  phases: {', '.join(phases)}" + (f"; {seeds} training seeds (seeds > 0: accuracy only)"
                                            if seeds > 1 else "")
        + (f"; timing in {repeats} processes per cell, interleaved" if "timing" in phases and repeats > 1 else
           "; timing in one process per cell (too few to tell noise from change)" if "timing" in phases else ""),
        (f"  resumed: {len(cells) - len(todo)} of {len(cells)} cells finished before, kept; "
         f"{len(todo)} to run" if done else "")
        + ("; the parity table kept" if done and parity_done else ""),
        f"  estimated duration{' of the rest' if done else ''}: about {_duration(est)}"
        + (" (from 2-core CPU runs; a GPU's is unmeasured)" if device == "cuda" else " on a 2-core CPU")
        + (" if the jobs ran one after another" if executor != "local" else ""),
        (f"  executor: {executor}, one job per {group_by}" if executor != "local" else ""),
    ]
    lines = [line for line in lines if line]
    if profile != "smoke":
        lines.append("  a first try in minutes: metabench run --profile smoke  (or nox -s bench -- --profile smoke)")
    return "\n".join(lines)


# -- the plan of a run -------------------------------------------------------------------

GROUPS = ("cell", "framework")


@dataclass(frozen=True)
class ClusterOptions:
    """``metabench run``'s cluster flags. ``None``: derived from the run (see each field)."""

    group_by: str = "cell"                  # one job per cell, or per framework (its cells in sequence)
    # Slurm (submitit's parameters in brackets)
    slurm_partition: str | None = None      # [slurm_partition]
    slurm_gpus: int | None = None           # [gpus_per_node]; None: 1 on cuda, 0 on cpu
    slurm_cpus: int | None = None           # [cpus_per_task]; None: the run's --threads
    slurm_mem_gb: float | None = None       # [mem_gb]; None: the profile's job_memory_gb
    slurm_time_min: int | None = None       # [timeout_min]; None: the job's cells' time limits summed
    slurm_account: str | None = None        # [slurm_account]
    slurm_constraint: str | None = None     # [slurm_constraint], e.g. a GPU model: comparable hardware
    slurm_exclusive: bool = False           # [slurm_exclusive]: no other job on the node (CPU timing)
    slurm_cluster: str | None = None        # None: Slurm; "local": submitit's local executor (same code path)
    # Ray
    ray_address: str | None = None          # an existing cluster ("auto", "ray://host:10001"); None: a local one

    def check(self) -> None:
        if self.group_by not in GROUPS:
            raise MetabenchError(f"--group-by: {self.group_by!r} is not one of {', '.join(GROUPS)}")
        for name in ("slurm_gpus", "slurm_cpus", "slurm_time_min"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "slurm_gpus" else 1):
                raise MetabenchError(f"--{name.replace('_', '-')}: must be at least "
                                     f"{0 if name == 'slurm_gpus' else 1}, got {value}")
        if self.slurm_mem_gb is not None and not self.slurm_mem_gb > 0:
            raise MetabenchError(f"--slurm-mem-gb: must be positive, got {self.slurm_mem_gb}")
        if self.slurm_cluster not in (None, "slurm", "local"):
            raise MetabenchError(f"--slurm-cluster: {self.slurm_cluster!r} is not slurm or local")


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
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    repeats: int = 1            # timing processes per cell (--repeats)
    order_seed: int = 0         # seeds the interleaved order of those processes (plan.timing_order)
    seeds: int = 1              # training seeds per cell (--seeds)
    timeout: float | None = None  # --cell-timeout; None: the profile's limits
    cache_dir: str | None = None

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
                "timing_order": [[c, k] for c, k in timing_order(
                    [c for c in self.cells if "timing" in cell_phases(c, self.phases)],
                    self.repeats, self.order_seed)]}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
