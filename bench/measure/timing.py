"""The timed function: one step and the device synchronisation, nothing else.

All frameworks are timed by the same host clock (``time.perf_counter``, pytest-benchmark's
default timer) around this function, so an asynchronous framework cannot return early.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def timed_step(adapter, step: Callable[[Any], Any], batch: Any) -> Callable[[], Any]:
    """A callable running ``step(batch)`` then ``adapter.sync`` on its outputs."""

    def run_and_sync():
        out = step(batch)
        adapter.sync(out)
        return out

    return run_and_sync
