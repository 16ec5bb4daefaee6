"""What an algorithm is to the harness, declared once, without a framework.

An ``Algorithm`` says which spec section holds its hyperparameters, which steps are timed,
what the meta-optimizer is, what its training episodes look like, whether the model has a
head, and how a task's metric follows from the model's query outputs. The harness asks it
and never branches on an algorithm's name (AlgoPerf's ``workload.py`` lesson); an adapter
implements only the maths. Adding an algorithm: a module here, its entry in
``bench.core.algorithms.ALGORITHMS``, and the adapters that implement it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.core.spec import EpisodeShape, EpisodeSpec


@dataclass(frozen=True)
class MetaOptimizer:
    """The outer-loop optimizer every framework reproduces: Adam with epsilon added to the
    bias-corrected sqrt(v) (torch's and optax's form; Keras puts it elsewhere), and an
    optional staircase schedule that halves the step size every ``halve_every`` updates."""

    lr: float
    halve_every: int = 0          # 0: a constant step size
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def step_size(self, update: int) -> float:
        """The step size of update ``update`` (0-based), as torch's StepLR stepped after
        each update gives it."""
        return self.lr * 0.5 ** (update // self.halve_every) if self.halve_every else self.lr


@dataclass(frozen=True)
class ModelConfig:
    """The backbone an adapter builds; its parameters' names and shapes are
    ``bench.core.models.param_shapes``."""

    kind: str                       # "conv4" (images) or "mlp" (sinusoid)
    hidden: int                     # Conv-4's filters or the MLP's units
    batch_norm: bool                # Conv-4: BatchNorm with the batch's statistics (transductive)
    bn_eps: float
    image_size: int                 # Conv-4's input side; 0 for the MLP
    feature_map: tuple[int, int, int] | None  # Conv-4's last (C, H, W), flattened in that order


@dataclass(frozen=True)
class InnerLoop:
    """The MAML family's adaptation: SGD on each task's support set."""

    lr: float
    steps: int                      # while meta-training
    test_steps: int                 # at evaluation
    first_order: bool               # the inner gradients are constants to the meta-gradient


@dataclass(frozen=True)
class AdapterConfig:
    """Everything an adapter reads, resolved by the harness from the spec: the model, the
    episode shapes, the algorithm's hyperparameters and the meta-optimizer. Adapters never
    see the spec itself, so what they may depend on is this list."""

    algorithm: str
    model: ModelConfig
    regression: bool                # MSE on real-valued targets, else classification
    train_shape: EpisodeShape       # a meta-training episode
    test_shape: EpisodeShape        # an evaluation episode (the spec's ``[episode]``)
    meta_optimizer: MetaOptimizer
    inner: InnerLoop | None = None  # the MAML family's inner loop; None for ProtoNet
    meta_batch_size: int = 0        # tasks (episodes) per training step; 0: not given


@dataclass(frozen=True)
class Algorithm:
    name: str                       # "maml", as in specs, cells and results
    section: str                    # the spec section holding its hyperparameters
    phases: tuple[str, ...]         # adapter methods the timing suite times, in report order
    summary: str                    # one line for `metabench list` and the docs
    has_head: bool = True           # the model ends in a linear head (MAML family), or not (ProtoNet)
    # fields of the section this algorithm fixes: FOMAML is MAML with first_order = true
    section_overrides: dict[str, Any] = field(default_factory=dict)

    # -- what the spec configures ----------------------------------------------------------
    def configured_by(self, spec: EpisodeSpec) -> bool:
        return getattr(spec, self.section) is not None

    def hyperparameters(self, spec: EpisodeSpec):
        """The spec's section for this algorithm, with this algorithm's overrides applied."""
        section = getattr(spec, self.section)
        return replace(section, **self.section_overrides) if self.section_overrides else section

    def resolve(self, spec: EpisodeSpec) -> EpisodeSpec:
        """The spec as this algorithm sees it (its section's overrides applied)."""
        return replace(spec, **{self.section: self.hyperparameters(spec)})

    def meta_optimizer(self, spec: EpisodeSpec) -> MetaOptimizer:
        h = self.hyperparameters(spec)
        return MetaOptimizer(h.meta_lr, getattr(h, "lr_halve_every", 0))

    def meta_batch_size(self, spec: EpisodeSpec) -> int:
        return self.hyperparameters(spec).meta_batch_size

    def train_shape(self, spec: EpisodeSpec) -> EpisodeShape:
        """The shape of a training episode (evaluation episodes are ``spec.episode``)."""
        raise NotImplementedError

    def step_flops(self, phase: str, config: AdapterConfig, tasks: int) -> float | None:
        """Analytic FLOPs of one timed ``phase`` on a meta-batch of ``tasks`` episodes
        (``bench.core.flops``: convolutions and matrix products); None where not declared."""
        return None

    def inner_loop(self, spec: EpisodeSpec) -> InnerLoop | None:
        """The inner loop's hyperparameters, for algorithms that adapt by gradient steps."""
        return None

    def adapter_config(self, spec: EpisodeSpec) -> AdapterConfig:
        """What an adapter of this algorithm receives instead of the spec."""
        from bench.core.models import CONV_BLOCKS

        m, side = spec.model, spec.data.image_size
        fmap = None
        if not spec.is_regression:
            for _ in range(CONV_BLOCKS):
                side //= 2
            fmap = (m.hidden, side, side)
        model = ModelConfig("mlp" if spec.is_regression else "conv4", m.hidden, m.batch_norm != "none", m.bn_eps,
                            0 if spec.is_regression else spec.data.image_size, fmap)
        return AdapterConfig(self.name, model, spec.is_regression, self.train_shape(spec), spec.episode,
                             self.meta_optimizer(spec), self.inner_loop(spec), self.meta_batch_size(spec))

    # -- what the harness computes from an adapter's outputs -------------------------------
    @staticmethod
    def metric_name(spec: EpisodeSpec) -> str:
        return "mse" if spec.is_regression else "accuracy"

    @staticmethod
    def metric(outputs: np.ndarray, query_y: np.ndarray, regression: bool) -> np.ndarray:
        """Per-task metric, float64 [B], from the query outputs after test-time adaptation:
        outputs [B, n_query_total, n_out] (logits, or negative distances for ProtoNet;
        regression: [B, n_query, 1]) and the labels or targets ``query_y``. Accuracy counts
        exact argmax hits (ties go to the first class, as every framework's argmax does);
        MSE is the mean over the task's query points."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if regression:
            return np.square(outputs - np.asarray(query_y, np.float64)).mean(axis=(1, 2))
        return (outputs.argmax(axis=-1) == np.asarray(query_y)).mean(axis=1, dtype=np.float64)
