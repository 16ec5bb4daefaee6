"""Where a run's cells ran, and whether they ran on the same hardware.

Each cell records its placement (executor, host, scheduler job id: ``status.json``) and
its environment (CPU model, cores, GPU: ``environment.json``). Cells spread over a
cluster may land on different machines; their step times are then not comparable, and the
report says which cells differ from the rest (the hardware most cells ran on).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def hardware_of(env: dict) -> str:
    """A cell's hardware in words: the GPU on cuda, else the CPU model and its core count."""
    if env.get("gpu"):
        return str(env["gpu"]).split(",")[0].strip()
    return f"{env.get('cpu')} x{env.get('cpu_count')}"


def cell_hardware(run_dir: Path) -> dict[str, str]:
    """cell id -> hardware, for the cells that recorded an environment."""
    out = {}
    for env_path in sorted((Path(run_dir) / "cells").glob("*/environment.json")):
        out[env_path.parent.name] = hardware_of(_read(env_path))
    return out


def odd_cells(run_dir: Path) -> dict[str, str]:
    """Cells whose hardware is not what most cells ran on: cell id -> their hardware."""
    hardware = cell_hardware(run_dir)
    if not hardware:
        return {}
    common, _ = Counter(hardware.values()).most_common(1)[0]
    return {cell: hw for cell, hw in hardware.items() if hw != common}


def placement_line(run_dir: Path) -> str:
    """One line: by which executor the cells ran, on how many hosts, under how many jobs."""
    executors, hosts, jobs, unrecorded = Counter(), set(), set(), 0
    for path in sorted((Path(run_dir) / "cells").glob("*/status.json")):
        where = _read(path).get("placement")
        if not where:
            unrecorded += 1
            continue
        executors[where.get("executor")] += 1
        if where.get("host") or where.get("node"):
            hosts.add(where.get("node") or where.get("host"))
        if where.get("job_id"):
            jobs.add(str(where["job_id"]))
    if not executors:
        return ("not recorded (a run from before metabench recorded where cells ran)" if unrecorded
                else "no cell finished")
    how = ", ".join(f"{name} ({n} cells)" for name, n in executors.most_common())
    how += f"; {len(hosts)} host{'s' if len(hosts) != 1 else ''}" if hosts else ""
    how += f", {len(jobs)} scheduler job{'s' if len(jobs) != 1 else ''}" if jobs else ""
    return how + (f"; not recorded for {unrecorded} cells run before metabench recorded it" if unrecorded else "")


def mixed_hardware_note(run_dir: Path, most: int = 6) -> str:
    """For the comparison tables: which cells ran on other hardware than the rest (their
    timings are not comparable with the others'); empty when all ran on the same."""
    odd = odd_cells(run_dir)
    if not odd:
        return ""
    hardware = cell_hardware(run_dir)
    common = Counter(hardware.values()).most_common(1)[0][0]
    listed = "; ".join(f"{cell} on {hw}" for cell, hw in list(odd.items())[:most])
    more = f"; +{len(odd) - most} more" if len(odd) > most else ""
    return (f"**MIXED HARDWARE**: {len(odd)} of {len(hardware)} cells ran on other hardware than the rest "
            f"({common}): {listed}{more}. Their step times are not comparable with the others'.")
