"""ANIL (Raghu et al. 2020) in JAX: MAML's adapter with the inner loop on the head alone.
A task's support features are computed once; the head takes the inner steps on them; the
meta-gradient reaches the body through the features. Everything else (jit, vmap over
tasks, optax Adam, the options) is ``JaxMAML``'s."""

from __future__ import annotations

from dataclasses import replace

import jax
from jax import lax

from bench.core.adapter import AdapterInfo
from implementations.jax import common
from implementations.jax.maml import JaxMAML

HEAD = ("head.weight", "head.bias")


class JaxANIL(JaxMAML):
    algorithms = ("anil",)

    def adapt_task(self, params, x, y, steps: int, loop: str | None = None):
        features = self.features(params, x)

        def step(head, _):
            g = jax.grad(lambda h: self.loss_of_outputs(common.linear(h, "head", features), y))(head)
            if self.first_order:
                g = lax.stop_gradient(g)
            return jax.tree.map(lambda w, gw: w - self.inner_lr * gw, head, g), None

        head = {k: params[k] for k in HEAD}
        if (loop or self.inner_loop) == "scan":
            head = lax.scan(step, head, length=steps)[0]
        else:
            for _ in range(steps):
                head, _ = step(head, None)
        return {**params, **head}

    def describe(self) -> AdapterInfo:
        info = super().describe()
        return replace(info, notes="inner loop on the head over features computed once per set; " + info.notes)
