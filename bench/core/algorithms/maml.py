"""MAML (Finn et al. 2017) and its first-order form: adapt all parameters by ``inner_steps``
gradient steps on each task's support set, meta-learn through the adaptation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core.algorithms.base import Algorithm, InnerLoop

if TYPE_CHECKING:
    from bench.core.algorithms.base import AdapterConfig
    from bench.core.spec import EpisodeShape, EpisodeSpec


class MAMLFamily(Algorithm):
    """Algorithms configured by the ``[maml]`` section: training episodes have the
    evaluation's way and shot, and ``maml.train_n_query`` query samples (0: the shot)."""

    def train_shape(self, spec: EpisodeSpec) -> EpisodeShape:
        from bench.core.spec import EpisodeShape

        e = spec.episode
        return EpisodeShape(e.n_way, e.k_shot, spec.maml.train_n_query or e.k_shot)

    def inner_loop(self, spec: EpisodeSpec) -> InnerLoop:
        h = self.hyperparameters(spec)
        return InnerLoop(h.inner_lr, h.inner_steps, h.test_inner_steps, h.first_order)

    def step_flops(self, phase: str, config: AdapterConfig, tasks: int) -> float | None:
        """Per task: an inner step is a forward and backward pass on the support set; the
        outer step's meta-loss graph is ``steps`` inner steps and a forward pass on the
        query set, and its gradient a backward pass through that graph (second order), or
        only through the query pass (first order: the inner gradients are constants)."""
        from bench.core.flops import BACKWARD, forward

        shape = config.test_shape if phase == "adapt" else config.train_shape
        n_out = 1 if config.regression else shape.n_way
        support = forward(config, shape.n_way * shape.k_shot, n_out)
        query = forward(config, shape.n_way * shape.n_query, n_out)
        inner_step = (1 + BACKWARD) * support
        steps = config.inner.steps
        if phase == "inner_step":
            return tasks * inner_step
        if phase == "adapt":
            return tasks * config.inner.test_steps * inner_step
        if phase == "outer_step":
            if config.inner.first_order:
                return tasks * (steps * inner_step + (1 + BACKWARD) * query)
            return tasks * (1 + BACKWARD) * (steps * inner_step + query)
        return None


MAML = MAMLFamily("maml", "maml", ("inner_step", "outer_step"),
                  "MAML, second order: the meta-gradient flows through the inner gradient steps")
FOMAML = MAMLFamily("fomaml", "maml", ("inner_step", "outer_step"),
                    "first-order MAML: the inner gradients are constants to the meta-gradient",
                    section_overrides={"first_order": True})
