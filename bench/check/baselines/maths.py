"""Do a pair's two sides compute the same maths? Asked in float64, in a process of its own.

``python -m bench.check.baselines.maths FRAMEWORK OUT_JSON --workloads W1,W2 --threads T``: for
each workload and each (metabench adapter, plain form) pair that ``bench.check.baselines.worker``
times, the meta-gradient at the initial weights on the same meta-batch, from both sides in
float64 and in float32. Writes, per pair:

- ``grad_rel_diff_float64``: plain against adapter, both float64. Within parity's
  ``TOLERANCE_64`` the two compute one function: a float32 difference between them is
  rounding (max-pool near-ties, long reductions), not other maths. This, not the float32
  difference, is what the grid's verdict asks (``run.grid_rows``).
- ``adapter_float32_error`` and ``plain_float32_error``: each side's float32 meta-gradient
  against the adapter's float64 one, i.e. how precise each side's float32 is.

Why a process of its own: JAX computes float64 only under ``jax_enable_x64``, a
process-wide switch that would change the timed process; and no timing happens here, so
the timed numbers never share a process with a float64 compilation.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import numpy as np

from bench.core import atomic
from bench.core.cell import pin_threads


def _as_dtype(batch, dtype):
    from dataclasses import replace

    return replace(batch, support_x=batch.support_x.astype(dtype), query_x=batch.query_x.astype(dtype),
                   support_y=batch.support_y if batch.support_y.dtype.kind == "i" else batch.support_y.astype(dtype),
                   query_y=batch.query_y if batch.query_y.dtype.kind == "i" else batch.query_y.astype(dtype))


def flat_grads(g: dict) -> np.ndarray:
    """Every parameter's gradient in one float64 vector, parameters in name order."""
    return np.concatenate([np.asarray(g[k], np.float64).ravel() for k in sorted(g)])


def pair_maths(adapter_name: str, target: str, options: dict, spec, config, params, batch, threads: int) -> dict:
    """The four meta-gradients of one pair and their distances."""
    from bench.check.baselines.worker import _load, build_adapter
    from bench.check.parity import relative_error

    grads = {}
    for dtype in ("float64", "float32"):
        p = {k: np.asarray(v, dtype) for k, v in params.items()}
        b = _as_dtype(batch, dtype)
        adapter = build_adapter(adapter_name, spec, p, threads, dtype=dtype, algorithm=config.algorithm)
        out = adapter.probe(adapter.to_device(b))
        grads["adapter", dtype] = {k.split("/", 1)[1]: np.asarray(v) for k, v in out.items()
                                   if k.startswith("meta_grad/")}
        plain = _load(target)(config, p, **options)
        try:
            grads["plain", dtype] = plain.meta_grad(plain.to_device(b))
        except Exception as e:
            # XLA:CPU has no float64 kernel for MaxPoolGradGrad (max-pool's second
            # derivative), which second-order MAML needs: the plain form's maths is then
            # asked of the same code in TF's graph mode, and the XLA float32 run is judged by
            # its distance from it (``plain_float32_error``).
            if not (dtype == "float64" and options.get("jit_compile") and "MaxPoolGradGrad" in str(e)):
                raise
            grads["plain_float64_form"] = "graph mode: XLA:CPU has no float64 MaxPoolGradGrad"
            plain64 = _load(target)(config, p, **{**options, "jit_compile": False})
            grads["plain", dtype] = plain64.meta_grad(plain64.to_device(b))
        grads["plain_name"] = plain.name
    ref = grads["adapter", "float64"]
    names = sorted(ref)
    by_param = {k: relative_error(np.asarray(grads["plain", "float64"][k], np.float64), ref[k]) for k in names}
    ref_flat = flat_grads(ref)
    return {
        "adapter": adapter_name, "plain": grads["plain_name"],
        "grad_rel_diff_float64": relative_error(flat_grads({k: grads["plain", "float64"][k] for k in names}), ref_flat),
        "grad_rel_diff_float64_by_param": by_param,
        "adapter_float32_error": relative_error(flat_grads(grads["adapter", "float32"]), ref_flat),
        "plain_float32_error": relative_error(flat_grads({k: grads["plain", "float32"][k] for k in names}), ref_flat),
        "plain_float64_form": grads.get("plain_float64_form", "as timed"),
    }


def run(framework: str, workloads: list[str], threads: int, log) -> dict:
    from bench.check.baselines.worker import pairs_for
    from bench.check.baselines.workloads import workload

    out = {"framework": framework, "workloads": {}, "errors": []}
    for name in workloads:
        try:
            spec, config, params, batch = workload(name).build()
        except Exception:
            out["errors"].append({"workload": name, "error": traceback.format_exc()})
            log(f"{name}: building the workload failed")
            continue
        pairs = out["workloads"][name] = []
        for adapter_name, target, options in pairs_for(framework, workload(name)):
            try:
                m = pair_maths(adapter_name, target, options, spec, config, params, batch, threads)
            except Exception:
                out["errors"].append({"workload": name, "adapter": adapter_name, "target": target,
                                      "error": traceback.format_exc()})
                log(f"{name}: {adapter_name} against {target} {options} FAILED: "
                    f"{traceback.format_exc().strip().splitlines()[-1]}")
                continue
            pairs.append(m)
            log(f"{name}: {adapter_name} against {m['plain']}: float64 {m['grad_rel_diff_float64']:.1e}; "
                f"float32 from float64: adapter {m['adapter_float32_error']:.1e}, "
                f"plain {m['plain_float32_error']:.1e}")
    return out


def main(argv=None) -> int:
    from bench.check.baselines.worker import PAIRS

    ap = argparse.ArgumentParser(prog="python -m bench.check.baselines.maths", description=__doc__.split("\n\n")[0])
    ap.add_argument("framework", choices=sorted(PAIRS))
    ap.add_argument("out")
    ap.add_argument("--workloads", required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args(argv)
    pin_threads(args.threads)  # before the framework is imported
    if args.framework == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # before any array: the plain forms' float64 too

    def log(msg: str) -> None:
        print(f"[{args.framework} float64] {msg}", flush=True)

    result = run(args.framework, [w for w in args.workloads.split(",") if w], args.threads, log)
    atomic.write_json(args.out, result, default=str)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
