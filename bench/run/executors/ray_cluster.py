"""``--executor ray``: each job is a Ray task on an existing cluster (``--ray-address``) or
on a Ray instance started here for the run.

A task asks for the resources its cells use: ``num_cpus`` = the run's ``--threads`` and,
on ``--device cuda``, ``num_gpus=1``, so Ray never places two cells on one GPU (it sets
``CUDA_VISIBLE_DEVICES`` for each task). The task runs its cells into a temporary folder on
its node (``bench.run.executors.job.run_job``) and sends the folder back as bytes; this
process writes it into the run folder, each cell's ``status.json`` last. Tasks are not
retried (``max_retries=0``): a task whose worker dies (killed, out of memory, node lost)
comes back as its cells failed with Ray's error (``bench.run.executors.mark_lost``), and
``--resume`` runs them again.

A Ray instance started here gets exactly ``--threads`` CPUs, so one cell runs at a time
and no two cells' timed regions share the machine. On a cluster of CPU nodes, give
``--threads`` the nodes' core count for the same guarantee.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.core import atomic
from bench.core.errors import MetabenchError
from bench.run.executors.base import ClusterOptions, Job, RunContext, forwarded_env, mark_lost, placement, require

POLL_SECONDS = 1.0
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20   # a cell's folder is a few MB: Ray's default (30 % of RAM) is waste


def _connect(address: str | None, threads: int | None = None) -> bool:
    """Connect to the cluster at ``address``, or start a local instance of ``threads``
    CPUs; returns whether this call started Ray (and so must shut it down)."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return False
    env = forwarded_env()
    kwargs = dict(log_to_driver=False, runtime_env={"env_vars": env} if env else None)
    if address is None:  # Ray refuses resource settings when it joins an existing cluster
        kwargs.update(num_cpus=threads, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False)
    else:
        kwargs.update(address=address)
    ray.init(**kwargs)
    return True


def cluster_has_gpus(address: str | None) -> bool:
    import ray

    _connect(address)
    return ray.cluster_resources().get("GPU", 0) > 0


def ray_task(record: dict) -> dict:
    """What each Ray task runs: the job's cells into a temporary folder on its node, sent
    back as ``{"files": {relative path: bytes}, "where": placement}``."""
    import ray

    from bench.run.executors.job import run_job

    context = ray.get_runtime_context()
    where = placement("ray", context.get_task_id(), node=ray.util.get_node_ip_address(),
                      node_id=context.get_node_id())
    with tempfile.TemporaryDirectory(prefix="metabench-ray-") as tmp:
        run_job(record, tmp, where=where)
        files = {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
    return {"files": files, "where": where}


def write_back(run_dir: Path, files: dict[str, bytes]) -> None:
    """A task's folder into the run folder: each cell's earlier attempt replaced, every file
    written atomically, each cell's ``status.json`` last (it is what marks a cell finished)."""
    cells = {Path(rel).parts[1] for rel in files if Path(rel).parts[0] == "cells" and len(Path(rel).parts) > 2}
    for cell_id in cells:
        shutil.rmtree(run_dir / "cells" / cell_id, ignore_errors=True)
    last = []
    for rel, data in files.items():
        if Path(rel).name == "status.json":
            last.append((rel, data))
            continue
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(run_dir / rel, data)
    for rel, data in last:
        atomic.write_bytes(run_dir / rel, data)


class RayExecutor:
    name = "ray"

    def __init__(self, options: ClusterOptions):
        self.options = options

    def resources(self, ctx: RunContext) -> dict:
        return {"num_cpus": ctx.threads, "num_gpus": 1 if ctx.device == "cuda" else 0, "max_retries": 0}

    def run(self, jobs: list[Job], ctx: RunContext) -> int:
        """Start every job as a task and collect them; returns how many cells finished. On
        Ctrl-C or SIGTERM the tasks still running are cancelled (``--resume`` reruns them)."""
        ray = require("ray", "ray")
        started = _connect(self.options.ray_address, ctx.threads)
        try:
            self._check_fits(ray, ctx)
            task = ray.remote(ray_task)
            refs = {}
            for job in jobs:
                ref = task.options(name=f"metabench-{job.name}", **self.resources(ctx)).remote(job.record())
                refs[ref] = job
                ctx.echo(f"[ray] {job.name}: task started ({len(job.cells)} cell{'s' if len(job.cells) != 1 else ''}"
                         f"{', parity' if job.kind == 'parity' else ''})")
            while refs:
                if ctx.stops is not None and ctx.stops.stopping:
                    for ref, job in refs.items():
                        ray.cancel(ref, force=True)
                        ctx.echo(f"[ray] {job.name}: cancelled (the run is stopping)")
                    break
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    self._collect(ray, refs.pop(ref), ref, ctx)
        finally:
            if started:
                ray.shutdown()
        return sum((ctx.run_dir / "cells" / c.cell_id / "status.json").exists()
                   for job in jobs if job.kind == "cells" for c in job.cells)

    def _check_fits(self, ray, ctx: RunContext) -> None:
        """A task asking for more than any node has would wait forever: refuse it now."""
        need = self.resources(ctx)
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= need["num_cpus"] and r.get("GPU", 0) >= need["num_gpus"] for r in nodes):
            biggest = max((r.get("CPU", 0) for r in nodes), default=0)
            raise MetabenchError(f"--threads: each cell asks Ray for {need['num_cpus']} CPUs"
                                 + (" and 1 GPU" if need["num_gpus"] else "")
                                 + f", which no node of the cluster has (largest: {biggest:g} CPUs); "
                                 f"lower --threads or add such nodes")

    def _collect(self, ray, job: Job, ref, ctx: RunContext) -> None:
        try:
            payload = ray.get(ref)
        except ray.exceptions.RayError as e:
            said = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = f"ray task {job.name} failed: {type(e).__name__}" + (f": {said[0]}" if said else "")
            if job.kind == "parity":  # no table: the report says parity failed, the cells are not touched
                (ctx.run_dir / "parity.log").write_text(detail + "\n" + str(e))
                ctx.echo(f"[ray] parity: {detail}")
                return
            lost = mark_lost(ctx.run_dir, job, detail, placement("ray", ref.task_id().hex(), error=type(e).__name__))
            ctx.echo(f"[ray] {job.name}: {detail}" + (f"; {len(lost)} cell(s) marked failed" if lost else ""))
            return
        write_back(ctx.run_dir, payload["files"])
        ctx.echo(f"[ray] {job.name}: done on {payload['where'].get('node')}")
