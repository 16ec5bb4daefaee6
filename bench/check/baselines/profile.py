"""Where one outer step's time goes, operation by operation: JAX (XLA:CPU's thunks, from
``jax.profiler``'s trace) against torch (``torch.profiler``), on one cell's shapes.

Issue 12 asks JAX's conv steps to come within 1.5x of the fastest framework on a CPU, or a
profile showing why XLA:CPU cannot. This is that profile: each framework in a process of
its own, threads pinned as the harness pins them, the adapter built as a cell builds it
(the spec's cpu-profile shapes, the canonical weights, training episode 0 on), compiled
and warmed up, then ``--steps`` outer steps traced. Each operation's time is summed over
the traced steps and divided by their number; operations are grouped into kinds that both
frameworks have (convolution, matrix multiply, pooling, copies and layout changes, the
rest), so the report says which kind of work makes the difference.

    python -m bench.check.baselines.profile OUT_DIR [--workloads maml,protonet] [--steps 5]

writes ``OUT_DIR/<framework>-<workload>.json`` per process and ``OUT_DIR/profile.md``.
Time inside the traced region that no operation accounts for (dispatch, the Python of an
eager framework, waiting) is reported as such. Profiling costs time itself: the traced
steps' wall time is given next to the untraced median, so the overhead is visible.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.core import atomic

WORKLOADS = {  # name -> (spec, algorithm): the cpu profile's Omniglot cells
    "maml": ("omniglot-5w1s", "maml"),
    "protonet": ("omniglot-5w1s", "protonet"),
}
FRAMEWORKS = ("jax", "torch")
ADAPTERS = {"jax": "jax-{algorithm}", "torch": "torch-{algorithm}"}

# Kinds of operation, matched in order against an operation's name (XLA: the HLO
# instruction or fusion, "convolution.12", "loop_multiply_fusion.3", "dot.4"; torch: the
# aten op, "aten::convolution_backward", "aten::mm").
# Convolutions and matrix multiplies are one kind: JAX's MAML runs its convolutions as im2col
# matmuls on a CPU, and XLA:CPU hands both to YNNPACK ("ynn_fusion": the library call with
# the elementwise work fused around it).
KINDS = (
    ("convolution, matrix multiply", re.compile(r"conv|ynn_fusion|(^|[^a-z])(dot|mm|addmm|bmm|matmul|linear|gemm|"
                                                r"einsum)([^a-z]|$)", re.I)),
    ("iota (index arrays)", re.compile(r"iota", re.I)),
    ("pooling", re.compile(r"pool|reduce-window|reduce_window|select-and-scatter|select_and_scatter", re.I)),
    ("batch norm", re.compile(r"batch_norm|batchnorm|native_batch_norm", re.I)),
    ("copy / layout", re.compile(r"copy|transpose|permute|contiguous|clone|concatenate|cat\b|slice|pad|"
                                 r"gather|scatter|dynamic-update|bitcast", re.I)),
)


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other (elementwise, reductions)"


def _setup(framework: str, workload: str, threads: int, data_dir, cache_dir):
    from bench.core import registry
    from bench.core.algorithms import get as get_algorithm
    from bench.core.episodes import sampler_for
    from bench.core.models import init_params
    from bench.core.spec import load_spec

    spec_ref, algorithm = WORKLOADS[workload]
    spec = load_spec(spec_ref).for_algorithm(algorithm).with_profile("cpu", algorithm)
    entry = registry.get(ADAPTERS[framework].format(algorithm=algorithm))
    cls = registry.load_adapter_class(entry)
    cls.configure(threads, "cpu")
    adapter = cls(spec, algorithm, init_params(spec, algorithm), device="cpu",
                  options={**entry.options, "dtype": "float32"})
    sampler = sampler_for(spec, "train", algorithm, data_dir=data_dir, cache_dir=cache_dir)
    tasks = get_algorithm(algorithm).meta_batch_size(spec)
    batch = adapter.to_device(sampler.batch(0, tasks))
    return spec, entry.name, adapter, batch, tasks


def _untraced(adapter, batch, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        adapter.sync(adapter.outer_step(batch))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _jax_ops(adapter, batch, steps: int, workdir: Path) -> tuple[dict[str, float], float]:
    """XLA:CPU's per-operation events of ``steps`` traced outer steps: name -> seconds."""
    import jax

    with jax.profiler.trace(str(workdir), create_perfetto_trace=True):
        t = time.perf_counter()
        for _ in range(steps):
            adapter.sync(adapter.outer_step(batch))
        wall = time.perf_counter() - t
    traces = sorted(workdir.rglob("perfetto_trace.json.gz"))
    if not traces:
        raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {workdir}")
    with gzip.open(traces[-1], "rt") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
               for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    ops: dict[str, float] = {}
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        name = str(e.get("name", ""))
        # XLA:CPU's kernels run on its intra-op threads, the thunks' events name the HLO op;
        # the Python thread's events (PjitFunction, dispatch) and executor spans are not ops
        if not _is_xla_op(name, thread):
            continue
        ops[name] = ops.get(name, 0.0) + float(e["dur"]) * 1e-6
    return ops, wall


_XLA_OP = re.compile(r"^[A-Za-z_][\w\-]*(\.\d+)?$")
_NOT_OPS = re.compile(r"^(PjitFunction|ThunkExecutor|Execute|TfrtCpu|PjRt|jit_|Thread|Python|\$|cpu_|xla::|"
                      r"tsl::|ExecuteHelper|Compile|Run|Await|BufferFromPyval|device_put)", re.I)


def _is_xla_op(name: str, thread: str) -> bool:
    return bool(_XLA_OP.match(name)) and not _NOT_OPS.match(name) and "python" not in thread.lower()


def _torch_ops(adapter, batch, steps: int) -> tuple[dict[str, float], float]:
    """aten operations' self CPU time over ``steps`` profiled outer steps: name -> seconds."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            adapter.sync(adapter.outer_step(batch))
        wall = time.perf_counter() - t
    ops = {}
    for ev in prof.key_averages():
        if ev.key.startswith("aten::") and ev.self_cpu_time_total > 0:
            ops[ev.key] = ops.get(ev.key, 0.0) + ev.self_cpu_time_total * 1e-6
    return ops, wall


def profile_one(framework: str, workload: str, steps: int, threads: int, out: Path, data_dir=None,
                cache_dir=None) -> dict:
    import tempfile

    spec, name, adapter, batch, tasks = _setup(framework, workload, threads, data_dir, cache_dir)
    t = time.perf_counter()
    adapter.sync(adapter.outer_step(batch))  # compiles
    first = time.perf_counter() - t
    for _ in range(3):
        adapter.sync(adapter.outer_step(batch))
    median = _untraced(adapter, batch, 10)
    with tempfile.TemporaryDirectory(prefix="metabench-profile-") as tmp:
        ops, wall = (_jax_ops(adapter, batch, steps, Path(tmp)) if framework == "jax"
                     else _torch_ops(adapter, batch, steps))
    per_step = {k: v / steps for k, v in ops.items()}
    kinds: dict[str, float] = {}
    for k, v in per_step.items():
        kinds[kind_of(k)] = kinds.get(kind_of(k), 0.0) + v
    result = {"framework": framework, "adapter": name, "workload": workload, "spec": spec.name,
              "algorithm": WORKLOADS[workload][1], "meta_batch": tasks, "threads": threads, "steps": steps,
              "first_step_s": first, "untraced_median_s": median, "traced_step_s": wall / steps,
              "ops_s_per_step": dict(sorted(per_step.items(), key=lambda kv: -kv[1])),
              "kinds_s_per_step": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}
    atomic.write_json(out, result)
    return result


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def report(results: list[dict]) -> str:
    """Markdown: per workload, a row per kind of operation, a column per framework (ms per
    step and share of the summed operation time), then each framework's top operations."""
    lines = ["# Where an outer step's time goes: JAX (XLA:CPU) against torch", "",
             "Operation times summed over the traced outer steps, per step. XLA:CPU: its thunks'",
             "events in `jax.profiler`'s trace (HLO instructions and fusions, so BatchNorm is",
             "inside fusions and counts under 'other'); torch: `torch.profiler`'s self CPU time",
             "per aten op. 'Summed ops' can exceed the step's wall time where operations run on",
             "several threads at once; where it falls short, the rest is dispatch and Python.", ""]
    for workload in WORKLOADS:
        rows = [r for r in results if r["workload"] == workload]
        if not rows:
            continue
        r0 = rows[0]
        lines += [f"## {r0['spec']} / {r0['algorithm']}, meta-batch {r0['meta_batch']}, "
                  f"{r0['threads']} threads", ""]
        head = "| kind | " + " | ".join(f"{r['adapter']} ms (share)" for r in rows) + " |"
        lines += [head, "|---|" + "---|" * len(rows)]
        kinds = sorted({k for r in rows for k in r["kinds_s_per_step"]},
                       key=lambda k: -max(r["kinds_s_per_step"].get(k, 0.0) for r in rows))
        for k in kinds:
            cells = []
            for r in rows:
                total = sum(r["kinds_s_per_step"].values()) or 1.0
                v = r["kinds_s_per_step"].get(k, 0.0)
                cells.append(f"{_ms(v)} ({v / total:.0%})")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("| summed ops | " + " | ".join(_ms(sum(r["kinds_s_per_step"].values())) for r in rows) + " |")
        lines.append("| traced step (wall) | " + " | ".join(_ms(r["traced_step_s"]) for r in rows) + " |")
        lines.append("| untraced median | " + " | ".join(_ms(r["untraced_median_s"]) for r in rows) + " |")
        lines.append("")
        for r in rows:
            top = list(r["ops_s_per_step"].items())[:8]
            lines.append(f"{r['adapter']}'s top operations (ms per step): "
                         + ", ".join(f"`{k}` {_ms(v)}" for k, v in top) + ".")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.check.baselines.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir")
    p.add_argument("--cache-dir")
    p.add_argument("--one", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:  # a child process: one framework, threads pinned before it is imported
        from bench.core.cell import pin_threads

        pin_threads(args.threads)
        framework, workload = args.one
        profile_one(framework, workload, args.steps, args.threads, out / f"{framework}-{workload}.json",
                    args.data_dir, args.cache_dir)
        return 0
    results = []
    for workload in args.workloads.split(","):
        for framework in args.frameworks.split(","):
            cmd = [sys.executable, "-m", "bench.check.baselines.profile", str(out), "--one", framework, workload,
                   "--steps", str(args.steps), "--threads", str(args.threads)]
            cmd += ["--data-dir", args.data_dir] if args.data_dir else []
            cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
            print(f"profiling {framework} {workload} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{framework} {workload} failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            results.append(json.loads((out / f"{framework}-{workload}.json").read_text()))
    (out / "profile.md").write_text(report(results))
    print(f"wrote {out / 'profile.md'}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
