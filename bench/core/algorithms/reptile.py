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
Not in any profile's default algorithms: ``--algorithms reptile`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.algorithms.base import (
    AdapterConfig,
    Algorithm,
    Check,
    EpisodeShape,
    Fail,
    InnerLoop,
    Settings,
    SpecView,
    setting,
)
from bench.core.algorithms.maml import INNER_STEP, TEST_TIME


@dataclass(frozen=True)
class ReptileSettings(Settings):
    """The ``[reptile]`` section (``docs/spec-format.md``)."""

    inner_lr: float = setting(help="SGD step size of the inner loop")
    inner_steps: int = setting(5, help="full-batch SGD steps per task while meta-training")
    test_inner_steps: int = setting(10, help="SGD steps at evaluation")
    train_shots: int = setting(0, above=False, help="support samples per class of a training task; 0: episode.k_shot")
    meta_batch_size: int = setting(5)
    meta_lr: float = setting(1e-3, help="Adam step size on the pseudo-gradient")


class ReptileAlgorithm(Algorithm):
    def train_shape(self, spec: SpecView) -> EpisodeShape:
        e, r = spec.episode, self.hyperparameters(spec)
        return EpisodeShape(e.n_way, r.train_shots or e.k_shot, 1)

    def inner_loop(self, spec: SpecView) -> InnerLoop:
        h = self.hyperparameters(spec)
        return InnerLoop(h.inner_lr, h.inner_steps, h.test_inner_steps, first_order=True)

    def check_train_images(self, spec: SpecView, shape: EpisodeShape, images_per_class: int, fail: Fail) -> None:
        """A training task takes ``train_shots`` (0: ``k_shot``) support and one query image
        of each class."""
        if shape.k_shot + shape.n_query > images_per_class:
            which = "train_shots" if spec.settings(self.section).train_shots else "k_shot"
            fail(f"{self.section}.train_shots", f"{which} + 1 query image = {shape.k_shot + 1} exceeds the "
                 f"{images_per_class} training images per class; use train_shots <= {images_per_class - 1}")

    def training_shapes(self, spec: dict) -> str:
        e, r = spec.get("episode", {}), spec.get(self.section) or {}
        body = "MLP 40-40" if spec.get("data", {}).get("dataset") == "sinusoid" else f"Conv-4, {e.get('n_way')}-way"
        return (f"{body}, {r.get('train_shots') or e.get('k_shot')} shots, meta-batch {r.get('meta_batch_size')}, "
                f"{r.get('inner_steps')} SGD steps")

    def step_flops(self, phase: str, config: AdapterConfig, tasks: int) -> float | None:
        """Per task, each inner step a forward and backward pass on the support set: the
        outer step takes ``steps`` of them (the support loss it returns is the first one's
        forward pass), the inner step one, test-time adaptation ``test_steps``."""
        from bench.core.flops import BACKWARD, forward

        shape = config.test_shape if phase == "adapt" else config.train_shape
        n_out = 1 if config.regression else shape.n_way
        inner_step = (1 + BACKWARD) * forward(config, shape.n_way * shape.k_shot, n_out)
        steps = {"inner_step": 1, "outer_step": config.inner.steps, "adapt": config.inner.test_steps}
        return tasks * steps[phase] * inner_step if phase in steps else None


REPTILE = ReptileAlgorithm(
    "reptile", "reptile", ReptileSettings, ("inner_step", "outer_step"),
    "Reptile: SGD on each task, the meta-optimizer fed theta - mean of the adapted weights",
    default_profiles=(),
    diagnosis=Check(
        support_loss="the loss before adaptation differs: the forward pass or the loss (model, "
                     "BatchNorm, padding, pooling, loss reduction)",
        query_logits="the loss before adaptation agrees, the query outputs after the training-time SGD "
                     "steps do not: the inner update (its sign, step size, number of steps, or what it "
                     "updates) or the training tasks' support set (train_shots)",
        meta_grad="the adapted outputs agree, the pseudo-gradient does not: theta minus the mean over "
                  "tasks of the adapted parameters (its sign, the mean), or an outer step that adapts "
                  "otherwise than the probe"),
    maths={
        "inner_step": INNER_STEP + " w.r.t. every parameter. Returns every task's adapted parameters.",
        "outer_step": "for each task, self.config.inner.steps inner steps on its support set from self.params, "
                      "nothing differentiated through them (phi_i); the pseudo-gradient g = self.params - mean "
                      "over tasks of phi_i; one Adam step with g as the gradient (self._adam_step); return the "
                      "mean over tasks of the support loss at self.params (before adaptation).",
        **TEST_TIME,
    })
