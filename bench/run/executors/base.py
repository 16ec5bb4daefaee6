"""What every executor shares: the unit of work (``Job``), the run it belongs to
(``RunContext``), the cluster options, and how a lost job's cells are marked. The executors
(``local``, ``slurm``, ``ray_cluster``) import this; ``bench.run.executors`` chooses among them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.core import atomic
from bench.core.cell import Cell
from bench.core.errors import MetabenchError
from bench.run.cells import placement  # noqa: F401 - the executors' one import of it
from bench.run.plan import GROUPS, ClusterOptions  # noqa: F401 - the executors' import of them

EXECUTORS = ("local", "slurm", "ray")
# What a job on another machine needs of this process's environment: the data, the cache,
# offline mode, and where plugins are found. Set explicitly in every job (Slurm's job
# script, Ray's runtime environment): a cluster may not export the submitter's.
FORWARDED_ENV = ("METABENCH_DATA_DIR", "METABENCH_CACHE_DIR", "METABENCH_OFFLINE", "PYTHONPATH")


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


@dataclass(frozen=True)
class Job:
    """Cells that run one after another in one place (one Slurm job, one Ray task)."""

    name: str
    cells: tuple[Cell, ...]
    phases: tuple[str, ...]       # the run's phases; each cell runs those that apply to it
    profile: str
    timeout: float | None         # --cell-timeout
    executor: str
    # "cells": run the cells; "parity": the run's parity phase for these cells' adapters
    # (bench.run.cells.run_parity_phase), on the same kind of node as the cells
    kind: str = "cells"
    quick_parity: bool = False
    repeats: int = 1              # timing processes per cell

    def record(self) -> dict:
        """What ``run_job`` receives: JSON only, so that any engine can carry it."""
        return {"name": self.name, "kind": self.kind, "cells": [asdict(c) for c in self.cells],
                "phases": list(self.phases), "profile": self.profile, "timeout": self.timeout,
                "executor": self.executor, "quick_parity": self.quick_parity, "repeats": self.repeats}

    def time_limit_seconds(self) -> float:
        """The watchdog limits of its cells' processes, summed: the most this job can take."""
        from bench.run import plan
        from bench.run.cells import time_limit

        limit = time_limit(self.profile, self.timeout)
        if self.kind == "parity":
            return limit(["timing"])  # parity compares a few steps: a timing phase's limit is ample
        total = 0.0
        for cell in self.cells:
            todo = plan.cell_phases(cell, self.phases)
            if "timing" in todo:
                total += limit(["timing"]) * self.repeats
            rest = [p for p in ("memory", "accuracy") if p in todo]
            if rest:
                total += limit(rest)
        return total


def group_jobs(cells, phases, *, profile: str, timeout, executor: str, group_by: str,
               repeats: int = 1) -> list[Job]:
    """One job per cell, or per framework (``--group-by framework``: one allocation per
    framework, its cells in sequence, so its imports and compile caches are paid once a node)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        key = cell.cell_id if group_by == "cell" else cell.framework
        groups.setdefault(key, []).append(cell)
    return [Job(name=key, cells=tuple(group), phases=tuple(phases), profile=profile, timeout=timeout,
                executor=executor, repeats=repeats) for key, group in groups.items()]


def parity_job(cells, phases, *, profile: str, timeout, executor: str, quick: bool) -> Job:
    """The run's parity phase as a job: it runs where the cells run (a GPU run's parity on
    a GPU node, not on the machine that submits)."""
    return Job(name="parity", cells=tuple(cells), phases=tuple(phases), profile=profile, timeout=timeout,
               executor=executor, kind="parity", quick_parity=quick)


def mark_lost(run_dir: Path, job: Job, detail: str, where: dict) -> list[str]:
    """Give every cell of ``job`` that has no ``status.json`` one whose phases are
    ``failed`` with ``detail`` (the scheduler's reason): the report lists it and
    ``--resume`` runs it again. Returns the cells marked."""
    from bench.run import plan

    marked = []
    if job.kind != "cells":  # a lost parity job leaves no table; its cells are not its own
        return marked
    for cell in job.cells:
        cell_dir = Path(run_dir) / "cells" / cell.cell_id
        if (cell_dir / "status.json").exists():
            continue
        cell_dir.mkdir(parents=True, exist_ok=True)
        if not (cell_dir / "cell.json").exists():
            atomic.write_text(cell_dir / "cell.json", cell.to_json())
        record = {"status": "failed", "returncode": None, "seconds": None, "detail": " ".join(detail.split())[:300],
                  "log_tail": [], "machine": {}}
        status = {"cell_id": cell.cell_id, **asdict(cell), "placement": where,
                  "phases": {p: dict(record) for p in plan.cell_phases(cell, job.phases)}}
        atomic.write_json(cell_dir / "status.json", status)
        marked.append(cell.cell_id)
    return marked


@dataclass
class RunContext:
    """What an executor needs of the run: where it writes, how to talk, when to stop."""

    run_dir: Path
    threads: int
    device: str
    echo: object = print
    stops: object = None          # bench.run.runner._StopRequests, or None
    options: ClusterOptions = field(default_factory=ClusterOptions)
    position: dict = field(default_factory=dict)    # cell_id -> its number in the run's plan
    order_seed: int = 0                             # the interleaved order of timing processes

    def name(self, cell: Cell) -> str:
        """``[3/12] torch-maml maml omniglot-5w1s``: the cell's place in the whole plan."""
        total = len(self.position)
        return f"[{self.position.get(cell.cell_id, '?')}/{total}] {cell.label}" if total else cell.label


# Threads per framework when the cells run elsewhere and neither --threads nor --slurm-cpus
# says: the nodes' core counts are not known here, and a GPU cell needs few host threads.


def require(module: str, executor: str):
    """Import the engine an executor drives, or say in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MetabenchError(f"--executor {executor} needs the {module} package: pip install "
                             f"'metabench[cluster]' (or pip install {module})") from None
