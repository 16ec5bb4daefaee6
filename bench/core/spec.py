"""The episode-spec format: TOML files that say what an episode is and how to learn from it.

A spec names the task family and its episode shape, each algorithm's hyperparameters and
the budgets. Every implementation is driven by the same spec; ``docs/spec-format.md``
documents every field. ``load_spec`` validates on load and raises ``SpecError`` naming the
field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from bench.core import algorithms as _algorithms
from bench.core.algorithms.base import check_bounds
from bench.core.config import CONV_BLOCKS as CONV_POOLINGS  # Conv-4: each block halves the side
from bench.core.config import EpisodeShape
from bench.core.errors import SpecError

DATASETS = ("omniglot", "sinusoid")
SPLITS = ("train", "val", "trainval", "test")
BATCH_NORM_MODES = ("transductive", "none")
OMNIGLOT_IMAGES_PER_CLASS = 20
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
class ModelSpec:
    """The backbone: Conv-4 for images, an MLP for sinusoid."""

    hidden: int = 64                          # conv filters (omniglot) or units (sinusoid MLP)
    batch_norm: str = "transductive"          # batch statistics at train and test; or "none"
    bn_eps: float = 1e-5


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


@dataclass(frozen=True, init=False)
class EpisodeSpec:
    """A validated spec. Algorithm sections are keyword arguments too, so that
    ``dataclasses.replace(spec, maml=replace(spec.maml, inner_steps=5))`` works (None
    removes a section); ``spec.maml`` reads one."""

    name: str
    data: DataSpec
    episode: EpisodeShape
    seed: int = 0
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    # algorithm section -> its settings (``[maml]`` -> MAMLSettings): the schemas belong to
    # the algorithms (``bench.core.algorithms``); ``spec.maml`` reads one (None if absent)
    sections: dict[str, Any] = field(default_factory=dict)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    # profile name -> overrides of ``budget`` fields, for every algorithm or in a
    # sub-table per algorithm (which may also set ``meta_batch_size``); see ``with_profile``.
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    # algorithm -> target validation metric (see BudgetSpec.target)
    targets: dict[str, float] = field(default_factory=dict)
    source: str = "<spec>"

    def __init__(self, name: str, data: DataSpec, episode: EpisodeShape, seed: int = 0, description: str = "",
                 model: ModelSpec | None = None, sections: dict[str, Any] | None = None,
                 budget: BudgetSpec | None = None, profiles: dict | None = None, targets: dict | None = None,
                 source: str = "<spec>", **section_settings: Any):
        known = _algorithms.sections()
        unknown = [k for k in section_settings if k not in known]
        if unknown:
            raise TypeError(f"EpisodeSpec: no field or algorithm section {unknown[0]!r}; sections: {', '.join(known)}")
        merged = {**(sections or {}), **section_settings}
        order = list(known)
        merged = {k: v for k, v in sorted(merged.items(), key=lambda kv: _index(order, kv[0])) if v is not None}
        for key, value in (("name", name), ("data", data), ("episode", episode), ("seed", seed),
                           ("description", description), ("model", model or ModelSpec()), ("sections", merged),
                           ("budget", budget or BudgetSpec()), ("profiles", profiles if profiles is not None else {}),
                           ("targets", targets if targets is not None else {}), ("source", source)):
            object.__setattr__(self, key, value)

    @property
    def is_regression(self) -> bool:
        return self.data.dataset == "sinusoid"

    def __getattr__(self, name: str) -> Any:
        # ``spec.maml``: an algorithm's section, None where the spec has none
        if name.startswith("_") or name == "sections":
            raise AttributeError(name)
        if name in self.sections:
            return self.sections[name]
        if name in _algorithms.sections():
            return None
        raise AttributeError(f"{type(self).__name__} has no field or algorithm section {name!r}")

    def settings(self, section: str) -> Any:
        """The settings of an algorithm section (``"maml"``), or None where the spec has none."""
        return self.sections.get(section)

    def with_settings(self, section: str, settings: Any) -> EpisodeSpec:
        """The spec with one section's settings replaced (None: removed)."""
        sections = {k: v for k, v in self.sections.items() if k != section}
        return replace(self, sections={**sections, section: settings})

    def algorithms(self) -> tuple[str, ...]:
        """Algorithms this spec configures: every algorithm whose section it has (a
        ``[maml]`` section configures MAML, FOMAML and ANIL)."""
        return tuple(name for name, a in _algorithms.all_algorithms().items() if a.configured_by(self))

    def for_algorithm(self, algorithm: str) -> EpisodeSpec:
        """The spec as an algorithm sees it (``fomaml``: ``maml`` with ``first_order``)."""
        if algorithm not in self.algorithms():
            known = _algorithms.all_algorithms()
            section = known[algorithm].section if algorithm in known else "algorithm"
            raise SpecError(self.source, section, f"this spec has no [{section}] section for {algorithm}; "
                            f"it configures {', '.join(self.algorithms())}")
        return _algorithms.get(algorithm).resolve(self)

    # -- derived episode shapes ---------------------------------------------------
    def train_shape(self, algorithm: str) -> EpisodeShape:
        return _algorithms.get(algorithm).train_shape(self)

    def meta_batch_size(self, algorithm: str) -> int:
        return _algorithms.get(algorithm).meta_batch_size(self)

    def with_profile(self, profile: str, algorithm: str | None = None) -> EpisodeSpec:
        """Apply a budget profile: built-in defaults, then the spec's ``[profiles.<name>]``
        values, then its ``[profiles.<name>.<algorithm>]`` values. The algorithm's
        ``[targets]`` entry becomes ``budget.target`` unless the profile sets one."""
        from bench.core.profiles import PROFILES

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
            section = _algorithms.get(algorithm).section
            mbs = min(mbs, spec.settings(section).meta_batch_size)
            spec = spec.with_settings(section, replace(spec.settings(section), meta_batch_size=mbs))
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The spec as its TOML would say it, sections in place (what manifests record and
        digests hash): the sections it has, whatever algorithms are installed."""
        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "source":
                continue
            if f.name == "sections":
                d.update({k: dataclasses.asdict(v) for k, v in self.sections.items()})
            else:
                value = getattr(self, f.name)
                d[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return d


def _index(order: list[str], key: str) -> int:
    return order.index(key) if key in order else len(order)


# -- loading and validation ---------------------------------------------------------

_FIXED_SECTIONS = {"data": DataSpec, "episode": EpisodeShape, "model": ModelSpec, "budget": BudgetSpec}


def _sections() -> dict[str, type]:
    """Every section a spec may have: the fixed ones, then each algorithm's (built-in or
    plugin), whose schema its algorithm owns."""
    fixed = dict(_FIXED_SECTIONS)
    budget = fixed.pop("budget")
    return {**fixed, **_algorithms.sections(), "budget": budget}


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
        if nested and key in _algorithms.names():
            _check_profile_table(source, f"{path}.{key}", value, nested=False)
            continue
        allowed = sorted(_PROFILE_KEYS | ({"meta_batch_size"} if not nested else set(_algorithms.names())))
        if key not in allowed:
            raise SpecError(source, f"{path}.{key}", f"unknown field; allowed: {', '.join(allowed)}")
        _check_type(source, f"{path}.{key}", value, float if key in _FLOAT_PROFILE_KEYS else int)
        _positive(source, f"{path}.{key}", value, allow_zero=key in ("val_every", "val_episodes", "target"))


def _check_targets(source: str, table: Any) -> dict[str, float]:
    if not isinstance(table, dict):
        raise SpecError(source, "targets", "must be a table: [targets] with algorithm = value")
    out = {}
    for key, value in table.items():
        if key not in _algorithms.names():
            raise SpecError(source, f"targets.{key}", f"unknown algorithm; allowed: {', '.join(_algorithms.names())}")
        out[key] = _check_type(source, f"targets.{key}", value, float)
        _positive(source, f"targets.{key}", out[key])
    return out


def spec_from_dict(raw: dict[str, Any], source: str = "<spec>") -> EpisodeSpec:
    _SECTIONS = _sections()
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
    sections = {s: built.pop(s) for s in list(built) if s not in _FIXED_SECTIONS}
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        raise SpecError(source, "profiles", "must be a table of [profiles.<name>] tables")
    from bench.core.profiles import PROFILES

    for pname, table in profiles.items():
        if pname not in PROFILES:
            raise SpecError(source, f"profiles.{pname}", f"unknown profile; allowed: {', '.join(PROFILES)}")
        _check_profile_table(source, f"profiles.{pname}", table, nested=True)
    spec = EpisodeSpec(name=raw["name"], seed=raw.get("seed", 0), description=raw.get("description", ""),
                       profiles=profiles, targets=_check_targets(source, raw.get("targets", {})),
                       source=source, sections=sections, **built)
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
    if not spec.sections:
        first = next(iter(_algorithms.sections()))
        raise SpecError(s, first, "a spec needs at least one algorithm section: "
                        + " or ".join(f"[{name}]" for name in _algorithms.sections()))

    def fail(path: str, message: str) -> None:
        raise SpecError(s, path, message)

    for section, settings in spec.sections.items():
        check_bounds(settings, section, fail)
        _algorithms.reader(section).validate(settings, spec, fail)
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


def _fail(source: str, path: str, message: str) -> None:
    raise SpecError(source, path, message)


def _validate_image_size(spec: EpisodeSpec) -> None:
    """Conv-4 needs at least one pixel after its four poolings (else its cell fails in
    ``bench.core.models.feature_size``, after the framework has started)."""
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
    from bench.core.data.omniglot import SPLIT_CLASS_COUNTS

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
        a = _algorithms.get(algorithm)
        section = a.section
        shape = spec.train_shape(algorithm)
        if (section, shape) in checked:  # FOMAML and ANIL train on MAML's episodes
            continue
        checked.add((section, shape))
        if shape.n_way > train_classes:
            raise SpecError(s, f"{section}.{a.train_way_field}" if a.train_way_field else "episode.n_way",
                            f"{shape.n_way} exceeds the {train_classes} training classes; "
                            f"use at most {train_classes}")
        a.check_train_images(spec, shape, train_per_class, lambda path, message: _fail(s, path, message))


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
    readers = {a for a, alg in _algorithms.all_algorithms().items() if alg.section == section}
    for table in profiles.values():
        if not isinstance(table, dict):
            continue
        if section == "budget" and field_name in table:
            table[field_name] = value
        for name, sub in table.items():
            if isinstance(sub, dict) and field_name in sub and (section == "budget" or name in readers):
                sub[field_name] = value


def _apply_overrides(raw: dict, overrides: list[tuple[str, str]], source: str) -> dict:
    _SECTIONS = _sections()
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
            if section not in _FIXED_SECTIONS:
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
        text = resources.files("bench.core.specs").joinpath(f"{name}.toml").read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(source, "toml", f"not valid TOML ({e})") from None
    if overrides:
        raw = _apply_overrides(raw, overrides, source)
        source = f"{source} with {', '.join(f'{k}={v}' for k, v in overrides)}"
    return spec_from_dict(raw, source)


def builtin_with_sections(name: str, sections: dict[str, dict[str, Any]]) -> tuple[EpisodeSpec, str]:
    """Built-in spec ``name`` with the algorithm ``sections`` it lacks added (section ->
    field -> value; a section it has stays as it is), validated as its file would be: the
    spec and its TOML. ``metabench check`` compares an algorithm whose section no built-in
    spec has (a plugin's own) this way, with the values of its ``Algorithm.check_settings``."""
    text = resources.files("bench.core.specs").joinpath(f"{name}.toml").read_text()
    added = {s: values for s, values in sections.items() if s not in tomllib.loads(text)}
    for section, values in added.items():  # JSON's scalars and arrays are TOML's too
        text += f"\n[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    source = f"{name} (built-in)" + "".join(f" with [{s}]" for s in added)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(source, "toml", f"not valid TOML ({e})") from None
    return spec_from_dict(raw, source), text


def builtin_spec_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bench.core.specs").iterdir() if p.name.endswith(".toml"))
