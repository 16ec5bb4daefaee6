"""The framework's own process for one cell's memory probe and accuracy phase.

``python -m bench.worker CELL_JSON CELL_DIR [--phases memory,accuracy]`` writes
``memory.json``, ``accuracy.json`` and ``curve.csv`` into CELL_DIR. Each phase that
fails writes ``<phase>.error.txt`` instead and the worker goes on with the next; the
exit code is non-zero when any phase failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench.cell import Cell, build, pin_threads


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_memory(adapter, spec, cell: Cell, steps: int) -> dict:
    """Peak memory of ``steps`` outer steps on one meta-batch, in a process that has timed
    nothing. The framework's own API where it has one (GPU); on CPU, the growth of the
    process's peak resident set over the resident set before the first step."""
    from bench.episodes import sampler_for

    sampler = sampler_for(spec, "train", cell.algorithm, data_dir=cell.data_dir, cache_dir=cell.cache_dir)
    batch = adapter.to_device(sampler.batch(0, spec.meta_batch_size(cell.algorithm)))
    adapter.reset_peak_memory()
    rss_before = _rss_bytes()
    for _ in range(steps):
        adapter.sync(adapter.outer_step(batch))
    reading = adapter.peak_memory()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "phase": "outer_step", "steps": steps,
        "peak_bytes": reading.peak_bytes if reading.peak_bytes is not None else max(0, peak_rss - rss_before),
        "source": reading.source or "process peak RSS growth (ru_maxrss - RSS before the steps)",
        "framework_api": reading.source is not None,
        "rss_before_bytes": rss_before, "peak_rss_bytes": peak_rss,
    }


def run_accuracy(adapter, spec, cell: Cell, init, log) -> tuple[dict, list[dict]]:
    from bench.training import train_and_evaluate

    adapter.set_params(init)  # the memory probe stepped the optimizer: start again
    last = [time.monotonic()]

    def progress(step, total, point):
        if time.monotonic() - last[0] > 10 or step == total:
            last[0] = time.monotonic()
            val = f" val {point['val_mean']:.4f}" if point else ""
            log(f"train {step}/{total}{val}")

    result = train_and_evaluate(adapter, spec, cell.algorithm, data_dir=cell.data_dir,
                                cache_dir=cell.cache_dir, progress=progress)
    row = asdict(result)
    curve = row.pop("curve")
    return row, curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.worker")
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
        (out / "build.error.txt").write_text(traceback.format_exc())
        log("build failed")
        return 1
    from bench.environment import collect_environment
    from bench.profiles import PROFILES

    env = collect_environment(cell.framework, cell.device, cell.threads)
    env["pinned_cores"] = cores
    env["adapter_info"] = adapter.describe().as_dict()
    (out / "environment.json").write_text(json.dumps(env, indent=1, default=str))
    failed = False
    for phase in args.phases.split(","):
        t0 = time.perf_counter()
        try:
            if phase == "memory":
                mem = measure_memory(adapter, spec, cell, PROFILES[cell.profile].memory_steps)
                (out / "memory.json").write_text(json.dumps(mem, indent=1))
            elif phase == "accuracy":
                row, curve = run_accuracy(adapter, spec, cell, init, log)
                (out / "accuracy.json").write_text(json.dumps(row, indent=1))
                with open(out / "curve.csv", "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=["step", "train_seconds", "val_mean", "val_ci95",
                                                           "train_loss"])
                    writer.writeheader()
                    writer.writerows(curve)
            else:
                raise ValueError(f"unknown phase {phase!r}")
            log(f"{phase} done in {time.perf_counter() - t0:.1f} s")
        except Exception:
            failed = True
            (out / f"{phase}.error.txt").write_text(traceback.format_exc())
            log(f"{phase} FAILED: {traceback.format_exc().strip().splitlines()[-1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
