"""MAML (Finn et al. 2017) and its first-order form: adapt all parameters by ``inner_steps``
gradient steps on each task's support set, meta-learn through the adaptation."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.algorithms.base import (
    AdapterConfig,
    Algorithm,
    Check,
    EpisodeShape,
    InnerLoop,
    Settings,
    SpecView,
    setting,
)


@dataclass(frozen=True)
class MAMLSettings(Settings):
    """The ``[maml]`` section (``docs/spec-format.md``)."""

    inner_lr: float = setting()
    inner_steps: int = setting(1)               # adaptation steps while meta-training
    test_inner_steps: int = setting(1)          # adaptation steps at evaluation
    first_order: bool = setting(False, low=None)
    meta_batch_size: int = setting(32)
    meta_lr: float = setting(1e-3)
    train_n_query: int = setting(0, above=False)  # query samples per class while training; 0: episode.k_shot


INNER_STEP = ("one inner SGD step on each task's support set from self.params (left unchanged): "
              "p - self.config.inner.lr * grad of the support loss (cross-entropy; MSE for regression)")
ORDER = ("second order, through the inner steps (first order when self.config.inner.first_order: "
         "the inner gradients are constants)")
TEST_TIME = {
    "adapt": "self.config.inner.test_steps inner steps per task, as inner_step; the adapted parameters.",
    "predict": "the model's outputs on the query set with each task's adapted parameters "
               "(self.adapt(batch)): logits [B, n_query_total, n_way]; regression: [B, n_query, 1].",
    "probe": "from self.params, changing nothing: support_loss [B] (each task's support loss before "
             "adaptation), query_logits (query outputs after self.config.inner.steps inner steps), "
             "meta_grad/<param> (the gradient outer_step applies, canonical shape).",
}
DIAGNOSIS = Check(
    support_loss="the loss before adaptation differs: the forward pass or the loss (model, "
                 "BatchNorm, padding, pooling, loss reduction)",
    query_logits="the loss before adaptation agrees, the adapted query outputs do not: the inner "
                 "update (its sign, step size or number of steps, or what it updates)",
    meta_grad="the outputs agree, the meta-gradient does not: its order (second or first), the "
              "meta-loss's mean over tasks, or one layer's gradient")


class MAMLFamily(Algorithm):
    """Algorithms configured by the ``[maml]`` section: training episodes have the
    evaluation's way and shot, and ``maml.train_n_query`` query samples (0: the shot)."""

    train_query_field = "train_n_query"

    def train_shape(self, spec: SpecView) -> EpisodeShape:
        e = spec.episode
        return EpisodeShape(e.n_way, e.k_shot, spec.settings(self.section).train_n_query or e.k_shot)

    def inner_loop(self, spec: SpecView) -> InnerLoop:
        h = self.hyperparameters(spec)
        return InnerLoop(h.inner_lr, h.inner_steps, h.test_inner_steps, h.first_order)

    def training_shapes(self, spec: dict) -> str:
        e, m = spec.get("episode", {}), spec.get(self.section) or {}
        if spec.get("data", {}).get("dataset") == "sinusoid":
            return super().training_shapes(spec)
        return (f"Conv-4, {e.get('n_way')}-way {e.get('k_shot')}-shot, {m.get('train_n_query')} query/class, "
                f"meta-batch {m.get('meta_batch_size')}, {m.get('inner_steps')} inner step")

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


MAML_MATHS = {
    "inner_step": INNER_STEP + " w.r.t. every parameter. Returns every task's adapted parameters.",
    "outer_step": "adapt each task by self.config.inner.steps inner steps; loss = mean over tasks of the "
                  f"query loss after adaptation; its gradient w.r.t. self.params, {ORDER}; "
                  "one Adam step (self._adam_step); return the loss.",
    **TEST_TIME,
}

MAML = MAMLFamily("maml", "maml", MAMLSettings, ("inner_step", "outer_step"),
                  "MAML, second order: the meta-gradient flows through the inner gradient steps",
                  diagnosis=DIAGNOSIS, maths=MAML_MATHS)
FOMAML = MAMLFamily("fomaml", "maml", MAMLSettings, ("inner_step", "outer_step"),
                    "first-order MAML: the inner gradients are constants to the meta-gradient",
                    family="maml", default_profiles=("cpu", "paper"), section_overrides={"first_order": True},
                    diagnosis=DIAGNOSIS, maths=MAML_MATHS)
