"""Adapters by name: ``torch-maml``, ``jax-protonet``, ``tensorflow-maml-xla``, ...

An entry names its class as ``"module:Class"`` so that the harness can list, select and
plan adapters without importing any framework; only ``load_adapter_class`` imports, and
the harness calls it in the framework's own process (``bench.measure.worker``).

Third-party adapters register through the ``metabench.adapters`` entry-point group; each
entry point loads to an ``AdapterEntry`` (or a list of them)::

    [project.entry-points."metabench.adapters"]
    mylib = "mylib.metabench:ENTRIES"

The module an entry point names is imported to list adapters: it must import no framework
(``metabench new-adapter`` writes it as ``entries.py``). A plugin whose entry point does not
load is left out with a one-line warning naming it, and every other adapter stays usable.
The entry points are read once per process (``entries()`` is a frozen snapshot; ``refresh``
reads them again), and a command's subprocesses receive that snapshot (``child_env``)
instead of reading them again: a plugin installed or removed while a run goes on changes
nothing in it.

A name may carry options, as a spec reference carries overrides:
``torch-maml@compile=true`` is ``torch-maml`` with ``options["compile"] = True`` (values as
TOML reads them), a variant that needs no registry entry of its own. The class's
``OPTIONS`` validate it like any entry's (preflight, before a run), and the full reference
names its cells, so the results say what ran.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from bench.core.errors import AdapterError

ENTRY_POINT_GROUP = "metabench.adapters"


@dataclass(frozen=True)
class AdapterEntry:
    name: str                          # unique, "<framework>-<algorithm>[-<variant>]"
    framework: str                     # one process per framework: this names it
    algorithms: tuple[str, ...]        # the algorithms it serves
    target: str                        # "package.module:Class"
    options: dict[str, Any] = field(default_factory=dict)  # passed to the constructor
    # Run when the user names only frameworks/algorithms: True on every device, False never
    # (a variant: --adapters), or on the devices listed ("cpu", "cuda"), where a measured run
    # found it its framework's fastest correct adapter (README: Variants)
    default: bool | tuple[str, ...] = True
    description: str = ""

    def default_on(self, device: str) -> bool:
        return self.default is True or (isinstance(self.default, tuple) and device in self.default)


def builtin_entries() -> tuple[AdapterEntry, ...]:
    """The built-in adapters: each built-in framework's ``ENTRIES`` (its record's
    ``entries``, ``implementations/<framework>/__init__.py``: a module that imports no
    framework), in the frameworks' order."""
    global _builtin
    if _builtin is None:
        from bench.core.frameworks import FRAMEWORKS

        found: list[AdapterEntry] = []
        for record in sorted(FRAMEWORKS.values(), key=lambda f: f.order):
            module, _, attr = record.entries.partition(":")
            found += getattr(importlib.import_module(module), attr)
        _builtin = tuple(found)
    return _builtin


_builtin: tuple[AdapterEntry, ...] | None = None


# A parent process's resolved plugin entries, handed to its subprocesses (``child_env``):
# every process of one command sees the adapters the command started with, whatever is
# installed or removed while it runs.
ENTRIES_ENV = "METABENCH_ADAPTER_ENTRIES"


@dataclass(frozen=True)
class Snapshot:
    """The adapters of this process, read once: ``table`` (name -> entry, built-in first)
    and ``problems``, one line per plugin that could not be loaded (its adapters left out)."""

    table: Mapping[str, AdapterEntry]
    problems: tuple[str, ...] = ()


_snapshot: Snapshot | None = None


def entry_to_json(entry: AdapterEntry) -> dict:
    """``entry`` as JSON-able data, for a subprocess (``entry_from_json`` reads it back)."""
    return {**asdict(entry), "algorithms": list(entry.algorithms),
            "default": entry.default if isinstance(entry.default, bool) else list(entry.default)}


def entry_from_json(record: dict) -> AdapterEntry:
    """An ``AdapterEntry`` from ``entry_to_json``'s record (a parent's resolved entry)."""
    default = record.get("default", True)
    return AdapterEntry(record["name"], record["framework"], tuple(record["algorithms"]), record["target"],
                        options=dict(record.get("options") or {}),
                        default=default if isinstance(default, bool) else tuple(default),
                        description=record.get("description", ""))


def _plugin_name(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"plugin {dist.name}" if dist is not None and getattr(dist, "name", None) else f"plugin {ep.name}"


def _discover() -> tuple[list[AdapterEntry], list[str]]:
    """The plugins' entries, from the ``metabench.adapters`` entry points. A plugin whose
    entry point does not load (its module imports a broken framework, a typo) or gives
    something other than ``AdapterEntry``s is left out with one line saying why: the
    other adapters stay usable."""
    found, problems = [], []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"{_plugin_name(ep)} (entry point {ep.name} = {ep.value})"
        try:
            loaded = ep.load()
        except Exception as e:  # anything its import raises: the plugin's problem, not the harness's
            said = (str(e).strip().splitlines() or [""])[0]
            problems.append(f"{where} did not load, its adapters are left out: {type(e).__name__}: {said}")
            continue
        items = loaded if isinstance(loaded, (list, tuple)) else [loaded]
        bad = [type(item).__name__ for item in items if not isinstance(item, AdapterEntry)]
        if bad:
            problems.append(f"{where} gave {bad[0]}, expected bench.core.registry.AdapterEntry (or a list of "
                            f"them); its adapters are left out")
            continue
        found += items
    return found, problems


def _from_parent(text: str) -> tuple[list[AdapterEntry], list[str]]:
    record = json.loads(text)
    return [entry_from_json(r) for r in record["entries"]], list(record.get("problems", []))


def _take_snapshot() -> Snapshot:
    inherited = os.environ.get(ENTRIES_ENV)
    if inherited:
        plugins, problems = _from_parent(inherited)
    else:
        plugins, problems = _discover()
        for line in problems:  # once, where the plugins are discovered (not in every subprocess)
            print(f"metabench: warning: {line}", file=sys.stderr)
    table: dict[str, AdapterEntry] = {}
    for entry in builtin_entries():
        table[entry.name] = entry
    for entry in plugins:
        if entry.name in table:
            problems.append(f"adapter name {entry.name} is registered twice (as {table[entry.name].target} and "
                            f"{entry.target}); the second is left out: rename the plugin's entry")
            if not inherited:
                print(f"metabench: warning: {problems[-1]}", file=sys.stderr)
            continue
        table[entry.name] = entry
    return Snapshot(MappingProxyType(table), tuple(problems))


def snapshot() -> Snapshot:
    """This process's adapters, read once (``refresh`` reads them again)."""
    global _snapshot
    if _snapshot is None:
        _snapshot = _take_snapshot()
    return _snapshot


def refresh() -> Snapshot:
    """Read the entry points again (tests; a long-lived process that wants new plugins)."""
    global _snapshot
    _snapshot = None
    return snapshot()


def entries() -> Mapping[str, AdapterEntry]:
    """Every known adapter, built-in first, then plugins (a plugin may not reuse a name): a
    read-only view, the same for the whole process. Plugins are read from their entry
    points the first time, or from the parent's ``child_env``."""
    return snapshot().table


def plugin_problems() -> tuple[str, ...]:
    """One line per plugin left out (it did not load, or reused a name)."""
    return snapshot().problems


def child_env() -> dict[str, str]:
    """What a subprocess's environment needs to see exactly this process's adapters
    (``{**os.environ, **child_env()}``): the plugins' resolved entries, never re-discovered."""
    snap = snapshot()
    builtin = {e.name for e in builtin_entries()}
    plugins = [entry_to_json(e) for e in snap.table.values() if e.name not in builtin]
    return {ENTRIES_ENV: json.dumps({"entries": plugins, "problems": list(snap.problems)}, default=str)}


@contextmanager
def frozen_for_subprocesses():
    """While inside, every subprocess started from this one (``subprocess`` with the
    inherited environment, a Slurm job, a Ray worker) sees this process's adapters: the
    CLI wraps each command in it. The environment is restored on the way out."""
    before = os.environ.get(ENTRIES_ENV)
    os.environ.update(child_env())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENTRIES_ENV, None)
        else:
            os.environ[ENTRIES_ENV] = before


OPTION_SEP = "@"  # "torch-maml@compile=true": an entry with options from the command line


def parse_reference(name: str) -> tuple[str, dict[str, Any]]:
    """``"torch-maml@compile=true@dtype=float32"`` -> ``("torch-maml", {"compile": True,
    "dtype": "float32"})``; a malformed option is a one-line error."""
    from bench.core.spec import _override_value

    base, *parts = name.split(OPTION_SEP)
    options = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise AdapterError(f"adapter {name!r}: {part!r} must be option=value, e.g. torch-maml@compile=true")
        options[key.strip()] = _override_value(value.strip())
    return base, options


def get(name: str) -> AdapterEntry:
    table = entries()
    base, options = parse_reference(name)
    if base not in table:
        broken = "".join(f"; {p}" for p in plugin_problems())
        raise AdapterError(f"unknown adapter {base!r}; known: {', '.join(table)}{broken}")
    if not options:
        return table[base]
    entry = table[base]
    return replace(entry, name=name, options={**entry.options, **options}, default=False,
                   description=f"{entry.description}; options {options}")



def select(frameworks=None, algorithms=None, names=None, device: str = "cpu") -> list[AdapterEntry]:
    """Entries matching the filters; without ``names``, only the entries that are a default
    on ``device``."""
    if names is not None:  # in entries' order, then the references with options in the order given
        table = entries()
        return [e for e in table.values() if e.name in names] + [get(n) for n in names if n not in table]
    out = []
    for entry in entries().values():
        if not entry.default_on(device):
            continue
        if frameworks is not None and entry.framework not in frameworks:
            continue
        if algorithms is not None and not set(entry.algorithms) & set(algorithms):
            continue
        out.append(entry)
    return out


def load_adapter_class(entry: AdapterEntry):
    """Import the adapter's class (and so its framework). Call in the framework's process."""
    module_name, _, class_name = entry.target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)
