"""How busy the machine was while a cell's process ran, so that a timing taken while other
processes competed for the cores is flagged instead of trusted.

Timing needs a quiet machine: on a 2-core VM a second busy process made a 2-thread torch
step up to 50x slower. The harness snapshots, before and after each of a cell's processes,
the whole machine's busy CPU time (``/proc/stat``), the CPU time of the processes it waited
for (its children's ``rusage``: the cell) and its own. What remains was used by other
processes: ``other_cpu_cores`` is that time over the process's wall-clock time, the average
number of cores they kept busy. ``steal_cores`` is the same for a virtual machine's stolen
time (another guest on the same host). Where ``/proc/stat`` does not exist (not Linux) only
the load average is recorded.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

# A phase during which other processes kept this many cores busy on average is flagged:
# well above a quiet VM's background (kernel threads: 0.01-0.07 cores measured here).
FLAG_CORES = 0.25

_STAT = Path("/proc/stat")
_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")


@dataclass(frozen=True)
class Snapshot:
    wall: float                 # time.monotonic()
    busy: float | None          # seconds of CPU used on every core since boot (/proc/stat)
    steal: float | None         # seconds stolen by the hypervisor since boot
    children: float             # CPU seconds of the waited-for children of this process
    own: float                  # CPU seconds of this process (every thread)
    loadavg: float              # 1-minute load average


def _proc_stat() -> tuple[float | None, float | None]:
    """(busy, steal) seconds from the aggregate ``cpu`` line of /proc/stat."""
    try:
        fields = _STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None, None
    if fields[0] != "cpu" or len(fields) < 9:
        return None, None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick  # stolen time is nobody's here


def _cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def snapshot() -> Snapshot:
    busy, steal = _proc_stat()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return Snapshot(time.monotonic(), busy, steal, _cpu_seconds(resource.RUSAGE_CHILDREN),
                    _cpu_seconds(resource.RUSAGE_SELF), load)


def cpu_mhz() -> float | None:
    """cpu0's current frequency where the kernel exposes it (often not inside a VM)."""
    try:
        return int(_FREQ.read_text()) / 1000
    except (OSError, ValueError):
        return None


def between(before: Snapshot, after: Snapshot) -> dict:
    """What competed with the process that ran between the two snapshots (taken before it
    started and after it was waited for): a phase's ``machine`` record in status.json."""
    wall = max(after.wall - before.wall, 1e-9)
    out = {"loadavg_before": round(before.loadavg, 2), "loadavg_after": round(after.loadavg, 2),
           "other_cpu_cores": None, "steal_cores": None, "cpu_mhz": cpu_mhz()}
    if before.busy is not None and after.busy is not None:
        ours = (after.children - before.children) + (after.own - before.own)
        out["other_cpu_cores"] = round(max(after.busy - before.busy - ours, 0.0) / wall, 3)
        out["steal_cores"] = round(max(after.steal - before.steal, 0.0) / wall, 3)
    return out


def flagged(machine: dict | None) -> str | None:
    """Why a phase's numbers were taken on a busy machine, or None when it was quiet (or
    nothing was recorded)."""
    if not machine:
        return None
    other, steal = machine.get("other_cpu_cores"), machine.get("steal_cores")
    if other is not None and other >= FLAG_CORES:
        return f"other processes kept {other:.2f} cores busy"
    if steal is not None and steal >= FLAG_CORES:
        return f"the hypervisor stole {steal:.2f} cores"
    return None
