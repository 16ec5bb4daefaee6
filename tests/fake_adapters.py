"""Fake adapters for reliability tests: a plugin without a framework that plants a crash,
a silent hang and a divergence, installed the way pip would (a module and a dist-info with
a ``metabench.adapters`` entry point) into a folder that goes on ``PYTHONPATH``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PLUGIN = '''
import os
import time

import numpy as np

from bench.core.adapter import Adapter, AdapterInfo
from bench.core.registry import AdapterEntry


class Fake(Adapter):
    """No framework: numbers from numpy, in a few milliseconds per step."""
    framework = "fake"
    algorithms = ("maml", "fomaml")
    step_seconds = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0
    def describe(self):
        return AdapterInfo("fake", "0", "cpu", "none", "eager", "float32", 1)
    def to_device(self, batch): return batch
    def sync(self, outputs=None): pass
    def get_params(self): return {}
    def set_params(self, params): self.steps = 0
    def inner_step(self, batch): return None
    def outer_step(self, batch):
        self.steps += 1
        time.sleep(self.step_seconds)
        return np.float32(1.0 / self.steps)
    def adapt(self, batch): return None
    def predict(self, batch): return np.zeros(batch.query_y.shape[:2] + (1,), np.float32)
    def probe(self, batch): return {}


class Steady(Fake):
    """Finite losses, slow enough (0.3 s a step) that a test can stop it mid-cell."""
    step_seconds = 0.3


class Quick(Fake):
    """Finite losses at 20 ms a step, for tests that never stop a cell mid-way: the repeated
    runs of tests/test_repetition.py with Steady sat idle 15 s of their 21."""
    step_seconds = 0.02


class Crashing(Fake):
    def outer_step(self, batch): raise RuntimeError("planted crash in outer_step")


class Hanging(Fake):
    """A deadlock: sleeps forever, printing nothing."""
    def outer_step(self, batch):
        time.sleep(3600)


class Diverging(Fake):
    """The loss is NaN from the second outer step on (after each set_params)."""
    def outer_step(self, batch):
        self.steps += 1
        return np.float32(1.0 if self.steps < 2 else np.nan)


class Killer(Fake):
    """The first time it is built (a marker file named by $FAKE_KILL_MARKER records it), it
    SIGKILLs the process that runs its cell: the Slurm job or the Ray worker, as a
    preemption or an out-of-memory kill would. Built again (``--resume``), it is Fake."""
    def __init__(self, *args, **kwargs):
        marker = os.environ.get("FAKE_KILL_MARKER")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getppid(), 9)
            time.sleep(60)  # the kernel kills this process too (the harness's parent-death signal)
        super().__init__(*args, **kwargs)


ENTRIES = [AdapterEntry("fake-steady", "fake", ("maml", "fomaml"), "metabench_reliability_plugin:Steady"),
           AdapterEntry("fake-steady-b", "fake", ("maml",), "metabench_reliability_plugin:Steady"),
           AdapterEntry("fake-quick", "fake", ("maml",), "metabench_reliability_plugin:Quick"),
           AdapterEntry("fake-quick-b", "fake", ("maml",), "metabench_reliability_plugin:Quick"),
           AdapterEntry("fake-killer", "fake", ("maml",), "metabench_reliability_plugin:Killer"),
           AdapterEntry("fake-crash", "fake", ("maml",), "metabench_reliability_plugin:Crashing"),
           AdapterEntry("fake-hang", "fake", ("maml",), "metabench_reliability_plugin:Hanging"),
           AdapterEntry("fake-diverge", "fake", ("maml",), "metabench_reliability_plugin:Diverging"),
           AdapterEntry("fake-missing", "fake", ("maml",), "metabench_not_installed_anywhere:Adapter"),
           AdapterEntry("fake-misspelt", "fake", ("maml",), "metabench_reliability_plugin:Steady",
                        options={"dtpye": "float64"})]
'''


def install_plugin(site: Path) -> Path:
    """The plugin installed the way pip would: a module and a dist-info with an entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "metabench_reliability_plugin.py").write_text(PLUGIN)
    dist = site / "metabench_reliability_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: metabench-reliability-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metabench.adapters]\nfake = metabench_reliability_plugin:ENTRIES\n")
    return site


def metabench(*args, env, timeout=600) -> subprocess.CompletedProcess:
    """``metabench ARGS`` in a subprocess with ``env`` (``plugin_env``: the plugin importable)."""
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
