"""MAML (Finn et al. 2017), second and first order, as pure JAX functions.

A task's query loss after adaptation, ``task_query_loss(params, support, query)``, is a
pure function of the parameters; the meta-batch is ``vmap``-ed over tasks and the
meta-gradient is ``grad`` of the mean. The whole outer step (adaptation, query loss,
meta-gradient, Adam update) is one ``jax.jit`` function, compiled once per batch shape.
First order stops the gradient through the inner gradients.

Options (measured on 2 CPU cores, omniglot-5w1s):

- ``inner_loop``: "unrolled" (default: a Python loop traced into the jitted function) or
  "scan" (``lax.scan`` over steps). One inner step, meta-batch 32: the same time (2.4 s
  and 2.5 s CPU per outer step, im2col). Five inner steps, meta-batch 4: unrolled 1.1 s
  against scan's 1.3 s (im2col), 6.5 s against 7.8 s (xla); scan compiles faster. The
  timed steps follow the option; ``predict`` (evaluation, untimed) always scans.
- ``conv``: "xla" (``lax.conv_general_dilated``, the default on GPU) or "im2col" (the
  default on CPU: the same maths as
  one matmul over patches). vmap over tasks with adapted, per-task weights turns XLA
  convolutions into grouped convolutions, which XLA:CPU runs and differentiates slowly:
  meta-batch 32, second order, 45 s CPU per outer step with "xla", 2.8 s with "im2col".
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import optax
from jax import lax

from bench.core.adapter import AdapterInfo, Option
from implementations.jax import common

INNER_LOOPS = ("unrolled", "scan")


class JaxMAML(common.JaxAdapter):
    algorithms = ("maml", "fomaml")
    OPTIONS = {**common.JaxAdapter.OPTIONS,
               "inner_loop": Option(str, "unrolled", INNER_LOOPS, "Python loop traced into the jit, or lax.scan"),
               "conv": Option(str, None, common.CONV_FORMS, "default: im2col on CPU, xla elsewhere")}

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self.inner_loop = self.options["inner_loop"]
        # im2col on CPU (XLA:CPU's grouped convolutions under vmap are ~16x slower, see
        # above); XLA's own convolution on accelerators, where cuDNN serves it.
        self.conv = self.options["conv"] = self.options["conv"] or ("im2col" if device == "cpu" else "xla")
        self._optimizer = common.make_adam(self.meta_optimizer)
        self.set_params(params)
        # The step functions, jitted once each; params and optimizer state belong to the
        # adapter and are replaced by every outer step, so they are donated (never the batch).
        self._outer = jax.jit(self._outer_fn, donate_argnums=(0, 1))
        self._inner = jax.jit(partial(self._vmapped_adapt, steps=1))
        self._test_adapt = jax.jit(partial(self._vmapped_adapt, steps=self.test_inner_steps))
        self._predict = jax.jit(self._predict_fn)
        self._probe = jax.jit(self._probe_fn)

    # -- the maths -------------------------------------------------------------------------
    def features(self, params, x):
        """The body: the MLP's last hidden layer, or Conv-4's flattened features."""
        if self.regression:
            return common.mlp_features(params, x)
        return common.conv4(params, x, self._bn, self._eps, self.conv, self._pool)

    def activations(self, batch):
        """The body's blocks on the first task's support set, from the current parameters."""
        x = batch.support_x[0]
        blocks = (common.mlp_blocks(self.params, x) if self.regression
                  else common.conv4_blocks(self.params, x, self._bn, self._eps, self.conv, self._pool))
        return common.block_activations(blocks)

    def forward(self, params, x):
        """One task's inputs -> outputs: the body's features, then the linear head."""
        return common.linear(params, "head", self.features(params, x))

    def loss_of_outputs(self, out, y):
        return common.mse(out, y) if self.regression else common.cross_entropy(out, y)

    def loss(self, params, x, y):
        return self.loss_of_outputs(self.forward(params, x), y)

    def adapt_task(self, params, x, y, steps: int, loop: str | None = None):
        """``steps`` gradient steps on one task's support set: params - inner_lr * grad,
        in a ``loop`` of INNER_LOOPS (default: the ``inner_loop`` option)."""
        def step(p, _):
            g = jax.grad(self.loss)(p, x, y)
            if self.first_order:
                g = lax.stop_gradient(g)
            return jax.tree.map(lambda w, gw: w - self.inner_lr * gw, p, g), None

        if (loop or self.inner_loop) == "scan":
            return lax.scan(step, params, length=steps)[0]
        for _ in range(steps):
            params, _ = step(params, None)
        return params

    def _vmapped_adapt(self, params, batch, steps: int, loop: str | None = None):
        return jax.vmap(partial(self.adapt_task, steps=steps, loop=loop), in_axes=(None, 0, 0))(
            params, batch.support_x, batch.support_y)

    def task_query_loss(self, params, sx, sy, qx, qy):
        return self.loss(self.adapt_task(params, sx, sy, self.inner_steps), qx, qy)

    def meta_loss(self, params, b: common.JaxBatch):
        losses = jax.vmap(self.task_query_loss, in_axes=(None, 0, 0, 0, 0))(
            params, b.support_x, b.support_y, b.query_x, b.query_y)
        return losses.mean()

    def _outer_fn(self, params, opt_state, batch):
        loss, grads = jax.value_and_grad(self.meta_loss)(params, batch)
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def _predict_fn(self, params, batch):
        # Evaluation's test-time adaptation (untimed, never differentiated) is always a
        # lax.scan: it runs as fast as the unrolled loop (Reptile's 10 steps on Omniglot: 167
        # against 172 ms) and compiles in a fraction (6 s against 15 s, one core), which every
        # accuracy phase and parity process pays per dtype.
        adapted = self._vmapped_adapt(params, batch, self.test_inner_steps, loop="scan")
        return jax.vmap(self.forward)(adapted, batch.query_x)

    def _probe_fn(self, params, batch):
        support_loss = jax.vmap(self.loss, in_axes=(None, 0, 0))(params, batch.support_x, batch.support_y)
        adapted = self._vmapped_adapt(params, batch, self.inner_steps)
        logits = jax.vmap(self.forward)(adapted, batch.query_x)
        grads = jax.grad(self.meta_loss)(params, batch)
        return support_loss, logits, grads

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        loop = "Python loop unrolled in the trace" if self.inner_loop == "unrolled" else "lax.scan"
        conv = "lax.conv_general_dilated" if self.conv == "xla" else "im2col matmul"
        return common.describe(
            self._dev, f"whole outer step (adaptation, meta-gradient, optax Adam) in one jax.jit, params "
                       f"and Adam state donated; tasks vmapped; inner loop: {loop} (on CPU, unrolled equals "
                       f"lax.scan at 1 step and is ~15% faster at 5); convolution: {conv}")

    def inner_step(self, batch):
        return self._inner(self.params, batch)

    def outer_step(self, batch):
        self.params, self.opt_state, loss = self._outer(self.params, self.opt_state, batch)
        return loss

    def adapt(self, batch):
        return self._test_adapt(self.params, batch)

    def predict(self, batch) -> np.ndarray:
        return np.asarray(self._predict(self.params, batch))

    def probe(self, batch):
        return self.probe_result(*self._probe(self.params, batch))

    def compilation_count(self) -> int | None:
        return common.cache_size(self._outer, self._inner, self._test_adapt, self._predict, self._probe)
