"""The memory probe on a CPU (``bench.measure.worker.probe_memory``): the first step's memory (a
compiler's, a framework's first-call allocations) is read apart from the steps after it,
and memory the first step freed does not hide what a later step touches again."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bench.core.adapter import MemoryReading
from bench.measure.worker import probe_memory

MiB = 2**20


class Allocating:
    """An 'adapter' whose first step touches 400 MiB (a compilation, freed after it) and
    every later step 100 MiB of temporaries."""

    def __init__(self):
        self.calls = 0

    def step(self):
        self.calls += 1
        size = 400 * MiB if self.calls == 1 else 100 * MiB
        scratch = np.ones(size // 8)  # touched: resident
        loss = float(scratch[-1])
        del scratch
        return loss

    def reset_peak_memory(self):
        pass

    def peak_memory(self):
        return MemoryReading(None, None)

    def sync(self, outputs=None):
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak reset is Linux's /proc")
def test_the_first_step_is_read_apart_from_the_steps_after_it():
    fake = Allocating()
    m = probe_memory(fake, fake.step, steps=2)
    assert fake.calls == 3
    assert m["source"] == "process peak RSS growth over the steps after the first"
    assert 380 * MiB <= m["first_step_peak_bytes"] <= 480 * MiB
    # the later steps' 100 MiB, not the first step's 400 (nor 0: the freed pages were released)
    assert 90 * MiB <= m["peak_bytes"] <= 200 * MiB
    assert not m["framework_api"]


def test_a_framework_counter_is_used_where_there_is_one():
    class Counted(Allocating):
        def peak_memory(self):
            return MemoryReading(123 * MiB if self.calls > 1 else 456 * MiB, "fake.max_memory")

    fake = Counted()
    m = probe_memory(fake, fake.step, steps=1)
    assert (m["peak_bytes"], m["first_step_peak_bytes"]) == (123 * MiB, 456 * MiB)
    assert m["source"] == "fake.max_memory" and m["framework_api"]


def test_a_non_finite_loss_in_the_probe_is_a_divergence():
    from bench.core.errors import Diverged

    class Diverging(Allocating):
        def step(self):
            super().step()
            return float("nan") if self.calls == 2 else 1.0

    fake = Diverging()
    with pytest.raises(Diverged):
        probe_memory(fake, fake.step, steps=2)
