"""A benchmark cell: one adapter x one algorithm x one spec, under one profile.

Cells are independent units: each runs in processes of its own (timing in one, memory
and accuracy in another), writes its own results folder, and can fail without touching
any other cell. The harness passes a cell between processes as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cell:
    adapter: str          # registry name, e.g. "torch-maml"
    framework: str
    algorithm: str        # a name in bench.core.algorithms.ALGORITHMS
    spec: str             # built-in name or path to a TOML file
    spec_name: str
    profile: str
    device: str           # "cpu" or "cuda"
    threads: int
    data_dir: str | None = None
    cache_dir: str | None = None
    # Training seed: initial weights and training-episode order (bench.core.episodes). Seed 0 is
    # the spec's own; timing and memory run at seed 0 only, accuracy at every seed.
    seed: int = 0

    @property
    def cell_id(self) -> str:
        base = f"{self.adapter}__{self.algorithm}__{self.spec_name}"
        return f"{base}__seed{self.seed}" if self.seed else base

    @property
    def label(self) -> str:
        """Its name in progress lines: ``torch-maml maml omniglot-5w1s seed 1``."""
        return f"{self.adapter} {self.algorithm} {self.spec_name}" + (f" seed {self.seed}" if self.seed else "")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        return cls(**json.loads(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Cell:
        return cls.from_json(Path(path).read_text())


def pin_threads(threads: int) -> list[int]:
    """Restrict this process to ``threads`` CPU cores (the same for every framework) and
    set the thread environment variables the frameworks' runtimes read at start-up.
    Returns the cores used. Call before importing any framework."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    try:
        cores = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, cores)
        return cores
    except (AttributeError, OSError):  # not Linux: threads are still set per framework
        return []


def build(cell: Cell, *, with_init: bool = True):
    """Import and configure the cell's adapter, and build it from the canonical initial
    parameters. Returns ``(adapter, spec, init_params)`` with the profile applied."""
    from bench.core import registry
    from bench.core.models import init_params
    from bench.core.spec import load_spec

    entry = registry.get(cell.adapter)
    cls = registry.load_adapter_class(entry)
    cls.configure(cell.threads, cell.device)
    spec = load_spec(cell.spec).for_algorithm(cell.algorithm).with_profile(cell.profile, cell.algorithm)
    params = init_params(spec, cell.algorithm, train_seed=cell.seed)
    adapter = cls(spec, cell.algorithm, params, device=cell.device, options=entry.options)
    return adapter, spec, params
