"""Reptile (Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms"):
adapt a copy of the parameters to each task by plain SGD on its support set, then move
the parameters towards the adapted ones. Nothing is differentiated through the inner loop.

For each task i of a meta-batch, ``inner_steps`` full-batch SGD steps (step size
``inner_lr``) on its support loss from theta give phi_i; the pseudo-gradient
``g = theta - mean_i(phi_i)`` goes to the harness's meta-optimizer. The paper's update
``theta += eps * (mean_i(phi_i) - theta)`` is SGD with step ``eps`` on this ``g``; Adam
on the pseudo-gradient (``meta_lr``), which every adapter here applies, is the common
reimplementation choice.

It has its own ``[reptile]`` section. Training tasks have the evaluation's way,
``train_shots`` support samples per class (0: the shot) and one query sample per class,
which only the parity probe reads (the adapted query outputs). The model has MAML's head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.algorithms.base import Algorithm, InnerLoop

if TYPE_CHECKING:
    from bench.algorithms.base import AdapterConfig
    from bench.spec import EpisodeShape, EpisodeSpec


class ReptileAlgorithm(Algorithm):
    def train_shape(self, spec: EpisodeSpec) -> EpisodeShape:
        from bench.spec import EpisodeShape

        e, r = spec.episode, self.hyperparameters(spec)
        return EpisodeShape(e.n_way, r.train_shots or e.k_shot, 1)

    def inner_loop(self, spec: EpisodeSpec) -> InnerLoop:
        h = self.hyperparameters(spec)
        return InnerLoop(h.inner_lr, h.inner_steps, h.test_inner_steps, first_order=True)

    def step_flops(self, phase: str, config: AdapterConfig, tasks: int) -> float | None:
        """Per task, each inner step a forward and backward pass on the support set: the
        outer step takes ``steps`` of them (the support loss it returns is the first one's
        forward pass), the inner step one, test-time adaptation ``test_steps``."""
        from bench.flops import BACKWARD, forward

        shape = config.test_shape if phase == "adapt" else config.train_shape
        n_out = 1 if config.regression else shape.n_way
        inner_step = (1 + BACKWARD) * forward(config, shape.n_way * shape.k_shot, n_out)
        steps = {"inner_step": 1, "outer_step": config.inner.steps, "adapt": config.inner.test_steps}
        return tasks * steps[phase] * inner_step if phase in steps else None


REPTILE = ReptileAlgorithm("reptile", "reptile", ("inner_step", "outer_step"),
                           "Reptile: SGD on each task, the meta-optimizer fed theta - mean of the adapted weights")
