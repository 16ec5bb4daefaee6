"""The timing wrapper: every timed call ends in the adapter's sync of that call's outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


INSIDE_PYTEST_BENCHMARK = """
from bench.measure.timing import timed_step
from tests.test_timing import RecordingAdapter


def test_inside(benchmark):
    adapter = RecordingAdapter()
    benchmark.pedantic(timed_step(adapter, adapter.outer_step, "b"), rounds=5, iterations=1, warmup_rounds=2)
    assert adapter.events.count(("sync", "loss-of-b")) == 7  # 2 warm-up + 5 timed
    assert len(benchmark.stats.stats.data) == 5
"""


def test_timed_step_inside_pytest_benchmark_syncs_every_round(tmp_path):
    """In a pytest process of its own, with the environment the harness gives its timing
    processes (``bench.run.cells.child_env``), as a run times a step: under pytest-xdist
    (``nox -s tests``) pytest-benchmark disables itself in this process and in any child
    that inherits the worker's PYTEST_XDIST_WORKER."""
    from bench.run.cells import child_env

    (tmp_path / "test_inside.py").write_text(INSIDE_PYTEST_BENCHMARK)
    out = tmp_path / "benchmark.json"
    env = {**child_env(), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_inside.py"), "--benchmark-json", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    [bench] = json.loads(out.read_text())["benchmarks"]
    assert bench["stats"]["rounds"] == 5


# A pytest plugin installed the way pip would (a ``pytest11`` entry point): loaded, it leaves a
# mark. pytest-cov, for one, would trace every line of a timed step.
STRAY_PYTEST_PLUGIN = """
import os
from pathlib import Path


def pytest_configure(config):
    Path(os.environ["STRAY_PLUGIN_MARK"]).write_text("loaded")
"""


def test_a_timing_process_loads_pytest_benchmark_and_no_other_installed_pytest_plugin(tmp_path, plugin_env):
    from tests.fake_adapters import metabench

    site = tmp_path / "site"
    site.mkdir()
    (site / "stray_pytest_plugin.py").write_text(STRAY_PYTEST_PLUGIN)
    dist = site / "stray_pytest_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stray-pytest-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nstray = stray_pytest_plugin\n")
    mark = tmp_path / "loaded"
    env = {**plugin_env, "PYTHONPATH": f"{plugin_env['PYTHONPATH']}:{site}", "STRAY_PLUGIN_MARK": str(mark)}
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    # the control: installed, the plugin is loaded by a plain pytest process
    control = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_nothing.py"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert control.returncode == 0 and mark.read_text() == "loaded", control.stdout[-2000:]
    mark.unlink()
    r = metabench("run", "--profile", "smoke", "--specs", "sinusoid-10shot", "--adapters", "fake-steady",
                  "--algorithms", "maml", "--results-dir", str(tmp_path / "results"), "--run-id", "r",
                  "--phases", "timing", "--threads", "1", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    timings = json.loads(next((tmp_path / "results" / "r" / "cells").glob("*/timing/0/benchmark.json")).read_text())
    assert timings["benchmarks"] and not mark.exists()
