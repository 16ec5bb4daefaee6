"""What an algorithm is to the harness, declared once, without a framework.

An ``Algorithm`` owns its spec section: the section's name and its schema (a frozen
dataclass of ``Settings``, whose fields' metadata say what values are allowed), and its
traits: which steps are timed, whether it adapts by inner gradient steps, whether the model
has a head, whether it can regress (the sinusoid), the metric and its direction, what each
parity quantity means, and what each maths method of an adapter computes (the scaffold's
TODOs). The harness reads these and never branches on an algorithm's name (AlgoPerf's
``workload.py`` lesson; an AST test, ``tests/test_layers.py``, enforces it); an adapter
implements only the maths.

Adding an algorithm: a module with an ``Algorithm`` (built-in: listed in
``bench.core.algorithms``; a plugin: the ``metabench.algorithms`` entry-point group), and
the adapters that implement it. Nothing else in the harness changes.

Algorithms never import the spec module (it is built from them): they read a spec through
``SpecView``, the few attributes they need.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from bench.core.config import CONV_BLOCKS, AdapterConfig, EpisodeShape, InnerLoop, MetaOptimizer, ModelConfig

__all__ = ["AdapterConfig", "Algorithm", "Check", "EpisodeShape", "InnerLoop", "MetaOptimizer",
           "ModelConfig", "Settings", "SpecView", "setting"]

# A validation failure: ``fail(path, message)`` raises the spec's one-line error
# (``bench.core.errors.SpecError`` naming the file and ``section.field``).
Fail = Callable[[str, str], None]


class SpecView(Protocol):
    """What an algorithm reads of a spec (``bench.core.spec.EpisodeSpec`` is one)."""

    episode: EpisodeShape
    data: Any      # DataSpec: dataset, image_size, ...
    model: Any     # ModelSpec: hidden, batch_norm, bn_eps
    source: str

    @property
    def is_regression(self) -> bool: ...

    def settings(self, section: str) -> Any: ...

    def with_settings(self, section: str, settings: Any) -> SpecView: ...


def setting(default: Any = dataclasses.MISSING, *, low: float | None = 0, above: bool = True,
            choices: tuple = (), help: str = "") -> Any:
    """A field of a settings section with what values it allows: ``> low`` (``above``) or
    ``>= low``; ``low=None``: any value of its type; ``choices``: one of them. The spec
    loader checks types, then these bounds, each as a one-line error naming the field."""
    meta = {"low": low, "above": above, "choices": choices, "help": help}
    return field(default=default, metadata=meta) if default is not dataclasses.MISSING else field(metadata=meta)


def check_bounds(settings: Any, section: str, fail: Fail) -> None:
    """The bounds that ``setting`` declared, for every field of a section."""
    for f in dataclasses.fields(settings):
        value, meta = getattr(settings, f.name), f.metadata
        path = f"{section}.{f.name}"
        if meta.get("choices") and value not in meta["choices"]:
            fail(path, f"unknown value {value!r}; allowed: {', '.join(map(str, meta['choices']))}")
        low = meta.get("low")
        if low is None or isinstance(value, (str, bool)) or meta.get("choices"):
            continue
        if value < low or (meta.get("above", True) and value == low):
            fail(path, f"must be {'>' if meta.get('above', True) else '>='} {low:g}, got {value}")


class Settings:
    """Base of a settings section's schema (a frozen dataclass). Every section has a
    ``meta_lr`` and a ``meta_batch_size``: the meta-optimizer's step size and the episodes
    per training step, which profiles may lower (``[profiles.cpu.<algorithm>]``)."""

    meta_lr: float
    meta_batch_size: int


@dataclass(frozen=True)
class Check:
    """How a parity quantity's disagreement reads for this algorithm: what part of the
    maths it points at (``metabench parity``'s diagnosis, in the maths' order)."""

    support_loss: str
    query_logits: str
    meta_grad: str


@dataclass(frozen=True)
class Algorithm:
    name: str                       # "maml", as in specs, cells and results
    section: str                    # the spec section holding its settings ("[maml]")
    settings: type                  # that section's schema: a frozen dataclass subclassing Settings
    phases: tuple[str, ...]         # adapter methods the timing suite times, in report order
    summary: str                    # one line for `metabench list` and the docs
    has_head: bool = True           # the model ends in a linear head (MAML family), or not (ProtoNet)
    has_inner_loop: bool = True     # adapts by gradient steps on the support set (InnerLoop)
    regression: bool = True         # can learn the sinusoid (ProtoNet classifies only)
    # the algorithm whose adapter serves this one: FOMAML is served by "-maml" adapters
    # (first_order from the settings), so tables name ``torch-maml`` "torch" under FOMAML too
    family: str = ""
    # profiles that run it when the user names no algorithm (``metabench run``, parity)
    default_profiles: tuple[str, ...] = ("smoke", "cpu", "paper")
    # fields of the section this algorithm fixes: FOMAML is MAML with first_order = true
    section_overrides: dict[str, Any] = field(default_factory=dict)
    diagnosis: Check | None = None  # what each parity quantity's disagreement means
    # what each maths method of an adapter computes: the scaffold's TODO(maths) comments
    maths: dict[str, str] = field(default_factory=dict)
    # the section's values (field -> value) that `metabench check` adds to its built-in
    # specs (the sinusoid, omniglot-5w1s) where they have no such section: a plugin's own
    # section, which no built-in spec has. Without them its contract and quick parity would
    # check the algorithm on no spec at all, and pass having compared nothing.
    check_settings: dict[str, Any] = field(default_factory=dict)
    # the fields of the section that set a training episode's way and query size, for the
    # error when the dataset cannot fill it (None: the episode's own field)
    train_way_field: ClassVar[str | None] = None
    train_query_field: ClassVar[str | None] = None

    def __post_init__(self):
        if not self.family:
            object.__setattr__(self, "family", self.name)

    # -- what the spec configures ----------------------------------------------------------
    def configured_by(self, spec: SpecView) -> bool:
        return spec.settings(self.section) is not None

    def hyperparameters(self, spec: SpecView):
        """The spec's section for this algorithm, with this algorithm's overrides applied."""
        section = spec.settings(self.section)
        return replace(section, **self.section_overrides) if self.section_overrides else section

    def resolve(self, spec: SpecView) -> SpecView:
        """The spec as this algorithm sees it (its section's overrides applied)."""
        return spec.with_settings(self.section, self.hyperparameters(spec))

    def validate(self, settings: Any, spec: SpecView, fail: Fail) -> None:
        """Values of the section beyond its fields' bounds (checked before this), and how
        the section fits the rest of the spec; ``fail(path, message)`` on the first problem."""

    def check_train_images(self, spec: SpecView, shape: EpisodeShape, images_per_class: int, fail: Fail) -> None:
        """Whether a training episode of ``shape`` fits the dataset's ``images_per_class``
        (support and query samples of a class are distinct images)."""
        if shape.k_shot + shape.n_query > images_per_class:
            path = f"{self.section}.{self.train_query_field}" if self.train_query_field else "episode.n_query"
            fail(path, f"k_shot + {path.rpartition('.')[2]} = {shape.k_shot + shape.n_query} exceeds the "
                 f"{images_per_class} training images per class; use at most {images_per_class - shape.k_shot}")

    def quick_settings(self, settings: Any) -> Any:
        """The section for a quick check (``metabench check``, ``parity --quick``): training
        at the evaluation episode's shape where the algorithm trains on larger episodes."""
        return settings

    def meta_optimizer(self, spec: SpecView) -> MetaOptimizer:
        h = self.hyperparameters(spec)
        return MetaOptimizer(h.meta_lr, getattr(h, "lr_halve_every", 0))

    def meta_batch_size(self, spec: SpecView) -> int:
        return self.hyperparameters(spec).meta_batch_size

    def train_shape(self, spec: SpecView) -> EpisodeShape:
        """The shape of a training episode (evaluation episodes are ``spec.episode``)."""
        raise NotImplementedError

    def step_flops(self, phase: str, config: AdapterConfig, tasks: int) -> float | None:
        """Analytic FLOPs of one timed ``phase`` on a meta-batch of ``tasks`` episodes
        (``bench.core.flops``: convolutions and matrix products); None where not declared."""
        return None

    def inner_loop(self, spec: SpecView) -> InnerLoop | None:
        """The inner loop's hyperparameters, for algorithms that adapt by gradient steps."""
        return None

    def training_shapes(self, spec: dict) -> str:
        """A workload's training shapes in a few words, from a results manifest's spec
        (a dict: runs written by older versions are read too): the README's answer table."""
        e = spec.get("episode", {})
        h = spec.get(self.section) or {}
        if spec.get("data", {}).get("dataset") == "sinusoid":
            return f"MLP 40-40, {e.get('k_shot')} points, meta-batch {h.get('meta_batch_size')}"
        return f"Conv-4, {e.get('n_way')}-way {e.get('k_shot')}-shot, meta-batch {h.get('meta_batch_size')}"

    def adapter_config(self, spec: SpecView) -> AdapterConfig:
        """What an adapter of this algorithm receives instead of the spec."""
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
    def metric_name(spec: SpecView) -> str:
        return "mse" if spec.is_regression else "accuracy"

    @staticmethod
    def higher_is_better(metric: str) -> bool:
        """The metric's direction: accuracy up, MSE down (targets, "reached" and the tables)."""
        return metric != "mse"

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
