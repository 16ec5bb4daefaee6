"""Prototypical Networks (Snell et al. 2017): prototypes are class means of the support
embeddings, logits are negative squared Euclidean distances, loss is cross-entropy.

Support and query are embedded in one forward pass, as in the reference implementation,
so BatchNorm's batch statistics cover the whole episode. Episodes are ``vmap``-ed; the
whole outer step (embedding, loss, gradient, Adam with its step-size schedule) is one
``jax.jit`` function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.core.adapter import AdapterInfo
from implementations.jax import common


def prototypes(support: jax.Array, n_way: int) -> jax.Array:
    """[n_way * k_shot, d] class-major support embeddings -> [n_way, d] class means."""
    return support.reshape(n_way, -1, support.shape[-1]).mean(axis=1)


def neg_sq_distances(query: jax.Array, protos: jax.Array) -> jax.Array:
    """[q, d], [n, d] -> [q, n] logits: -||query - prototype||^2 (the difference form, not
    the |q|^2 - 2 q.p + |p|^2 expansion, as in the torch reference)."""
    return -jnp.square(query[:, None, :] - protos[None, :, :]).sum(-1)


class JaxProtoNet(common.JaxAdapter):
    algorithms = ("protonet",)

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self._k_shot = self.config.test_shape.k_shot  # training episodes have the same shot
        self._optimizer = common.make_adam(self.meta_optimizer)
        self.set_params(params)
        # params and optimizer state are replaced by every outer step: donated (never the batch)
        self._outer = jax.jit(self._outer_fn, donate_argnums=(0, 1))
        self._adapt = jax.jit(jax.vmap(self._embed_episode, in_axes=(None, 0, 0)))
        self._predict = jax.jit(self._predict_fn)
        self._probe = jax.jit(self._probe_fn)

    # -- the maths -------------------------------------------------------------------------
    def _embed_episode(self, params, sx, qx):
        """One episode -> (prototypes [n_way, d], query embeddings [n_query_total, d])."""
        n_support = sx.shape[0]
        z = common.conv4(params, jnp.concatenate([sx, qx]), self._bn, self._eps, pool=self._pool)
        return prototypes(z[:n_support], n_support // self._k_shot), z[n_support:]

    def activations(self, batch):
        """The body's blocks on the first episode's support and query sets (one pass)."""
        x = jnp.concatenate([batch.support_x[0], batch.query_x[0]])
        return common.block_activations(common.conv4_blocks(self.params, x, self._bn, self._eps, pool=self._pool))

    def _episode_logits(self, params, sx, qx):
        protos, query = self._embed_episode(params, sx, qx)
        return neg_sq_distances(query, protos)

    def _episode_loss(self, params, sx, qx, qy):
        return common.cross_entropy(self._episode_logits(params, sx, qx), qy)

    def _loss(self, params, b: common.JaxBatch):
        return jax.vmap(self._episode_loss, in_axes=(None, 0, 0, 0))(
            params, b.support_x, b.query_x, b.query_y).mean()

    def _outer_fn(self, params, opt_state, batch):
        loss, grads = jax.value_and_grad(self._loss)(params, batch)
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def _predict_fn(self, params, batch):
        return jax.vmap(self._episode_logits, in_axes=(None, 0, 0))(params, batch.support_x, batch.query_x)

    def _probe_fn(self, params, batch):
        logits = jax.vmap(self._episode_logits, in_axes=(None, 0, 0))(params, batch.support_x, batch.query_x)
        losses = jax.vmap(self._episode_loss, in_axes=(None, 0, 0, 0))(
            params, batch.support_x, batch.query_x, batch.query_y)
        return losses, logits, jax.grad(self._loss)(params, batch)

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        return common.describe(self._dev, "whole outer step (embedding, loss, gradient, optax Adam with "
                                          "step-size halving) in one jax.jit; episodes vmapped; support "
                                          "and query embedded in one pass; params and Adam state donated")

    def outer_step(self, batch):
        self.params, self.opt_state, loss = self._outer(self.params, self.opt_state, batch)
        return loss

    def adapt(self, batch):
        """The episodes' class prototypes and query embeddings: [B, n_way, d], [B, n_query_total, d]."""
        return self._adapt(self.params, batch.support_x, batch.query_x)

    def predict(self, batch) -> np.ndarray:
        return np.asarray(self._predict(self.params, batch))

    def probe(self, batch):
        # ProtoNet has no inner loop: its "support loss" is the episode loss itself.
        return self.probe_result(*self._probe(self.params, batch))

    def compilation_count(self) -> int | None:
        return common.cache_size(self._outer, self._adapt, self._predict, self._probe)
