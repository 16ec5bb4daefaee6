"""Second-order MAML written plainly in JAX, as JAX's MAML tutorials write it: pure
functions of a parameter pytree, ``jax.grad`` for the inner step, ``jax.vmap`` over the
tasks, and the whole outer step (meta-gradient and ``optax.adam`` update) in one
``jax.jit``. Images NHWC with HWIO kernels and ``lax.conv_general_dilated``, BatchNorm from
the batch's mean and variance, 2x2 max-pool by ``lax.reduce_window``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax


def dense(p, name, x):
    return x @ p[f"{name}.weight"] + p[f"{name}.bias"]


def mlp(p, x):
    return dense(p, "head", jax.nn.relu(dense(p, "fc2", jax.nn.relu(dense(p, "fc1", x)))))


def conv4(p, x, eps):
    for i in range(1, 5):
        x = lax.conv_general_dilated(x, p[f"conv{i}.weight"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        x = (x - mean) / jnp.sqrt(var + eps) * p[f"bn{i}.weight"] + p[f"bn{i}.bias"]
        x = lax.reduce_window(jax.nn.relu(x), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    features = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # (C, H, W): the head's canonical order
    return dense(p, "head", features)


# canonical (PyTorch) layout <-> this module's: conv OIHW <-> HWIO, linear (out, in) <-> (in, out)
def _to_jax(a):
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _to_canonical(a):
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


class PlainJaxMAML:
    name = "plain-jax"

    def __init__(self, config, params: dict[str, np.ndarray]):
        inner, meta = config.inner, config.meta_optimizer
        if config.regression:
            forward = mlp
            loss_of = lambda out, y: jnp.mean((out - y) ** 2)
        else:
            eps = config.model.bn_eps
            forward = lambda p, x: conv4(p, x, eps)
            loss_of = lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

        def loss(p, x, y):
            return loss_of(forward(p, x), y)

        def task_query_loss(p, sx, sy, qx, qy):
            for _ in range(inner.steps):
                g = jax.grad(loss)(p, sx, sy)
                p = jax.tree.map(lambda w, gw: w - inner.lr * gw, p, g)
            return loss(p, qx, qy)

        def meta_loss(p, batch):
            return jax.vmap(task_query_loss, in_axes=(None, 0, 0, 0, 0))(p, *batch).mean()

        self.optimizer = optax.adam(meta.lr, b1=meta.b1, b2=meta.b2, eps=meta.eps)

        @jax.jit
        def outer_step(p, opt_state, batch):
            loss_value, g = jax.value_and_grad(meta_loss)(p, batch)
            updates, opt_state = self.optimizer.update(g, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss_value

        self._outer_step = outer_step
        self._meta_grad = jax.jit(jax.grad(meta_loss))
        self.params = {k: jnp.asarray(_to_jax(np.asarray(v))) for k, v in params.items()}
        self.opt_state = self.optimizer.init(self.params)

    @staticmethod
    def to_device(batch):
        def move(a):
            return jnp.asarray(a.astype(np.int32) if a.dtype.kind == "i" else a)
        return tuple(move(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))

    def step(self, batch):
        self.params, self.opt_state, loss = self._outer_step(self.params, self.opt_state, batch)
        return loss

    def sync(self, out) -> None:
        jax.block_until_ready((out, self.params, self.opt_state))

    def meta_grad(self, batch) -> dict[str, np.ndarray]:
        return {k: _to_canonical(np.asarray(v)) for k, v in self._meta_grad(self.params, batch).items()}

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: np.array(_to_canonical(np.asarray(v))) for k, v in self.params.items()}

    def compilation_count(self):
        return self._outer_step._cache_size()


PROTONET_PARAMS = tuple(f"{kind}{i}.{p}" for i in range(1, 5) for kind, p in (("conv", "weight"), ("bn", "weight"),
                                                                             ("bn", "bias")))


def embed(p, x, eps):
    """Conv-4's features: four blocks of convolution, batch-statistics BatchNorm, ReLU, max-pool."""
    for i in range(1, 5):
        x = lax.conv_general_dilated(x, p[f"conv{i}.weight"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        x = (x - mean) / jnp.sqrt(var + eps) * p[f"bn{i}.weight"] + p[f"bn{i}.bias"]
        x = lax.reduce_window(jax.nn.relu(x), -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return x.reshape(x.shape[0], -1)


class PlainJaxProtoNet:
    """Prototypical Networks as JAX's examples write them: Conv-4 as a pure function of a
    parameter dict, support and query embedded in one pass per episode, squared Euclidean
    distances to the class means, the whole outer step (``jax.value_and_grad`` and
    ``optax.adam``) in one ``jax.jit``; a training step's episodes in a Python loop."""

    name = "plain-jax-protonet"

    def __init__(self, config, params: dict[str, np.ndarray]):
        eps, meta = config.model.bn_eps, config.meta_optimizer
        n_way, k_shot = config.train_shape.n_way, config.train_shape.k_shot

        def episode_loss(p, sx, qx, qy):
            z = embed(p, jnp.concatenate([sx, qx]), eps)
            protos = z[:sx.shape[0]].reshape(n_way, k_shot, -1).mean(1)
            logits = -((z[sx.shape[0]:, None, :] - protos[None]) ** 2).sum(-1)
            return optax.softmax_cross_entropy_with_integer_labels(logits, qy).mean()

        def loss(p, batch):
            sx, qx, qy = batch
            return sum(episode_loss(p, sx[t], qx[t], qy[t]) for t in range(sx.shape[0])) / sx.shape[0]

        self.optimizer = optax.adam(meta.lr, b1=meta.b1, b2=meta.b2, eps=meta.eps)

        @jax.jit
        def outer_step(p, opt_state, batch):
            loss_value, g = jax.value_and_grad(loss)(p, batch)
            updates, opt_state = self.optimizer.update(g, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss_value

        self._outer_step = outer_step
        self._meta_grad = jax.jit(jax.grad(loss))
        self.params = {k: jnp.asarray(_to_jax(np.asarray(params[k]))) for k in PROTONET_PARAMS}
        self.opt_state = self.optimizer.init(self.params)

    @staticmethod
    def to_device(batch):
        return (jnp.asarray(batch.support_x), jnp.asarray(batch.query_x), jnp.asarray(batch.query_y.astype(np.int32)))

    step, sync, meta_grad, get_params, compilation_count = (
        PlainJaxMAML.step, PlainJaxMAML.sync, PlainJaxMAML.meta_grad, PlainJaxMAML.get_params,
        PlainJaxMAML.compilation_count)
