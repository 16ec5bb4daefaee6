"""``metabench parity``: does every framework compute what PyTorch computes?

For each (spec, algorithm), every framework builds its adapter from the same canonical
initial parameters and receives the same episode meta-batch. Each framework runs in its
own process (``python -m bench.parity <request.json> <out.npz>``) and saves:

- ``support_loss``  [B]: each task's loss before adaptation
- ``query_logits``  [B, n_query_total, n_out]: after the training-time adaptation
- ``meta_grad``     every parameter's meta-gradient, concatenated in canonical order
- ``params_after``  the parameters after one outer step (Adam), concatenated

The parent compares each quantity with PyTorch's as one max relative error,
``max|x - x_torch| / max|x_torch|`` over the whole quantity (per-element relative error is
meaningless for entries that are zero up to rounding, e.g. the meta-gradient of a bias).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import registry
from bench.cell import pin_threads

QUANTITIES = ("support_loss", "query_logits", "meta_grad", "params_after")
DEFAULT_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}
REFERENCE = "torch"


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape:
        return float("inf")
    scale = np.abs(ref).max() if ref.size else 0.0
    diff = np.abs(x - ref).max() if ref.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def _adapter_name(framework: str, algorithm: str) -> str:
    for entry in registry.select(frameworks=[framework], algorithms=[algorithm]):
        return entry.name
    raise KeyError(f"no default {framework} adapter for {algorithm}")


def compute(requests: list[dict], device: str) -> dict[str, np.ndarray]:
    """In the framework's process: the quantities for each request, keyed ``<i>/<quantity>``."""
    from bench.episodes import sampler_for
    from bench.models import init_params
    from bench.spec import load_spec

    out: dict[str, np.ndarray] = {}
    configured = set()
    for i, req in enumerate(requests):
        entry = registry.get(req["adapter"])
        cls = registry.load_adapter_class(entry)
        if cls not in configured:
            cls.configure(req["threads"], device)
            configured.add(cls)
        algorithm = req["algorithm"]
        spec = load_spec(req["spec"]).for_algorithm(algorithm)
        params = init_params(spec, algorithm)
        adapter = cls(spec, algorithm, params, device=device, options=entry.options)
        sampler = sampler_for(spec, "train", algorithm, data_dir=req["data_dir"], cache_dir=req["cache_dir"])
        batch = adapter.to_device(sampler.batch(0, req["batch_size"]))
        probe = adapter.probe(batch)
        names = list(params)
        out[f"{i}/support_loss"] = np.asarray(probe["support_loss"])
        out[f"{i}/query_logits"] = np.asarray(probe["query_logits"])
        out[f"{i}/meta_grad"] = np.concatenate([np.asarray(probe[f"meta_grad/{n}"]).ravel() for n in names])
        adapter.sync(adapter.outer_step(batch))
        after = adapter.get_params()
        out[f"{i}/params_after"] = np.concatenate([after[n].ravel() for n in names])
    return out


def _run_framework(framework: str, requests: list[dict], device: str, workdir: Path) -> dict | str:
    req_path, out_path = workdir / f"{framework}.json", workdir / f"{framework}.npz"
    req_path.write_text(json.dumps({"device": device, "requests": requests}))
    proc = subprocess.run([sys.executable, "-m", "bench.parity", str(req_path), str(out_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"{framework} process failed: {tail[0]}"
    with np.load(out_path) as data:
        return {k: data[k] for k in data.files}


def run_parity(*, specs, algorithms, frameworks, data_dir=None, cache_dir=None, tolerance=None,
               batch_size=4, device="cpu", threads=None, out=None, echo=print) -> int:
    """Print the parity table; return 0 when every error is within tolerance, else 1."""
    import os

    import pandas as pd

    from bench.spec import load_spec

    tolerance = tolerance or DEFAULT_TOLERANCE[device]
    threads = threads or len(os.sched_getaffinity(0))
    combos = []
    for spec_ref in specs:
        spec = load_spec(spec_ref)
        combos += [(spec_ref, spec.name, a) for a in algorithms if a in spec.algorithms()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="metabench-parity-") as tmp:
        for framework in [REFERENCE, *[f for f in frameworks if f != REFERENCE]]:
            requests = [{"adapter": _adapter_name(framework, a), "spec": ref, "algorithm": a,
                         "batch_size": batch_size, "threads": threads, "data_dir": data_dir,
                         "cache_dir": cache_dir} for ref, _, a in combos]
            results[framework] = _run_framework(framework, requests, device, Path(tmp))
    ref = results[REFERENCE]
    if isinstance(ref, str):
        echo(f"metabench parity: reference failed: {ref}")
        return 1
    rows = []
    for framework, res in results.items():
        if framework == REFERENCE:
            continue
        for i, (_, name, algorithm) in enumerate(combos):
            row = {"framework": framework, "spec": name, "algorithm": algorithm}
            for q in QUANTITIES:
                row[q] = relative_error(res[f"{i}/{q}"], ref[f"{i}/{q}"]) if isinstance(res, dict) else float("nan")
            row["ok"] = isinstance(res, dict) and all(row[q] <= tolerance for q in QUANTITIES)
            if isinstance(res, str):
                row["error"] = res
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        echo("metabench parity: nothing to compare")
        return 1
    shown = table.copy()
    for q in QUANTITIES:
        shown[q] = shown[q].map(lambda v: f"{v:.2e}")
    echo(f"max relative error vs {REFERENCE} (tolerance {tolerance:g}, device {device}, {batch_size} tasks):")
    echo(shown.to_markdown(index=False))
    if out:
        table.to_csv(out, index=False)
    failed = table[~table["ok"]]
    if len(failed):
        echo(f"metabench parity: FAILED for {len(failed)} of {len(table)} comparisons")
        return 1
    echo(f"metabench parity: all {len(table)} comparisons within {tolerance:g}")
    return 0


def main(argv=None) -> int:
    req_path, out_path = (argv or sys.argv[1:])[:2]
    request = json.loads(Path(req_path).read_text())
    pin_threads(request["requests"][0]["threads"] if request["requests"] else 1)
    arrays = compute(request["requests"], request["device"])
    np.savez(out_path, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
