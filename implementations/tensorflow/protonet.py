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

from bench.core.adapter import AdapterInfo
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


class TFProtoNet(common.TFAdapter):
    algorithms = ("protonet",)

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self._batching = self.options["task_batching"] = self.options["task_batching"] or TASK_BATCHING
        self._k_shot = self.config.test_shape.k_shot  # training episodes have the same shot
        c, h, w = self.config.model.feature_map
        self._features = c * h * w
        self._make_weights(params)
        self._outer_fn = self._compile(self._outer)
        self._probe_fn = self._compile(self._probe)
        self._adapt_fn = self._compile(self._adapt_batch)
        self._predict_fn = self._compile(self._logits)

    # -- the maths -------------------------------------------------------------------------
    def activations(self, batch):
        """The body's blocks on the first episode's support and query sets (one pass)."""
        with tf.device(self._dev):
            x = tf.concat([batch.support_x[0], batch.query_x[0]], axis=0)
            return common.block_activations(common.conv4_blocks(self.weights, x, self._bn, self._eps))

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

    def _probe(self, sx, qx, qy):
        grads, _ = self._meta_grad(sx, qx, qy)
        return self._episode_losses(sx, qx, qy), self._logits(sx, qx), dict(zip(self.weights, grads, strict=True))

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        notes = (f"episodes by {self._batching}; support and query embedded in one pass; step in one "
                 "tf.function; own Adam (torch/optax epsilon form), step size halved on schedule")
        return common.describe(self.device, self._jit, self._dtype, notes, {"task_batching": self._batching})

    def outer_step(self, batch):
        with tf.device(self._dev):
            return self._outer_fn(batch.support_x, batch.query_x, batch.query_y)

    def adapt(self, batch):
        """Class prototypes and query embeddings: [B, n_way, d], [B, n_query_total, d]."""
        with tf.device(self._dev):
            return self._adapt_fn(batch.support_x, batch.query_x)

    def predict(self, batch) -> np.ndarray:
        with tf.device(self._dev):
            return self._predict_fn(batch.support_x, batch.query_x).numpy()

    def probe(self, batch):
        with tf.device(self._dev):
            # ProtoNet has no inner loop: its "support loss" is the episode loss itself.
            return self.probe_result(*self._probe_fn(batch.support_x, batch.query_x, batch.query_y))
