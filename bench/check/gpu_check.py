"""The prepared GPU check: ``python -m bench.check.gpu_check OUT_DIR`` (or ``nox -s gpu``) on a
machine with an NVIDIA GPU, in minutes, with the frameworks installed there (TensorFlow
only when it imports) and no network (Omniglot from ``$METABENCH_DATA_DIR``).

0. **spread** (cuda only): each framework's float64 and float32 parity quantities on the
   CPU and on the GPU, against itself and against torch on each (``device_spread``):
   whether a parity difference on the GPU is the framework's or the device's.
1. **dispatch**: for each framework's MAML and ProtoNet adapter, on small synthetic
   episodes on the GPU, the time for ``outer_step`` to return (dispatch) and the time
   until ``sync`` returns (on an asynchronous device the second exceeds the first), and
   ``bench.check.contract``'s sync check: reading the results after ``sync`` costs little.
2. **parity** on the GPU, quick form, every framework against torch (GPU tolerance 1e-3).
3. **smoke** timing and memory on the GPU for the frameworks found, into
   ``OUT_DIR/<run-id>/``.

Each stage's exit code, seconds and last lines go to ``OUT_DIR/gpu_check.json``; a
failed stage never stops the next. ``--device cpu`` runs the same stages on the CPU, so
the check itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.core.frameworks import get as framework_record
from bench.core.frameworks import names

FRAMEWORKS = names()  # the built-in frameworks (bench.core.frameworks)


def default_adapters(framework: str, device: str) -> list[str]:
    """The adapters a GPU run of ``framework`` times by default (the paper profile's
    algorithms), each once: what the dispatch check looks at."""
    from bench.core import registry
    from bench.core.algorithms import all_algorithms

    paper = [n for n, a in all_algorithms().items() if "paper" in a.default_profiles]
    return [e.name for e in registry.select(frameworks=[framework], algorithms=paper, device=device)]

DISPATCH_ROUNDS = 5
TAIL = 15  # last output lines kept per stage


def installed(frameworks=FRAMEWORKS) -> list[str]:
    """The frameworks that import here (by their package's presence, without importing)."""
    return [f for f in frameworks if importlib.util.find_spec(framework_record(f).module) is not None]


def dispatch_and_sync(name: str, device: str) -> dict:
    """In this process: ``outer_step``'s dispatch time and its synchronised time (median of
    ``DISPATCH_ROUNDS``, after a compiling step), and the contract's sync check."""
    from bench.check import contract as check
    from bench.core import registry

    entry = registry.get(name)
    cls = registry.load_adapter_class(entry)
    cls.configure(1, device)
    algorithm = entry.algorithms[0]
    spec = next(s for s in check.small_specs(algorithm) if not s.is_regression)
    algo = check.get_algorithm(algorithm)
    config_spec = algo.resolve(spec)
    adapter = cls(config_spec, algorithm, check.init_params(config_spec, algorithm), device=device,
                  options=entry.options)
    episodes = check.sync_batch(config_spec, algo)
    batch = adapter.to_device(episodes)
    adapter.sync(adapter.outer_step(batch))
    dispatch, synced = [], []
    for _ in range(DISPATCH_ROUNDS):
        t0 = time.perf_counter()
        loss = adapter.outer_step(batch)
        t1 = time.perf_counter()
        adapter.sync(loss)
        t2 = time.perf_counter()
        dispatch.append(t1 - t0)
        synced.append(t2 - t0)
    results = check.contract_checks(cls, entry.options, spec, algorithm, device, with_sync=True)
    sync_check = dict(results)["sync waits for the step's results"]
    try:
        sync_check()
        sync_ok, detail = True, ""
    except check.CheckFailed as e:
        sync_ok, detail = False, str(e)
    d, s = statistics.median(dispatch), statistics.median(synced)
    # informational: on a GPU a step's kernels mostly run after outer_step has returned
    return {"adapter": name, "device": device, "dispatch_seconds": d, "synced_seconds": s,
            "asynchronous": s > 1.5 * d, "sync_check_ok": sync_ok, "sync_check_detail": detail}


SPREAD_SPECS = ("omniglot-5w1s", "sinusoid-10shot")


SPREAD_JITTER = 1e-4  # the tie-free inputs' noise (bench.check.parity.jittered): far above float64 rounding


def device_spread(frameworks, algorithm: str | None = None, specs=SPREAD_SPECS, devices=("cpu", "cuda"),
                  batch_size: int = 2, jitter: float = SPREAD_JITTER) -> list[dict]:
    """How far each framework's float64 (and float32) parity quantities move between the
    CPU and the GPU, beside how far they are from torch's on the same device: whether a
    float64 parity failure on the GPU is the framework's or the device's (cuDNN and XLA pick
    other algorithms there). Each framework computes in a process of its own per device
    (``bench.check.parity``'s, full-size models). Rows compare each framework on ``devices[1]``
    with itself on ``devices[0]``, then every other framework with torch on each device;
    each spec twice, its episodes as sampled and ``jittered`` (tie-free max-pool windows):
    a difference only the first shows is a choice among tied maxima, not arithmetic.
    ``algorithm``: by default the first registered (MAML, second order: the most maths)."""
    import os
    import tempfile

    from bench.check.parity import F64, REFERENCE, _adapter_name, _concat, _run_framework, relative_error
    from bench.core.algorithms import names

    algorithm = algorithm or names()[0]

    results = {}
    with tempfile.TemporaryDirectory(prefix="metabench-spread-") as tmp:
        for fw in frameworks:
            requests = [{"adapter": _adapter_name(fw, algorithm, devices[-1]), "spec": s, "algorithm": algorithm,
                         "batch_size": batch_size, "threads": 1, "data_dir": os.environ.get("METABENCH_DATA_DIR"),
                         "cache_dir": os.environ.get("METABENCH_CACHE_DIR"), "quick": False, "jitter": j}
                        for s in specs for j in (0.0, jitter)]
            for k, device in enumerate(devices):
                work = Path(tmp) / f"{fw}-{k}"
                work.mkdir()
                results[(fw, k)] = _run_framework(fw, requests, device, work)

    def quantity(res: dict, prefix: str, q: str):
        return _concat(res, prefix, q) if q == "meta_grad" else res[prefix + q]

    pairs = [((fw, 1), (fw, 0)) for fw in frameworks]
    pairs += [((fw, k), (REFERENCE, k)) for k in range(len(devices)) for fw in frameworks
              if fw != REFERENCE and REFERENCE in frameworks]
    rows = []
    for a, b in pairs:
        res, ref = results[a], results[b]
        where = {"compared": f"{a[0]}/{devices[a[1]]}", "reference": f"{b[0]}/{devices[b[1]]}"}
        if not isinstance(res, dict) or not isinstance(ref, dict):
            rows.append({**where, "error": res if isinstance(res, str) else ref})
            continue
        for i, (spec, inputs) in enumerate((s, j) for s in specs for j in ("as sampled", f"jittered {jitter:g}")):
            for tag, prefix in (("float64", f"{i}/{F64}"), ("float32", f"{i}/")):
                errors = {q: relative_error(quantity(res, prefix, q), quantity(ref, prefix, q))
                          for q in ("support_loss", "query_logits", "meta_grad")}
                act = prefix + "activation/"
                for key in sorted(k for k in ref if k.startswith(act) and k in res):
                    errors[key[len(prefix):]] = relative_error(res[key], ref[key])
                rows.append({**where, "spec": spec, "inputs": inputs, "dtype": tag,
                             **{k: float(f"{v:.2g}") for k, v in errors.items()}})
    return rows


def _stage(name: str, cmd: list[str], timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()
    except subprocess.TimeoutExpired as e:
        rc, out = None, [f"timed out after {timeout:g} s"] + str(e.stdout or "").splitlines()[-TAIL:]
    return {"stage": name, "command": cmd, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
            "tail": out[-TAIL:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.check.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", help="where gpu_check.json and the smoke run's folder go")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--frameworks", help="comma-separated (default: those installed)")
    ap.add_argument("--dispatch", metavar="ADAPTER", help=argparse.SUPPRESS)  # one adapter, in its process
    ap.add_argument("--spread", action="store_true", help=argparse.SUPPRESS)  # device_spread, in its process
    ap.add_argument("--stages", default="dispatch,spread,parity,smoke",
                    help="comma-separated subset of dispatch,spread,parity,smoke (default: all; spread: cuda only)")
    args = ap.parse_args(argv)
    if args.dispatch:
        print(json.dumps(dispatch_and_sync(args.dispatch, args.device)))
        return 0
    if args.spread:
        print(json.dumps(device_spread(args.frameworks.split(","))))
        return 0
    todo = set(args.stages.split(","))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frameworks = args.frameworks.split(",") if args.frameworks else installed()
    py = [sys.executable, "-m"]
    stages, dispatch = [], []
    spread = []
    if "spread" in todo and args.device == "cuda":
        s = _stage("spread", py + ["bench.check.gpu_check", str(out), "--spread", "--frameworks",
                                   ",".join(f for f in frameworks if f in ("torch", "jax"))], 600)
        try:
            spread = json.loads(s["tail"].pop())
        except (IndexError, ValueError):
            pass
        stages.append(s)
    for f in frameworks if "dispatch" in todo else ():
        for name in default_adapters(f, args.device):
            s = _stage(f"dispatch {name}", py + ["bench.check.gpu_check", str(out), "--device", args.device,
                                                  "--dispatch", name], 300)
            try:
                dispatch.append(json.loads(s["tail"][-1]))
            except (IndexError, ValueError):
                dispatch.append({"adapter": name, "error": s["tail"][-3:]})
            stages.append(s)
    others = [f for f in frameworks if f != "torch"]
    if "torch" in frameworks and others and "parity" in todo:
        stages.append(_stage("parity", py + ["bench.cli", "parity", "--quick", "--device", args.device,
                                             "--frameworks", ",".join(others), "--batch-size", "2"], 900))
    run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-gpu-check-smoke"
    if "smoke" in todo:
        stages.append(_stage("smoke", py + ["bench.cli", "run", "--profile", "smoke", "--device", args.device,
                                            "--frameworks", ",".join(frameworks), "--phases", "timing,memory",
                                            "--results-dir", str(out), "--run-id", run_id], 1200))
    report = {"device": args.device, "frameworks": frameworks, "dispatch": dispatch, "spread": spread,
              "stages": stages}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    for s in stages:
        print(f"{s['stage']:<28} exit {s['returncode']}  {s['seconds']:>7.1f} s")
    for d in dispatch:
        if "error" in d:
            print(f"{d['adapter']:<28} failed: {' / '.join(d['error'])}")
        else:
            print(f"{d['adapter']:<28} dispatch {d['dispatch_seconds'] * 1e3:8.2f} ms, synced "
                  f"{d['synced_seconds'] * 1e3:8.2f} ms, sync check {'ok' if d['sync_check_ok'] else 'FAILED'}")
    for row in spread:
        print("spread " + ", ".join(f"{k} {v}" for k, v in row.items()))
    bad = [s for s in stages if s["returncode"] != 0] + [d for d in dispatch if not d.get("sync_check_ok")]
    print(f"gpu check: {'all stages passed' if not bad else f'{len(bad)} problem(s)'}; {out / 'gpu_check.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
