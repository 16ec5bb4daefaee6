"""``--executor slurm``: each job (a cell, or a framework's cells with ``--group-by
framework``) is a Slurm job submitted through submitit, writing its cells' folders into
the run folder, which must be on a filesystem the nodes share.

submitit writes the job script (``#SBATCH`` lines from the resources below), pickles the
call ``slurm_job(record, run_dir)``, submits with ``sbatch`` and follows the job with
``sacct``. Its job logs go to ``<run>/slurm/<job id>/``. With ``--slurm-cluster local``
submitit's local executor runs the same pickled call as a subprocess of this machine, one
job at a time (they would share its cores): the code path up to ``sbatch``, for trying a
run (and for the tests) without a cluster.

Resources per job, each from a flag or else from the run:

============  =====================  ==============================================
``sbatch``    flag                   default
============  =====================  ==============================================
partition     ``--slurm-partition``  the cluster's default
GPUs          ``--slurm-gpus``       1 on ``--device cuda``, else 0
CPUs          ``--slurm-cpus``       ``--threads`` (every framework pinned to them)
memory        ``--slurm-mem-gb``     the profile's ``job_memory_gb``
time          ``--slurm-time-min``   the job's cells' watchdog limits summed, +10 %
============  =====================  ==============================================

A job that ends without finishing its cells (``TIMEOUT``, ``PREEMPTED``, ``NODE_FAIL``,
``OUT_OF_MEMORY``, ``CANCELLED``...) leaves those cells failed with that reason
(``bench.run.executors.mark_lost``); ``--resume`` runs them again.
"""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path

from bench.run.executors.base import ClusterOptions, Job, RunContext, forwarded_env, mark_lost, placement, require

POLL_SECONDS = 1.0
FORCE_CHECK_SECONDS = 30.0   # ask sacct at least this often (submitit's own watcher waits up to 10 min)
# submitit waits on a PREEMPTED job, which Slurm may requeue; one still PREEMPTED this long
# after it was first seen was not requeued (PreemptMode=CANCEL): it comes back failed.
PREEMPTED_GRACE_SECONDS = 300.0
# Slurm states of a job the scheduler ended before its function returned (sacct's words;
# "CANCELLED by <uid>" is read by its first word)
ENDED_BY_SCHEDULER = ("TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
                      "FAILED")


def slurm_job(record: dict, run_dir: str) -> dict:
    """What each Slurm job runs (pickled by submitit): the job's cells, recording the
    scheduler's job id and node in each cell's ``status.json``."""
    import submitit

    from bench.run.executors.job import run_job

    env = submitit.JobEnvironment()
    where = placement("slurm", str(env.job_id), node=env.hostname, cluster=env.cluster)
    return run_job(record, run_dir, where=where)


class SlurmExecutor:
    name = "slurm"

    def __init__(self, options: ClusterOptions):
        self.options = options
        self.job_word = "submitit local job" if options.slurm_cluster == "local" else "slurm job"

    def executor(self, ctx: RunContext):
        """The submitit executor, its job logs in ``<run>/slurm/<job id>/``."""
        submitit = require("submitit", "slurm")
        return submitit.AutoExecutor(folder=Path(ctx.run_dir) / "slurm" / "%j",
                                     cluster=self.options.slurm_cluster or "slurm")

    def parameters(self, job: Job, ctx: RunContext) -> dict:
        """submitit's parameters for ``job`` (its ``#SBATCH`` lines on a Slurm cluster)."""
        from bench.core.profiles import PROFILES

        o = self.options
        gpus = o.slurm_gpus if o.slurm_gpus is not None else (1 if ctx.device == "cuda" else 0)
        minutes = o.slurm_time_min or max(1, math.ceil(round(job.time_limit_seconds() * 1.1 / 60, 6)))
        params = {"name": f"metabench-{job.name}"[:128], "timeout_min": minutes, "nodes": 1, "tasks_per_node": 1,
                  "cpus_per_task": o.slurm_cpus or ctx.threads, "gpus_per_node": gpus,
                  "mem_gb": o.slurm_mem_gb or PROFILES[job.profile].job_memory_gb}
        env = [f"export {k}={shlex.quote(v)}" for k, v in forwarded_env().items()]
        slurm = {"slurm_partition": o.slurm_partition, "slurm_account": o.slurm_account,
                 "slurm_constraint": o.slurm_constraint, "slurm_exclusive": True if o.slurm_exclusive else None,
                 "slurm_setup": env or None}
        return {**params, **{k: v for k, v in slurm.items() if v is not None}}

    def submit(self, jobs: list[Job], ctx: RunContext) -> list[tuple[Job, object]]:
        """Submit every job; returns (job, submitit job) pairs."""
        executor = self.executor(ctx)
        submitted = []
        for job in jobs:
            executor.update_parameters(**self.parameters(job, ctx))
            handle = executor.submit(slurm_job, job.record(), str(Path(ctx.run_dir).resolve()))
            ctx.echo(f"[slurm] {job.name}: job {handle.job_id} submitted ({len(job.cells)} cell"
                     f"{'s' if len(job.cells) != 1 else ''}{', parity' if job.kind == 'parity' else ''})")
            submitted.append((job, handle))
        return submitted

    def run(self, jobs: list[Job], ctx: RunContext) -> int:
        """Submit the jobs and wait for them; returns how many cells finished. On a cluster
        every job is submitted at once (Slurm places them); with ``--slurm-cluster local``
        one at a time, since they would all share this machine. On Ctrl-C or SIGTERM the
        jobs still queued or running are cancelled (``--resume`` reruns their cells)."""
        waves = [jobs] if self.options.slurm_cluster != "local" else [[job] for job in jobs]
        for wave in waves:
            if not self._wait(self.submit(wave, ctx), ctx):
                break
        return sum((ctx.run_dir / "cells" / c.cell_id / "status.json").exists()
                   for job in jobs if job.kind == "cells" for c in job.cells)

    def _wait(self, pending: list, ctx: RunContext) -> bool:
        """Collect each submitted job as it ends; False when the run is stopping (the jobs
        not yet ended are then cancelled)."""
        last_forced = time.monotonic()
        preempted: dict[str, float] = {}   # job id -> when it was first seen PREEMPTED
        while pending:
            if ctx.stops is not None and ctx.stops.stopping:
                for job, handle in pending:
                    handle.cancel(check=False)
                    ctx.echo(f"[slurm] {job.name}: job {handle.job_id} cancelled (the run is stopping)")
                return False
            force = time.monotonic() - last_forced > FORCE_CHECK_SECONDS
            last_forced = time.monotonic() if force else last_forced
            still = []
            for job, handle in pending:
                if handle.done(force_check=force) or left_preempted(handle, preempted):
                    self._collect(job, handle, ctx)
                else:
                    still.append((job, handle))
            pending = still
            if pending:
                time.sleep(POLL_SECONDS)
        return not (ctx.stops is not None and ctx.stops.stopping)

    def _collect(self, job: Job, handle, ctx: RunContext) -> None:
        """A finished job: its cells' statuses are on the shared filesystem; cells it did not
        finish get the scheduler's reason."""
        state = _state(handle)
        if (state.split() or [""])[0] in ENDED_BY_SCHEDULER and not handle.paths.result_pickle.exists():
            # no result will come: submitit would wait 15 s for one (or, PREEMPTED, for ever)
            error = RuntimeError(state)
        else:
            error = handle.exception()
        if error is None:
            ctx.echo(f"[slurm] {job.name}: job {handle.job_id} done")
            return
        node = _node(handle)
        # a job that raised says why in its traceback's last line; one that the scheduler
        # ended (UncompletedJobError: no result) is said by its state
        said = [line.strip() for line in str(error).splitlines() if line.strip()]
        why = said[-1] if said and type(error).__name__ == "FailedJobError" else None
        if why is None and state in ("FINISHED", "COMPLETED"):  # exited, yet wrote no result
            why = "its process was killed before it returned"
        detail = (f"{self.job_word} {handle.job_id}{f' on {node}' if node else ''} ended {state}"
                  + (f": {why}" if why else ""))
        if job.kind == "parity":  # no table: the report says parity failed, the cells are not touched
            (ctx.run_dir / "parity.log").write_text(detail + "\n" + str(error))
            ctx.echo(f"[slurm] parity: {detail}")
            return
        lost = mark_lost(ctx.run_dir, job, detail, placement("slurm", str(handle.job_id), node=node, state=state))
        ctx.echo(f"[slurm] {job.name}: {detail}" + (f"; {len(lost)} cell(s) marked failed" if lost else ""))


def left_preempted(handle, first_seen: dict[str, float], now: float | None = None) -> bool:
    """Whether ``handle``'s job has stayed PREEMPTED for ``PREEMPTED_GRACE_SECONDS``: Slurm
    did not requeue it. ``first_seen`` remembers when each job was first seen so."""
    now = time.monotonic() if now is None else now
    if not _state(handle).startswith("PREEMPTED"):
        first_seen.pop(str(handle.job_id), None)
        return False
    since = first_seen.setdefault(str(handle.job_id), now)
    return now - since >= PREEMPTED_GRACE_SECONDS


def _state(handle) -> str:
    try:
        return handle.state or "UNKNOWN"
    except Exception:  # the scheduler no longer knows the job
        return "UNKNOWN"


def _node(handle) -> str | None:
    try:
        return handle.get_info(mode="cache").get("NodeList") or None
    except Exception:
        return None
