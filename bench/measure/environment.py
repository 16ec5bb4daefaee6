"""What a measurement ran on: versions, device, threads, precision flags, git state.

Collected in the framework's own process, after the framework is imported.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.core import frameworks


def package_versions(names) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_state(root: Path | None = None) -> dict[str, object]:
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        # tracked files only: a run writes its own results/ folder into the checkout
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": dirty if sha else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _plugin_distribution(target: str | None) -> dict[str, str]:
    """The distribution that provides an adapter outside this project (a plugin), with its
    version: a plugin's framework is named by the plugin, not known here."""
    if not target:
        return {}
    top = target.partition(":")[0].split(".")[0]
    if top in ("bench", "implementations"):
        return {}
    return package_versions(metadata.packages_distributions().get(top, ()))


def collect_environment(framework: str | None, device: str, threads: int,
                        adapter_target: str | None = None) -> dict[str, object]:
    """A JSON-able record of the environment of one process: the versions of the framework's
    packages (its record's, ``bench.core.frameworks``: a plugin's framework, a package named
    like it), of the plugin distribution that provides the adapter (``adapter_target``,
    "module:Class"), and the variables every framework's runtime reads."""
    framework_packages = frameworks.get(framework).packages if framework else ()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "framework": framework,
        "packages": {**package_versions(("numpy", "pandas", "pytest-benchmark", *framework_packages)),
                     **_plugin_distribution(adapter_target)},
        "device": device,
        "gpu": gpu_driver() if device == "cuda" else None,
        "threads": threads,
        "flags": {k: os.environ[k] for k in frameworks.env_keys() if k in os.environ},
        "git": git_state(),
    }
