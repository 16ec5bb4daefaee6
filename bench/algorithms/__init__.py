"""The algorithms the harness knows, by name: one module each (``bench.algorithms.<name>``).

``ALGORITHMS`` is the only list of them; specs, cells, the timing suite, parity and the
report ask an ``Algorithm`` what they need (``bench.algorithms.base``).
"""

from __future__ import annotations

from bench.algorithms.anil import ANIL
from bench.algorithms.base import AdapterConfig, Algorithm, InnerLoop, MetaOptimizer, ModelConfig
from bench.algorithms.maml import FOMAML, MAML
from bench.algorithms.protonet import PROTONET
from bench.algorithms.reptile import REPTILE

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (MAML, FOMAML, ANIL, PROTONET, REPTILE)}

__all__ = ["ALGORITHMS", "AdapterConfig", "Algorithm", "InnerLoop", "MetaOptimizer", "ModelConfig", "get", "names"]


def names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def get(name: str) -> Algorithm:
    """The algorithm called ``name``; an unknown name is a one-line error naming the known ones."""
    from bench.errors import MetabenchError

    if name not in ALGORITHMS:
        raise MetabenchError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
