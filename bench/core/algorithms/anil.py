"""ANIL (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): MAML whose inner loop adapts
the head alone. The body's features of a task's support and query sets are computed once;
the head takes ``inner_steps`` gradient steps on the support features; the meta-gradient
reaches the body through those features (second order in the head's steps).

It reads MAML's ``[maml]`` section (inner step size and steps, meta-batch, meta step size),
so every spec that configures MAML configures ANIL. Its inner step is cheaper than MAML's:
one forward pass of the body per set, and gradients of a linear layer only.

Not in any profile's default algorithms: its float32 parity on Omniglot is not settled
(``docs/fairness.md``), and a default run must not fail on it; ``--algorithms anil`` runs it.
"""

from __future__ import annotations

from bench.core.algorithms.base import AdapterConfig
from bench.core.algorithms.maml import DIAGNOSIS, INNER_STEP, ORDER, TEST_TIME, MAMLFamily, MAMLSettings


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


ANIL = ANILAlgorithm(
    "anil", "maml", MAMLSettings, ("inner_step", "outer_step"),
    "ANIL: MAML with the inner loop on the head only (features computed once per set)",
    default_profiles=(), diagnosis=DIAGNOSIS,
    maths={"inner_step": INNER_STEP + " w.r.t. the head only (head.weight, head.bias), on the body's "
                         "support features computed once. Returns every task's parameters, head adapted.",
           "outer_step": "adapt each task's head by self.config.inner.steps inner steps; loss = mean over tasks "
                         "of the query loss after adaptation; its gradient w.r.t. self.params (the body's "
                         f"through the support and query features), {ORDER}; one Adam step "
                         "(self._adam_step); return the loss.",
           **TEST_TIME})
