"""``--executor local`` (the default): the jobs' cells one after another on this machine,
under a progress bar, stopping cleanly on Ctrl-C. Nothing else runs beside a cell, which is
what single-machine timing needs."""

from __future__ import annotations

from bench import plan
from bench.executors import Job, RunContext, placement


class LocalExecutor:
    name = "local"

    def run(self, jobs: list[Job], ctx: RunContext) -> int:
        """Run every job here; returns how many cells finished (a status written). Stops
        after the current cell on the first Ctrl-C, at once on the second or a SIGTERM."""
        from bench.executors.job import run_parity
        from bench.runner import progress_bar, run_cell, time_limit

        where = placement("local")
        cells = [c for job in jobs if job.kind == "cells" for c in job.cells]
        for job in jobs:
            if job.kind == "parity":
                run_parity(job.record(), ctx.run_dir, ctx.echo)
        done = 0
        if not cells:
            return done
        phases, profile = jobs[-1].phases, jobs[-1].profile
        limit = time_limit(profile, jobs[-1].timeout)
        with progress_bar(cells, phases, profile, ctx.echo) as (bar, say):
            for cell in cells:
                if ctx.stops is not None and ctx.stops.stopping:
                    break
                todo = plan.cell_phases(cell, phases)
                say(ctx.name(cell))
                stop_now = ctx.stops.stop_now if ctx.stops is not None else (lambda: False)
                status = run_cell(cell, ctx.run_dir / "cells" / cell.cell_id, todo, say, limit, stop_now,
                                  placement=where)
                if status is None:
                    break
                done += 1
                bar.update(cell, todo)
                bad = [f"{ph} {s['status']}" for ph, s in status["phases"].items() if s["status"] != "ok"]
                if bad:
                    say(f"[{cell.cell_id}] {', '.join(bad)} (other cells go on)")
        return done
