"""Shared fixtures: the real Omniglot files (``$METABENCH_DATA_DIR`` or ../shared/data)
and a per-session cache directory, so tests never write into the data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# XLA (JAX's, and TensorFlow's jit_compile) compiles with XLA:CPU's older elemental emitters
# instead of its MLIR fusion emitters, and at a lower LLVM optimisation level, in every process
# of the suite. Neither changes the maths: results move by float32 rounding at most (fast-math
# is off either way; the float64 checks, whose limit is 1e-10, pass with both). They change how
# long the code takes to build and to run, and compiling is most of the suite's XLA time.
# - This process (the adapter contract, the small-model parity): level 0. One core, the
#   contract's 16x16 Conv-4 MAML: jax-maml's outer step compiled in 9.3 s at level 0, 3.1 s
#   with the older emitters too; tensorflow-maml-xla's in 11.8 s and 6.8 s. The contract of
#   the five JAX adapters: 293 s at level 0 alone (in the suite), 114 s with the emitters too.
# - The processes the tests start (``data_env``: runs, parity at full size, check): level 1,
#   since their full-size steps run long enough for level 0's slower code to cost more than
#   it saves. One core, the full-size parity's JAX requests on Omniglot (MAML, ProtoNet,
#   Reptile): 86 + 46 + 122 s with no flag, 17 + 64 + 71 at level 0, 32 + 39 + 65 at level 1
#   (the emitters in both); TF's five requests 163 s -> 147; a smoke run's jax-maml Omniglot
#   cell 57 s -> 26 (its timing and memory processes, 2026-12-07).
# Users' runs (``nox -s bench``) keep XLA's defaults: they time what users run.
IN_PROCESS_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
SUBPROCESS_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
ENVIRON = dict(os.environ)  # as pytest found it: before any test or adapter changed it


def _with_xla_flags(environ, flags: str) -> str:
    """``environ``'s XLA_FLAGS (a user's own kept) followed by ``flags``."""
    return f"{environ.get('XLA_FLAGS', '')} {flags}".strip()


def pytest_configure(config):
    os.environ["XLA_FLAGS"] = _with_xla_flags(os.environ, IN_PROCESS_XLA_FLAGS)
    _one_core_per_worker()


def _one_core_per_worker():
    """Under pytest-xdist (``nox -s tests`` runs two workers), each worker and every process it
    starts keeps to its own share of the cores: the default thread count of every framework
    and of the harness (``bench.run.runner``) is the process's affinity, so two workers never
    run 2 threads each on 2 cores. Oversubscribed, a torch step ran 50x slower (OpenMP's
    threads spin waiting for each other), and a cell's time limit could pass."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= workers:
        i = int(worker.removeprefix("gw"))
        os.sched_setaffinity(0, cores[i::workers])


# The slowest modules, slowest first (``--durations``, 2026-12-07): ``nox -s tests`` gives each
# module to one pytest-xdist worker (``--dist loadfile``) in collection order, and a slow
# module handed out last keeps one worker busy while the other has nothing left to do.
SLOWEST_FIRST = ("test_adapter_contract.py", "test_parity.py", "test_run.py", "test_algorithm_plugin.py",
                 "test_plugin.py", "test_reliability.py", "test_baselines.py", "test_executors.py",
                 "test_tensorflow_adapters.py", "test_gpu_check.py", "test_jax_adapters.py", "test_properties.py",
                 "test_repetition.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def _data_dir() -> Path:
    env = os.environ.get("METABENCH_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "omniglot" / "images_background.zip").exists():
        pytest.fail(f"Omniglot not found under {d}: set METABENCH_DATA_DIR to the folder holding omniglot/")
    return d


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache shared by the whole session (decoding Omniglot once takes ~10 s)."""
    env = os.environ.get("METABENCH_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def data_env(data_dir, cache_dir) -> dict[str, str]:
    """Environment for a subprocess of the CLI."""
    return {**ENVIRON, "METABENCH_DATA_DIR": str(data_dir), "METABENCH_CACHE_DIR": str(cache_dir),
            "PYTHONPATH": str(REPO), "XLA_FLAGS": _with_xla_flags(ENVIRON, SUBPROCESS_XLA_FLAGS)}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory, data_env) -> dict[str, str]:
    """``data_env`` with the fake adapters of ``tests/fake_adapters.py`` installed as a plugin
    (a module may define its own ``plugin_env``, as tests/test_plugin.py does)."""
    from tests.fake_adapters import install_plugin

    site = install_plugin(tmp_path_factory.mktemp("site"))
    return {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}{os.pathsep}{site}"}
