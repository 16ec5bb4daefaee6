"""ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner loop adapts
the head alone. The body's features of a task's support and query sets are computed once;
the head takes ``inner_steps`` gradient steps on the support features; the meta-gradient
reaches the body through those features (second order in the head's steps).

It reads MAML's ``[maml]`` section (inner step size and steps, meta-batch, meta step size),
so every spec that configures MAML configures ANIL. Its inner step is cheaper than MAML's:
one forward pass of the body per set, and gradients of a linear layer only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core.algorithms.maml import MAMLFamily

if TYPE_CHECKING:
    from bench.core.algorithms.base import AdapterConfig


class ANILAlgorithm(MAMLFamily):
    def step_flops(self, phase: str, config: AdapterConfig, tasks: int) -> float | None:
        """Per task: the body's forward pass on the support (and, training, the query) set
        once; each inner step a forward and backward pass of the head on the support
        features; the meta-gradient a backward pass through the whole graph."""
        from bench.core.flops import BACKWARD, body_forward, head_forward

        shape = config.test_shape if phase == "adapt" else config.train_shape
        n_out = 1 if config.regression else shape.n_way
        n_s, n_q = shape.n_way * shape.k_shot, shape.n_way * shape.n_query
        head_step = (1 + BACKWARD) * head_forward(config, n_s, n_out)
        if phase == "inner_step":
            return tasks * (body_forward(config, n_s) + head_step)
        if phase == "adapt":
            return tasks * (body_forward(config, n_s) + config.inner.test_steps * head_step)
        if phase == "outer_step":
            graph = (body_forward(config, n_s + n_q) + config.inner.steps * head_step
                     + head_forward(config, n_q, n_out))
            return tasks * (1 + BACKWARD) * graph
        return None


ANIL = ANILAlgorithm("anil", "maml", ("inner_step", "outer_step"),
                     "ANIL: MAML with the inner loop on the head only (features computed once per set)")
