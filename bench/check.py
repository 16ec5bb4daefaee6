"""``metabench check ADAPTER``: the adapter contract, checked in the adapter's own process on
small synthetic episodes, then (``--parity``) a quick parity run against the reference.

The contract checks need no data and take seconds: they build the adapter for every
algorithm it serves, on a regression spec (MAML family) and a small image spec, and check
what the harness relies on (``bench.adapter``): parameters round-trip in the canonical
layout, the probe's and the predictions' shapes, that an outer step changes the parameters
deterministically and leaves a finite loss, that the probe leaves the parameters alone, that
identical steps do not recompile, that the float64 diagnostic builds, and that ``sync``
waits for a step's results. The same checks run in the test suite for every registered
adapter, plugins included (``tests/test_adapter_contract.py``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace

import numpy as np

from bench import registry
from bench.algorithms import get as get_algorithm
from bench.episodes import EpisodeBatch, EpisodeSampler
from bench.errors import MetabenchError
from bench.models import init_params
from bench.spec import EpisodeSpec, load_spec

BATCH = 2  # tasks per synthetic meta-batch


@dataclass(frozen=True)
class Result:
    check: str          # what was checked, in the field's words
    case: str           # "<spec> / <algorithm>"
    ok: bool
    detail: str = ""    # why it failed, one line


def small_specs(algorithm: str) -> list[EpisodeSpec]:
    """Specs small enough for seconds per check: a 16x16, 8-filter, 3-way image spec, and
    for the MAML family an 8-unit sinusoid MLP."""
    o = load_spec("omniglot-5w1s")
    image = replace(o, name="tiny-images", data=replace(o.data, image_size=16), model=replace(o.model, hidden=8),
                    episode=replace(o.episode, n_way=3, n_query=2),
                    protonet=replace(o.protonet, train_n_way=0, train_n_query=0))
    specs = [image]
    if get_algorithm(algorithm).section == "maml":
        s = load_spec("sinusoid-10shot")
        specs.insert(0, replace(s, name="tiny-sinusoid", model=replace(s.model, hidden=8)))
    return [s for s in specs if algorithm in s.algorithms()]


def synthetic_batch(spec: EpisodeSpec, shape, seed: int = 0, tasks: int = BATCH) -> EpisodeBatch:
    """Episodes of ``shape`` without data files: real sinusoid tasks, or random images
    with class-major labels (the layout of ``bench.episodes``)."""
    if spec.is_regression:
        return EpisodeSampler(spec, "train", shape).batch(seed * tasks, tasks)
    rng = np.random.default_rng(seed)
    n, k, q, s = shape.n_way, shape.k_shot, shape.n_query, spec.data.image_size
    labels = lambda m: np.broadcast_to(np.repeat(np.arange(n), m), (tasks, n * m)).copy()
    images = lambda m: rng.random((tasks, n * m, s, s, 1), dtype=np.float32)
    return EpisodeBatch(images(k), labels(k), images(q), labels(q), np.zeros((tasks, 1)), shape)


# The sync check times one outer step on a meta-batch this large (the small image spec):
# long enough (10-20 ms in JAX on a CPU) that reading the results after a sync that did not
# wait takes most of the step, while reading after a real sync is a copy of a few kB.
SYNC_TASKS = 16
SYNC_ROUNDS = 3
# Fraction of a step's time that reading its results right after sync may exceed the same
# read once the device is idle.
SYNC_READ_FRACTION = 0.5
# Below this (seconds, step and read together) the check cannot judge: numpy placeholders.
SYNC_MIN_STEP = 2e-3


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


def contract_checks(cls, options: dict, spec: EpisodeSpec, algorithm: str, device: str = "cpu",
                    with_sync: bool = False):
    """(check name, function) pairs for one case; each function raises CheckFailed.
    ``with_sync`` adds the sync check (timed, on a larger batch: once per adapter)."""
    algo = get_algorithm(algorithm)
    spec = algo.resolve(spec)
    init = init_params(spec, algorithm)
    train = synthetic_batch(spec, algo.train_shape(spec), seed=0)
    test = synthetic_batch(spec, spec.episode, seed=1)
    n_out = 1 if spec.is_regression else spec.episode.n_way
    build = lambda **extra: cls(spec, algorithm, init, device=device, options={**options, **extra})

    def params_round_trip():
        a = build()
        _expect((p := _same_params(a.get_params(), init)) is None, f"get_params after building: {p}")
        other = {k: v + np.float32(0.5) for k, v in init.items()}
        a.set_params(other)
        _expect((p := _same_params(a.get_params(), other)) is None, f"set_params then get_params: {p}")

    def probe_layout():
        a = build()
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
        a = build()
        out = np.asarray(a.predict(a.to_device(test)))
        expected = (BATCH, test.query_y.shape[1], n_out)
        _expect(out.shape == expected, f"predict shape {out.shape}, expected {expected}")
        _expect(np.isfinite(out).all(), "predictions are not finite")
        metric = algo.metric(out, test.query_y, spec.is_regression)
        _expect(metric.shape == (BATCH,), f"metric shape {metric.shape}")

    def steps_run():
        a = build()
        b = a.to_device(train)
        for phase in algo.phases:
            a.sync(getattr(a, phase)(b))
        a.sync(a.adapt(a.to_device(test)))

    def outer_step_is_deterministic_and_learns():
        runs = []
        for _ in range(2):
            a = build()
            b = a.to_device(train)
            loss = a.outer_step(b)
            a.sync(loss)
            runs.append((float(loss), a.get_params()))
        (l1, p1), (l2, p2) = runs
        _expect(math.isfinite(l1), f"outer_step returned a non-finite loss {l1}")
        _expect(l1 == l2 and _same_params(p1, p2) is None,
                f"two adapters from the same weights on the same batch disagree (loss {l1} vs {l2}; "
                f"{_same_params(p1, p2)})")
        _expect(_same_params(p1, init) is not None, "outer_step left the parameters unchanged")

    def identical_steps_do_not_recompile():
        a = build()
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

    def sync_waits():
        """After ``sync(out)`` returns, the step is computed: reading its loss and the new
        parameters then costs a copy. A sync that does not wait (asynchronous dispatch:
        JAX, CUDA) leaves the compute to whoever reads next, and the harness would time the
        dispatch only. So each round reads a step's results twice over: right after
        ``sync`` returned, and, for a second identical step, after ``sync`` and a pause long
        enough for any device to have finished. The reads should cost the same (the copy
        alone, which on a GPU can exceed a small step: so the copy is never what is judged);
        the first one's extra time is compute that ``sync`` left behind. On a device that
        runs every op synchronously (torch and TF on a CPU) a missing sync cannot be seen,
        and there it costs nothing either."""
        a = build()
        b = a.to_device(synthetic_batch(spec, algo.train_shape(spec), seed=2, tasks=SYNC_TASKS))
        a.sync(a.outer_step(b))  # compiles

        def read(loss) -> float:
            t = time.perf_counter()
            float(loss)  # a 0-d tensor of any framework, on any device (np.asarray fails on CUDA)
            a.get_params()
            return time.perf_counter() - t

        left, steps = [], []
        for _ in range(SYNC_ROUNDS):
            t0 = time.perf_counter()
            loss = a.outer_step(b)
            a.sync(loss)
            synced = time.perf_counter() - t0
            after_sync = read(loss)
            loss = a.outer_step(b)
            a.sync(loss)
            time.sleep(2 * (synced + after_sync) + 0.01)  # whatever was dispatched is done by now
            settled = read(loss)
            left.append(max(0.0, after_sync - settled))
            steps.append(synced + left[-1])
        step, extra = float(np.median(steps)), float(np.median(left))
        if step < SYNC_MIN_STEP:
            return  # a step this short is mostly the copy itself: no sync could be told from none
        _expect(extra <= SYNC_READ_FRACTION * step,
                f"reading the results right after sync() took {extra * 1e3:.1f} ms longer than once the device "
                f"was idle, {extra / step:.0%} of the step ({step * 1e3:.1f} ms): sync must block until the "
                f"returned loss and the updated parameters are computed (e.g. jax.block_until_ready, "
                f"torch.cuda.synchronize)")

    checks = [("parameters round-trip in the canonical layout", params_round_trip),
            ("probe: support loss, query outputs, meta-gradient per parameter", probe_layout),
            ("predict: query outputs [B, n_query, n_out]", predictions_layout),
            ("every timed phase runs", steps_run),
            ("outer step: deterministic, finite, changes the parameters", outer_step_is_deterministic_and_learns),
            ("identical steps do not recompile", identical_steps_do_not_recompile),
            ("the float64 diagnostic builds and computes float64", float64_diagnostic_builds)]
    if with_sync:
        checks.append(("sync waits for the step's results", sync_waits))
    return checks


def run_contract(name: str, device: str = "cpu", threads: int = 1) -> list[Result]:
    """Every contract check of adapter ``name`` in this process (which imports its framework)."""
    entry = registry.get(name)
    cls = registry.load_adapter_class(entry)
    cls.configure(threads, device)
    results = []
    for algorithm in entry.algorithms:
        for spec in small_specs(algorithm):
            case = f"{spec.name} / {algorithm}"
            # the sync check once per adapter: its first algorithm's image case
            with_sync = algorithm == entry.algorithms[0] and not spec.is_regression
            for check, fn in contract_checks(cls, entry.options, spec, algorithm, device, with_sync):
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


def check_in_subprocess(name: str, device: str = "cpu", threads: int = 1) -> list[Result]:
    """``run_contract`` in a process of its own (one framework per process)."""
    registry.get(name)  # an unknown name is a one-line error here, not in the child
    proc = subprocess.run([sys.executable, "-m", "bench.check", name, device, str(threads)],
                          capture_output=True, text=True)
    try:
        return [Result(**r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]
    except (ValueError, IndexError):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MetabenchError(f"check {name}: its process failed (exit {proc.returncode}: {last})") from None


def format_results(name: str, results: list[Result]) -> str:
    lines = [f"{name}: {sum(r.ok for r in results)} of {len(results)} contract checks pass"]
    lines += [f"  {'ok  ' if r.ok else 'FAIL'} {r.case}: {r.check}" + (f": {r.detail}" if r.detail else "")
              for r in results]
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m bench.check NAME DEVICE THREADS: prints the results as one JSON line
    from bench.cell import pin_threads

    pin_threads(int(sys.argv[3]))
    print(json.dumps([r.__dict__ for r in run_contract(sys.argv[1], sys.argv[2], int(sys.argv[3]))]))
