"""``metabench parity``: does every framework compute what PyTorch computes?

For each (spec, algorithm), every framework builds its adapter from the same canonical
initial parameters and receives the same episode meta-batch. Each framework runs in its
own process (``python -m bench.check.parity <request.json> <out.npz>``) and saves:

- ``support_loss``  [B]: each task's loss before adaptation
- ``query_logits``  [B, n_query_total, n_out]: after the training-time adaptation
- ``meta_grad``     every parameter's meta-gradient
- ``params_after``  the parameters after one outer step (Adam)
- ``trajectory``    the parameters after ``TRAJECTORY_STEPS`` outer steps on the same batch
                    (Adam's later steps, its moments and bias correction; an update skipped)
- ``test_outputs``  [B, n_query_total, n_out]: ``predict`` from the initial parameters, i.e.
                    after test-time adaptation (MAML's ``test_inner_steps``; ProtoNet's
                    prototypes): the outputs every accuracy is computed from

Every framework also computes everything in float64 (the adapters' diagnostic option
``dtype="float64"``): the float64 errors against torch's float64 must be at rounding level
(``TOLERANCE_64``), which proves the same function is computed. The float32 errors must be
within ``max(tolerance, FLOOR_FACTOR x max(floor, sensitivity))`` (``float32_limit``): the
floor is torch's own float32-vs-float64 error for that quantity, the sensitivity how far
torch's float64 result moves when every weight and input is moved by one float32 rounding
(``perturbed``): the batch's conditioning, which no framework can do better than. Each
framework's own float32-vs-float64 error is reported beside them. The parent compares
each quantity with PyTorch's as one max relative error, ``max|x - x_torch| /
max|x_torch|`` over the whole quantity (all parameters together for the last two;
per-element relative error is meaningless for entries that are zero up to rounding).
``params_after`` and ``trajectory`` leave out the entries whose gradient is rounding noise,
which Adam's normalised steps move by +-lr a step in any framework (``params_after_error``).

The reference's results are cached (``<cache dir>/parity/``), keyed by everything they
depend on: the spec as resolved, the algorithm, the episodes' fingerprint, the batch size,
device and threads, torch's version and the source of the reference adapters and of this
module, and of the algorithm's and the reference adapter's own modules (a plugin's).
Iterating on a new adapter then reruns only that adapter's process; ``--quick`` (``metabench
check``, the smoke profile) compares the same maths on 16-filter models and small episodes.
A torch adapter other than the reference (a variant, a plugin) is compared like any
framework, in a process of its own.

A float32 failure whose float64 agrees sends torch's process looking for max-pool windows
of the batch that float32 cannot decide (``bench.check.near_ties``: their top two closer than
float32 rounding moves them; looked for only then, as the scan costs seconds per episode).
When it finds one, the row is compared again on the first tie-free training episodes; it
passes if it agrees there, with a note naming the window, and fails otherwise.

A failed comparison is diagnosed in one line (``diagnose``): the tier, the first quantity
that differs in the order the maths computes them (support loss, adapted query outputs,
meta-gradient, parameters after Adam), what that part of the maths is, and the
meta-gradient's error parameter by parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from bench.check import near_ties
from bench.core import registry
from bench.core.algorithms import get as get_algorithm
from bench.core.algorithms import reader as section_reader
from bench.core.atomic import atomic_open
from bench.core.cell import pin_threads
from bench.core.errors import AdapterError

QUANTITIES = ("support_loss", "query_logits", "meta_grad", "params_after", "trajectory", "test_outputs")
# Outer steps of the compared trajectory: enough for Adam past its first, normalised step
# (moments, bias correction) and for an update skipped every few steps to show.
TRAJECTORY_STEPS = 3
# Quantities judged in the float64 tier only (their float32 errors are shown, not gated).
# Over several Adam steps float32 is chaotic where float64 is not: a max-pool window whose
# two largest inputs come within float32 rounding after a step routes that window's gradient
# elsewhere, and Adam's normalised update turns the difference into lr-sized moves. Measured
# on omniglot-5w1s / maml, 4 tasks: JAX's and TF's float32 trajectories were 2.7e-3 from
# their own float64 ones (torch's 4e-6), all three float64 trajectories within 3e-14. The
# float64 tier is what catches a skipped update or a wrong optimizer state.
FLOAT64_ONLY = ("trajectory",)
GATED32 = tuple(q for q in QUANTITIES if q not in FLOAT64_ONLY)
DEFAULT_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}
# Where PyTorch's own float32 result is further than the tolerance from its float64 result
# (float32 rounding of a badly conditioned sum), two float32 frameworks may differ by about
# twice that: a comparison also passes within this multiple of torch's float32-vs-float64 error.
FLOOR_FACTOR = 4.0
REFERENCE = "torch"
F64 = "f64/"           # key prefix of the float64 diagnostic's quantities
TOLERANCE_64 = 1e-9    # float64: the same function, up to float64 rounding
SENS = "sens/"         # key prefix of the reference's float64 quantities from float32-perturbed inputs
F32_ROUNDING = 2.0 ** -24  # float32's unit roundoff


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if x.shape != ref.shape:
        return float("inf")
    scale = np.abs(ref).max() if ref.size else 0.0
    diff = np.abs(x - ref).max() if ref.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def params_after_error(res: dict, ref: dict, prefix: str, lr: float, tolerance: float,
                       ref_prefix: str | None = None, quantity: str = "params_after", steps: int = 1) -> float:
    """Relative error of the parameters after ``steps`` Adam steps (``quantity``:
    ``params_after``, or ``trajectory`` after ``TRAJECTORY_STEPS``), over the entries whose
    first meta-gradient is not float32 noise.

    Adam's first update is ``lr * g / (|g| + eps)``, about ``lr * sign(g)``: an entry whose
    gradient is zero up to rounding (|g| <= 10 x tolerance x the tensor's largest; a conv
    bias before BatchNorm, at every step) moves by up to ``lr`` either way a step in any
    framework. Those entries must only have moved by at most ``steps x lr`` (else the error
    is inf); every other entry counts.
    """
    rp = prefix if ref_prefix is None else ref_prefix
    names = sorted(k[len(rp) + len(quantity) + 1:] for k in ref if k.startswith(f"{rp}{quantity}/"))
    if not names:  # results from before this quantity was compared
        return float("nan")
    diffs, scale = [], 0.0
    for name in names:
        g = np.abs(ref[f"{rp}meta_grad/{name}"].astype(np.float64))
        noise = g <= 10 * tolerance * g.max()
        if f"{prefix}{quantity}/{name}" not in res:
            return float("inf")
        x = res[f"{prefix}{quantity}/{name}"].astype(np.float64)
        r = ref[f"{rp}{quantity}/{name}"].astype(np.float64)
        if x.shape != r.shape:
            return float("inf")
        if np.any(np.abs(x - ref[f"{rp}init/{name}"])[noise] > steps * lr * (1 + 1e-3)):
            return float("inf")
        diffs.append(np.abs(x - r)[~noise].max(initial=0.0))
        scale = max(scale, np.abs(r).max(initial=0.0))
    return float(max(diffs) / scale) if scale > 0 else float(max(diffs, default=0.0))


def _errors(res: dict, ref: dict, prefix: str, ref_prefix: str, lr: float, tolerance: float) -> dict[str, float]:
    """Every quantity's error of ``res[prefix...]`` against ``ref[ref_prefix...]``."""
    return {
        "support_loss": relative_error(res[prefix + "support_loss"], ref[ref_prefix + "support_loss"]),
        "query_logits": relative_error(res[prefix + "query_logits"], ref[ref_prefix + "query_logits"]),
        "meta_grad": relative_error(_concat(res, prefix, "meta_grad"), _concat(ref, ref_prefix, "meta_grad")),
        "params_after": params_after_error(res, ref, prefix, lr, tolerance, ref_prefix),
        "trajectory": params_after_error(res, ref, prefix, lr, tolerance, ref_prefix, "trajectory",
                                         TRAJECTORY_STEPS),
        "test_outputs": relative_error(res[prefix + "test_outputs"], ref[ref_prefix + "test_outputs"]),
    }


def _concat(res: dict, prefix: str, quantity: str) -> np.ndarray:
    keys = sorted(k for k in res if k.startswith(f"{prefix}{quantity}/"))
    return np.concatenate([res[k].ravel() for k in keys])


def _adapter_name(framework: str, algorithm: str, device: str = "cpu") -> str:
    """The framework's default adapter for ``algorithm`` on ``device``."""
    for entry in registry.select(frameworks=[framework], algorithms=[algorithm], device=device):
        return entry.name
    raise AdapterError(f"--frameworks: no {framework} adapter for {algorithm}; known frameworks: "
                       f"{', '.join(sorted({e.framework for e in registry.entries().values()}))}")


def reference_adapter(algorithm: str) -> str:
    """The adapter every other is compared with for ``algorithm``: the reference
    framework's default one. Its variants (another torch adapter) are compared with it."""
    return _adapter_name(REFERENCE, algorithm)


def _process(framework: str) -> str:
    """The process a compared adapter runs in: its framework's, or for variants of the
    reference framework one apart from the reference's own (whose results are cached)."""
    return framework if framework != REFERENCE else f"{REFERENCE}-variants"


QUICK_HIDDEN = 16  # quick parity's filters (Conv-4) or units (MLP)
QUICK_TASKS = 2    # quick parity's meta-batch (metabench check, the smoke profile)
# What ``metabench check`` (and a skeleton's generated suite) compares, quick: the MAML family
# on the sinusoid (the MLP) and on Omniglot, whose Conv-4 differentiates BatchNorm and max-pool
# twice (second order: omniglot-5w1s sets first_order = false); ProtoNet on Omniglot.
CHECK_SPECS = {"mlp": "sinusoid-10shot", "conv4": "omniglot-5w1s"}


def check_specs(algorithms, cache_dir=None) -> list[str]:
    """The specs ``metabench check`` compares ``algorithms`` on (``quick``: ``quick_spec``):
    Conv-4 always, and the MLP when an algorithm that regresses is among them. Where such a
    built-in spec lacks an algorithm's section (a plugin's own), it would compare that
    algorithm on nothing: the spec is then a file in the cache (``check-specs/``, named by
    its contents) holding the built-in one with each such section from the algorithm's
    ``check_settings`` (``bench.core.spec.builtin_with_sections``)."""
    from bench.core import paths
    from bench.core.atomic import write_text
    from bench.core.spec import builtin_with_sections, load_spec

    algos = [get_algorithm(a) for a in algorithms]
    out = []
    for model, name in CHECK_SPECS.items():
        served = [a for a in algos if model == "conv4" or a.regression]
        if not served:
            continue
        have = load_spec(name).sections
        added = {a.section: a.check_settings for a in served if a.check_settings and a.section not in have}
        if not added:
            out.append(name)
            continue
        text = builtin_with_sections(name, added)[1]  # validated
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = paths.cache_dir(cache_dir) / "check-specs" / f"{name}-{digest}.toml"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, text)
        out.append(str(path))
    return out


def quick_spec(spec):
    """Quick parity (``--quick``; ``metabench check`` and the smoke profile use it): the
    same maths on a smaller problem, in seconds. Conv-4 and the MLP get 16 filters or units
    instead of 64 or 40, and ProtoNet trains at the test episode's shape (Snell's 60-way
    training episodes are most of the full comparison's time)."""
    from dataclasses import replace

    spec = replace(spec, model=replace(spec.model, hidden=min(spec.model.hidden, QUICK_HIDDEN)))
    for section, settings in spec.sections.items():
        spec = spec.with_settings(section, section_reader(section).quick_settings(settings))
    return spec


def request_spec(request: dict):
    """The spec of one request, as its algorithm sees it (quick: smaller, see ``quick_spec``)."""
    from bench.core.spec import load_spec

    spec = load_spec(request["spec"]).for_algorithm(request["algorithm"])
    return quick_spec(spec) if request.get("quick") else spec


def compute(requests: list[dict], device: str) -> dict[str, np.ndarray]:
    """In the framework's process: the quantities for each request, keyed ``<i>/<quantity>``."""
    from bench.core.episodes import sampler_for
    from bench.core.models import init_params

    out: dict[str, np.ndarray] = {}
    configured, adapters = set(), []
    for i, req in enumerate(requests):
        # the parent's resolved entry: a plugin installed or removed meanwhile changes nothing
        entry = registry.entry_from_json(req["entry"]) if req.get("entry") else registry.get(req["adapter"])
        cls = registry.load_adapter_class(entry)
        if cls not in configured:
            cls.configure(req["threads"], device)
            configured.add(cls)
        algorithm = req["algorithm"]
        spec = request_spec(req)
        params = init_params(spec, algorithm)
        sampler = sampler_for(spec, "train", algorithm, data_dir=req["data_dir"], cache_dir=req["cache_dir"])
        episodes = stacked([sampler.episode(e) for e in compared_episodes(req)])
        if req.get("jitter"):
            episodes = jittered(episodes, req["jitter"])
        if req.get("ties"):  # only the batch's near-tied max-pool windows (bench.check.near_ties), asked
            # of the reference after a float32 failure (parity's tie-free retry)
            make = lambda dtype, c=cls, s=spec, a=algorithm, p=params, o=entry.options: c(
                s, a, p, device=device, options={**o, "dtype": dtype})
            # ProtoNet's 60-way episodes nearly all hold a near-tied window (none tie-free in
            # omniglot-5w1s's first 32; the search cost a minute): no tie-free search without
            # an inner loop
            search = req["batch_size"] if get_algorithm(algorithm).has_inner_loop else 0
            out[f"{i}/ties"], out[f"{i}/tie_free"] = near_ties.scan(make, sampler, compared_episodes(req), search)
            continue
        adapters.append((i, cls, spec, algorithm, params, entry.options, episodes))
        out[f"{i}/placeholder"] = np.array(bool(getattr(cls, "placeholder", False)))
    # float32 first: the float64 diagnostic may switch a process-wide setting (JAX's x64)
    for tag, dtype in (("", "float32"), (F64, "float64")):
        for i, cls, spec, algorithm, params, options, episodes in adapters:
            adapter = cls(spec, algorithm, params, device=device, options={**options, "dtype": dtype})
            _quantities(adapter, adapter.to_device(episodes), params, f"{i}/{tag}", out)
    for i, cls, spec, algorithm, params, options, episodes in adapters:
        if requests[i].get("sensitivity"):  # the reference's: how far float32 rounding alone can move each quantity
            p, e = perturbed(params, episodes)
            adapter = cls(spec, algorithm, p, device=device, options={**options, "dtype": "float64"})
            _quantities(adapter, adapter.to_device(e), p, f"{i}/{SENS}", out)
    return out


def compared_episodes(request: dict) -> list[int]:
    """The training episodes a request compares: ``request["episodes"]`` (the tie-free
    retry's), else the first ``batch_size``."""
    return list(request.get("episodes") or range(request["batch_size"]))


def stacked(batches):
    """Single-episode batches as one meta-batch (``EpisodeSampler.batch`` of listed episodes)."""
    from dataclasses import replace

    first = batches[0]
    return replace(first, **{name: np.concatenate([getattr(b, name) for b in batches])
                             for name in ("support_x", "support_y", "query_x", "query_y", "provenance")})


def perturbed(params: dict, episodes, seed: int = 0):
    """Parameters and episodes in float64, each entry moved by one float32 rounding
    (relative 2^-24, random sign): the reference computes its float64 quantities from
    them, and how far they move (the ``SENS`` quantities) is the problem's own
    sensitivity to float32 rounding of its inputs, whatever framework computes it."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    nudge = lambda a: np.asarray(a, np.float64) * (1 + F32_ROUNDING * rng.choice([-1.0, 1.0], size=np.shape(a)))
    floats = {name: nudge(getattr(episodes, name)) for name in ("support_x", "support_y", "query_x", "query_y")
              if np.asarray(getattr(episodes, name)).dtype.kind == "f"}
    return {k: nudge(v) for k, v in params.items()}, replace(episodes, **floats)


def jittered(episodes, scale: float, seed: int = 0):
    """The episodes' inputs plus Gaussian noise of standard deviation ``scale``, in float64
    (float32 would round many noisy 1.0 pixels back together): no two pixels equal, so no
    max-pool window has tied maxima in the float64 tier (Omniglot's binary images have
    many). A diagnostic: a difference that vanishes here is a choice among tied maxima."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    noisy = lambda x: np.asarray(x, np.float64) + scale * rng.standard_normal(np.shape(x))
    return replace(episodes, support_x=noisy(episodes.support_x), query_x=noisy(episodes.query_x))


def _quantities(adapter, batch, params, prefix: str, out: dict) -> None:
    """One adapter's parity quantities for one batch, stored under ``prefix``."""
    probe = adapter.probe(batch)
    out[f"{prefix}support_loss"] = np.asarray(probe["support_loss"])
    out[f"{prefix}query_logits"] = np.asarray(probe["query_logits"])
    for name, value in (getattr(adapter, "activations", lambda b: {})(batch) or {}).items():
        out[f"{prefix}activation/{name}"] = np.asarray(value)  # for the diagnosis only
    # test time, from the initial parameters: what every accuracy is computed from
    out[f"{prefix}test_outputs"] = np.asarray(adapter.predict(batch))
    adapter.sync(adapter.outer_step(batch))
    after = adapter.get_params()
    for _ in range(TRAJECTORY_STEPS - 1):
        adapter.sync(adapter.outer_step(batch))
    final = adapter.get_params()
    for name in params:
        out[f"{prefix}meta_grad/{name}"] = np.asarray(probe[f"meta_grad/{name}"])
        out[f"{prefix}params_after/{name}"] = np.asarray(after[name])
        out[f"{prefix}trajectory/{name}"] = np.asarray(final[name])
        out[f"{prefix}init/{name}"] = params[name]


def _run_framework(framework: str, requests: list[dict], device: str, workdir: Path) -> dict | str:
    """``requests`` computed in one process named ``framework`` (see ``_process``)."""
    req_path, out_path = workdir / f"{framework}.json", workdir / f"{framework}.npz"
    req_path.write_text(json.dumps({"device": device, "requests": requests}))
    # the child sees this process's adapters (registry.child_env), never re-discovers them
    proc = subprocess.run([sys.executable, "-m", "bench.check.parity", str(req_path), str(out_path)],
                          capture_output=True, text=True, env={**os.environ, **registry.child_env()})
    if proc.returncode != 0 or not out_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"{framework} process failed: {tail[0]}"
    with np.load(out_path) as data:
        return {k: data[k] for k in data.files}


def _source_digest() -> str:
    """The reference's code: the torch adapters' package and the harness modules that make
    its inputs and read its outputs. Any edit there invalidates the cache."""
    here = Path(__file__).resolve().parent          # bench/check
    core, repo = here.parent / "core", here.parents[1]
    files = sorted((repo / "implementations" / REFERENCE).glob("*.py"))
    files += [here / "parity.py", here / "near_ties.py", core / "models.py", core / "episodes.py", core / "spec.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _own_source(request: dict) -> str:
    """The code of the request's algorithm and adapter outside ``_source_digest``'s files: a
    plugin's (its algorithm's reference adapter is a plugin's too), found without importing
    the adapter's framework."""
    import importlib.util

    modules = [type(get_algorithm(request["algorithm"])).__module__]
    modules.append((request.get("entry") or {}).get("target", "").partition(":")[0])
    h = hashlib.sha256()
    for module in modules:
        try:
            h.update(module.encode() + Path(importlib.util.find_spec(module).origin).read_bytes())
        except (ImportError, AttributeError, TypeError, ValueError, OSError):
            h.update(f"{module}: no source".encode())
    return h.hexdigest()


def reference_key(request: dict, device: str) -> str:
    """The cache key of one reference request (see the module docstring)."""
    from bench.core.episodes import sampler_for

    spec = request_spec(request)
    sampler = sampler_for(spec, "train", request["algorithm"], data_dir=request["data_dir"],
                          cache_dir=request["cache_dir"])
    try:
        version = metadata.version(REFERENCE)
    except metadata.PackageNotFoundError:
        version = "absent"
    key = {"adapter": request["adapter"], "algorithm": request["algorithm"], "spec": spec.to_dict(),
           "episodes": [sampler.fingerprint(1, start=e) for e in compared_episodes(request)],
           "batch_size": request["batch_size"], "ties": bool(request.get("ties")),
           "threads": request["threads"], "device": device, "version": version, "source": _source_digest(),
           "own_source": _own_source(request)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _with_prefix(arrays: dict, old: str, new: str) -> dict:
    return {new + k[len(old):]: v for k, v in arrays.items() if k.startswith(old)}


def _reference_results(requests: list[dict], device: str, workdir: Path, cache: Path | None, echo) -> dict | str:
    """The reference's quantities for every request (keyed ``<i>/...``), from the cache
    where it has them; only the missing requests run, in one torch process."""
    keys = [reference_key(r, device) for r in requests] if cache else [None] * len(requests)
    out, missing = {}, []
    for i, key in enumerate(keys):
        path = cache / f"{key}.npz" if cache else None
        if path is not None and path.exists():
            with np.load(path) as data:
                out.update(_with_prefix({k: data[k] for k in data.files}, "", f"{i}/"))
        else:
            missing.append(i)
    if cache and len(missing) < len(requests):
        echo(f"metabench parity: {REFERENCE}'s results for {len(requests) - len(missing)} of {len(requests)} "
             f"comparisons from the cache ({cache})")
    if not missing:
        return out
    fresh = _run_framework(REFERENCE, [requests[i] for i in missing], device, workdir)
    if isinstance(fresh, str):
        return fresh
    for j, i in enumerate(missing):
        arrays = _with_prefix(fresh, f"{j}/", "")
        out.update(_with_prefix(arrays, "", f"{i}/"))
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
            # atomic: a killed run leaves no half entry, and two runs writing one key at
            # once (pytest-xdist's workers, a cluster's jobs) each write their own file
            with atomic_open(cache / f"{keys[i]}.npz", "wb") as f:
                np.savez(f, **arrays)
    return out


def _targets(frameworks, adapters, algorithms, device: str = "cpu") -> list[tuple[str, str, str]]:
    """(framework, adapter, algorithm) to compare with torch: each framework's default
    adapter on ``device``, or the named adapters (variants included, torch's own among them)."""
    if adapters:
        out = []
        for name in adapters:
            entry = registry.get(name)
            out += [(entry.framework, name, a) for a in entry.algorithms
                    if a in algorithms and name != reference_adapter(a)]
        return out
    known = sorted({e.framework for e in registry.entries().values()})
    for f in frameworks:
        if f not in known:
            raise AdapterError(f"--frameworks: unknown framework {f!r}; known: {', '.join(known)}")
    # a framework without an adapter for one of the algorithms is compared on the others
    return [(f, _adapter_name(f, a, device), a) for f in frameworks if f != REFERENCE for a in algorithms
            if registry.select(frameworks=[f], algorithms=[a], device=device)]


def _reference_cache(cache_dir, use_cache: bool) -> Path | None:
    """Where the reference's results are cached (None: recompute them)."""
    from bench.core import paths

    return paths.cache_dir(cache_dir) / "parity" if use_cache else None


def _compute_all(plan: dict, requests_for, device: str, cache_dir, use_cache: bool, echo, episodes=None) -> dict:
    """Every process of ``plan`` ({framework: [(combo, adapter)]}): the reference from its
    cache where it can, each other framework in a process of its own."""

    results = {}
    with tempfile.TemporaryDirectory(prefix="metabench-parity-") as tmp:
        for framework, pairs in plan.items():
            requests = requests_for(framework, pairs, episodes)
            if framework == REFERENCE:
                results[framework] = _reference_results(requests, device, Path(tmp),
                                                        _reference_cache(cache_dir, use_cache), echo)
            else:
                results[framework] = _run_framework(framework, requests, device, Path(tmp))
    return results


class _Comparison:
    """One adapter's quantities against the reference's, both tiers (request ``k`` of its
    process against the reference's request ``ci``)."""

    def __init__(self, res: dict, ref: dict, k: int, ci: int, lr: float, tolerance: float):
        self.res, self.ref = res, ref
        self.prefixes = p32, r32, p64, r64 = f"{k}/", f"{ci}/", f"{k}/{F64}", f"{ci}/{F64}"
        self.errors = _errors(res, ref, p32, r32, lr, tolerance)
        self.errors64 = _errors(res, ref, p64, r64, lr, TOLERANCE_64)
        self.floors = _errors(ref, ref, r32, r64, lr, tolerance)
        self.own = _errors(res, res, p32, p64, lr, tolerance)
        self.sens = _errors(ref, ref, f"{ci}/{SENS}", r64, lr, tolerance)
        self.limits = {q: float32_limit(tolerance, self.floors[q], self.sens[q]) for q in QUANTITIES}
        self.ok64 = all(self.errors64[q] <= TOLERANCE_64 for q in QUANTITIES)
        self.ok32 = all(self.errors[q] <= self.limits[q] for q in GATED32)
        self.placeholder = bool(res.get(f"{k}/placeholder", False))

    def columns(self) -> dict:
        row = {"ok64": self.ok64, "ok32": self.ok32, "ok": self.ok64 and self.ok32}
        for q in QUANTITIES:
            row[q], row[f"{q}_64"] = self.errors[q], self.errors64[q]
            row[f"{q}_floor"], row[f"{q}_own_floor"] = self.floors[q], self.own[q]
            row[f"{q}_sensitivity"] = self.sens[q]
        return row

    def diagnose(self, algorithm: str) -> str:
        return diagnose(self.res, self.ref, self.prefixes, self.errors, self.errors64, self.floors, self.own,
                        self.limits, algorithm, self.placeholder)

    def first_float32_failure(self) -> str:
        q = next(q for q in GATED32 if not self.errors[q] <= self.limits[q])
        return f"float32 {q} {self.errors[q]:.1e} (limit {self.limits[q]:.1e})"


def _retry_without_ties(rows, plan, results, combos, requests_for, tolerance, device, cache_dir, use_cache, echo):
    """Compare again, on tie-free episodes, every adapter whose float64 agreed and whose
    float32 failed on a batch with near-tied max-pool windows (``bench.check.near_ties``). A row
    that passes there passes, saying which window was tied; one that fails there fails with
    both batches named. One more process per framework concerned."""
    from bench.core.spec import load_spec

    failed = [(row, src) for row, src in _row_sources(rows, plan) if row.get("ok64") and not row.get("ok32")]
    if not failed:
        return
    ref = dict(results[REFERENCE])
    ties = _near_ties(sorted({ci for _, (_, _, ci, _) in failed if f"{ci}/ties" not in ref}), combos,
                      requests_for, device, cache_dir, use_cache, echo)
    if isinstance(ties, str):
        for row, _ in failed:
            row["diagnosis"] += f"; the near-tie scan did not run: {ties}"
        return
    ref.update(ties)
    retry: dict[tuple, list] = {}
    for row, (framework, k, ci, name) in failed:
        if len(ref.get(f"{ci}/ties", ())):
            free = tuple(int(e) for e in ref[f"{ci}/tie_free"])
            batch = len(ref[f"{ci}/support_loss"])
            if len(free) == batch:
                retry.setdefault(free, []).append((row, framework, k, ci, name))
    for free, items in retry.items():
        sub = {REFERENCE: sorted({(ci, reference_adapter(combos[ci][2])) for _, _, _, ci, _ in items})}
        for _, framework, _, ci, name in items:
            sub.setdefault(framework, []).append((ci, name))
        echo(f"metabench parity: float32 differs on a batch with near-tied max-pool windows; comparing "
             f"{', '.join(sorted({name for *_, name in items}))} again on tie-free episodes {list(free)}")
        again = _compute_all(sub, requests_for, device, cache_dir, use_cache, echo, episodes=list(free))
        ref2 = again[REFERENCE]
        for row, framework, _, ci, name in items:
            res2 = again.get(framework)
            tied = near_ties.describe(ref[f"{ci}/ties"], list(range(len(ref[f"{ci}/support_loss"]))))
            if not isinstance(res2, dict) or isinstance(ref2, str):
                why = res2 if isinstance(res2, str) else ref2
                row["diagnosis"] += f"; {tied}; the tie-free comparison did not run: {why}"
                continue
            ci2 = [c for c, _ in sub[REFERENCE]].index(ci)
            k2 = [n for _, n in sub[framework]].index(name)
            spec = load_spec(combos[ci][0]).for_algorithm(combos[ci][2])
            after = _Comparison(res2, ref2, k2, ci2, get_algorithm(combos[ci][2]).meta_optimizer(spec).lr, tolerance)
            if after.ok64 and after.ok32:
                row["ok32"] = row["ok"] = True
                row.pop("diagnosis", None)
                row["note"] = (f"near-tie: {row['float32_failure']} on episodes 0-{len(free) - 1}, where {tied}; "
                               f"on tie-free episodes {list(free)} both tiers pass (float32 meta_grad "
                               f"{after.errors['meta_grad']:.1e}, limit {after.limits['meta_grad']:.1e})")
            else:
                row["diagnosis"] += (f"; {tied}, but on tie-free episodes {list(free)} it fails too ("
                                     f"{after.first_float32_failure() if after.ok64 else 'float64 differs'}): "
                                     f"not the tie")


def _near_ties(combos_to_scan: list[int], combos, requests_for, device: str, cache_dir, use_cache: bool,
               echo) -> dict | str:
    """The reference's near-tie scan (``<ci>/ties``, ``<ci>/tie_free``) of the compared batch
    of each combo listed, in one torch process (or from the cache). Asked only after a
    float32 failure: the scan recomputes every max-pool input in both precisions and
    searches for tie-free episodes, which a passing comparison never needs."""

    if not combos_to_scan:
        return {}
    requests = requests_for(REFERENCE, [(ci, reference_adapter(combos[ci][2])) for ci in combos_to_scan])
    for r in requests:
        r["sensitivity"], r["ties"] = False, True
    with tempfile.TemporaryDirectory(prefix="metabench-parity-") as tmp:
        found = _reference_results(requests, device, Path(tmp), _reference_cache(cache_dir, use_cache), echo)
    if isinstance(found, str):
        return found
    out = {}
    for j, ci in enumerate(combos_to_scan):
        out.update(_with_prefix(found, f"{j}/", f"{ci}/"))
    return out


def _row_sources(rows, plan):
    """Each compared row with (framework process, its request index, combo, adapter)."""
    sources = [(framework, k, ci, name) for framework, pairs in plan.items() if framework != REFERENCE
               for k, (ci, name) in enumerate(pairs)]
    return zip(rows, sources)


def run_parity(*, specs, algorithms, frameworks=None, adapters=None, data_dir=None, cache_dir=None,
               tolerance=None, batch_size=4, device="cpu", threads=None, out=None, echo=print,
               use_cache: bool = True, quick: bool = False) -> int:
    """Print the parity table; return 0 when every error is within tolerance, else 1.
    ``use_cache``: take the reference's results from the cache where it has them.
    ``quick``: the same comparisons on smaller models and episodes (``quick_spec``)."""
    import os

    import pandas as pd

    from bench.core.spec import load_spec

    tolerance = tolerance or DEFAULT_TOLERANCE[device]
    threads = threads or len(os.sched_getaffinity(0))
    combos = []
    for spec_ref in specs:
        spec = load_spec(spec_ref)
        combos += [(spec_ref, spec.name, a) for a in algorithms if a in spec.algorithms()]
    targets = _targets(frameworks or [], adapters, algorithms, device)
    # One process per framework; request k of a framework is (combo, adapter) pair k.
    plan: dict[str, list[tuple[int, str]]] = {REFERENCE: []}
    for ci, (_, _, algorithm) in enumerate(combos):
        plan[REFERENCE].append((ci, _adapter_name(REFERENCE, algorithm)))
        for framework, name, a in targets:
            if a == algorithm:
                plan.setdefault(_process(framework), []).append((ci, name))
    def requests_for(framework, pairs, episodes=None):
        reqs = [{"adapter": name, "entry": registry.entry_to_json(registry.get(name)), "spec": combos[ci][0],
                 "algorithm": combos[ci][2], "batch_size": batch_size, "threads": threads, "data_dir": data_dir,
                 "cache_dir": cache_dir, "quick": quick, "episodes": episodes} for ci, name in pairs]
        if framework == REFERENCE:  # the reference also measures the batch's conditioning
            for r in reqs:
                r["sensitivity"] = True
        return reqs

    results = _compute_all(plan, requests_for, device, cache_dir, use_cache, echo)
    ref = results[REFERENCE]
    if isinstance(ref, str):
        echo(f"metabench parity: reference failed: {ref}")
        return 1
    rows = []
    for framework, pairs in plan.items():
        if framework == REFERENCE:
            continue
        res = results[framework]
        for k, (ci, name) in enumerate(pairs):
            spec_ref, spec_name, algorithm = combos[ci]
            row = {"framework": registry.get(name).framework, "adapter": name, "spec": spec_name,
                   "algorithm": algorithm}
            if isinstance(res, dict):
                spec = load_spec(spec_ref).for_algorithm(algorithm)
                lr = get_algorithm(algorithm).meta_optimizer(spec).lr
                cmp = _Comparison(res, ref, k, ci, lr, tolerance)
                row.update(cmp.columns())
                if not row["ok"]:
                    row["diagnosis"] = cmp.diagnose(algorithm)
                    if cmp.ok64:  # for the tie-free retry's note
                        row["float32_failure"] = cmp.first_float32_failure()
            else:
                row.update({q: float("nan") for q in QUANTITIES})
                row["ok"], row["error"] = False, res
            rows.append(row)
    _retry_without_ties(rows, plan, results, combos, requests_for, tolerance, device, cache_dir, use_cache, echo)
    table = pd.DataFrame(rows)
    if table.empty:
        echo("metabench parity: nothing to compare")
        return 1
    long = []
    for _, r in table.iterrows():
        for q in QUANTITIES:
            long.append({"adapter": r["adapter"], "spec": r["spec"], "algorithm": r["algorithm"],
                         "quantity": q, "float32": _fmt(r[q]), f"{REFERENCE} f32 floor": _fmt(r.get(f"{q}_floor")),
                         "own f32 floor": _fmt(r.get(f"{q}_own_floor")),
                         "sensitivity": _fmt(r.get(f"{q}_sensitivity")), "float64": _fmt(r.get(f"{q}_64")),
                         "ok": _ok_text(r) if q == QUANTITIES[0] else ""})
    size = f"quick: {QUICK_HIDDEN} filters or units, ProtoNet at the test shape; " if quick else ""
    echo(f"max relative error against {REFERENCE} ({size}device {device}, {batch_size} tasks). Pass: float64 error "
         f"<= {TOLERANCE_64:g} (the same function) and float32 error <= max({tolerance:g}, {FLOOR_FACTOR:g} x "
         f"the larger of {REFERENCE}'s float32-vs-float64 error and the sensitivity); 'own f32 floor' is the "
         f"framework's own float32-vs-float64 error; 'sensitivity' how far {REFERENCE}'s float64 result moves when "
         f"every input and weight is moved by one float32 rounding.")
    echo(pd.DataFrame(long).to_markdown(index=False))
    if "error" in table:
        for _, r in table[table["error"].notna()].iterrows():
            echo(f"{r['adapter']} {r['spec']} {r['algorithm']}: {r['error']}")
    if out:
        table.to_csv(out, index=False)
    for _, r in table.iterrows():
        if isinstance(r.get("note"), str):
            echo(f"passed {r['adapter']} on {r['spec']} / {r['algorithm']}: {r['note']}")
    failed = table[~table["ok"]]
    if len(failed):
        for _, r in failed.iterrows():
            if isinstance(r.get("diagnosis"), str):
                echo(f"FAILED {r['adapter']} on {r['spec']} / {r['algorithm']}: {r['diagnosis']}")
        names = ", ".join(f"{r['adapter']} on {r['spec']} / {r['algorithm']}" for _, r in failed.iterrows())
        echo(f"metabench parity: FAILED for {len(failed)} of {len(table)} comparisons: {names}")
        return 1
    echo(f"metabench parity: all {len(table)} comparisons within {tolerance:g}")
    return 0


# Where a float64 difference first appears says which part of the maths differs: the probe's
# quantities in the order they are computed; each algorithm says what its own mean
# (``Algorithm.diagnosis``), the rest are the same for every algorithm.
_WHERE_ADAM = ("the meta-gradient agrees, the parameters after one outer step do not: the Adam update "
               "(step size, betas, eps and its placement, the first step's bias correction)")
# after the algorithm's own quantities: the same for every algorithm
_WHERE_LATER = {
    "trajectory": f"one outer step agrees, {TRAJECTORY_STEPS} do not: the optimizer's state across steps "
                  "(Adam's moments, bias correction by step count), an update skipped or applied twice, or "
                  "state that an outer step changes besides the parameters",
    "test_outputs": "training-time quantities agree, the test-time outputs (predict) do not: test-time "
                    "adaptation (its number of steps, test_inner_steps, or step size), BatchNorm's mode at test "
                    "time (the batch's statistics, never running ones), or the prototypes at test time",
}


def _by_parameter(res: dict, ref: dict, prefix: str, ref_prefix: str, limit: float, most: int = 4) -> str:
    """The meta-gradient's error parameter by parameter (model order), those above
    ``limit``: which layers the difference is in."""
    names = [k[len(prefix) + len("meta_grad/"):] for k in res if k.startswith(prefix + "meta_grad/")]
    errs = {n: relative_error(res[f"{prefix}meta_grad/{n}"], ref[f"{ref_prefix}meta_grad/{n}"]) for n in names}
    over = [f"{n} {e:.1e}" for n, e in errs.items() if e > limit]
    if not over:
        return ""
    more = f" (+{len(over) - most} more)" if len(over) > most else ""
    return f"; meta-gradient by parameter: {', '.join(over[:most])}{more} of {len(errs)}"


def float32_limit(tolerance: float, floor: float, sensitivity: float) -> float:
    """How far a float32 result may be from the reference's: the tolerance, or
    ``FLOOR_FACTOR`` x the larger of torch's own float32 error and the problem's
    sensitivity to float32 rounding of its inputs (an ill-conditioned batch moves by that
    much in any framework, however torch's own rounding happened to fall)."""
    return max(tolerance, FLOOR_FACTOR * max(floor, sensitivity))


def _by_block(res: dict, ref: dict, prefix: str, ref_prefix: str) -> str:
    """Where a forward pass parts, block by block (``Adapter.activations``), or ''."""
    names = [k[len(ref_prefix) + len("activation/"):] for k in ref if k.startswith(ref_prefix + "activation/")]
    if not names or not all(f"{prefix}activation/{n}" in res for n in names):
        return ""
    for i, n in enumerate(names):
        e = relative_error(res[f"{prefix}activation/{n}"], ref[f"{ref_prefix}activation/{n}"])
        if not e <= TOLERANCE_64:
            agree = f"agree through {names[i - 1]}, " if i else ""
            return f"; the body's activations {agree}first differ at {n} ({e:.1e})"
    return (f"; the body's activations agree at every block ({', '.join(names)}): the difference is after "
            f"the body")


def diagnose(res: dict, ref: dict, prefixes, errors: dict, errors64: dict, floors: dict, own: dict,
             limits: dict, algorithm: str, placeholder: bool = False) -> str:
    """One line for a failed comparison: which tier failed, the first quantity (in the
    order the maths computes them) that differs, what that part of the maths is, and the
    meta-gradient's error by parameter."""
    p32, r32, p64, r64 = prefixes
    check = get_algorithm(algorithm).diagnosis
    where = {q: getattr(check, q, "") for q in ("support_loss", "query_logits", "meta_grad")} if check else {}
    head = ("still the placeholder maths of `metabench new-adapter` (its class sets placeholder = True): "
            "write the methods marked TODO(maths), then remove that line. " if placeholder else "")
    bad64 = [q for q in QUANTITIES if not errors64[q] <= TOLERANCE_64]
    if bad64:
        first = bad64[0]
        agree = [f"{q} agrees to {errors64[q]:.1e}" for q in QUANTITIES[:QUANTITIES.index(first)]]
        near_f32 = 1e-9 < errors64[first] <= 1e-4
        cause = ("an error of float32 size: more likely an op of this framework that computes in float32 "
                 "(or with float32 constants) when asked for float64 than different maths"
                 if near_f32 else where.get(first) or _WHERE_LATER.get(first, _WHERE_ADAM))
        blocks = _by_block(res, ref, p64, r64) if first == "support_loss" else ""
        return (f"{head}float64 differs from {REFERENCE} first at {first} ({errors64[first]:.1e} > "
                f"{TOLERANCE_64:g}{'; ' + ', '.join(agree) if agree else ''}): {cause}. Either the maths "
                f"differs or the framework's float64 is not float64 for some op (docs/fairness.md)"
                + blocks + _by_parameter(res, ref, p64, r64, TOLERANCE_64))
    bad32 = [q for q in GATED32 if not errors[q] <= limits[q]]
    q = bad32[0]
    cause = (f"this framework's own float32 is {own[q]:.1e} from its float64, {REFERENCE}'s {floors[q]:.1e}: its "
             f"float32 loses precision somewhere (a reduction summed in float32 one element after another, a "
             f"variance from E[x^2] - E[x]^2, ...), or its rounding flips a near-tie whose gradient jumps (a "
             f"max-pool window's two largest inputs an ulp apart)" if own[q] > limits[q] else
             "float32 rounding of a different order of operations (fused kernels, reduction order)")
    return (f"{head}float64 agrees (the same function); float32 {q} is {errors[q]:.1e} from {REFERENCE}'s, "
            f"above its limit {limits[q]:.1e} ({FLOOR_FACTOR:g} x the larger of {REFERENCE}'s own float32 error "
            f"and the batch's sensitivity to float32 rounding, at least the tolerance): {cause} "
            f"(docs/fairness.md)" + _by_parameter(res, ref, p32, r32, limits["meta_grad"]))


def _ok_text(row) -> str:
    """The table's verdict: a pass that needed the tie-free retry says so (its float32
    columns are the first batch's)."""
    return "True (tie-free)" if row["ok"] and isinstance(row.get("note"), str) else str(bool(row["ok"]))


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.1e}"


def main(argv=None) -> int:
    req_path, out_path = (argv or sys.argv[1:])[:2]
    request = json.loads(Path(req_path).read_text())
    pin_threads(request["requests"][0]["threads"] if request["requests"] else 1)
    arrays = compute(request["requests"], request["device"])
    np.savez(out_path, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
