"""``torch-maml-slowdown``: the built-in torch MAML adapter, made slower by a known amount.

Each step computes exactly what ``torch-maml`` computes, then sleeps for
``$METABENCH_SLOWDOWN`` times the time it took (0.2: 20% slower; unset or 0: no sleep,
the same adapter under another name). Two runs of the same cells, one with the variable
set, are an A/B test of ``metabench compare`` with a change of known size: only this
adapter's rows may be called slower (README: Numbers that survive a rerun).

Install it beside metabench (``pip install docs/examples/metabench-slowdown``, or with
``--target DIR`` and ``PYTHONPATH=DIR``) and name it: ``--adapters torch-maml-slowdown``.
"""

from __future__ import annotations

import os
import time

from bench.core.registry import AdapterEntry
from implementations.torch.maml import TorchMAML


def _fraction() -> float:
    value = float(os.environ.get("METABENCH_SLOWDOWN", "0") or 0)
    if not 0 <= value <= 10:
        raise ValueError(f"METABENCH_SLOWDOWN: a fraction from 0 to 10 of the step's time, got {value}")
    return value


class SlowedTorchMAML(TorchMAML):
    """torch-maml whose timed steps (inner, outer, adapt) each sleep ``fraction`` of their own time."""

    fraction = _fraction()

    def _slowed(self, step, batch):
        t0 = time.perf_counter()
        out = step(batch)
        self.sync(out)  # eager torch on a CPU is done already; on a GPU the sleep must follow the work
        if self.fraction:
            time.sleep(self.fraction * (time.perf_counter() - t0))
        return out

    def inner_step(self, batch):
        return self._slowed(super().inner_step, batch)

    def outer_step(self, batch):
        return self._slowed(super().outer_step, batch)

    def adapt(self, batch):
        return self._slowed(super().adapt, batch)


ENTRIES = [AdapterEntry("torch-maml-slowdown", "torch", ("maml",), "metabench_slowdown:SlowedTorchMAML",
                        default=False, description="torch-maml sleeping $METABENCH_SLOWDOWN of each step's time")]
