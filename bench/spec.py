"""The episode-spec format: TOML files that say what an episode is and how to learn from it.

A spec names the task family and its episode shape, each algorithm's hyperparameters and
the budgets. Every implementation is driven by the same spec; ``docs/spec-format.md``
documents every field. ``load_spec`` validates on load and raises ``SpecError`` naming the
field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from bench.algorithms import ALGORITHMS as _ALGORITHMS
from bench.errors import SpecError

DATASETS = ("omniglot", "sinusoid")
SPLITS = ("train", "val", "trainval", "test")
BATCH_NORM_MODES = ("transductive", "none")
DISTANCES = ("squared_euclidean",)
ALGORITHMS = tuple(_ALGORITHMS)  # names; the algorithms themselves: bench.algorithms
OMNIGLOT_IMAGES_PER_CLASS = 20
CONV_POOLINGS = 4  # Conv-4: each block halves the side (2x2 max-pool, floor), see bench.models
# A spec's name names folders (cells/<adapter>__<algorithm>__<name>/) and CSV rows.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME_LENGTH = 120


@dataclass(frozen=True)
class DataSpec:
    """Where tasks come from."""

    dataset: str
    image_size: int = 28                      # omniglot: square side after resizing
    rotations: bool = True                    # omniglot: classes augmented by 90-degree rotations
    train_split: str = "train"                # meta-training classes
    val_split: str = "val"                    # learning-curve episodes
    test_split: str = "test"                  # final evaluation episodes
    max_train_classes: int = 0                # 0: all; else a seeded choice of this many
    max_train_images_per_class: int = 0       # 0: all 20; else a seeded choice of this many
    amplitude: tuple[float, float] = (0.1, 5.0)   # sinusoid: U[a, b]
    phase: tuple[float, float] = (0.0, math.pi)   # sinusoid: U[a, b]
    x_range: tuple[float, float] = (-5.0, 5.0)    # sinusoid: U[a, b]


@dataclass(frozen=True)
class EpisodeShape:
    """An evaluation episode: ``n_way`` classes, ``k_shot`` support and ``n_query`` query
    samples per class (sinusoid: ``n_way = 1``, ``k_shot`` and ``n_query`` points)."""

    n_way: int
    k_shot: int
    n_query: int


@dataclass(frozen=True)
class ModelSpec:
    """The backbone: Conv-4 for images, an MLP for sinusoid."""

    hidden: int = 64                          # conv filters (omniglot) or units (sinusoid MLP)
    batch_norm: str = "transductive"          # batch statistics at train and test; or "none"
    bn_eps: float = 1e-5


@dataclass(frozen=True)
class MAMLSpec:
    inner_lr: float
    inner_steps: int = 1                      # adaptation steps while meta-training
    test_inner_steps: int = 1                 # adaptation steps at evaluation
    first_order: bool = False
    meta_batch_size: int = 32
    meta_lr: float = 1e-3
    train_n_query: int = 0                    # query samples per class while training; 0: episode.k_shot


@dataclass(frozen=True)
class ReptileSpec:
    """Reptile (Nichol et al. 2018): plain SGD on each task's support set, the meta-optimizer
    fed theta - mean of the adapted weights (``bench.algorithms.reptile``)."""

    inner_lr: float                           # SGD step size of the inner loop
    inner_steps: int = 5                      # full-batch SGD steps per task while meta-training
    test_inner_steps: int = 10                # SGD steps at evaluation
    train_shots: int = 0                      # support samples per class of a training task; 0: episode.k_shot
    meta_batch_size: int = 5
    meta_lr: float = 1e-3                     # Adam step size on the pseudo-gradient

    def validate(self, source: str, k_shot: int, images_per_class: int | None = None) -> None:
        """Its fields' values, each error naming ``reptile.<field>``. ``images_per_class``:
        the training images per class of a classification dataset, None for regression; a
        training task takes ``train_shots`` (0: ``k_shot``) support and one query image of
        each class."""
        for name in ("inner_lr", "inner_steps", "test_inner_steps", "meta_batch_size", "meta_lr"):
            _positive(source, f"reptile.{name}", getattr(self, name))
        _positive(source, "reptile.train_shots", self.train_shots, allow_zero=True)
        shots = self.train_shots or k_shot
        if images_per_class is not None and shots + 1 > images_per_class:
            raise SpecError(source, "reptile.train_shots", f"{'train_shots' if self.train_shots else 'k_shot'} + 1 "
                            f"query image = {shots + 1} exceeds the {images_per_class} training images per "
                            f"class; use train_shots <= {images_per_class - 1}")


@dataclass(frozen=True)
class ProtoNetSpec:
    train_n_way: int = 0                      # classes per training episode; 0: episode.n_way
    train_n_query: int = 0                    # 0: episode.n_query
    distance: str = "squared_euclidean"
    meta_lr: float = 1e-3
    lr_halve_every: int = 2000                # Adam step size halved every so many episodes; 0: never
    meta_batch_size: int = 1


@dataclass(frozen=True)
class BudgetSpec:
    meta_train_steps: int = 1000
    eval_episodes: int = 600
    val_every: int = 100                      # learning-curve point every so many steps; 0: none
    val_episodes: int = 100
    # Validation metric that counts as "good enough" (accuracy: at least; MSE: at most);
    # the accuracy phase records when training first reaches it. 0: no target. Set per
    # algorithm in [targets]; with_profile() resolves it, profiles may override it.
    target: float = 0.0


@dataclass(frozen=True)
class EpisodeSpec:
    name: str
    data: DataSpec
    episode: EpisodeShape
    seed: int = 0
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    maml: MAMLSpec | None = None
    protonet: ProtoNetSpec | None = None
    reptile: ReptileSpec | None = None
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    # profile name -> overrides of ``budget`` fields, for every algorithm or in a
    # sub-table per algorithm (which may also set ``meta_batch_size``); see ``with_profile``.
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    # algorithm -> target validation metric (see BudgetSpec.target)
    targets: dict[str, float] = field(default_factory=dict)
    source: str = "<spec>"

    @property
    def is_regression(self) -> bool:
        return self.data.dataset == "sinusoid"

    def algorithms(self) -> tuple[str, ...]:
        """Algorithms this spec configures: every algorithm whose section it has (a
        ``[maml]`` section configures MAML, FOMAML and ANIL)."""
        return tuple(name for name, a in _ALGORITHMS.items() if a.configured_by(self))

    def for_algorithm(self, algorithm: str) -> EpisodeSpec:
        """The spec as an algorithm sees it (``fomaml``: ``maml`` with ``first_order``)."""
        if algorithm not in self.algorithms():
            section = _ALGORITHMS[algorithm].section if algorithm in _ALGORITHMS else "algorithm"
            raise SpecError(self.source, section, f"this spec has no [{section}] section for {algorithm}; "
                            f"it configures {', '.join(self.algorithms())}")
        return _ALGORITHMS[algorithm].resolve(self)

    # -- derived episode shapes ---------------------------------------------------
    def train_shape(self, algorithm: str) -> EpisodeShape:
        return _ALGORITHMS[algorithm].train_shape(self)

    def meta_batch_size(self, algorithm: str) -> int:
        return _ALGORITHMS[algorithm].meta_batch_size(self)

    def with_profile(self, profile: str, algorithm: str | None = None) -> EpisodeSpec:
        """Apply a budget profile: built-in defaults, then the spec's ``[profiles.<name>]``
        values, then its ``[profiles.<name>.<algorithm>]`` values. The algorithm's
        ``[targets]`` entry becomes ``budget.target`` unless the profile sets one."""
        from bench.profiles import PROFILES

        table = self.profiles.get(profile, {})
        overrides = dict(PROFILES[profile].budget_overrides(self))
        if algorithm is not None:
            overrides["target"] = self.targets.get(algorithm, 0.0)
        overrides.update({k: v for k, v in table.items() if not isinstance(v, dict)})
        if algorithm is not None:
            overrides.update(table.get(algorithm, {}))
        mbs = overrides.pop("meta_batch_size", None)
        spec = replace(self, budget=replace(self.budget, **overrides))
        if mbs is not None and algorithm is not None:
            section = _ALGORITHMS[algorithm].section
            mbs = min(mbs, getattr(spec, section).meta_batch_size)
            spec = replace(spec, **{section: replace(getattr(spec, section), meta_batch_size=mbs)})
        return spec

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


# -- loading and validation ---------------------------------------------------------

_SECTIONS = {"data": DataSpec, "episode": EpisodeShape, "model": ModelSpec, "maml": MAMLSpec,
             "protonet": ProtoNetSpec, "reptile": ReptileSpec, "budget": BudgetSpec}
_TOP_LEVEL = {"name": str, "seed": int, "description": str}
_FLOAT_PROFILE_KEYS = {"target"}
_PROFILE_KEYS = {f.name for f in fields(BudgetSpec)}


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _finite(source: str, path: str, value: float) -> float:
    # TOML has nan and inf literals; no rate, range or epsilon of a spec means either, and
    # in a cell they only surface as NaN losses after minutes of work.
    if not math.isfinite(value):
        raise SpecError(source, path, f"must be a finite number, got {value!r}")
    return float(value)


def _check_type(source: str, path: str, value: Any, tp) -> Any:
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(source, path, f"must be a number, got {value!r}")
        return _finite(source, path, value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(source, path, f"must be an integer, got {value!r}")
        return value
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise SpecError(source, path, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if tp == tuple[float, float]:
        if (not isinstance(value, list) or len(value) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
            raise SpecError(source, path, f"must be a pair of numbers [low, high], got {value!r}")
        for v in value:
            _finite(source, path, v)
        if not value[0] <= value[1]:
            raise SpecError(source, path, f"low must not exceed high, got {value!r}")
        return (float(value[0]), float(value[1]))
    raise AssertionError(f"unhandled spec type {tp}")


def _build(source: str, section: str, cls, table: Any):
    if not isinstance(table, dict):
        raise SpecError(source, section, f"must be a table ([{section}]), got {table!r}")
    hints = get_type_hints(cls)
    allowed = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in allowed:
            raise SpecError(source, f"{section}.{key}", f"unknown field; allowed: {', '.join(allowed)}")
        kwargs[key] = _check_type(source, f"{section}.{key}", value, hints[key])
    required = [f.name for f in fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for key in required:
        if key not in kwargs:
            raise SpecError(source, f"{section}.{key}", "is required")
    return cls(**kwargs)


def _positive(source: str, path: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError(source, path, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _one_of(source: str, path: str, value, allowed) -> None:
    if value not in allowed:
        raise SpecError(source, path, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


def _check_profile_table(source: str, path: str, table: Any, nested: bool) -> None:
    if not isinstance(table, dict):
        raise SpecError(source, path, "must be a table")
    for key, value in table.items():
        if nested and key in ALGORITHMS:
            _check_profile_table(source, f"{path}.{key}", value, nested=False)
            continue
        allowed = sorted(_PROFILE_KEYS | ({"meta_batch_size"} if not nested else set(ALGORITHMS)))
        if key not in allowed:
            raise SpecError(source, f"{path}.{key}", f"unknown field; allowed: {', '.join(allowed)}")
        _check_type(source, f"{path}.{key}", value, float if key in _FLOAT_PROFILE_KEYS else int)
        _positive(source, f"{path}.{key}", value, allow_zero=key in ("val_every", "val_episodes", "target"))


def _check_targets(source: str, table: Any) -> dict[str, float]:
    if not isinstance(table, dict):
        raise SpecError(source, "targets", "must be a table: [targets] with algorithm = value")
    out = {}
    for key, value in table.items():
        if key not in ALGORITHMS:
            raise SpecError(source, f"targets.{key}", f"unknown algorithm; allowed: {', '.join(ALGORITHMS)}")
        out[key] = _check_type(source, f"targets.{key}", value, float)
        _positive(source, f"targets.{key}", out[key])
    return out


def spec_from_dict(raw: dict[str, Any], source: str = "<spec>") -> EpisodeSpec:
    for key in raw:
        if key not in _TOP_LEVEL and key not in _SECTIONS and key not in ("profiles", "targets"):
            allowed = sorted(_TOP_LEVEL) + sorted(_SECTIONS) + ["profiles", "targets"]
            raise SpecError(source, key, f"unknown field; allowed: {', '.join(allowed)}")
    for key, tp in _TOP_LEVEL.items():
        if key in raw:
            _check_type(source, key, raw[key], tp)
    if "name" not in raw:
        raise SpecError(source, "name", "is required (the spec's name, e.g. \"omniglot-5w1s\")")
    for section in ("data", "episode"):
        if section not in raw:
            raise SpecError(source, section, f"is required: add a [{section}] table")
    built = {s: _build(source, s, cls, raw[s]) for s, cls in _SECTIONS.items() if s in raw}
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        raise SpecError(source, "profiles", "must be a table of [profiles.<name>] tables")
    from bench.profiles import PROFILES

    for pname, table in profiles.items():
        if pname not in PROFILES:
            raise SpecError(source, f"profiles.{pname}", f"unknown profile; allowed: {', '.join(PROFILES)}")
        _check_profile_table(source, f"profiles.{pname}", table, nested=True)
    spec = EpisodeSpec(name=raw["name"], seed=raw.get("seed", 0), description=raw.get("description", ""),
                       profiles=profiles, targets=_check_targets(source, raw.get("targets", {})),
                       source=source, **built)
    validate(spec)
    return spec


def validate(spec: EpisodeSpec) -> None:
    """Check the values of a spec whose fields all have the right types."""
    s, d, e = spec.source, spec.data, spec.episode
    if len(spec.name) > MAX_NAME_LENGTH:  # it names folders (cells/<adapter>__<algorithm>__<name>): 255 bytes at most
        raise SpecError(s, "name", f"is {len(spec.name)} characters long; use at most {MAX_NAME_LENGTH} "
                        f"(it names the run's cell folders)")
    if not NAME_PATTERN.match(spec.name):
        raise SpecError(s, "name", f"{spec.name!r} names folders and table rows: use letters, digits, "
                        f"'.', '_' and '-', starting with a letter or digit (e.g. \"omniglot-5w1s\")")
    _one_of(s, "data.dataset", d.dataset, DATASETS)
    if spec.seed < 0:
        raise SpecError(s, "seed", f"must be >= 0, got {spec.seed}")
    for split_field in ("train_split", "val_split", "test_split"):
        _one_of(s, f"data.{split_field}", getattr(d, split_field), SPLITS)
    _positive(s, "data.image_size", d.image_size)
    _positive(s, "data.max_train_classes", d.max_train_classes, allow_zero=True)
    _positive(s, "data.max_train_images_per_class", d.max_train_images_per_class, allow_zero=True)
    for name in ("n_way", "k_shot", "n_query"):
        _positive(s, f"episode.{name}", getattr(e, name))
    m = spec.model
    _positive(s, "model.hidden", m.hidden)
    _one_of(s, "model.batch_norm", m.batch_norm, BATCH_NORM_MODES)
    _positive(s, "model.bn_eps", m.bn_eps)
    b = spec.budget
    _positive(s, "budget.meta_train_steps", b.meta_train_steps)
    _positive(s, "budget.eval_episodes", b.eval_episodes)
    _positive(s, "budget.val_every", b.val_every, allow_zero=True)
    _positive(s, "budget.val_episodes", b.val_episodes, allow_zero=True)
    _positive(s, "budget.target", b.target, allow_zero=True)
    if spec.maml is None and spec.protonet is None and spec.reptile is None:
        raise SpecError(s, "maml", "a spec needs a [maml], [protonet] or [reptile] section (or several)")
    if spec.maml is not None:
        mm = spec.maml
        _positive(s, "maml.inner_lr", mm.inner_lr)
        _positive(s, "maml.inner_steps", mm.inner_steps)
        _positive(s, "maml.test_inner_steps", mm.test_inner_steps)
        _positive(s, "maml.meta_batch_size", mm.meta_batch_size)
        _positive(s, "maml.meta_lr", mm.meta_lr)
        _positive(s, "maml.train_n_query", mm.train_n_query, allow_zero=True)
    if spec.protonet is not None:
        p = spec.protonet
        if d.dataset == "sinusoid":
            raise SpecError(s, "protonet", "Prototypical Networks classify; the sinusoid dataset "
                            "is regression: remove the [protonet] section")
        _positive(s, "protonet.train_n_way", p.train_n_way, allow_zero=True)
        _positive(s, "protonet.train_n_query", p.train_n_query, allow_zero=True)
        _one_of(s, "protonet.distance", p.distance, DISTANCES)
        _positive(s, "protonet.meta_lr", p.meta_lr)
        _positive(s, "protonet.lr_halve_every", p.lr_halve_every, allow_zero=True)
        _positive(s, "protonet.meta_batch_size", p.meta_batch_size)
    if spec.reptile is not None:
        spec.reptile.validate(s, e.k_shot)  # the omniglot bound: _validate_omniglot_shapes
    for algorithm, target in spec.targets.items():
        if algorithm not in spec.algorithms():
            raise SpecError(s, f"targets.{algorithm}", f"this spec does not configure {algorithm}; "
                            f"it configures {', '.join(spec.algorithms())}")
        if not spec.is_regression and target > 1:
            raise SpecError(s, f"targets.{algorithm}", f"an accuracy target is a fraction, got {target}; "
                            "e.g. 0.9 for 90%")
    if d.dataset == "sinusoid":
        if e.n_way != 1:
            raise SpecError(s, "episode.n_way", f"sinusoid regression has one function per task: "
                            f"set n_way = 1, got {e.n_way}")
        if d.amplitude[0] <= 0:
            raise SpecError(s, "data.amplitude", f"must be > 0, got {list(d.amplitude)}")
        if d.x_range[0] == d.x_range[1]:
            raise SpecError(s, "data.x_range", f"low must be below high (every point of a task would be the "
                            f"same x), got {list(d.x_range)}")
    else:
        _validate_image_size(spec)
        _validate_omniglot_shapes(spec)


def _validate_image_size(spec: EpisodeSpec) -> None:
    """Conv-4 needs at least one pixel after its four poolings (else its cell fails in
    ``bench.models.feature_size``, after the framework has started)."""
    side, sides = spec.data.image_size, [spec.data.image_size]
    for _ in range(CONV_POOLINGS):
        side //= 2
        sides.append(side)
    if side < 1:
        raise SpecError(spec.source, "data.image_size", f"{spec.data.image_size} is too small for Conv-4's "
                        f"{CONV_POOLINGS} 2x2 poolings ({' -> '.join(map(str, sides))}); "
                        f"use at least {2 ** CONV_POOLINGS}")


def _validate_omniglot_shapes(spec: EpisodeSpec) -> None:
    """Episode shapes against the split sizes, known without reading the data."""
    from bench.data.omniglot import SPLIT_CLASS_COUNTS

    s, d = spec.source, spec.data

    def classes(split: str) -> int:
        n = SPLIT_CLASS_COUNTS[split] // (1 if d.rotations else 4)
        return n

    train_classes = classes(d.train_split)
    if d.max_train_classes:
        if d.max_train_classes > train_classes:
            raise SpecError(s, "data.max_train_classes", f"{d.max_train_classes} exceeds the "
                            f"{train_classes} classes of the '{d.train_split}' split; use at most {train_classes}")
        train_classes = d.max_train_classes
    per_class = OMNIGLOT_IMAGES_PER_CLASS
    if d.max_train_images_per_class > per_class:
        raise SpecError(s, "data.max_train_images_per_class", f"{d.max_train_images_per_class} exceeds "
                        f"the {per_class} images per Omniglot class; use at most {per_class}")
    train_per_class = d.max_train_images_per_class or per_class
    e = spec.episode
    for split_field in ("val_split", "test_split"):
        n = classes(getattr(d, split_field))
        if e.n_way > n:
            raise SpecError(s, "episode.n_way", f"{e.n_way} exceeds the {n} classes of the "
                            f"'{getattr(d, split_field)}' split ({split_field}); use at most {n}")
    if e.k_shot + e.n_query > per_class:
        raise SpecError(s, "episode.n_query", f"k_shot + n_query = {e.k_shot + e.n_query} exceeds the "
                        f"{per_class} samples per class; use k_shot + n_query <= {per_class}")
    checked = set()
    for algorithm in spec.algorithms():
        section = _ALGORITHMS[algorithm].section
        shape = spec.train_shape(algorithm)
        if (section, shape) in checked:  # FOMAML and ANIL train on MAML's episodes
            continue
        checked.add((section, shape))
        if shape.n_way > train_classes:
            raise SpecError(s, f"{section}.train_n_way" if section == "protonet" else "episode.n_way",
                            f"{shape.n_way} exceeds the {train_classes} training classes; "
                            f"use at most {train_classes}")
        if section == "reptile":
            spec.reptile.validate(s, e.k_shot, train_per_class)
        elif shape.k_shot + shape.n_query > train_per_class:
            raise SpecError(s, f"{section}.train_n_query", f"k_shot + train_n_query = "
                            f"{shape.k_shot + shape.n_query} exceeds the {train_per_class} training "
                            f"images per class; use at most {train_per_class - shape.k_shot}")


# A spec reference may carry overrides of its fields: ``omniglot-5w1s@maml.inner_steps=5``
# (``metabench run --set`` and ``--sweep`` write them). Every process that loads the
# reference applies them the same way, validated like the file; the spec's name gets a
# suffix saying what changed, so cells and tables of overridden specs never collide.
OVERRIDE_SEP = "@"


def with_overrides(ref: str, overrides: list[tuple[str, str]]) -> str:
    """``ref`` with ``(section.field, value)`` overrides appended, in order."""
    return ref + "".join(f"{OVERRIDE_SEP}{key}={value}" for key, value in overrides)


def parse_override(text: str, flag: str = "--set") -> tuple[str, str]:
    """``"maml.inner_steps=5"`` -> ``("maml.inner_steps", "5")``; a malformed one is a
    one-line error naming the flag."""
    key, eq, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not eq or not key or not value or OVERRIDE_SEP in text:
        raise SpecError(flag, text, "must be section.field=value, e.g. maml.inner_steps=5")
    return key, value


def _override_value(text: str) -> Any:
    """A value as TOML reads it (5, 0.4, true, [0.1, 5.0], "x"); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _override_profiles(profiles: Any, section: str, field_name: str, value: Any) -> None:
    """An override wins over the spec's profile tables too: ``[profiles.cpu.maml]``'s
    ``meta_batch_size = 8`` would otherwise undo ``--set maml.meta_batch_size=16`` under
    the cpu profile. Budget fields change in every profile table; an algorithm section's
    field in the sub-tables of the algorithms that read that section."""
    if not isinstance(profiles, dict) or field_name not in _PROFILE_KEYS | {"meta_batch_size"}:
        return
    readers = {a for a, alg in _ALGORITHMS.items() if alg.section == section}
    for table in profiles.values():
        if not isinstance(table, dict):
            continue
        if section == "budget" and field_name in table:
            table[field_name] = value
        for name, sub in table.items():
            if isinstance(sub, dict) and field_name in sub and (section == "budget" or name in readers):
                sub[field_name] = value


def _apply_overrides(raw: dict, overrides: list[tuple[str, str]], source: str) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, text in overrides:
        section, dot, field_name = key.partition(".")
        if not dot:
            if key not in _TOP_LEVEL or key == "name":
                raise SpecError(source, key, f"--set or --sweep: not a field; give section.field (sections: "
                                f"{', '.join(_SECTIONS)}) or one of: seed, description")
            raw[key] = _override_value(text)
            continue
        if section not in _SECTIONS:
            raise SpecError(source, key, f"--set or --sweep: unknown section [{section}]; sections: "
                            f"{', '.join(_SECTIONS)}")
        if section not in raw:
            if section in ("maml", "protonet", "reptile"):
                raise SpecError(source, key, f"--set or --sweep: this spec has no [{section}] section to change")
            raw[section] = {}
        value = raw[section][field_name] = _override_value(text)
        _override_profiles(raw.get("profiles"), section, field_name, value)
    suffix = "_".join(f"{key}-{re.sub(r'[^A-Za-z0-9._-]', '-', text)}" for key, text in overrides)
    if isinstance(raw.get("name"), str):
        raw["name"] = f"{raw['name']}_{suffix}"
    return raw


def load_spec(path_or_name: str | Path) -> EpisodeSpec:
    """Load a spec from a TOML file, or a built-in spec by name (``omniglot-5w1s``), with
    the overrides its reference carries (``OVERRIDE_SEP``)."""
    base, *extra = str(path_or_name).split(OVERRIDE_SEP)
    overrides = [parse_override(o, "spec reference") for o in extra]
    path = Path(base) if extra else Path(path_or_name)
    if path.suffix == ".toml" or path.exists():
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # TOML is UTF-8; a BOM from an editor is harmless
        except OSError as e:
            raise SpecError(source, "file", f"cannot read ({e.strerror}); give a spec file or one of: "
                            f"{', '.join(builtin_spec_names())}") from None
        except UnicodeDecodeError as e:
            raise SpecError(source, "file", f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                            f"{e.start}); TOML files are UTF-8: save it as UTF-8") from None
    else:
        name = str(path)
        if name not in builtin_spec_names():
            raise SpecError(name, "spec", f"no such file or built-in spec; built-in: "
                            f"{', '.join(builtin_spec_names())}")
        source = f"{name} (built-in)"
        text = resources.files("bench.specs").joinpath(f"{name}.toml").read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(source, "toml", f"not valid TOML ({e})") from None
    if overrides:
        raw = _apply_overrides(raw, overrides, source)
        source = f"{source} with {', '.join(f'{k}={v}' for k, v in overrides)}"
    return spec_from_dict(raw, source)


def builtin_spec_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bench.specs").iterdir() if p.name.endswith(".toml"))
