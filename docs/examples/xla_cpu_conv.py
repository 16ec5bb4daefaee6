"""XLA:CPU's 3x3 convolutions against PyTorch's (oneDNN) on a CPU: a reproducer, no metabench needed.

The shapes are Conv-4's four convolutions (3x3, stride 1, "same" padding, 64 filters) on one
Omniglot 60-way 1-shot 5-query ProtoNet training episode: 360 images of 28x28, then 14x14,
7x7 and 3x3 after each 2x2 max-pool. For each one it times the forward convolution and the
forward plus both gradients (input and weights), the work of one training step, in one
process per framework, pinned to ``--threads`` cores, medians of ``--rounds`` after warm-up.

    python docs/examples/xla_cpu_conv.py jax --layout NHWC
    XLA_FLAGS=... python docs/examples/xla_cpu_conv.py jax --layout NCHW
    python docs/examples/xla_cpu_conv.py torch --layout channels_last

For JAX it also counts, in the optimised HLO of the forward-plus-gradients program, the
operations that only move data (``copy``, ``transpose``) and names what runs each
convolution (a runtime call, a library fusion, a custom call). Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections import Counter

N = 360  # 60 classes x (1 support + 5 query) images
LAYERS = ((1, 28), (64, 14), (64, 7), (64, 3))  # (input channels, height = width) of each conv
FILTERS = 64


def median_ms(fn, rounds: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def hlo_summary(compiled_text: str) -> str:
    """What moves data and what runs the convolutions, in one optimised HLO module."""
    ops = Counter(re.findall(r"=\s*\S+\s+(copy|transpose|convolution)\(", compiled_text))
    calls = Counter(re.findall(r'custom_call_target="([^"]+)"', compiled_text))
    libraries = Counter(re.findall(r'"fusion_config":\{"kind":"(__\w+)"', compiled_text))  # __ynn_fusion, ...
    parts = [f"{n} {op}" for op, n in sorted(ops.items())]
    parts += [f"{n} custom-call {t}" for t, n in sorted(calls.items())]
    parts += [f"{n} {kind}" for kind, n in sorted(libraries.items())]
    return ", ".join(parts)


def run_jax(layout: str, rounds: int, warmup: int) -> list[tuple]:
    import jax
    import jax.numpy as jnp
    from jax import lax

    dims = ("NHWC", "HWIO", "NHWC") if layout == "NHWC" else ("NCHW", "OIHW", "NCHW")
    rows = []
    for c, h in LAYERS:
        kx, kw = jax.random.split(jax.random.PRNGKey(0))
        x_shape = (N, h, h, c) if layout == "NHWC" else (N, c, h, h)
        w_shape = (3, 3, c, FILTERS) if layout == "NHWC" else (FILTERS, c, 3, 3)
        x = jax.random.normal(kx, x_shape, jnp.float32)
        w = jax.random.normal(kw, w_shape, jnp.float32) * 0.05

        def conv(x, w):
            return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)

        forward = jax.jit(conv)
        both = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
        hlo = both.lower(x, w).compile().as_text()
        f = median_ms(lambda fn=forward, x=x, w=w: fn(x, w).block_until_ready(), rounds, warmup)
        b = median_ms(lambda fn=both, x=x, w=w: jax.block_until_ready(fn(x, w)), rounds, warmup)
        rows.append((f"jax {jax.__version__}", layout, f"{c}x{h}x{h}", f, b, hlo_summary(hlo)))
    return rows


def run_torch(layout: str, rounds: int, warmup: int, threads: int) -> list[tuple]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    rows = []
    for c, h in LAYERS:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, c, h, h, generator=g).to(memory_format=fmt).requires_grad_()
        w = (torch.randn(FILTERS, c, 3, 3, generator=g) * 0.05).to(memory_format=fmt).requires_grad_()

        def forward(x=x, w=w):
            with torch.no_grad():
                F.conv2d(x, w, padding=1)

        def both(x=x, w=w):
            torch.autograd.grad((F.conv2d(x, w, padding=1) ** 2).sum(), (x, w))

        rows.append((f"torch {torch.__version__}", layout, f"{c}x{h}x{h}", median_ms(forward, rounds, warmup),
                     median_ms(both, rounds, warmup), ""))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("framework", choices=("jax", "torch"))
    p.add_argument("--layout", default=None, help="jax: NHWC (default) or NCHW; torch: NCHW (default) or channels_last")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    if hasattr(os, "sched_setaffinity"):  # before the framework starts its thread pools
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:a.threads]))
    if a.framework == "jax":
        rows = run_jax(a.layout or "NHWC", a.rounds, a.warmup)
    else:
        rows = run_torch(a.layout or "NCHW", a.rounds, a.warmup, a.threads)
    flags = os.environ.get("XLA_FLAGS", "")
    print(f"{N} images, 3x3 conv to {FILTERS} filters, {a.threads} threads, XLA_FLAGS={flags!r}")
    print("| framework | layout | input (C x H x W) | forward ms | forward + both gradients ms | optimised HLO |")
    print("|---|---|---|---|---|---|")
    for fw, layout, shape, f, b, hlo in rows:
        print(f"| {fw} | {layout} | {shape} | {f:.2f} | {b:.2f} | {hlo} |")


if __name__ == "__main__":
    main()
