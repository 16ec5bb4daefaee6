"""What an algorithm is to the harness, declared once, without a framework.

An ``Algorithm`` says which spec section holds its hyperparameters, which steps are timed,
what the meta-optimizer is, what its training episodes look like, whether the model has a
head, and how a task's metric follows from the model's query outputs. The harness asks it
and never branches on an algorithm's name (AlgoPerf's ``workload.py`` lesson); an adapter
implements only the maths. Adding an algorithm: a module here, its entry in
``bench.algorithms.ALGORITHMS``, and the adapters that implement it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bench.spec import EpisodeShape, EpisodeSpec


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
