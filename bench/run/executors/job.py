"""One job's work, wherever it runs: its cells, one after another, each through
``bench.run.cells.run_cell`` (the cell's own processes, watchdog and ``status.json``).

``run_job`` is what a Slurm job (through submitit) and a Ray task call. Its argument is
the JSON record of a ``bench.run.executors.Job``: nothing but plain data crosses to the node.
"""

from __future__ import annotations

from pathlib import Path

from bench.core.cell import Cell


def run_job(record: dict, run_dir: str | Path, where: dict | None = None, echo=print) -> dict[str, dict]:
    """Run the job's cells into ``run_dir/cells/``; returns each cell's status record.
    ``where`` (``bench.run.executors.placement``) goes into every cell's ``status.json``."""
    from bench.run import plan
    from bench.run.cells import run_cell, time_limit
    from bench.run.executors.base import placement

    where = where or placement(record.get("executor", "local"))
    if record.get("kind") == "parity":
        run_parity(record, run_dir, echo)
        return {}
    limit = time_limit(record["profile"], record["timeout"])
    out = {}
    for fields in record["cells"]:
        cell = Cell(**fields)
        echo(f"[{cell.cell_id}] on {where.get('host')}" + (f", job {where['job_id']}" if where.get("job_id") else ""))
        # a job's cells run here in sequence, each its timing processes in a row: interleaving
        # is the local executor's (one machine); on a cluster each job has a node of its own
        status = run_cell(cell, Path(run_dir) / "cells" / cell.cell_id, plan.cell_phases(cell, record["phases"]),
                          echo, limit, placement=where, repeats=record.get("repeats", 1))
        out[cell.cell_id] = status
    return out


def run_parity(record: dict, run_dir: str | Path, echo=print) -> None:
    """The run's parity phase for the job's cells (``bench.run.cells.run_parity_phase``):
    ``parity.csv`` and ``parity.log`` in ``run_dir``."""
    from bench.run.cells import run_parity_phase

    cells = [Cell(**fields) for fields in record["cells"]]
    first = cells[0]
    run_parity_phase(Path(run_dir), cells, device=first.device, threads=first.threads, data_dir=first.data_dir,
                     cache_dir=first.cache_dir, echo=echo, quick=record.get("quick_parity", False))
