"""TensorFlow pieces shared by the MAML and ProtoNet adapters: functional backbones over a
dict of weights, canonical <-> TF parameter layout, task batching, Adam, device placement,
sync, memory and self-description.

Layout: TF convolutions on CPU support only NHWC inputs with HWIO kernels, so images stay
NHWC as the episodes give them and the canonical OIHW conv weights are transposed on
import/export; linear weights are stored (in, out) so that a layer is ``x @ W + b``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bench.core.adapter import Adapter, AdapterInfo, MemoryReading, Option
from bench.core.algorithms import MetaOptimizer
from bench.core.models import CONV_BLOCKS
from bench.measure.environment import cpu_model  # the CPU's model name, not 'x86_64'

TASK_BATCHING = ("loop", "vectorized_map", "map_fn", "auto")
# "auto": an unrolled loop up to this many tasks, map_fn beyond (graph mode's default for
# MAML, implementations/tensorflow/maml.py): the loop runs faster, its trace grows with the tasks.
LOOP_MAX_TASKS = 25


# -- process setup ---------------------------------------------------------------------
def configure(threads: int, device: str) -> None:
    # The setters raise RuntimeError once the TF context exists (e.g. pytest builds
    # several adapters in one process); the first configuration then stays.
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as e:
        if "cannot be modified after initialization" not in str(e):
            raise
    if device == "cpu":
        try:  # a CPU run must not place work on a visible GPU
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):
            pass
    else:
        # Allocate on demand, as JAX is told to (XLA_PYTHON_CLIENT_PREALLOCATE=false) and as
        # torch does: TF otherwise reserves nearly all GPU memory up front. (Peak memory is
        # read from the allocator's own counter either way.) Untested: no GPU here yet.
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError):  # the context already exists: leave it
                pass
    # Full float32 everywhere, as torch and JAX are set (TF32 would round matmul/conv inputs).
    tf.config.experimental.enable_tensor_float_32_execution(False)


def tf_device(device: str) -> str:
    if device == "cuda":
        if not tf.config.list_logical_devices("GPU"):
            raise RuntimeError("device cuda requested but TensorFlow sees no GPU")
        return "/GPU:0"
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return "/CPU:0"


def float_dtype(options: dict) -> tf.DType:
    """float32; ``options["dtype"] = "float64"`` is a diagnostic for parity checks only."""
    return tf.float64 if options.get("dtype") == "float64" else tf.float32


# -- parameter layout ------------------------------------------------------------------
def to_tf_layout(name: str, value: np.ndarray, feature_map: tuple[int, int, int] | None = None) -> np.ndarray:
    """Canonical -> TF: conv OIHW -> HWIO, linear (out, in) -> (in, out), vectors as is.

    With ``feature_map = (C, H, W)``, ``head.weight``'s input rows are also permuted from the
    canonical (C, H, W) feature order to NHWC's (H, W, C) order, so the forward pass flattens
    NHWC maps directly: the same maths as transposing the features, without a Transpose op
    whose gradient XLA cannot compile inside a tf.map_fn loop (its permutation is not a
    compile-time constant there)."""
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and name == "head.weight" and feature_map is not None:
        c, h, w = feature_map
        return value.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    return value.T if value.ndim == 2 else value


def to_canonical(name: str, value: np.ndarray, feature_map: tuple[int, int, int] | None = None) -> np.ndarray:
    """TF -> canonical, the inverse of ``to_tf_layout``."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2 and name == "head.weight" and feature_map is not None:
        c, h, w = feature_map
        return value.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * w)
    return value.T if value.ndim == 2 else value


# -- backbones -------------------------------------------------------------------------
def _mean_nhw(x):
    """Per-channel mean over N, H, W in three stages: along rows, down columns, over images.
    TF's CPU float32 reductions accumulate sequentially, so the error grows with the
    length of the reduced axis; three short sums instead of one long one (see batch_norm)."""
    return tf.reduce_mean(tf.reduce_mean(tf.reduce_mean(x, axis=2), axis=1), axis=0)


def batch_norm(x, gamma, beta, eps: float):
    """Batch statistics over N, H, W, biased variance, no running statistics.

    Accuracy: TF's float32 reductions over one long axis accumulate sequentially; over
    ProtoNet's 360 x 28 x 28 values that costs ~1e-5 relative (torch sums pairwise). So every
    per-channel reduction runs in stages. Forward: means along rows, then per image, then
    over images (episode loss error against float64 3.8e-5 -> 1.1e-7; the ProtoNet
    meta-gradient's, 4 episodes: 2.1e-2 in one stage, 2.0e-3 in two (per image, then over
    images), 2.0e-4 in three, torch's own being 3.5e-4). Backward: the per-channel terms
    are broadcast to [N, 1, 1, C] first, so their gradients sum over H, W (in the Mul's
    gradient) and then over N (in BroadcastTo's) (BatchNorm meta-gradients 4e-5 -> 4e-6).
    Written out rather than ``tf.nn.moments``, which stops the gradient through the mean
    inside the variance: exact for first derivatives, not for second-order MAML's Hessian.
    """
    per_image = [x.shape[0] if x.shape[0] is not None else tf.shape(x)[0], 1, 1, x.shape[-1]]
    channel = lambda v: tf.broadcast_to(tf.reshape(v, [1, 1, 1, -1]), per_image)
    xc = x - channel(_mean_nhw(x))
    var = _mean_nhw(tf.square(xc))
    return xc * channel(tf.math.rsqrt(var + eps) * gamma) + channel(beta)


def max_pool_2x2_elementwise(x):
    """2x2 max-pool, stride 2, floor, as elementwise maxima of the four window corners.

    For second-order MAML under XLA: XLA's MaxPoolGradGrad (tf2xla pooling_ops.cc) picks each
    window's maximum from the input rounded to bfloat16 (it packs value and gradient bits
    into one 32-bit word), so near-ties route the second-order term to the wrong element
    (meta-gradients off by ~1e-2). Here ties go to the first corner in row-major order, as
    in torch and TF's MaxPool (tf.maximum's gradient sends x >= y to x), and every
    derivative is an exact select."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    corners = [x[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)]
    return tf.maximum(tf.maximum(tf.maximum(corners[0], corners[1]), corners[2]), corners[3])


def max_pool_2x2(x):
    return tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")


def conv4_blocks(params, x, batch_norm_on: bool, eps: float, pool=max_pool_2x2) -> list:
    """NHWC images -> each block's output (conv, BatchNorm, ReLU, 2x2 max-pool), NHWC."""
    out = []
    for i in range(1, CONV_BLOCKS + 1):
        x = tf.nn.conv2d(x, params[f"conv{i}.weight"], strides=1, padding="SAME")  # = torch padding 1 for 3x3
        if batch_norm_on:
            x = batch_norm(x, params[f"bn{i}.weight"], params[f"bn{i}.bias"], eps)
        else:
            x = x + params[f"conv{i}.bias"]
        x = pool(tf.nn.relu(x))
        out.append(x)
    return out


def block_activations(blocks) -> dict[str, np.ndarray]:
    """``Adapter.activations``' layout: ``block1``.. in order; NHWC blocks as NCHW."""
    return {f"block{i}": (b.numpy().transpose(0, 3, 1, 2) if len(b.shape) == 4 else b.numpy())
            for i, b in enumerate(blocks, 1)}


def conv4(params, x, batch_norm_on: bool, eps: float, canonical_order: bool = True, pool=max_pool_2x2):
    """NHWC images -> [n, features], in the canonical (C, H, W) order, or in NHWC's
    (H, W, C) order for a consumer whose weights are permuted to match (MAML's head)."""
    x = conv4_blocks(params, x, batch_norm_on, eps, pool)[-1]
    if canonical_order:
        x = tf.transpose(x, [0, 3, 1, 2])  # NHWC -> NCHW before flattening, so features match torch's
    return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])  # static feature size: one reshape, no Shape op


def linear(params, name: str, x):
    return tf.matmul(x, params[f"{name}.weight"]) + params[f"{name}.bias"]


def mlp_blocks(params, x) -> list:
    """The MLP's body, layer by layer: each hidden layer after its ReLU."""
    h1 = tf.nn.relu(linear(params, "fc1", x))
    return [h1, tf.nn.relu(linear(params, "fc2", h1))]


def mlp_features(params, x):
    """The MLP's body: its last hidden layer, which the head reads."""
    return mlp_blocks(params, x)[-1]


def mlp(params, x):
    return linear(params, "head", mlp_features(params, x))


def cross_entropy(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def per_task(fn, elems, mode: str, signature):
    """``fn`` over the leading (task) axis of the tensors in ``elems``, outputs stacked.

    ``loop`` unrolls a Python loop in the graph (B copies of the task's ops); ``map_fn``
    runs them in a ``tf.while_loop`` (one copy, traced once); ``vectorized_map`` batches the
    ops with pfor; ``auto`` is the loop up to ``LOOP_MAX_TASKS`` tasks (static), else
    map_fn. BatchNorm statistics stay per task in all. ``signature`` is one task's output
    structure of ``tf.TensorSpec`` (map_fn needs it up front).
    """
    n = tf.nest.flatten(elems)[0].shape[0]
    if mode == "auto":
        mode = "loop" if n is not None and n <= LOOP_MAX_TASKS else "map_fn"
    if mode == "loop":
        outs = [fn(tf.nest.map_structure(lambda e, i=i: e[i], elems)) for i in range(n)]
        return tf.nest.map_structure(lambda *xs: tf.stack(xs), *outs)
    if mode == "map_fn":
        return tf.map_fn(fn, elems, fn_output_signature=signature)
    if mode == "vectorized_map":
        return tf.vectorized_map(fn, elems, fallback_to_while_loop=True)
    raise ValueError(f"task_batching must be one of {TASK_BATCHING}, got {mode!r}")


# -- episodes on the device ------------------------------------------------------------
class TFBatch:
    """An episode batch on the device: images NHWC, labels int32 (the index type TF's
    sparse cross-entropy and XLA handle natively), regression targets float."""

    def __init__(self, batch, device: str, dtype: tf.DType):
        def move(a: np.ndarray):
            if np.issubdtype(a.dtype, np.integer):
                return tf.constant(a.astype(np.int32))
            return tf.constant(a, dtype=dtype)

        with tf.device(device):
            self.support_x, self.support_y = move(batch.support_x), move(batch.support_y)
            self.query_x, self.query_y = move(batch.query_x), move(batch.query_y)

    @property
    def tensors(self):
        return self.support_x, self.support_y, self.query_x, self.query_y

    def __len__(self) -> int:
        return int(self.support_x.shape[0])


# -- meta-optimizer --------------------------------------------------------------------
class Adam:
    """Adam in torch.optim / optax form: p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps),
    eps 1e-8. Keras' Adam adds its epsilon (default 1e-7) to sqrt(v) before the bias
    correction ("epsilon hat"), which changes the first steps wherever |g| is small, so the
    adapters carry their own. Optional staircase step-size halving every ``halve_every``
    updates (torch StepLR stepped after each update: update t uses lr * 0.5**(t // n))."""

    def __init__(self, variables, meta: MetaOptimizer):
        self.variables = list(variables)
        self.lr, self.halve_every, self.b1, self.b2, self.eps = meta.lr, meta.halve_every, meta.b1, meta.b2, meta.eps
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables]
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)

    def reset(self) -> None:
        for s in self.m + self.v:
            s.assign(tf.zeros_like(s))
        self.step.assign(0)

    def apply(self, grads) -> None:
        t = self.step.assign_add(1)
        tf64 = tf.cast(t, tf.float64)
        lr = tf.constant(self.lr, tf.float64)
        if self.halve_every:
            lr *= tf.pow(tf.constant(0.5, tf.float64), tf.cast((t - 1) // self.halve_every, tf.float64))
        # bias corrections in float64, as torch computes them in Python floats
        step_size = lr / (1.0 - tf.pow(tf.constant(self.b1, tf.float64), tf64))
        bc2_sqrt = tf.sqrt(1.0 - tf.pow(tf.constant(self.b2, tf.float64), tf64))
        for p, m, v, g in zip(self.variables, self.m, self.v, grads, strict=True):
            dt = p.dtype
            m_new = m.assign(m + (1.0 - self.b1) * (g - m))           # torch: exp_avg.lerp_(g, 1 - b1)
            v_new = v.assign(v * self.b2 + (1.0 - self.b2) * g * g)
            denom = tf.sqrt(v_new) / tf.cast(bc2_sqrt, dt) + self.eps
            p.assign_sub(tf.cast(step_size, dt) * (m_new / denom))


# -- sync, memory, description ---------------------------------------------------------
def sync(outputs=None, device: str = "cpu") -> None:
    """Block until the last step and its state updates are done, then read its outputs
    back (a device -> host read cannot finish before the value exists).

    On a CPU with TF's default synchronous execution a tf.function call returns only once
    every op in it, variable updates included, has run: the host read is all that is left
    to do. ``sync_devices`` is for the other cases: a GPU's kernels run on a CUDA stream,
    and asynchronous execution queues ops. On a CPU it is not free: after a ~1 ms XLA
    sinusoid MAML step it cost ~60 us (5-7 % of the step, interleaved rounds against a
    plain ``tf.function`` read with ``.numpy()`` only; ``bench/check/baselines``)."""
    if ((device != "cpu" or not tf.config.experimental.get_synchronous_execution())
            and hasattr(tf.test.experimental, "sync_devices")):
        tf.test.experimental.sync_devices()
    if outputs is not None:
        for t in tf.nest.flatten(outputs):
            if isinstance(t, (tf.Tensor, tf.Variable)):
                t.numpy()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory(device: str) -> MemoryReading:
    if device == "cuda":
        return MemoryReading(int(tf.config.experimental.get_memory_info("GPU:0")["peak"]),
                             "tf.get_memory_info.peak")
    return MemoryReading(None, None)


def describe(device: str, jit_compile: bool, dtype: tf.DType, notes: str, extra: dict) -> AdapterInfo:
    if device == "cuda":
        gpu = tf.config.list_physical_devices("GPU")[0]
        name = tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        precision = f"{dtype.name}, TF32 off"
    else:
        name = cpu_model()
        precision = dtype.name
    return AdapterInfo(framework="tensorflow", framework_version=tf.__version__, device=device,
                       device_name=name, compilation="xla" if jit_compile else "graph",
                       precision=precision, threads=tf.config.threading.get_intra_op_parallelism_threads(),
                       notes=notes,
                       extra={"inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
                              **extra})


# -- the shared adapter half -----------------------------------------------------------
class TFAdapter(Adapter):
    """What the TensorFlow adapters share: options, device and dtype, the weights as
    ``tf.Variable``s in TF layout (``self._fmap``: the feature map whose order MAML's head
    reads, or None) with this module's Adam, the step functions as ``tf.function``s
    (``self._traced``, counted for recompilation), sync, memory, the parity probe's layout."""

    framework = "tensorflow"
    # measured (20261130-cpu-memory): 10-20 MiB after the first step for second-order
    # MAML on Omniglot, where torch needs 270-740 MiB: TF's steps reuse what its first
    # step left allocated, out of reach of the heap trim, so the peak RSS barely moves
    cpu_memory_caveat = ("a lower bound: TF reuses memory its first step kept; "
                         "first_step_mib, compilation included, is the upper bound")
    OPTIONS = {**Adapter.OPTIONS,
               "jit_compile": Option(bool, False, (), "tf.function(jit_compile=True): XLA (the *-xla variants)"),
               "task_batching": Option(str, None, TASK_BATCHING, "how tasks are batched; default: the "
                                                                 "adapter's measured choice per jit_compile")}

    @classmethod
    def configure(cls, threads: int, device: str) -> None:
        configure(threads, device)

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self._dev = tf_device(device)
        self._dtype = float_dtype(self.options)
        self._jit = self.options["jit_compile"]
        self._bn, self._eps = self.config.model.batch_norm, self.config.model.bn_eps
        self._fmap: tuple[int, int, int] | None = None
        self._traced: tuple = ()

    def _make_weights(self, params) -> None:
        with tf.device(self._dev):
            self.weights = {k: tf.Variable(self._to_tf(k, v), dtype=self._dtype) for k, v in params.items()}
            self.opt = Adam(self.weights.values(), self.meta_optimizer)

    def _compile(self, fn):
        """One step function as a tf.function, XLA-compiled under ``jit_compile``. Autograph
        off: all control flow here is Python over static shapes and step counts."""
        traced = tf.function(fn, jit_compile=self._jit, autograph=False)
        self._traced += (traced,)
        return traced

    def _to_tf(self, name, value):
        return to_tf_layout(name, np.asarray(value), self._fmap).astype(self._dtype.as_numpy_dtype)

    def _to_canonical(self, name, value):
        return np.ascontiguousarray(to_canonical(name, np.asarray(value), self._fmap))

    def to_device(self, batch):
        return TFBatch(batch, self._dev, self._dtype)

    def sync(self, outputs=None) -> None:
        sync(outputs, self.device)

    def gemm(self, n: int):
        with tf.device(self._dev):
            a, b = (tf.random.stateless_uniform((n, n), seed=(0, i), dtype=tf.float32) for i in range(2))

        def step():
            with tf.device(self._dev):
                c = tf.linalg.matmul(a, b)
            sync(c, self.device)
            return c
        return step

    def get_params(self):
        return {k: self._to_canonical(k, v.numpy()) for k, v in self.weights.items()}

    def set_params(self, params):
        for k, v in self.weights.items():  # in place: the traced functions hold these variables
            v.assign(self._to_tf(k, params[k]))
        self.opt.reset()

    def reset_peak_memory(self) -> None:
        reset_peak_memory(self.device)

    def peak_memory(self) -> MemoryReading:
        return peak_memory(self.device)

    def compilation_count(self) -> int:
        return sum(f.experimental_get_tracing_count() for f in self._traced)

    def probe_result(self, support_loss, logits, grads: dict) -> dict[str, np.ndarray]:
        out = {"support_loss": support_loss.numpy(), "query_logits": logits.numpy()}
        out.update({f"meta_grad/{k}": self._to_canonical(k, g.numpy()) for k, g in grads.items()})
        return out
