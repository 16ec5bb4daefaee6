"""``metabench check ADAPTER [ADAPTER ...]``: the adapter contract, checked in the adapter's
framework's own process on small synthetic episodes, then (``--parity``) a quick parity run
against the reference. A run checks its adapters the same way first (``cached_contract``).

The contract checks need no data and take seconds: they build the adapter for every
algorithm it serves, on a regression spec (MAML family) and a small image spec, and check
what the harness relies on (``bench.core.adapter``): parameters round-trip in the canonical
layout, the probe's and the predictions' shapes, that each of four outer steps in a row
changes the parameters, deterministically, and leaves a finite loss, that the probe leaves
the parameters alone, that identical steps do not recompile, that the float64 diagnostic
computes at float64 precision (``float64_precision``: not only float64 arrays), that
``describe`` names its compilation mode in ``bench.core.adapter.COMPILATION``, and that
``sync`` waits for a step's results. The same checks run in the test suite for every registered
adapter, plugins included (``tests/test_adapter_contract.py``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace

import numpy as np

from bench.core import registry
from bench.core.adapter import AdapterInfo
from bench.core.algorithms import get as get_algorithm
from bench.core.algorithms import reader as section_reader
from bench.core.atomic import write_text
from bench.core.episodes import EpisodeBatch, EpisodeSampler
from bench.core.errors import MetabenchError
from bench.core.models import init_params
from bench.core.spec import EpisodeSpec, builtin_with_sections

BATCH = 2  # tasks per synthetic meta-batch
OUTER_STEPS = 4  # consecutive outer steps that must each change the parameters


@dataclass(frozen=True)
class Result:
    check: str          # what was checked, in the field's words
    case: str           # "<spec> / <algorithm>"
    ok: bool
    detail: str = ""    # why it failed, one line


def small_specs(algorithm: str) -> list[EpisodeSpec]:
    """Specs small enough for seconds per check: a 16x16, 8-filter, 3-way image spec, and
    for the algorithms that regress an 8-unit sinusoid MLP. Both are built-in specs, with
    the algorithm's ``check_settings`` as its section where they have none (a plugin's)."""
    a = get_algorithm(algorithm)
    added = {a.section: a.check_settings} if a.check_settings else {}
    o = builtin_with_sections("omniglot-5w1s", added)[0]
    image = replace(o, name="tiny-images", data=replace(o.data, image_size=16), model=replace(o.model, hidden=8),
                    episode=replace(o.episode, n_way=3, n_query=2))
    for section, settings in image.sections.items():  # training at the test shape, where larger
        image = image.with_settings(section, section_reader(section).quick_settings(settings))
    specs = [image]
    if a.regression:
        s = builtin_with_sections("sinusoid-10shot", added)[0]
        specs.insert(0, replace(s, name="tiny-sinusoid", model=replace(s.model, hidden=8)))
    return [s for s in specs if algorithm in s.algorithms()]


def synthetic_batch(spec: EpisodeSpec, shape, seed: int = 0, tasks: int = BATCH) -> EpisodeBatch:
    """Episodes of ``shape`` without data files: real sinusoid tasks, or random images
    with class-major labels (the layout of ``bench.core.episodes``)."""
    if spec.is_regression:
        return EpisodeSampler(spec, "train", shape).batch(seed * tasks, tasks)
    rng = np.random.default_rng(seed)
    n, k, q, s = shape.n_way, shape.k_shot, shape.n_query, spec.data.image_size
    labels = lambda m: np.broadcast_to(np.repeat(np.arange(n), m), (tasks, n * m)).copy()
    images = lambda m: rng.random((tasks, n * m, s, s, 1), dtype=np.float32)
    return EpisodeBatch(images(k), labels(k), images(q), labels(q), np.zeros((tasks, 1)), shape)


# The sync check times one outer step on SYNC_TASKS tasks of the small image spec with
# SYNC_SCALE times its support and query images per class (``sync_batch``): 10-20 ms of CPU
# time in each framework on a CPU, so that the work a sync that did not wait leaves behind is
# far above the CPU time an idle process spends anyway. More images per task rather than more
# tasks: TF's adapters unroll their loop over the tasks when they trace it, and 16 tasks
# of a Conv-4 MAML took TF's XLA 43 s to compile, 6 tasks 11 s, 4 tasks 9 s. Six tasks, not
# fewer: a sync that waits for some of the tasks must leave a share of the work behind well
# above SYNC_LEFT_FRACTION (tests/test_plugin.py's partial sync, waiting for 60% of the tasks
# rounded up, leaves 2 of 6, measured 32-38%; 1 of 4 measured 16-24%, too near the limit).
SYNC_TASKS = 6
SYNC_SCALE = 3
SYNC_ROUNDS = 3
# The host sleeps this many times the synchronised step's wall time (plus SYNC_PAUSE_MIN s)
# after sync: long enough for any work left behind to finish, even on a loaded machine.
SYNC_PAUSE_FACTOR = 3.0
SYNC_PAUSE_MIN = 0.02
# CPU work that may run after sync returned: this fraction of the step's CPU time, or this
# many seconds (thread pools that spin a little after their last task), whichever is larger.
# The built-in adapters leave 0-3% (20 repetitions each, docs/fairness.md); a step that
# returns after 60% of its work leaves 40%.
SYNC_LEFT_FRACTION = 0.15
SYNC_LEFT_FLOOR = 1.5e-3
# On an accelerator: fraction of a step's time that reading its results right after sync
# may exceed the same read once the device is idle.
SYNC_READ_FRACTION = 0.5
# Below this (seconds, step and read together) the read comparison cannot judge.
SYNC_MIN_STEP = 2e-3


# The float64 check's perturbation: every weight and input moved by this relative amount
# (random sign), below float32's resolution (2^-24) and far above float64's (2^-53). In
# float64 the probe's outputs move smoothly: f(+) + f(-) - 2 f(0) is rounding noise, 1e-15
# relative times the problem's conditioning. An op that computes in float32 on float64
# arrays (a cast in the transfer, a float32 conv or exp) rounds about one input in eight to
# another float32 value, and its outputs jump by float32 rounding (6e-8), asymmetrically.
F64_NUDGE = 2.0 ** -27
F64_SMOOTH = 1e-10  # the largest relative second difference a float64 computation shows


def sync_batch(spec: EpisodeSpec, algo) -> EpisodeBatch:
    """The sync check's batch: ``SYNC_TASKS`` tasks of ``algo``'s training shape with
    ``SYNC_SCALE`` times the support and query images per class."""
    shape = algo.train_shape(spec)
    return synthetic_batch(spec, replace(shape, k_shot=shape.k_shot * SYNC_SCALE,
                                         n_query=shape.n_query * SYNC_SCALE), seed=2, tasks=SYNC_TASKS)


def nudged(params: dict, batch: EpisodeBatch, sign: float, seed: int = 0) -> tuple[dict, EpisodeBatch]:
    """``params`` and ``batch``'s float arrays in float64, each entry times
    ``1 + sign * F64_NUDGE * (+-1)``, the signs the same for either ``sign``."""
    rng = np.random.default_rng(seed)
    move = lambda a: np.asarray(a, np.float64) * (1 + sign * F64_NUDGE * rng.choice([-1.0, 1.0], size=np.shape(a)))
    p = {k: move(params[k]) for k in sorted(params)}
    floats = {name: move(getattr(batch, name)) for name in ("support_x", "support_y", "query_x", "query_y")
              if np.asarray(getattr(batch, name)).dtype.kind == "f"}
    return p, replace(batch, **floats)


def float64_precision(adapter, params: dict, batch: EpisodeBatch) -> tuple[float, str]:
    """How far a float64 ``adapter``'s probe is from computing at float64 precision: the
    largest relative second difference ``|f(+) + f(-) - 2 f(0)| / max|f(0)|`` of its support
    loss, query outputs and meta-gradient (all parameters together) when every weight and
    input moves by ``F64_NUDGE`` either way (``nudged``). Rounding noise in float64 (below
    ``F64_SMOOTH``), float32 rounding where any op computes in float32. Returns (it, the
    quantity where it is largest)."""
    def probe(p, b):
        adapter.set_params(p)
        out = adapter.probe(adapter.to_device(b))
        grads = np.concatenate([np.asarray(out[k], np.float64).ravel() for k in sorted(out)
                                if k.startswith("meta_grad/")])
        return {"support_loss": np.asarray(out["support_loss"], np.float64),
                "query_logits": np.asarray(out["query_logits"], np.float64), "meta_grad": grads}

    base = probe({k: np.asarray(v, np.float64) for k, v in params.items()}, batch)
    up, down = probe(*nudged(params, batch, 1.0)), probe(*nudged(params, batch, -1.0))
    worst, where = 0.0, "support_loss"
    for q, f0 in base.items():
        scale = np.abs(f0).max(initial=0.0)
        if scale > 0:
            second = float(np.abs(up[q] + down[q] - 2 * f0).max() / scale)
            if not second <= worst:  # a NaN counts as the worst
                worst, where = second, q
    adapter.set_params(params)
    return worst, where


# The checks a run makes before timing (``cached_contract(..., for_run=True)``): the two that
# guard the timing itself, which parity cannot see, on the image case of the adapter's first
# algorithm only, both on one adapter compiled once. Every check of the whole contract builds
# (so recompiles) its own adapter: minutes for TF's XLA MAML alone, where these two took 138 s
# for the smoke run's six adapters on 2 cores, uncached. ``metabench check`` runs them all.
RUN_CHECKS = ("outer steps on the timed batch: each changes the parameters", "sync waits for the step's results")


class CheckFailed(AssertionError):
    pass


def _expect(ok: bool, detail: str) -> None:
    if not ok:
        raise CheckFailed(detail)


def _same_params(a: dict, b: dict) -> str | None:
    if set(a) != set(b):
        return f"parameter names differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape:
            return f"{k}: shape {x.shape}, expected {y.shape}"
        if not np.array_equal(x, y):
            return f"{k}: values differ by up to {np.abs(x.astype(np.float64) - y).max():.3g}"
    return None


@dataclass(frozen=True)
class SyncMeasure:
    left_cpu: float               # median CPU seconds run after sync returned
    work_cpu: float               # median CPU seconds of a step, left-over work included
    read_extra: float | None = None  # accelerators: median extra read time right after sync
    read_step: float | None = None   # accelerators: median synchronised step, extra included

    @property
    def left_fraction(self) -> float:
        return self.left_cpu / self.work_cpu if self.work_cpu > 0 else 0.0


def measure_sync(adapter, batch, device: str, rounds: int = SYNC_ROUNDS) -> SyncMeasure:
    """Whether ``sync`` waits for a step (a compiled, warm ``adapter`` on ``batch``). After
    ``sync(out)`` returns, the step is computed. A sync that does not wait (asynchronous
    dispatch: JAX, CUDA; a step run in a thread) leaves work running after it, and the
    harness would time part of the step. Two measurements, each of which a partly
    asynchronous step cannot pass:

    - CPU work left over (every device): the process's CPU time (all its threads) while the
      host sleeps right after ``sync`` returned, less the same sleep's CPU time once the
      results were read (nothing left to run). Whatever the step left behind runs during the
      first sleep. A synchronous step leaves nothing; a step that returns after 60% of its
      work leaves 40% of its CPU time. A busy machine slows that work down but adds no CPU
      time to it, so the margin does not shrink under load (the wall-clock reads did).
    - Reads after sync (an accelerator, whose work is not the host's CPU time): reading the
      loss and the parameters right after ``sync`` against the same read after a pause long
      enough for any device to finish; the first one's extra time is compute that ``sync``
      left behind (the copy itself, which on a GPU can exceed a small step, cancels)."""
    def read(loss) -> float:
        t = time.perf_counter()
        float(loss)  # a 0-d tensor of any framework, on any device (np.asarray fails on CUDA)
        adapter.get_params()
        return time.perf_counter() - t

    def idle_cpu(seconds: float) -> float:
        c = time.process_time()  # every thread of the process
        time.sleep(seconds)
        return time.process_time() - c

    step_cpu, left_cpu, reads = [], [], []
    for _ in range(rounds):
        c0, t0 = time.process_time(), time.perf_counter()
        loss = adapter.outer_step(batch)
        adapter.sync(loss)
        c1, t1 = time.process_time(), time.perf_counter()
        pause = SYNC_PAUSE_FACTOR * (t1 - t0) + SYNC_PAUSE_MIN
        after = idle_cpu(pause)
        read(loss)  # whatever was still pending is done after this
        baseline = idle_cpu(pause)
        step_cpu.append(c1 - c0)
        left_cpu.append(max(0.0, after - baseline))
        if device != "cpu":
            t0 = time.perf_counter()
            loss = adapter.outer_step(batch)
            adapter.sync(loss)
            synced = time.perf_counter() - t0
            right_after = read(loss)
            loss = adapter.outer_step(batch)
            adapter.sync(loss)
            time.sleep(2 * (synced + right_after) + 0.01)  # whatever was dispatched is done by now
            extra = max(0.0, right_after - read(loss))
            reads.append((extra, synced + extra))
    return SyncMeasure(float(np.median(left_cpu)), float(np.median(np.add(step_cpu, left_cpu))),
                       *(tuple(float(np.median(c)) for c in zip(*reads)) if reads else ()))


def _expect_sync(m: SyncMeasure) -> None:
    _expect(m.left_cpu <= max(SYNC_LEFT_FRACTION * m.work_cpu, SYNC_LEFT_FLOOR),
            f"{m.left_cpu * 1e3:.1f} ms of CPU work ran after sync() returned, {m.left_fraction:.0%} of the "
            f"step's {m.work_cpu * 1e3:.1f} ms (median of {SYNC_ROUNDS} steps): sync must block until the "
            f"returned loss and the updated parameters are computed (e.g. jax.block_until_ready, "
            f"torch.cuda.synchronize, joining the thread that runs the step)")
    if m.read_step is not None and m.read_step >= SYNC_MIN_STEP:
        # shorter is mostly the copy itself: no sync could be told from none
        _expect(m.read_extra <= SYNC_READ_FRACTION * m.read_step,
                f"reading the results right after sync() took {m.read_extra * 1e3:.1f} ms longer than once "
                f"the device was idle, {m.read_extra / m.read_step:.0%} of the step ({m.read_step * 1e3:.1f} "
                f"ms): sync must block until the returned loss and the updated parameters are computed (e.g. "
                f"jax.block_until_ready, torch.cuda.synchronize)")


def contract_checks(cls, options: dict, spec: EpisodeSpec, algorithm: str, device: str = "cpu",
                    with_sync: bool = False, for_run: bool = False):
    """(check name, function) pairs for one case; each function raises CheckFailed.
    ``with_sync`` adds the sync check (timed, on a larger batch: once per adapter);
    ``for_run``: only ``RUN_CHECKS``, both on one adapter."""
    algo = get_algorithm(algorithm)
    spec = algo.resolve(spec)
    init = init_params(spec, algorithm)
    train = synthetic_batch(spec, algo.train_shape(spec), seed=0)
    test = synthetic_batch(spec, spec.episode, seed=1)
    n_out = 1 if spec.is_regression else spec.episode.n_way
    build = lambda **extra: cls(spec, algorithm, init, device=device, options={**options, **extra})
    shared = []

    def reset():
        """The adapter the checks share, at the initial weights: building a jitted adapter
        compiles its steps again (minutes for an XLA MAML), and ``set_params`` resets
        everything a step depends on (the contract: parameters and meta-optimizer state).
        The determinism check compares it against a fresh build, so a ``set_params`` that
        leaves state behind fails there."""
        if not shared:
            shared.append(build())
        shared[0].set_params(init)
        return shared[0]

    def params_round_trip():
        a = build()
        _expect((p := _same_params(a.get_params(), init)) is None, f"get_params after building: {p}")
        other = {k: v + np.float32(0.5) for k, v in init.items()}
        a.set_params(other)
        _expect((p := _same_params(a.get_params(), other)) is None, f"set_params then get_params: {p}")

    def probe_layout():
        a = reset()
        b = a.to_device(train)
        probe = a.probe(b)
        nq = train.query_y.shape[1]
        _expect(np.shape(probe.get("support_loss")) == (BATCH,),
                f"support_loss shape {np.shape(probe.get('support_loss'))}, expected ({BATCH},)")
        out_shape = (BATCH, nq, 1 if spec.is_regression else algo.train_shape(spec).n_way)
        _expect(np.shape(probe.get("query_logits")) == out_shape,
                f"query_logits shape {np.shape(probe.get('query_logits'))}, expected {out_shape}")
        grads = {k[len("meta_grad/"):]: v for k, v in probe.items() if k.startswith("meta_grad/")}
        _expect({k: np.shape(v) for k, v in grads.items()} == {k: v.shape for k, v in init.items()},
                "meta_grad/<param> must give every parameter's gradient in its canonical shape")
        _expect(all(np.isfinite(np.asarray(v)).all() for v in grads.values()), "the meta-gradient is not finite")
        _expect((p := _same_params(a.get_params(), init)) is None, f"probe changed the parameters: {p}")

    def predictions_layout():
        a = reset()
        out = np.asarray(a.predict(a.to_device(test)))
        expected = (BATCH, test.query_y.shape[1], n_out)
        _expect(out.shape == expected, f"predict shape {out.shape}, expected {expected}")
        _expect(np.isfinite(out).all(), "predictions are not finite")
        metric = algo.metric(out, test.query_y, spec.is_regression)
        _expect(metric.shape == (BATCH,), f"metric shape {metric.shape}")

    def steps_run():
        a = reset()
        b = a.to_device(train)
        for phase in algo.phases:
            a.sync(getattr(a, phase)(b))
        a.sync(a.adapt(a.to_device(test)))

    def outer_step_is_deterministic_and_learns():
        runs = []
        for a in (build(), reset()):  # a fresh adapter, and the shared one reset by set_params
            b = a.to_device(train)
            losses, params = [], [init]
            for _ in range(OUTER_STEPS):  # every step updates: none skipped, none a no-op
                loss = a.outer_step(b)
                a.sync(loss)
                losses.append(float(loss))
                params.append(a.get_params())
            runs.append((losses, params))
        (l1, p1), (l2, p2) = runs
        _expect(all(map(math.isfinite, l1)), f"outer_step returned a non-finite loss: {l1}")
        _expect(l1 == l2 and _same_params(p1[-1], p2[-1]) is None,
                f"a fresh adapter and one reset by set_params to the same weights disagree on the same batches "
                f"(losses {l1} vs {l2}; {_same_params(p1[-1], p2[-1])}): the steps must be deterministic, and "
                f"set_params must reset the meta-optimizer state")
        still = [i for i in range(1, OUTER_STEPS + 1) if _same_params(p1[i], p1[i - 1]) is None]
        _expect(not still, f"outer step {', '.join(map(str, still))} of {OUTER_STEPS} left the parameters unchanged "
                           f"(every outer step must apply its update)")

    def identical_steps_do_not_recompile():
        a = reset()
        b = a.to_device(train)
        for _ in range(2):
            a.sync(a.outer_step(b))
        before = a.compilation_count()
        for _ in range(2):
            a.sync(a.outer_step(b))
        after = a.compilation_count()
        _expect(before == after, f"compiled {None if before is None else after - before} more time(s) "
                                 "over two identical steps")

    def float64_diagnostic_builds():
        a = build(dtype="float64")
        grads = [v for k, v in a.probe(a.to_device(train)).items() if k.startswith("meta_grad/")]
        _expect(all(np.asarray(g).dtype == np.float64 for g in grads),
                "options dtype=float64 must compute (and return) float64: the parity's float64 tier needs it")
        # float64 arrays are not enough: every op must compute at float64 precision
        worst, where = float64_precision(a, init, train)
        _expect(worst <= F64_SMOOTH,
                f"float64 outputs agree with float64 only to {worst:.1e} (float64 rounding: 1e-16; float32: 6e-8): "
                f"the framework computes at float32 precision somewhere on float64 arrays (an op, a constant "
                f"or the transfer rounding through float32): moving every weight and input by {F64_NUDGE:.1e} "
                f"either way moved {where} by a second difference above {F64_SMOOTH:g}")

    def describes_itself():
        info = reset().describe()
        _expect(isinstance(info, AdapterInfo),
                f"describe() returned {type(info).__name__}, expected bench.core.adapter.AdapterInfo")
        problem = info.compilation_problem()
        _expect(problem is None, f"describe(): {problem}")

    def sync_waits():
        """See ``measure_sync``: no work may be left running after ``sync`` returned."""
        a = build()
        b = a.to_device(sync_batch(spec, algo))
        a.sync(a.outer_step(b))  # compiles
        a.get_params()
        _expect_sync(measure_sync(a, b, device))

    if for_run:
        # one adapter on one batch, compiled once: a jitted adapter compiles again for each
        # new adapter and each new batch shape (minutes for an XLA MAML)
        timed = {}

        def every_timed_step_updates():
            a = build()
            b = a.to_device(sync_batch(spec, algo))
            before, still = a.get_params(), []
            for i in range(OUTER_STEPS):
                a.sync(a.outer_step(b))
                now = a.get_params()
                if _same_params(now, before) is None:
                    still.append(i + 1)
                before = now
            timed.update(adapter=a, batch=b)
            _expect(not still, f"outer step {', '.join(map(str, still))} of {OUTER_STEPS} left the parameters "
                               f"unchanged (every outer step must apply its update)")

        def sync_waits_for_the_timed_step():
            _expect("adapter" in timed, "not measured: the outer steps failed")
            _expect_sync(measure_sync(timed["adapter"], timed["batch"], device))

        return [(RUN_CHECKS[0], every_timed_step_updates), (RUN_CHECKS[1], sync_waits_for_the_timed_step)]

    checks = [("parameters round-trip in the canonical layout", params_round_trip),
            ("probe: support loss, query outputs, meta-gradient per parameter", probe_layout),
            ("predict: query outputs [B, n_query, n_out]", predictions_layout),
            # before any check steps the shared adapter: its counters start where a fresh one's do
            ("outer steps: deterministic, finite, each changes the parameters", outer_step_is_deterministic_and_learns),
            ("every timed phase runs", steps_run),
            ("identical steps do not recompile", identical_steps_do_not_recompile),
            ("the float64 diagnostic builds and computes at float64 precision", float64_diagnostic_builds),
            ("describe: an AdapterInfo, compilation one of bench.core.adapter.COMPILATION", describes_itself)]
    if with_sync:
        checks.append(("sync waits for the step's results", sync_waits))
    return checks


def run_contract(name: str, device: str = "cpu", threads: int = 1, for_run: bool = False) -> list[Result]:
    """Every contract check of adapter ``name`` in this process (which imports its framework);
    ``for_run``: only ``RUN_CHECKS``."""
    entry = registry.get(name)
    cls = registry.load_adapter_class(entry)
    cls.configure(threads, device)
    results = []
    for algorithm in entry.algorithms[:1] if for_run else entry.algorithms:
        specs = small_specs(algorithm)
        if not specs:  # no check would run: not a pass
            section = get_algorithm(algorithm).section
            results.append(Result("the contract checks have a spec to run on", algorithm, False,
                                  f"the built-in check specs have no [{section}] section: declare the values "
                                  f"they should use in its Algorithm's check_settings"))
        for spec in specs:
            if for_run and spec.is_regression and len(specs) > 1:
                continue
            case = f"{spec.name} / {algorithm}"
            # the sync check once per adapter: its first algorithm's image case
            with_sync = algorithm == entry.algorithms[0] and not spec.is_regression
            for check, fn in contract_checks(cls, entry.options, spec, algorithm, device, with_sync, for_run):
                try:
                    fn()
                    results.append(Result(check, case, True))
                except CheckFailed as e:
                    results.append(Result(check, case, False, str(e)))
                except Exception as e:  # the adapter crashed: say where, in one line
                    where = traceback.extract_tb(e.__traceback__)[-1]
                    results.append(Result(check, case, False, f"{type(e).__name__}: {e} "
                                                              f"({where.filename}:{where.lineno})"))
    return results


def check_many_in_subprocess(names: list[str], device: str = "cpu", threads: int = 1,
                             for_run: bool = False) -> dict[str, list[Result]]:
    """``run_contract`` for each of ``names``, one process per framework (its import paid
    once): ``{name: results}``."""
    by_framework: dict[str, list[str]] = {}
    for name in names:  # an unknown name is a one-line error here, not in the child
        by_framework.setdefault(registry.get(name).framework, []).append(name)
    out = {}
    for group in by_framework.values():
        proc = subprocess.run([sys.executable, "-m", "bench.check.contract", ",".join(group), device, str(threads),
                               *(["run"] if for_run else [])], capture_output=True, text=True,
                              env={**os.environ, **registry.child_env()})  # this process's adapters
        try:
            found = json.loads(proc.stdout.strip().splitlines()[-1])
            out.update({name: [Result(**r) for r in found[name]] for name in group})
        except (ValueError, IndexError, KeyError, TypeError):
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise MetabenchError(f"check {', '.join(group)}: its process failed (exit {proc.returncode}: "
                                 f"{last})") from None
    return {name: out[name] for name in names}


def _contract_key(name: str, device: str, threads: int, for_run: bool) -> str:
    """What a contract result depends on: the adapter's entry (target, options), the source
    of the module that defines it and of every adapter in this project (its base classes
    live there), the harness's side of the contract, the framework's installed version,
    device and threads. Found without importing the adapter (one framework per process)."""
    import hashlib
    import importlib.util
    from importlib import metadata
    from pathlib import Path

    entry = registry.get(name)
    h = hashlib.sha256(json.dumps([entry.target, entry.options, entry.framework, device, threads, for_run],
                                  sort_keys=True, default=str).encode())
    # what a check's verdict depends on: this module, the core it checks against, every
    # built-in implementation, and the adapter's own module (a plugin's)
    bench_dir = Path(__file__).resolve().parents[1]
    files = [Path(__file__).resolve(), *sorted((bench_dir / "core").rglob("*.py"))]
    files += sorted((bench_dir.parent / "implementations").rglob("*.py"))
    try:
        origin = importlib.util.find_spec(entry.target.partition(":")[0]).origin
        files.append(Path(origin))
    except (ImportError, AttributeError, ValueError):
        h.update(b"module not found")
    for f in files:
        h.update(f.read_bytes() if f.is_file() else b"")
    versions = sorted(f"{d}=={metadata.version(d)}" for d in metadata.packages_distributions().get(entry.framework, []))
    h.update(" ".join(versions).encode())
    return h.hexdigest()[:24]


def cached_contract(names: list[str], device: str, threads: int, cache_dir=None,
                    for_run: bool = False) -> dict[str, tuple[list[Result], bool]]:
    """``{name: (results, from the cache)}``: the contract of each adapter, computed (in a
    process per framework) only where the cache has no result for what it depends on
    (``_contract_key``). A run checks its adapters this way before timing them."""
    from pathlib import Path

    from bench.core import paths

    root = paths.cache_dir(cache_dir) / "contract"
    out, todo = {}, []
    for name in names:
        path = root / f"{name}-{'run-' if for_run else ''}{_contract_key(name, device, threads, for_run)}.json"
        try:
            out[name] = ([Result(**r) for r in json.loads(path.read_text())], True)
        except (OSError, ValueError, TypeError):
            todo.append((name, path))
    groups: dict[str, list[tuple[str, Path]]] = {}
    for name, path in todo:
        groups.setdefault(registry.get(name).framework, []).append((name, path))
    for group in groups.values():
        try:
            fresh = check_many_in_subprocess([n for n, _ in group], device, threads, for_run)
        except MetabenchError as e:  # the framework's process died: every adapter in it fails
            fresh = {n: [Result("the contract checks run", "all", False, str(e))] for n, _ in group}
        for name, path in group:
            out[name] = (fresh[name], False)
            if all(r.ok for r in fresh[name]):  # a failure is checked again next time
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_text(path, json.dumps([r.__dict__ for r in fresh[name]]))  # atomic: runs share it
                except OSError:
                    pass  # a read-only cache: checked again next time
    return {name: out[name] for name in names}


def format_results(name: str, results: list[Result]) -> str:
    lines = [f"{name}: {sum(r.ok for r in results)} of {len(results)} contract checks pass"]
    lines += [f"  {'ok  ' if r.ok else 'FAIL'} {r.case}: {r.check}" + (f": {r.detail}" if r.detail else "")
              for r in results]
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m bench.check.contract NAME[,NAME...] DEVICE THREADS [run]: prints {name: results} as one JSON line
    from bench.core.cell import pin_threads

    pin_threads(int(sys.argv[3]))
    for_run = sys.argv[4:] == ["run"]
    print(json.dumps({name: [r.__dict__ for r in run_contract(name, sys.argv[2], int(sys.argv[3]), for_run)]
                      for name in sys.argv[1].split(",")}))
