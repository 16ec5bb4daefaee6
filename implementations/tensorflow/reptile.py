"""Reptile (Nichol et al. 2018) with ``tf.GradientTape``: MAML's adapter whose outer step
feeds Reptile's pseudo-gradient to the adapters' Adam. Each task takes ``inner_steps`` SGD
steps on its support set from theta (phi_i; one tape per step, no outer tape: nothing is
differentiated through them); ``theta - mean_i(phi_i)`` is the gradient Adam receives. The
paper's ``theta += eps * (mean phi - theta)`` is SGD with step eps on it; Adam on it is the
common reimplementation choice (``bench.algorithms.reptile``). Everything else
(tf.function, task batching, the inner step and test-time adaptation, the XLA option) is
``TFMAML``'s."""

from __future__ import annotations

import tensorflow as tf

from bench.adapter import AdapterInfo
from implementations.tensorflow import common
from implementations.tensorflow.maml import TFMAML


class TFReptile(TFMAML):
    algorithms = ("reptile",)

    def _reptile_task(self, params, x, y):
        """One task's ``inner_steps`` SGD steps from ``params``: phi and the support loss at
        ``params`` (the first step's forward pass)."""
        losses = []
        for _ in range(self.inner_steps):
            with tf.GradientTape() as tape:
                tape.watch(list(params.values()))
                losses.append(self.loss(params, x, y))
            grads = tape.gradient(losses[-1], params)
            params = {k: params[k] - self.inner_lr * grads[k] for k in params}
        return params, losses[0]

    def _pseudo_gradient(self, sx, sy):
        """Each task's support loss at theta [B], ``theta - mean_i(phi_i)``, and phi [B, ...]."""
        theta = self._current()
        signature = ({k: tf.TensorSpec(v.shape, self._dtype) for k, v in self.weights.items()}, self._scalar)
        phi, losses = self._per_task(lambda t: self._reptile_task(theta, t[0], t[1]), (sx, sy), signature)
        return losses, {k: theta[k] - tf.reduce_mean(phi[k], axis=0) for k in theta}, phi

    def _outer(self, sx, sy, qx, qy):
        losses, grads, _ = self._pseudo_gradient(sx, sy)
        self.opt.apply([grads[k] for k in self.weights])
        return tf.reduce_mean(losses)

    def _probe(self, sx, sy, qx, qy):
        losses, grads, phi = self._pseudo_gradient(sx, sy)
        return losses, self._query_outputs(phi, qx), grads

    def describe(self) -> AdapterInfo:
        notes = ("Reptile: theta - mean of the tasks' SGD steps (one GradientTape each, no outer tape) as Adam's "
                 f"gradient; tasks by {self._batching}; inner steps unrolled; whole outer step one tf.function; "
                 + ("max-pool as elementwise maxima; " if self._jit else "") + "own Adam (torch/optax epsilon form)")
        return common.describe(self.device, self._jit, self._dtype, notes, {"task_batching": self._batching})
