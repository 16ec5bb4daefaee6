"""Where a run's cells execute: here (``local``), as Slurm jobs (``slurm``, through
submitit) or as Ray tasks (``ray``).

Every executor runs the same unit of work, a ``Job``: one or more cells run one after
another by ``bench.run.executors.job.run_job``, each through ``bench.run.cells.run_cell`` (its
processes, watchdog and ``status.json``; the local executor calls its parts itself, to
interleave the timing processes of comparable cells and to stop between processes on
Ctrl-C). What differs is only where that runs and how the
cells' folders reach the run folder: in place (local), on the shared filesystem (Slurm),
or sent back by the task (Ray). A job that dies without finishing its
cells (killed, timed out or preempted by the scheduler) leaves each unfinished cell a
``status.json`` whose phases are ``failed`` with the scheduler's reason, so the report
shows it and ``--resume`` (with any executor) runs it again.

No executor schedules anything itself: Slurm and Ray do. Each module here only
translates a ``Job`` into the engine's terms (``bench.run.executors.slurm``,
``bench.run.executors.ray_cluster``).
"""

from __future__ import annotations

from bench.core.errors import MetabenchError
from bench.run.executors.base import (  # noqa: F401
    EXECUTORS,
    FORWARDED_ENV,
    GROUPS,
    ClusterOptions,
    Job,
    RunContext,
    forwarded_env,
    group_jobs,
    mark_lost,
    parity_job,
    placement,
    require,
)

CLUSTER_THREADS = 4


def runs_here(executor: str, options: ClusterOptions) -> bool:
    """Whether the cells run on this machine: then its cores and GPUs are the ones that count."""
    return (executor == "local" or (executor == "ray" and options.ray_address is None)
            or (executor == "slurm" and options.slurm_cluster == "local"))


def cluster_device(executor: str, options: ClusterOptions) -> str:
    """``--device auto`` for cells that run elsewhere: on Slurm, cuda when GPUs are asked
    for (``--slurm-gpus``); on a Ray cluster, cuda when the cluster has GPUs."""
    if executor == "slurm":
        return "cuda" if (options.slurm_gpus or 0) > 0 else "cpu"
    from bench.run.executors.ray_cluster import cluster_has_gpus

    return "cuda" if cluster_has_gpus(options.ray_address) else "cpu"


def cluster_threads(options: ClusterOptions) -> int:
    return options.slurm_cpus or CLUSTER_THREADS


def make_executor(name: str, options: ClusterOptions):
    """The executor called ``name``; its engine is imported here, so a missing one is one line."""
    if name == "local":
        from bench.run.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "slurm":
        from bench.run.executors.slurm import SlurmExecutor

        return SlurmExecutor(options)
    if name == "ray":
        from bench.run.executors.ray_cluster import RayExecutor

        return RayExecutor(options)
    raise MetabenchError(f"--executor: unknown {name!r}; allowed: {', '.join(EXECUTORS)}")


