"""The algorithms the harness knows, by name: one module each (``bench.core.algorithms.<name>``),
and those that plugins add.

``all_algorithms()`` is the only list of them; specs (their sections), cells, the timing
suite, parity and the report ask an ``Algorithm`` what they need (``base``). A plugin adds
an algorithm through the ``metabench.algorithms`` entry-point group; each entry point
loads to an ``Algorithm`` (or a list of them)::

    [project.entry-points."metabench.algorithms"]
    myalgo = "mypackage.algorithm:ALGORITHM"

Entry points are read once per process (a snapshot: a package installed while a run is
going does not change what that run knows); ``refresh()`` re-reads them (tests).
"""

from __future__ import annotations

import warnings
from functools import cache
from importlib.metadata import entry_points

from bench.core.algorithms.anil import ANIL
from bench.core.algorithms.base import (
    AdapterConfig,
    Algorithm,
    Check,
    InnerLoop,
    MetaOptimizer,
    ModelConfig,
    Settings,
    SpecView,
    setting,
)
from bench.core.algorithms.maml import FOMAML, MAML
from bench.core.algorithms.protonet import PROTONET
from bench.core.algorithms.reptile import REPTILE
from bench.core.errors import MetabenchError

ENTRY_POINT_GROUP = "metabench.algorithms"
BUILTIN: tuple[Algorithm, ...] = (MAML, FOMAML, ANIL, PROTONET, REPTILE)

__all__ = ["ANIL", "BUILTIN", "FOMAML", "MAML", "PROTONET", "REPTILE", "AdapterConfig", "Algorithm", "Check",
           "InnerLoop", "MetaOptimizer", "ModelConfig", "Settings", "SpecView", "all_algorithms", "get", "names",
           "reader", "refresh", "sections", "setting"]


def _plugin_algorithms() -> list[Algorithm]:
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
        except Exception as e:  # a broken plugin must not take the built-in algorithms down
            warnings.warn(f"metabench: algorithm plugin {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(e).__name__}: {e}", stacklevel=2)
            continue
        for a in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
            if not isinstance(a, Algorithm):
                raise MetabenchError(f"algorithm plugin {ep.name!r} ({ep.value}) gave {type(a).__name__}, "
                                     "not a bench.core.algorithms.Algorithm")
            found.append(a)
    return found


@cache
def all_algorithms() -> dict[str, Algorithm]:
    """Every algorithm by name, built-ins first, in the order tables list them."""
    out: dict[str, Algorithm] = {}
    for a in (*BUILTIN, *_plugin_algorithms()):
        if a.name in out:
            raise MetabenchError(f"algorithm {a.name!r} is defined twice (a plugin reuses a built-in's name?)")
        clash = next((b for b in out.values() if b.section == a.section and b.settings is not a.settings), None)
        if clash is not None:
            raise MetabenchError(f"algorithms {clash.name!r} and {a.name!r} both claim the spec section "
                                 f"[{a.section}] with different settings")
        out[a.name] = a
    return out


def refresh() -> None:
    """Re-read the entry points (tests that install a plugin mid-process)."""
    all_algorithms.cache_clear()


def names() -> tuple[str, ...]:
    return tuple(all_algorithms())


def sections() -> dict[str, type]:
    """Spec section -> its settings schema, for every known algorithm."""
    return {a.section: a.settings for a in all_algorithms().values()}


def reader(section: str) -> Algorithm:
    """The first algorithm that reads ``section`` (MAML for ``[maml]``): the one that
    validates it and says how a quick check shrinks it."""
    for a in all_algorithms().values():
        if a.section == section:
            return a
    raise MetabenchError(f"no algorithm reads a [{section}] section; sections: {', '.join(sections())}")


def get(name: str) -> Algorithm:
    """The algorithm called ``name``; an unknown name is a one-line error naming the known ones."""
    known = all_algorithms()
    if name not in known:
        raise MetabenchError(f"unknown algorithm {name!r}; known: {', '.join(known)}")
    return known[name]
