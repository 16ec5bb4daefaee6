"""Time each phase of one cell: rounds of one step each, the device synchronised inside the
timed function, the first (compiling) step timed apart and recorded in ``extra_info``.

A non-finite loss from ``outer_step`` ends the cell as ``diverged`` (``timing.diverged.json``
beside the cell's JSON): timings of steps on NaNs never reach a median. The loss is read
after the first step and after the last round, outside the timed region; NaNs persist in
the parameters, so a divergence in any round shows in the last.

Episodes are sampled and moved to the device before timing; every round runs on the same
device-resident batch, so host-to-device copies are outside the timed region everywhere.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from bench.core import atomic
from bench.core.algorithms import get as get_algorithm
from bench.core.episodes import sampler_for
from bench.core.errors import Diverged
from bench.core.profiles import PROFILES
from bench.measure.timing import timed_step


def _check_finite(phase: str, step: str, out, cell_json: Path) -> None:
    """Raise ``Diverged`` (and record it for the runner) when ``outer_step`` returned a
    non-finite loss; other phases return parameters or prototypes, not a loss."""
    if phase != "outer_step":
        return
    value = float(out)
    if not math.isfinite(value):
        error = Diverged("timing", step, value)
        atomic.write_json(cell_json.parent / "timing.diverged.json", error.record())
        raise error


# The matrix product timed once per process, beside the steps: n x n float32, large
# enough to run at the machine's matrix-multiply speed in this framework and thread count.
GEMM_N = {"cpu": 1024, "cuda": 8192}
GEMM_ROUNDS = 7
_gemm: dict[str, float | None] = {}


def gemm_gflops(adapter, device: str) -> float | None:
    """This framework's float32 matrix-multiply speed here, GFLOP/s (median of
    ``GEMM_ROUNDS`` after two warm-up products): the peak a step's GFLOP/s is set against.
    None where the adapter offers no ``gemm`` (or it fails: an aside, never the cell's end)."""
    if "value" not in _gemm:
        n = GEMM_N.get(device, GEMM_N["cpu"])
        try:
            step = adapter.gemm(n)
            if step is None:
                _gemm["value"] = None
            else:
                for _ in range(2):
                    step()
                times = []
                for _ in range(GEMM_ROUNDS):
                    t0 = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t0)
                _gemm["value"] = 2.0 * n ** 3 / sorted(times)[GEMM_ROUNDS // 2] / 1e9
        except Exception as e:  # report and go on: the steps are what this cell times
            print(f"metabench: the GEMM peak measurement failed: {type(e).__name__}: {e}")
            _gemm["value"] = None
    return _gemm["value"]


# The harness's own cost, measured in every cell: the same step, right after its timed
# rounds, timed by a bare perf_counter loop in the same process. The report sets
# pytest-benchmark's median against this one (it should be within 2%).
BARE_ROUNDS = 20


def bare_loop_median(step, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_step(benchmark, cell, built, phase, pytestconfig):
    adapter, spec = built
    role = "test" if phase == "adapt" else "train"
    sampler = sampler_for(spec, role, cell.algorithm, data_dir=cell.data_dir, cache_dir=cell.cache_dir)
    batch = adapter.to_device(sampler.batch(0, spec.meta_batch_size(cell.algorithm)))
    step = timed_step(adapter, getattr(adapter, phase), batch)
    profile = PROFILES[cell.profile]

    compiled_before = adapter.compilation_count()
    t0 = time.perf_counter_ns()
    out = step()
    first_step = (time.perf_counter_ns() - t0) / 1e9
    cell_json = Path(pytestconfig.getoption("--metabench-cell"))
    _check_finite(phase, "1 (first step)", out, cell_json)
    compiled_first = adapter.compilation_count()
    benchmark.group = f"{cell.spec_name} {cell.algorithm} {phase}"
    benchmark.name = f"{cell.adapter}[{phase}]"
    out = benchmark.pedantic(step, rounds=profile.rounds, iterations=1, warmup_rounds=profile.warmup_rounds)
    _check_finite(phase, f"{2 + profile.warmup_rounds + profile.rounds - 1} (last timed round)", out, cell_json)
    compiled_after = adapter.compilation_count()
    bare = bare_loop_median(step, min(profile.rounds, BARE_ROUNDS))

    info = adapter.describe()
    recompiled = (compiled_after - compiled_first) if compiled_after is not None else None
    config = getattr(adapter, "config", None)  # an adapter that skipped Adapter.__init__ has none
    flops = get_algorithm(cell.algorithm).step_flops(phase, config, spec.meta_batch_size(cell.algorithm)) \
        if config is not None else None
    benchmark.extra_info.update({
        "cell_id": cell.cell_id, "adapter": cell.adapter, "framework": cell.framework,
        "algorithm": cell.algorithm, "spec": cell.spec_name, "phase": phase, "profile": cell.profile,
        "device": info.device, "device_name": info.device_name, "compilation": info.compilation,
        "first_step_seconds": first_step,
        "compilations_in_first_step": (compiled_first - compiled_before) if compiled_first is not None else None,
        "recompilations_while_timed": recompiled,
        "warmup_rounds": profile.warmup_rounds, "meta_batch_size": spec.meta_batch_size(cell.algorithm),
        "adapter_info": info.as_dict(), "options": adapter.options,
        "flops": flops,  # analytic (bench.core.flops): convolutions and matrix products of the step
        "gemm_gflops": gemm_gflops(adapter, info.device), "gemm_n": GEMM_N.get(info.device, GEMM_N["cpu"]),
        "bare_loop_median_seconds": bare,
    })
    # A recompilation inside the timed rounds would silently time the compiler: refuse it.
    assert not recompiled, f"{cell.adapter} recompiled {recompiled} time(s) while being timed"


def test_episode_sampling(benchmark, cell, built):
    """Sampling one training meta-batch (numpy, host): it must be negligible next to a step."""
    _, spec = built
    sampler = sampler_for(spec, "train", cell.algorithm, data_dir=cell.data_dir, cache_dir=cell.cache_dir)
    size = spec.meta_batch_size(cell.algorithm)
    sampler.batch(0, size)  # loads and decodes the dataset: not part of sampling
    index = iter(range(1, 10**9))
    benchmark.group = f"{cell.spec_name} {cell.algorithm} sample_episodes"
    benchmark.name = f"{cell.adapter}[sample_episodes]"
    benchmark.pedantic(lambda: sampler.batch(next(index) * size, size), rounds=PROFILES[cell.profile].rounds,
                       iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({
        "cell_id": cell.cell_id, "adapter": cell.adapter, "framework": cell.framework,
        "algorithm": cell.algorithm, "spec": cell.spec_name, "phase": "sample_episodes",
        "profile": cell.profile, "device": "host", "compilation": "numpy", "first_step_seconds": None,
        "meta_batch_size": size})
