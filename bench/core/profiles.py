"""Budget profiles: how much to train, evaluate and time, never what an episode is.

``smoke`` proves the pipeline in seconds per cell (MAML and ProtoNet unless
``--algorithms`` says otherwise, and a quick parity check: ``bench.run.runner``); ``cpu`` is the default without a GPU
(minutes per cell on a 2-core machine, enough to reach the accuracy targets); ``paper``
keeps the spec's own budget (the papers' 60k-iteration protocols: GPU hours).

A spec may refine a profile in ``[profiles.<name>]``; those values win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOUR = 3600.0
# What a run does, in order: parity (the contract check of every adapter, then the comparison
# with torch) before the cells, then each cell's timing, memory and accuracy.
PHASE_GROUPS = ("parity", "timing", "memory", "accuracy")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # spec -> overrides of BudgetSpec fields
    budget_overrides: Callable[[Any], dict[str, int]]
    warmup_rounds: int          # untimed steps after the first (compile) step
    rounds: int                 # timed rounds of one step each, per process
    memory_steps: int           # steps run by the peak-memory probe
    # Timing processes per cell (--repeats overrides): a new process moves a step by 10-60% on
    # a shared VM, which rounds inside one process never show; CIs resample both levels.
    repeats: int = 1
    # Seconds a cell's phase may take before the watchdog kills it (``--cell-timeout``
    # overrides). Generous: several times what the phase takes on a loaded 2-core CPU, so
    # only a hang (a deadlock, a runaway compile) reaches them.
    time_limits: dict[str, float] = field(default_factory=lambda: {"timing": HOUR, "memory": HOUR,
                                                                   "accuracy": 24 * HOUR})
    # The parity phase's comparisons on smaller models and episodes (bench.check.parity.quick_spec):
    # the same maths checked in seconds, where a profile's whole run takes minutes.
    quick_parity: bool = False
    # The phases a run of this profile runs when --phases does not say (every profile: all four)
    phases: tuple[str, ...] = PHASE_GROUPS
    # Memory a cluster job asks for (--executor slurm; --slurm-mem-gb overrides): one cell's
    # process, with ample room (in results/20261129-cpu-seeds the memory probes' peak
    # resident set was at most 1.5 GB; paper-size episodes and GPUs' host buffers need more)
    job_memory_gb: float = 16.0

    def time_limit(self, phases) -> float:
        """The limit of one process running ``phases`` one after the other, in seconds."""
        return sum(self.time_limits[p] for p in phases)


def phases_help() -> str:
    """What each profile runs without ``--phases``, in the words of ``metabench run --help``,
    made from the profiles themselves (tests/test_plugin_friction.py holds the help to them)."""
    def said(p: Profile) -> str:
        runs = "all four" if p.phases == PHASE_GROUPS else ",".join(p.phases)
        if "parity" not in p.phases:
            return f"{p.name}: {runs}, no parity"
        return f"{p.name}: {runs}, parity " + ("quick (16 filters or units, 2 tasks)" if p.quick_parity else "full")
    return "; ".join(said(p) for p in PROFILES.values())


def _smoke(spec) -> dict[str, int]:
    # Smaller meta-batches too: smoke proves the pipeline, its step times are not comparable.
    # Validation and test batches have the same size: one compilation of the evaluation
    # step in JAX and TensorFlow, not two (as in the cpu profile, whose chunks are 50).
    return {"meta_train_steps": 2, "eval_episodes": 8, "val_every": 1, "val_episodes": 8, "meta_batch_size": 4}


def _cpu(spec) -> dict[str, int]:
    # Specs tune their own cpu budget in [profiles.cpu]; this is the fallback.
    return {"meta_train_steps": min(spec.budget.meta_train_steps, 500),
            "eval_episodes": min(spec.budget.eval_episodes, 600),
            "val_every": 100, "val_episodes": 50}


def _paper(spec) -> dict[str, int]:
    return {}


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "seconds per cell: proves every phase runs (CI)", _smoke,
                     warmup_rounds=1, rounds=3, memory_steps=1, repeats=1,
                     # a smoke cell takes 5-60 s per phase (JAX and TF compile on 2 cores)
                     time_limits={"timing": 600, "memory": 300, "accuracy": 600}, quick_parity=True,
                     job_memory_gb=8.0),
    "cpu": Profile("cpu", "minutes per cell on a laptop-class CPU: reaches the accuracy targets",
                   # warm-up 8, rounds 15: in the A/A runs (results/20261205-aa-*, 3 warm-up
                   # rounds then 20) the first 5 timed rounds ran 0.6-4% above the rest, and
                   # processes, not rounds, set the CIs (docs/fairness.md): same steps per process
                   _cpu, warmup_rounds=8, rounds=15, memory_steps=2, repeats=3,
                   # cpu-all on 2 cores (README): timing up to ~5 min, accuracy up to ~25 min a cell
                   time_limits={"timing": 1 * HOUR, "memory": 0.5 * HOUR, "accuracy": 4 * HOUR}),
    "paper": Profile("paper", "the papers' budgets (60k meta-iterations): GPU hours", _paper,
                     warmup_rounds=10, rounds=100, memory_steps=3, repeats=5,
                     # 60k second-order MAML iterations: GPU hours, a day at most
                     time_limits={"timing": 2 * HOUR, "memory": 1 * HOUR, "accuracy": 48 * HOUR},
                     job_memory_gb=32.0),
}
