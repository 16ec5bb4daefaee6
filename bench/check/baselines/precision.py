"""``python -m bench.check.baselines.precision``: how far each adapter's float32 MAML
meta-gradient is from torch's float64 one on the baselines' Omniglot batch, and how many
of that batch's max-pool windows float32 cannot order (``bench.check.near_ties``).

Why: on that batch (4 tasks, 15 query images per class) torch.compile's float32
meta-gradient is 3.5e-4 from eager torch's, past parity's 1e-4. Measured against float64
with the near-tied windows counted, it is the batch's float32, not one adapter's error.
``--adapters`` takes registry names, options included (``torch-maml@compile=true``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bench.check.baselines.worker import build_adapter

DEFAULT_ADAPTERS = "torch-maml,torch-maml@compile=true,jax-maml,tensorflow-maml-xla"


def meta_grad(name: str, spec, params, batch, dtype: str, threads: int) -> dict[str, np.ndarray]:
    adapter = build_adapter(name, spec, params, threads, dtype)
    out = adapter.probe(adapter.to_device(batch))
    return {k.split("/", 1)[1]: np.asarray(v, np.float64) for k, v in out.items() if k.startswith("meta_grad/")}


def near_tied_windows(spec, params, threads: int, tasks: int) -> int:
    from bench.check import near_ties
    from bench.core.episodes import sampler_for

    a64, a32 = (build_adapter("torch-maml", spec, params, threads, d) for d in ("float64", "float32"))
    sampler = sampler_for(spec, "train", "maml")
    return sum(len(near_ties.task_ties(a64, a32, sampler.episode(i))) for i in range(tasks))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.check.baselines.precision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", default=DEFAULT_ADAPTERS, help=f"comma-separated (default {DEFAULT_ADAPTERS})")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from bench.core.cell import pin_threads

    pin_threads(args.threads)
    from bench.check.baselines.maths import flat_grads
    from bench.check.baselines.workloads import WORKLOADS
    from bench.check.parity import relative_error

    spec, _, params, batch = WORKLOADS["omniglot"].build()
    ref = meta_grad("torch-maml", spec, params, batch, "float64", args.threads)

    for name in [a for a in args.adapters.split(",") if a]:
        g = meta_grad(name, spec, params, batch, "float32", args.threads)
        worst = max(g, key=lambda k: relative_error(g[k], ref[k]))
        error = relative_error(flat_grads(g), flat_grads(ref))
        print(f"{name}: float32 meta-gradient {error:.1e} from torch's float64 "
              f"(worst {worst} {relative_error(g[worst], ref[worst]):.1e})", flush=True)
    ties = near_tied_windows(spec, params, args.threads, len(batch.support_x))
    print(f"max-pool windows float32 cannot order in the batch: {ties}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
