"""The framework's own process for one cell's memory probe and accuracy phase.

``python -m bench.measure.worker CELL_JSON CELL_DIR [--phases memory,accuracy]`` writes
``memory.json``, ``accuracy.json`` and ``curve.csv`` into CELL_DIR, each atomically
(``bench.core.atomic``). Each phase that fails writes ``<phase>.error.txt`` instead and the
worker goes on with the next; a phase whose loss turns non-finite writes
``<phase>.diverged.json`` too (step and value: status ``diverged``). The exit code is
non-zero when any phase failed.
"""

from __future__ import annotations

import argparse
import csv
import math
import resource
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench.core import atomic
from bench.core.cell import Cell, build, pin_threads
from bench.core.errors import Diverged


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _reset_peak_rss() -> bool:
    """Start the process's peak resident set again from its current size (Linux >= 4.0:
    ``5`` into ``/proc/self/clear_refs`` resets VmHWM, which ``ru_maxrss`` reads). False
    where that is not possible: the peak then includes everything before."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    """Hand glibc's free heap pages back to the system (``malloc_trim(0)``), so that a
    step reusing memory the first step freed is counted as it touches it again, not hidden
    in the resident set before it. A no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_memory(adapter, spec, cell: Cell, steps: int) -> dict:
    """Peak memory of an outer step on one meta-batch, in a process that has timed nothing.

    The framework's own API where it has one (GPU). On a CPU, the growth of the process's
    peak resident set over the resident set before the steps, read twice: over the first
    step, which includes the compiler's and the framework's first-call memory (XLA's
    compilation is hundreds of MiB for a sinusoid MLP), and over ``steps`` steps after it,
    from a resident set with the free heap released and the peak reset: the step's own
    memory, the one that grows with the work. Where the peak cannot be reset, one reading
    over every step from before the first (the source says so)."""
    from bench.core.episodes import sampler_for

    sampler = sampler_for(spec, "train", cell.algorithm, data_dir=cell.data_dir, cache_dir=cell.cache_dir)
    batch = adapter.to_device(sampler.batch(0, spec.meta_batch_size(cell.algorithm)))
    return probe_memory(adapter, lambda: adapter.outer_step(batch), steps)


def probe_memory(adapter, step, steps: int) -> dict:
    """``measure_memory``'s readings of ``step()`` (an outer step returning its loss): the
    first call apart, then ``steps`` more."""
    losses = []

    def steps_from_here(n: int):
        adapter.reset_peak_memory()
        _release_free_heap()
        reset = _reset_peak_rss()
        before = _rss_bytes()
        for _ in range(n):
            loss = step()
            adapter.sync(loss)
            losses.append(loss)
        return adapter.peak_memory(), before, _peak_rss_bytes(), reset

    first_api, first_before, first_peak, _ = steps_from_here(1)
    api, before, peak_rss, reset = steps_from_here(steps)
    if api.peak_bytes is not None:  # the framework's own counter (GPU)
        peak, first, source = api.peak_bytes, first_api.peak_bytes, api.source
    elif reset:
        peak, first = max(0, peak_rss - before), max(0, first_peak - first_before)
        source = "process peak RSS growth over the steps after the first"
        if getattr(adapter, "cpu_memory_caveat", None):
            source += f" ({adapter.cpu_memory_caveat})"
    else:  # the peak could not be reset: one reading over every step, from before the first
        peak, first = max(0, peak_rss - first_before), None
        source = "process peak RSS growth, the first (compiling) step included"
    # read after the peaks: a host read is no part of what is measured
    for step, loss in enumerate(losses, 1):
        if not math.isfinite(float(loss)):
            raise Diverged("memory", step, float(loss))
    return {
        "phase": "outer_step", "steps": steps, "peak_bytes": peak, "source": source,
        "framework_api": api.source is not None,
        "first_step_peak_bytes": first,  # the first step alone, compilation included
        "rss_before_bytes": before, "peak_rss_bytes": peak_rss,
    }


def run_accuracy(adapter, spec, cell: Cell, init, log) -> tuple[dict, list[dict], list[float]]:
    """Train from ``init`` (the cell's seed) and evaluate: (accuracy row, curve points,
    the test metric of every test episode)."""
    from bench.measure.training import train_and_evaluate

    adapter.set_params(init)  # the memory probe stepped the optimizer: start again
    last = [time.monotonic()]

    def progress(step, total, point):
        if time.monotonic() - last[0] > 10 or step == total:
            last[0] = time.monotonic()
            val = f" val {point['val_mean']:.4f}" if point else ""
            log(f"train {step}/{total}{val}")

    result = train_and_evaluate(adapter, spec, cell.algorithm, train_seed=cell.seed, data_dir=cell.data_dir,
                                cache_dir=cell.cache_dir, progress=progress)
    row = asdict(result)
    return row, row.pop("curve"), row.pop("episode_values")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.measure.worker")
    ap.add_argument("cell")
    ap.add_argument("out")
    ap.add_argument("--phases", default="memory,accuracy")
    args = ap.parse_args(argv)
    cell = Cell.load(args.cell)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = pin_threads(cell.threads)

    def log(msg: str) -> None:
        print(f"[{cell.cell_id}] {msg}", flush=True)

    try:
        adapter, spec, init = build(cell)
    except Exception:
        atomic.write_text(out / "build.error.txt", traceback.format_exc())
        log("build failed")
        return 1
    from bench.core import registry
    from bench.core.profiles import PROFILES
    from bench.measure.environment import collect_environment

    env = collect_environment(cell.framework, cell.device, cell.threads, registry.get(cell.adapter).target)
    env["pinned_cores"] = cores
    env["adapter_info"] = adapter.describe().as_dict()
    env["options"] = adapter.options  # every declared option, as used
    atomic.write_json(out / "environment.json", env, default=str)
    failed = False
    for phase in args.phases.split(","):
        t0 = time.perf_counter()
        try:
            if phase == "memory":
                mem = measure_memory(adapter, spec, cell, PROFILES[cell.profile].memory_steps)
                atomic.write_json(out / "memory.json", mem)
            elif phase == "accuracy":
                row, curve, values = run_accuracy(adapter, spec, cell, init, log)
                # the curve and the episodes first: accuracy.json is what marks the phase done
                with atomic.atomic_open(out / "episodes.csv", "w", newline="") as f:
                    f.write("episode,value\n")
                    f.writelines(f"{i},{v!r}\n" for i, v in enumerate(values))
                with atomic.atomic_open(out / "curve.csv", "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=["step", "train_seconds", "val_mean", "val_ci95",
                                                           "train_loss"])
                    writer.writeheader()
                    writer.writerows(curve)
                atomic.write_json(out / "accuracy.json", row)
            else:
                raise ValueError(f"unknown phase {phase!r}")
            log(f"{phase} done in {time.perf_counter() - t0:.1f} s")
        except Diverged as e:
            failed = True
            atomic.write_json(out / f"{phase}.diverged.json", e.record())
            atomic.write_text(out / f"{phase}.error.txt", f"{traceback.format_exc()}diverged: {e}\n")
            log(f"{phase} DIVERGED: {e}")
        except Exception:
            failed = True
            atomic.write_text(out / f"{phase}.error.txt", traceback.format_exc())
            log(f"{phase} FAILED: {traceback.format_exc().strip().splitlines()[-1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
