"""Reptile (Nichol et al. 2018) in JAX: MAML's adapter whose outer step feeds Reptile's
pseudo-gradient to optax's Adam. Each task takes ``inner_steps`` SGD steps on its support
set from theta (phi_i, nothing differentiated through them); ``theta - mean_i(phi_i)`` is
the gradient Adam receives. The paper's ``theta += eps * (mean phi - theta)`` is SGD with
step eps on it; Adam on it is the common reimplementation choice
(``bench.algorithms.reptile``). Everything else (the loss, jit with params and Adam state
donated, tasks vmapped, the inner step and test-time adaptation, the options) is
``JaxMAML``'s."""

from __future__ import annotations

from dataclasses import replace

import jax
import optax
from jax import lax

from bench.adapter import AdapterInfo
from implementations.jax.maml import JaxMAML


class JaxReptile(JaxMAML):
    algorithms = ("reptile",)

    def reptile_task(self, params, x, y):
        """One task's ``inner_steps`` SGD steps from ``params``: phi and the support loss at
        ``params`` (the first step's forward pass)."""
        def step(p, _):
            loss, g = jax.value_and_grad(self.loss)(p, x, y)
            return jax.tree.map(lambda w, gw: w - self.inner_lr * gw, p, g), loss

        if self.inner_loop == "scan":
            params, losses = lax.scan(step, params, length=self.inner_steps)
            return params, losses[0]
        losses = []
        for _ in range(self.inner_steps):
            params, loss = step(params, None)
            losses.append(loss)
        return params, losses[0]

    def pseudo_gradient(self, params, batch):
        """Each task's support loss at theta [B], ``theta - mean_i(phi_i)``, and phi [B, ...]."""
        phi, losses = jax.vmap(self.reptile_task, in_axes=(None, 0, 0))(params, batch.support_x, batch.support_y)
        return losses, jax.tree.map(lambda w, p: w - p.mean(axis=0), params, phi), phi

    def _outer_fn(self, params, opt_state, batch):
        losses, grads, _ = self.pseudo_gradient(params, batch)
        updates, opt_state = self._optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, losses.mean()

    def _probe_fn(self, params, batch):
        losses, grads, phi = self.pseudo_gradient(params, batch)
        return losses, jax.vmap(self.forward)(phi, batch.query_x), grads

    def describe(self) -> AdapterInfo:
        info = super().describe()
        return replace(info, notes="Reptile: theta - mean of the tasks' SGD steps (not differentiated) as "
                                   "Adam's gradient; " + info.notes)
