"""``--executor local`` (the default): the jobs' cells on this machine, one process at a
time, under a progress bar, stopping cleanly on Ctrl-C. Nothing else runs beside a cell,
which is what single-machine timing needs.

With several timing processes a cell (``--repeats``; the cpu profile's 3), first every
timing process of every cell, in the interleaved order of ``bench.run.plan.timing_order``
(comparable cells take turns, never all of one cell in a row), then each cell's memory and
accuracy process and its status.json. With one (smoke), each cell's processes run one
after another, cell by cell."""

from __future__ import annotations

from bench.run import plan
from bench.run.executors.base import Job, RunContext, placement


class LocalExecutor:
    name = "local"

    def run(self, jobs: list[Job], ctx: RunContext) -> int:
        """Run every job here; returns how many cells finished (a status written). Stops
        after the current cell (with repeated timing: after the current process) on the
        first Ctrl-C, at once on the second or a SIGTERM."""
        from bench.run.cells import progress_bar, start_cell, time_limit
        from bench.run.executors.job import run_parity

        cells = [c for job in jobs if job.kind == "cells" for c in job.cells]
        for job in jobs:
            if job.kind == "parity":
                run_parity(job.record(), ctx.run_dir, ctx.echo)
        if not cells:
            return 0
        phases, profile, repeats = jobs[-1].phases, jobs[-1].profile, jobs[-1].repeats
        limit = time_limit(profile, jobs[-1].timeout)
        with progress_bar(cells, phases, profile, ctx.echo, repeats) as (bar, say):
            if repeats > 1:  # the interleaved timing processes need every cell's folder first
                for cell in cells:
                    start_cell(cell, ctx.run_dir / "cells" / cell.cell_id)
                if not self._timing_interleaved(cells, phases, repeats, limit, ctx, bar, say):
                    return 0
            return self._finish_cells(cells, phases, repeats, limit, ctx, bar, say)

    @staticmethod
    def _stopping(ctx: RunContext) -> bool:
        return ctx.stops is not None and ctx.stops.stopping

    @staticmethod
    def _stop_now(ctx: RunContext):
        return ctx.stops.stop_now if ctx.stops is not None else (lambda: False)

    def _timing_interleaved(self, cells, phases, repeats: int, limit, ctx: RunContext, bar, say) -> bool:
        """Every timing process of every cell, in ``bench.run.plan.timing_order``; those that
        ended before (``--resume``) are kept. False when the run is stopping."""
        from bench.run.cells import run_timing_process, timing_process_dir

        by_id = {c.cell_id: c for c in cells}
        timed = [c for c in cells if "timing" in plan.cell_phases(c, phases)]
        for cell_id, k in plan.timing_order(timed, repeats, ctx.order_seed):
            if self._stopping(ctx):
                return False
            cell, cell_dir = by_id[cell_id], ctx.run_dir / "cells" / cell_id
            if (timing_process_dir(cell_dir, k) / "status.json").exists():  # kept by --resume
                continue
            say(f"{ctx.name(cell)}: timing process {k + 1} of {repeats}")
            if run_timing_process(cell, cell_dir, k, say, limit, self._stop_now(ctx)) is None:
                return False
            bar.advance(plan.TYPICAL_SECONDS[cell.profile]["timing"])
        return True

    def _finish_cells(self, cells, phases, repeats: int, limit, ctx: RunContext, bar, say) -> int:
        """Each cell's remaining processes (all of them with one timing process a cell: the
        cells one after another), then its status.json."""
        from bench.run.cells import finish_cell, start_cell

        where = placement("local")
        done = 0
        for cell in cells:
            if self._stopping(ctx):
                break
            if repeats == 1:  # a cell not reached (Ctrl-C) leaves no folder
                start_cell(cell, ctx.run_dir / "cells" / cell.cell_id)
            todo = plan.cell_phases(cell, phases)
            if repeats == 1 or [p for p in todo if p != "timing"]:
                say(ctx.name(cell))
            status = finish_cell(cell, ctx.run_dir / "cells" / cell.cell_id, todo, say, limit, self._stop_now(ctx),
                                 placement=where, repeats=repeats)
            if status is None:
                break
            done += 1
            bar.update(cell, todo if repeats == 1 else [p for p in todo if p != "timing"])
            bad = [f"{ph} {s['status']}" for ph, s in status["phases"].items() if s["status"] != "ok"]
            if bad:
                say(f"[{cell.cell_id}] {', '.join(bad)} (other cells go on)")
        return done
