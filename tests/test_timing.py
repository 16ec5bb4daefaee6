"""The timing wrapper: every timed call ends in the adapter's sync of that call's outputs."""

from __future__ import annotations

from bench.measure.timing import timed_step


class RecordingAdapter:
    def __init__(self):
        self.events = []

    def outer_step(self, batch):
        self.events.append(("step", batch))
        return f"loss-of-{batch}"

    def sync(self, outputs=None):
        self.events.append(("sync", outputs))


def test_timed_step_runs_the_step_then_syncs_its_outputs():
    adapter = RecordingAdapter()
    step = timed_step(adapter, adapter.outer_step, "batch0")
    for _ in range(3):
        assert step() == "loss-of-batch0"
    assert adapter.events == [("step", "batch0"), ("sync", "loss-of-batch0")] * 3


def test_timed_step_inside_pytest_benchmark_syncs_every_round(benchmark):
    adapter = RecordingAdapter()
    benchmark.pedantic(timed_step(adapter, adapter.outer_step, "b"), rounds=5, iterations=1, warmup_rounds=2)
    assert adapter.events.count(("sync", "loss-of-b")) == 7  # 2 warm-up + 5 timed
    assert len(benchmark.stats.stats.data) == 5
