"""A hand-made results folder with known numbers, in the formats ``metabench run`` writes
(compare ``results/20261128-cpu-all/cells/*``). No framework is imported: the report's
tests check its tables against values computed from these planted numbers.

Planted facts the tests rely on:
- step time, omni / maml / outer_step: torch 100 ms, jax 50 ms, tensorflow 200 ms (medians
  of 21 rounds spread +-10%), first steps 0.12 s, 5.0 s, 0.2 s;
- tensorflow on ``sine`` failed its timing phase, but left a benchmark.json behind with
  absurd rounds (1000 s): they must never be read;
- accuracy, omni / maml: torch and jax at 3 seeds, tensorflow at 1; on the same 200 test
  episodes jax is 2 points above torch (significant), tensorflow equal up to noise;
- target 0.9 on omni / maml: torch reaches it at 10 s and 12 s in two seeds of three;
- parity: jax-maml ok on omni, tensorflow-maml failed on omni, nothing checked on sine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SPREAD = 1 + np.linspace(-0.1, 0.1, 21)  # 21 rounds; the middle one is the median, exactly
ADAPTERS = {"torch": ("torch-maml", "eager"), "jax": ("jax-maml", "jit"), "tensorflow": ("tensorflow-maml", "graph")}
MEDIANS = {  # (spec, phase) -> framework -> median seconds
    ("omni", "outer_step"): {"torch": 0.100, "jax": 0.050, "tensorflow": 0.200},
    ("omni", "inner_step"): {"torch": 0.020, "jax": 0.019, "tensorflow": 0.020},
    ("omni", "sample_episodes"): {"torch": 0.0002, "jax": 0.0001, "tensorflow": 0.0002},
    ("sine", "outer_step"): {"torch": 0.040, "jax": 0.0005, "tensorflow": 0.008},
    ("sine", "inner_step"): {"torch": 0.001, "jax": 0.0002, "tensorflow": 0.002},
    ("sine", "sample_episodes"): {"torch": 0.0001, "jax": 0.0001, "tensorflow": 0.0001},
}
FIRST_STEP = {"torch": 0.12, "jax": 5.0, "tensorflow": 0.2}
EPISODES = 200
SEEDS = {"torch": [0, 1, 2], "jax": [0, 1, 2], "tensorflow": [0]}
TARGET = {"omni": 0.9, "sine": 1.0}
TIME_TO_TARGET = {("torch", 0): 10.0, ("torch", 1): 12.0, ("torch", 2): None}


def rounds(spec: str, phase: str, framework: str, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """The planted rounds; ``shift`` moves a whole process (a fraction of the median)."""
    return MEDIANS[(spec, phase)][framework] * scale * (SPREAD + shift)


def episode_values(spec: str, framework: str, seed: int) -> np.ndarray:
    """Per-episode test metric: a difficulty shared by every framework (same episodes),
    plus the framework's offset and its seed's noise."""
    base = np.random.default_rng(7).uniform(0.80, 0.98, EPISODES) if spec == "omni" else \
        np.random.default_rng(7).uniform(0.2, 0.8, EPISODES)
    offset = {"torch": 0.0, "jax": 0.02 if spec == "omni" else 0.0, "tensorflow": 0.0}[framework]
    noise = np.random.default_rng(100 * seed + len(framework)).normal(0, 0.01, EPISODES)
    return base + offset + noise - noise.mean()  # centred: a framework's mean is base + offset exactly


def _stats(data: np.ndarray) -> dict:
    q1, med, q3 = np.quantile(data, [0.25, 0.5, 0.75])
    return {"min": float(data.min()), "max": float(data.max()), "mean": float(data.mean()),
            "stddev": float(data.std(ddof=1)), "rounds": int(data.size), "median": float(med),
            "iqr": float(q3 - q1), "q1": float(q1), "q3": float(q3), "iterations": 1, "data": data.tolist()}


STEP_FLOPS = {"inner_step": 1e9, "outer_step": 4e9}          # what bench.core.flops would count
HARNESS_OVERHEAD = 1.01  # pytest-benchmark's median over the bare loop's, in every step
GEMM_GFLOPS = {"torch": 120.0, "jax": 100.0, "tensorflow": 110.0}  # the measured matmul peaks


def _benchmark_json(framework: str, spec: str, scale: float = 1.0, when: str = "2026-11-28T09:50:00+00:00",
                    shift: float = 0.0) -> dict:
    adapter, compilation = ADAPTERS[framework]
    benchmarks = []
    for phase in ("inner_step", "outer_step", "sample_episodes"):
        data = rounds(spec, phase, framework, scale, shift)
        benchmarks.append({
            "group": f"{spec} maml {phase}", "name": f"{adapter}[{phase}]", "param": phase,
            "extra_info": {"adapter": adapter, "framework": framework, "algorithm": "maml", "spec": spec,
                           "phase": phase, "device": "cpu", "compilation": "eager" if phase == "sample_episodes"
                           else compilation, "first_step_seconds": FIRST_STEP[framework] * scale,
                           "recompilations_while_timed": 0, "meta_batch_size": 4,
                           **({} if phase == "sample_episodes" else
                              {"flops": STEP_FLOPS[phase], "gemm_gflops": GEMM_GFLOPS[framework],
                               "bare_loop_median_seconds": float(np.median(data)) / HARNESS_OVERHEAD})},
            "stats": _stats(data)})
    return {"machine_info": {"node": "synthetic", "cpu": {"brand_raw": "Test CPU"}},
            "commit_info": {"id": "abc123", "dirty": False}, "benchmarks": benchmarks, "datetime": when,
            "version": "5.3.1"}


def _phase(status: str = "ok", detail: str | None = None) -> dict:
    return {"status": status, "returncode": 0 if status == "ok" else 1, "seconds": 1.0, "detail": detail,
            "log_tail": [] if status == "ok" else [detail or ""]}


# Per-process shifts of a repeated run (``processes=3``, fractions of the median): the
# process-to-process variation that rounds inside one process never show. Symmetric, so the
# pooled median of the three processes' rounds is the planted median.
PROCESS_SHIFTS = (-0.02, 0.0, 0.02)


def write_cell(run: Path, framework: str, spec: str, seed: int = 0, *, timing: str = "ok",
               accuracy: str = "ok", scale: float = 1.0, env: dict | None = None, processes: int = 1) -> Path:
    adapter, _ = ADAPTERS[framework]
    cell_id = f"{adapter}__maml__{spec}" + (f"__seed{seed}" if seed else "")
    d = run / "cells" / cell_id
    d.mkdir(parents=True)
    cell = {"adapter": adapter, "framework": framework, "algorithm": "maml", "spec": spec, "spec_name": spec,
            "profile": "smoke", "device": "cpu", "threads": 2, "data_dir": None, "cache_dir": None, "seed": seed}
    (d / "cell.json").write_text(json.dumps(cell))
    phases = {}
    if seed == 0:  # timing and memory run at seed 0 only
        phases["timing"] = _phase(timing, None if timing == "ok" else "RuntimeError: deliberate")
        phases["memory"] = _phase()
        if processes == 1:  # the layout of runs from before timing was repeated
            bench = _benchmark_json(framework, spec, 1e4 if timing != "ok" else scale)
            (d / "benchmark.json").write_text(json.dumps(bench))
        for k in range(processes if processes > 1 else 0):
            (d / "timing" / str(k)).mkdir(parents=True)
            bench = _benchmark_json(framework, spec, 1e4 if timing != "ok" else scale,
                                    shift=PROCESS_SHIFTS[k % len(PROCESS_SHIFTS)])
            (d / "timing" / str(k) / "benchmark.json").write_text(json.dumps(bench))
            (d / "timing" / str(k) / "status.json").write_text(json.dumps(phases["timing"]))
        (d / "memory.json").write_text(json.dumps({"phase": "outer_step", "steps": 2, "peak_bytes": 2**20,
                                                   "source": "rss", "framework_api": False}))
        (d / "environment.json").write_text(json.dumps(env or environment(framework)))
    phases["accuracy"] = _phase(accuracy, None if accuracy == "ok" else "diverged at step 3: loss nan")
    metric = "accuracy" if spec == "omni" else "mse"
    values = episode_values(spec, framework, seed)
    if accuracy != "ok":
        values = values * 0 + 123.0  # planted garbage: must not be read
    ttt = TIME_TO_TARGET.get((framework, seed)) if spec == "omni" else None
    (d / "accuracy.json").write_text(json.dumps({
        "metric": metric, "mean": float(values.mean()), "ci95": float(1.96 * values.std(ddof=1) / EPISODES ** 0.5),
        "episodes": EPISODES, "train_steps": 100, "train_seconds": 20.0 * scale, "eval_seconds": 1.0, "seed": seed,
        "target": TARGET[spec], "target_direction": "max" if metric == "accuracy" else "min",
        "steps_to_target": None if ttt is None else int(ttt * 5), "time_to_target_seconds": ttt,
        "first_step_seconds": FIRST_STEP[framework]}))
    pd.DataFrame({"episode": range(EPISODES), "value": values}).to_csv(d / "episodes.csv", index=False)
    steps = np.arange(0, 101, 20)
    pd.DataFrame({"step": steps, "train_seconds": steps * 0.2 * scale,
                  "val_mean": (0.5 + 0.004 * steps) if metric == "accuracy" else (2.0 - 0.012 * steps),
                  "val_ci95": 0.02, "train_loss": 1.0}).to_csv(d / "curve.csv", index=False)
    (d / "status.json").write_text(json.dumps({"cell_id": cell_id, **cell, "phases": phases}))
    return d


def environment(framework: str, version: str = "1.0", threads: int = 2, sha: str = "abc123") -> dict:
    return {"python": "3.11.7", "cpu": "Test CPU", "cpu_count": 2, "device": "cpu", "gpu": None,
            "threads": threads, "packages": {"numpy": "2.0", framework: version},
            "git": {"sha": sha, "dirty": False}}


def make_run(root: Path, name: str = "20261201-synthetic", *, scale: dict | None = None,
             failures: bool = True, env: dict | None = None, processes: int = 1) -> Path:
    """The run folder; ``scale`` multiplies one framework's step times (compare's tests);
    ``processes`` timing processes per cell (1: the layout from before repetition)."""
    run = root / name
    run.mkdir(parents=True)
    scale = scale or {}
    for framework, seeds in SEEDS.items():
        for spec in ("omni", "sine"):
            for seed in seeds if spec == "omni" else [0]:
                failed_timing = failures and framework == "tensorflow" and spec == "sine"
                write_cell(run, framework, spec, seed, timing="failed" if failed_timing else "ok",
                           scale=scale.get(framework, 1.0), env=(env or {}).get(framework), processes=processes)
    if failures:  # a diverged extra seed of tensorflow: its garbage must stay out of the accuracy
        write_cell(run, "tensorflow", "omni", 5, accuracy="diverged")
    pd.DataFrame({"framework": ["jax", "tensorflow"], "adapter": ["jax-maml", "tensorflow-maml"],
                  "spec": ["omni", "omni"], "algorithm": ["maml", "maml"], "meta_grad": [1e-6, 3e-2],
                  "meta_grad_floor": [1e-6, 1e-6], **{f"{q}_64": [1e-14, 1e-3] for q in
                  ("support_loss", "query_logits", "meta_grad", "params_after")},
                  "ok": [True, False]}).to_csv(run / "parity.csv", index=False)
    (run / "manifest.json").write_text(json.dumps({
        "run_id": name, "command": "metabench run --profile smoke", "profile": "smoke", "device": "cpu",
        "threads": 2, "started": "2026-12-01T10:00:00Z", "finished": "2026-12-01T10:30:00Z",
        "harness_environment": {"cpu": "Test CPU", "cpu_count": 2, "platform": "Linux", "python": "3.11.7",
                                "git": {"sha": "abc123", "dirty": False}},
        "specs": {}, "cells": []}))
    return run
