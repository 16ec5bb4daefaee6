"""``bench.measure.machine_load``: a phase run while another process kept a core busy is flagged,
from the machine's CPU time less the cell's own; the arithmetic, and a real busy process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.measure import machine_load
from bench.measure.machine_load import FLAG_CORES, Snapshot, between, flagged
from bench.run.cells import _run_process


def test_other_cores_are_the_machines_cpu_time_less_the_cells_and_the_harnesss():
    before = Snapshot(wall=100.0, busy=1000.0, steal=5.0, children=10.0, own=2.0, loadavg=0.5)
    # 10 s: the machine used 30 CPU-seconds, the cell 18 and the harness 2: others used 10
    after = Snapshot(wall=110.0, busy=1030.0, steal=6.0, children=28.0, own=4.0, loadavg=2.0)
    m = between(before, after)
    assert m["other_cpu_cores"] == pytest.approx(1.0) and m["steal_cores"] == pytest.approx(0.1)
    assert (m["loadavg_before"], m["loadavg_after"]) == (0.5, 2.0)
    assert flagged(m) == "other processes kept 1.00 cores busy"
    quiet = between(before, Snapshot(110.0, 1020.0, 5.0, 28.0, 4.0, 2.0))
    assert quiet["other_cpu_cores"] == 0.0 and flagged(quiet) is None
    stolen = between(before, Snapshot(110.0, 1020.0, 5.0 + 10 * FLAG_CORES, 28.0, 4.0, 2.0))
    assert flagged(stolen).startswith("the hypervisor stole")


def test_without_proc_stat_only_the_load_average_is_recorded(monkeypatch):
    monkeypatch.setattr(machine_load, "_STAT", Path("/nonexistent/stat"))
    m = between(machine_load.snapshot(), machine_load.snapshot())
    assert m["other_cpu_cores"] is None and flagged(m) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="/proc/stat is Linux's")
def test_a_phase_run_beside_a_busy_process_is_flagged(tmp_path):
    """A cell process that sleeps 2 s while another process spins on one core: the phase's
    record says that about one core was busy elsewhere."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the spinner is running before the phase starts
        out = _run_process([sys.executable, "-c", "import time; time.sleep(2)"], tmp_path / "log", None,
                           lambda line: None)
    finally:
        busy.kill()
        busy.wait()
    assert out.machine["other_cpu_cores"] >= 0.6, out.machine
    assert "other processes kept" in flagged(out.machine)
