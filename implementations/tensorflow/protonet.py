"""Prototypical Networks (Snell et al. 2017): prototypes are class means of the support
embeddings, logits are negative squared Euclidean distances, loss is cross-entropy.

Support and query are embedded in one forward pass, as in the reference implementation,
so BatchNorm's batch statistics cover the whole episode. The training step (embedding,
loss, gradient, Adam with step-size halving) is one ``tf.function``, XLA-compiled when
``options["jit_compile"]``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bench.adapter import Adapter, AdapterInfo, MemoryReading
from bench.models import feature_size
from implementations.tensorflow import common

# ProtoNet's meta-batch is one episode in every built-in spec: a Python loop over it is just
# the episode's ops (options["task_batching"] overrides).
TASK_BATCHING = "loop"


def prototypes(support, n_way: int):
    """[n_way * k_shot, d] class-major support embeddings -> [n_way, d] class means."""
    return tf.reduce_mean(tf.reshape(support, [n_way, -1, support.shape[-1]]), axis=1)


def neg_sq_distances(query, protos):
    """[q, d], [n, d] -> [q, n] logits: -||query - prototype||^2, as a difference (not the
    ||q||^2 - 2 q.p + ||p||^2 expansion) to round like the reference."""
    return -tf.reduce_sum(tf.square(query[:, None, :] - protos[None, :, :]), axis=-1)


class TFProtoNet(Adapter):
    framework = "tensorflow"
    algorithms = ("protonet",)

    @classmethod
    def configure(cls, threads: int, device: str) -> None:
        common.configure(threads, device)

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        common.check_options(self.options)
        self._dev = common.tf_device(device)
        self._dtype = common.float_dtype(self.options)
        self._jit = bool(self.options.get("jit_compile", False))
        self._batching = self.options.get("task_batching", TASK_BATCHING)
        self._bn = self.spec.model.batch_norm != "none"
        self._eps = self.spec.model.bn_eps
        self._k_shot = self.spec.episode.k_shot
        self._features = feature_size(self.spec)
        p = self.spec.protonet
        with tf.device(self._dev):
            self.weights = {k: tf.Variable(self._to_tf(k, v), dtype=self._dtype) for k, v in params.items()}
            self.opt = common.Adam(self.weights.values(), p.meta_lr, p.lr_halve_every)
        # autograph off: all control flow here is Python over static shapes
        compile_ = lambda f: tf.function(f, jit_compile=self._jit, autograph=False)
        self._outer_fn = compile_(self._outer)
        self._probe_fn = compile_(self._probe)
        self._adapt_fn = compile_(self._adapt_batch)
        self._evaluate_fn = compile_(self._evaluate)

    # -- the maths -------------------------------------------------------------------------
    def _embed_episode(self, sx, qx):
        """One forward over support + query -> (prototypes [n_way, d], query embeddings)."""
        n_support = sx.shape[0]
        z = common.conv4(self.weights, tf.concat([sx, qx], axis=0), self._bn, self._eps)
        return prototypes(z[:n_support], n_support // self._k_shot), z[n_support:]

    def _episode_logits(self, sx, qx):
        protos, query = self._embed_episode(sx, qx)
        return neg_sq_distances(query, protos)

    def _per_task(self, fn, elems, signature):
        return common.per_task(fn, elems, self._batching, signature)

    def _logits(self, sx, qx):
        n_way = sx.shape[1] // self._k_shot
        return self._per_task(lambda t: self._episode_logits(t[0], t[1]), (sx, qx),
                              tf.TensorSpec([qx.shape[1], n_way], self._dtype))

    def _episode_losses(self, sx, qx, qy):
        return self._per_task(lambda t: common.cross_entropy(self._episode_logits(t[0], t[1]), t[2]),
                              (sx, qx, qy), tf.TensorSpec([], self._dtype))

    def _meta_grad(self, sx, qx, qy):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(self._episode_losses(sx, qx, qy))
        return tape.gradient(loss, list(self.weights.values())), loss

    def _outer(self, sx, qx, qy):
        grads, loss = self._meta_grad(sx, qx, qy)
        self.opt.apply(grads)
        return loss

    def _adapt_batch(self, sx, qx):
        n_way, d = sx.shape[1] // self._k_shot, self._features
        signature = (tf.TensorSpec([n_way, d], self._dtype), tf.TensorSpec([qx.shape[1], d], self._dtype))
        return self._per_task(lambda t: self._embed_episode(t[0], t[1]), (sx, qx), signature)

    def _evaluate(self, sx, qx, qy):
        hit = tf.equal(tf.argmax(self._logits(sx, qx), axis=-1, output_type=tf.int32), qy)
        return tf.reduce_mean(tf.cast(hit, self._dtype), axis=1)

    def _probe(self, sx, qx, qy):
        grads, _ = self._meta_grad(sx, qx, qy)
        return self._episode_losses(sx, qx, qy), self._logits(sx, qx), dict(zip(self.weights, grads, strict=True))

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        notes = (f"episodes by {self._batching}; support and query embedded in one pass; step in one "
                 "tf.function; own Adam (torch/optax epsilon form), step size halved on schedule")
        return common.describe(self.device, self._jit, self._dtype, notes, {"task_batching": self._batching})

    def to_device(self, batch):
        return common.TFBatch(batch, self._dev, self._dtype)

    def sync(self, outputs=None) -> None:
        common.sync(outputs)

    def _to_tf(self, name, value):
        return common.to_tf_layout(name, np.asarray(value)).astype(self._dtype.as_numpy_dtype)

    def get_params(self):
        return {k: np.ascontiguousarray(common.to_canonical(k, v.numpy())) for k, v in self.weights.items()}

    def set_params(self, params):
        for k, v in self.weights.items():  # in place: the traced functions hold these variables
            v.assign(self._to_tf(k, params[k]))
        self.opt.reset()

    def outer_step(self, batch):
        with tf.device(self._dev):
            return self._outer_fn(batch.support_x, batch.query_x, batch.query_y)

    def adapt(self, batch):
        """Class prototypes and query embeddings: [B, n_way, d], [B, n_query_total, d]."""
        with tf.device(self._dev):
            return self._adapt_fn(batch.support_x, batch.query_x)

    def evaluate(self, batch) -> np.ndarray:
        with tf.device(self._dev):
            return self._evaluate_fn(batch.support_x, batch.query_x, batch.query_y).numpy().astype(np.float64)

    def probe(self, batch):
        with tf.device(self._dev):
            losses, logits, grads = self._probe_fn(batch.support_x, batch.query_x, batch.query_y)
        # ProtoNet has no inner loop: its "support loss" is the episode loss itself.
        out = {"support_loss": losses.numpy(), "query_logits": logits.numpy()}
        out.update({f"meta_grad/{k}": common.to_canonical(k, g.numpy()) for k, g in grads.items()})
        return out

    def reset_peak_memory(self) -> None:
        common.reset_peak_memory(self.device)

    def peak_memory(self) -> MemoryReading:
        return common.peak_memory(self.device)

    def compilation_count(self) -> int:
        fns = (self._outer_fn, self._probe_fn, self._adapt_fn, self._evaluate_fn)
        return sum(f.experimental_get_tracing_count() for f in fns)
