"""JAX pieces shared by the MAML and ProtoNet adapters: backbones as pure functions of a
parameter dict, parameter layout conversion, device placement, sync, memory and
self-description.

Inside JAX, parameters keep their canonical names (``bench.core.models``); conv weights are
HWIO (for NHWC convolutions), linear weights stay (out, in) and are applied as
``x @ w.T``, so only conv weights are transposed on import and export.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from bench.core.adapter import Adapter, AdapterInfo, MemoryReading, Option
from bench.core.algorithms import MetaOptimizer
from bench.core.models import CONV_BLOCKS
from bench.measure.environment import cpu_model  # the CPU's model name, not 'x86_64'

_threads: int | None = None  # what configure() was given, recorded by describe()


def configure(threads: int, device: str) -> None:
    """Thread and precision settings; XLA reads ``XLA_FLAGS`` when its backend starts, so
    this must run before the first JAX computation."""
    global _threads
    _threads = threads
    flags = os.environ.get("XLA_FLAGS", "")
    # XLA:CPU has no thread-count flag: it sizes its intra-op pool from the CPUs this
    # process may run on (the harness pins them with sched_setaffinity). Its one thread
    # flag turns Eigen's multi-threading off, which is right for one thread.
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
        from jax._src import xla_bridge  # private, but the only way to know it is too late
        if xla_bridge.backends_are_initialized():
            warnings.warn("jax already started its backend: --xla_cpu_multi_thread_eigen=false "
                          "takes no effect in this process", stacklevel=2)
    # Full float32 matmuls and convolutions on GPU (no TF32), as in the torch and TF adapters.
    jax.config.update("jax_default_matmul_precision", "highest")


def float_dtype(options: dict) -> type:
    """float32, the benchmark; ``options["dtype"] = "float64"`` is the diagnostic of parity
    checks. JAX computes in float64 only with ``jax_enable_x64``, a process-wide switch:
    the float64 option turns it on (float32 adapters built later stay float32, as every
    array here is cast explicitly)."""
    name = options.get("dtype", "float32")
    if name not in ("float32", "float64"):
        raise ValueError(f"option dtype must be float32 or float64, got {name!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return np.float64 if name == "float64" else np.float32


def jax_device(device: str) -> jax.Device:
    if device == "cpu":
        return jax.devices("cpu")[0]
    if device == "cuda":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            raise RuntimeError("device cuda requested but jax has no GPU backend "
                               "(install jax[cuda12])") from None
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


# -- the backbones -------------------------------------------------------------------------

CONV_FORMS = ("xla", "im2col")


def conv3x3_im2col(x: jax.Array, w: jax.Array) -> jax.Array:
    """The 3x3, stride 1, zero-padding 1 convolution as one matmul over 3x3 patches.
    Under ``vmap`` with per-task (adapted) weights it becomes a batched matmul; the XLA
    convolution becomes a grouped convolution, which XLA:CPU runs and differentiates
    slowly (its cost grows faster than the number of tasks)."""
    n, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([xp[:, i:i + h, j:j + wd, :] for i in range(3) for j in range(3)], axis=-1)
    return patches @ w.reshape(9 * c, -1)  # HWIO rows are (i, j, c), the patches' order


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, floor (as ``VALID``), NHWC, as selects between each window's
    four corners; ties go to the first corner in row-major order, as in torch's max_pool2d.

    Not ``lax.reduce_window``: XLA:CPU expands its derivative (select-and-scatter) into an
    iota, a reduce-window over (value, index) and a scatter, which took 112 of the 340 ms of
    summed operation time of the Omniglot MAML outer step (``bench/check/baselines/profile.py``); and on
    a GPU JAX's second derivative of it packs value and tangent into one 64-bit word, so
    float64 is rounded to 32 bits there. Here every derivative is an exact select. (Not
    ``jnp.maximum`` either: its derivative splits ties in half, torch's picks one.)"""
    h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
    c = [x[..., i:h:2, j:w:2, :] for i in (0, 1) for j in (0, 1)]

    def first(a, b):
        return jnp.where(a >= b, a, b)

    return first(first(first(c[0], c[1]), c[2]), c[3])


POOL_FORMS = ("select", "reduce_window")  # the "pool" option: max_pool_2x2, or lax.reduce_window


def conv4(params, x: jax.Array, batch_norm: bool, eps: float, conv: str = "xla", pool: str = "select") -> jax.Array:
    """NHWC images [n, S, S, C] -> [n, features], features in canonical (C, H, W) order.
    BatchNorm uses this batch's statistics (biased variance) and no running statistics:
    under ``vmap`` over tasks the statistics are per task. ``conv``: "xla"
    (``lax.conv_general_dilated``) or "im2col" (``conv3x3_im2col``), the same maths."""
    x = conv4_blocks(params, x, batch_norm, eps, conv, pool)[-1]
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def conv4_blocks(params, x: jax.Array, batch_norm: bool, eps: float, conv: str = "xla",
                 pool: str = "select") -> list[jax.Array]:
    """NHWC images -> each block's output (conv, BatchNorm, ReLU, 2x2 max-pool), NHWC."""
    out = []
    for i in range(1, CONV_BLOCKS + 1):
        w = params[f"conv{i}.weight"]
        if conv == "im2col":
            x = conv3x3_im2col(x, w)
        else:
            x = lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if batch_norm:
            mean = x.mean(axis=(0, 1, 2))
            var = jnp.square(x - mean).mean(axis=(0, 1, 2))
            x = (x - mean) * lax.rsqrt(var + eps) * params[f"bn{i}.weight"] + params[f"bn{i}.bias"]
        else:
            x = x + params[f"conv{i}.bias"]
        x = jax.nn.relu(x)
        x = (max_pool_2x2(x) if pool == "select" else
             lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"))
        out.append(x)
    return out


def block_activations(blocks) -> dict[str, np.ndarray]:
    """``Adapter.activations``' layout: ``block1``.. in order; NHWC blocks as NCHW."""
    return {f"block{i}": (np.asarray(b).transpose(0, 3, 1, 2) if b.ndim == 4 else np.asarray(b))
            for i, b in enumerate(blocks, 1)}


def linear(params, name: str, x: jax.Array) -> jax.Array:
    return x @ params[f"{name}.weight"].T + params[f"{name}.bias"]


def mlp_blocks(params, x: jax.Array) -> list[jax.Array]:
    """The MLP's body, layer by layer: each hidden layer after its ReLU."""
    h1 = jax.nn.relu(linear(params, "fc1", x))
    return [h1, jax.nn.relu(linear(params, "fc2", h1))]


def mlp_features(params, x: jax.Array) -> jax.Array:
    """The MLP's body: its last hidden layer, which the head reads."""
    return mlp_blocks(params, x)[-1]


def mlp(params, x: jax.Array) -> jax.Array:
    return linear(params, "head", mlp_features(params, x))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def mse(out: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.square(out - target).mean()


# -- layout and placement ------------------------------------------------------------------

def _to_jax_layout(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a   # OIHW -> HWIO


def _to_canonical(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a   # HWIO -> OIHW


def params_to_jax(params: dict[str, np.ndarray], device: jax.Device, dtype=np.float32) -> dict[str, jax.Array]:
    # A copy: on CPU device_put may alias the numpy buffer, and the outer step donates params.
    return {k: jax.device_put(np.array(_to_jax_layout(np.asarray(v, dtype)), copy=True), device)
            for k, v in params.items()}


def params_to_numpy(params) -> dict[str, np.ndarray]:
    """Canonical layout. A copy: on CPU np.asarray can alias a buffer the next step donates."""
    return {k: np.array(_to_canonical(np.asarray(v)), copy=True) for k, v in params.items()}


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class JaxBatch:
    """An episode batch on the device, a pytree: images NHWC float32 (float64 for parity's
    diagnostic), labels int32
    (classification) or float32 [B, n, 1] targets (regression)."""

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array

    def __len__(self) -> int:
        return self.support_x.shape[0]


def to_device(batch, device: jax.Device, dtype=np.float32) -> JaxBatch:
    def move(a: np.ndarray) -> jax.Array:
        a = np.asarray(a)
        a = a.astype(np.int32) if a.dtype.kind == "i" else np.array(a, dtype, copy=True)
        return jax.device_put(a, device)

    return JaxBatch(move(batch.support_x), move(batch.support_y), move(batch.query_x), move(batch.query_y))


def sync(*trees) -> None:
    """Block until every array in ``trees`` is computed. Arrays already donated to a later
    step are skipped: that step's outputs are in ``trees`` too."""
    leaves = [x for x in jax.tree.leaves(trees) if isinstance(x, jax.Array) and not x.is_deleted()]
    jax.block_until_ready(leaves)


def make_adam(meta: MetaOptimizer) -> optax.GradientTransformation:
    """optax's Adam as the harness's ``MetaOptimizer`` says: torch.optim.Adam's maths (eps
    added to the bias-corrected sqrt(v): optax's default form, eps_root 0). With halving,
    update t (0-based) uses lr * 0.5 ** (t // halve_every), torch's StepLR after each update."""
    lr, every = meta.lr, meta.halve_every
    schedule = (lambda count: lr * 0.5 ** (count // every)) if every else lr
    return optax.adam(schedule, b1=meta.b1, b2=meta.b2, eps=meta.eps)


# -- memory, compilation, self-description -------------------------------------------------

def peak_memory(device: jax.Device) -> MemoryReading:
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return MemoryReading(int(stats["peak_bytes_in_use"]), "jax.memory_stats.peak_bytes_in_use")
    return MemoryReading(None, None)


def cache_size(*jitted) -> int | None:
    """Compiled entries of the jitted step functions: grows when a call recompiles."""
    try:
        return sum(f._cache_size() for f in jitted)
    except AttributeError:  # private API gone in a newer JAX
        return None


def describe(device: jax.Device, notes: str) -> AdapterInfo:
    if device.platform == "gpu":
        name, precision = device.device_kind, "float32, matmul precision highest (TF32 off)"
    else:
        name, precision = cpu_model(), "float32"
    import jaxlib
    return AdapterInfo(framework="jax", framework_version=jax.__version__,
                       device="cuda" if device.platform == "gpu" else "cpu", device_name=name,
                       compilation="jit", precision=precision, threads=_threads, notes=notes,
                       extra={"jaxlib": jaxlib.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                              "matmul_precision": str(jax.config.jax_default_matmul_precision)})


# -- the shared adapter half ---------------------------------------------------------------

class JaxAdapter(Adapter):
    """What the JAX adapters share: device and dtype, parameters as a pytree on the device
    with an optax state (``self._optimizer``, set by the subclass before ``set_params``),
    sync over the step's outputs and that state, memory, and the parity probe's layout."""

    framework = "jax"
    OPTIONS = {**Adapter.OPTIONS,
               "pool": Option(str, "select", POOL_FORMS, "2x2 max-pool: selects between the window's corners "
                                                         "(max_pool_2x2), or lax.reduce_window")}

    @classmethod
    def configure(cls, threads: int, device: str) -> None:
        configure(threads, device)

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self._dev = jax_device(device)
        self._dtype = float_dtype(self.options)
        self._bn, self._eps = self.config.model.batch_norm, self.config.model.bn_eps
        self._pool = self.options["pool"]

    def to_device(self, batch):
        return to_device(batch, self._dev, self._dtype)

    def sync(self, outputs=None) -> None:
        sync(outputs, self.params, self.opt_state)

    def gemm(self, n: int):
        key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
        a, b = (jax.device_put(jax.random.uniform(k, (n, n), jnp.float32), self._dev) for k in (key_a, key_b))
        matmul = jax.jit(jnp.matmul)
        return lambda: jax.block_until_ready(matmul(a, b))

    def get_params(self):
        return params_to_numpy(self.params)

    def set_params(self, params):
        self.params = params_to_jax(params, self._dev, self._dtype)
        # committed to the device like the step outputs, or the second step would recompile
        self.opt_state = jax.device_put(self._optimizer.init(self.params), self._dev)

    def reset_peak_memory(self) -> None:
        pass  # JAX has no reset: peak_bytes_in_use is the process's peak so far

    def peak_memory(self) -> MemoryReading:
        return peak_memory(self._dev)

    @staticmethod
    def probe_result(support_loss, logits, grads) -> dict[str, np.ndarray]:
        out = {"support_loss": np.asarray(support_loss), "query_logits": np.asarray(logits)}
        out.update({f"meta_grad/{k}": v for k, v in params_to_numpy(grads).items()})
        return out
