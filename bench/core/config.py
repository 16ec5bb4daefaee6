"""What an adapter receives instead of a spec, and the shapes every stage shares: plain
data, no behaviour, importing nothing of metabench (the bottom of ``bench.core``).

``EpisodeShape`` is an episode's size; ``AdapterConfig`` is everything an adapter may read
(model, episode shapes, inner loop, meta-optimizer), resolved from the spec by the
algorithm (``bench.core.algorithms``); ``CONV_BLOCKS`` is Conv-4's depth
(``bench.core.models``).
"""

from __future__ import annotations

from dataclasses import dataclass

CONV_BLOCKS = 4  # Conv-4: each block halves the side (2x2 max-pool, floor)


@dataclass(frozen=True)
class EpisodeShape:
    """An evaluation episode: ``n_way`` classes, ``k_shot`` support and ``n_query`` query
    samples per class (sinusoid: ``n_way = 1``, ``k_shot`` and ``n_query`` points)."""

    n_way: int
    k_shot: int
    n_query: int


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


