"""Sessions: ``nox -s tests`` (unit suite), ``nox -s bench`` (the benchmark), ``nox -s
baselines`` (metabench against plain per-framework MAML), ``nox -s gpu`` (the GPU check),
``nox -s lint``.

Every session installs the project with all three frameworks. On a machine without an
NVIDIA GPU, TensorFlow comes as ``tensorflow-cpu`` and torch is pinned to the CPU build
by ``.ci/constraints-cpu.txt``; with a GPU the package's own ranges apply.
"""

import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
# A session whose interpreter is missing fails with nox's message (which Python it looked
# for), never a silent "skipped" that exits 0.
nox.options.error_on_missing_interpreters = True

# The Pythons metabench supports (pyproject's requires-python, and the versions torch, JAX
# and TensorFlow publish wheels for). The sessions run under the interpreter nox itself runs
# under when it is one of them, else 3.11; $METABENCH_PYTHON picks another. CI runs 3.11:
# this machine's local torch CPU wheel is built for it.
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
_RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
PYTHON = os.environ.get("METABENCH_PYTHON") or (_RUNNING if _RUNNING in SUPPORTED_PYTHONS else "3.11")
HAS_GPU = shutil.which("nvidia-smi") is not None
PASS_ENV = ("METABENCH_DATA_DIR", "METABENCH_CACHE_DIR", "METABENCH_OFFLINE")


def install(session: nox.Session, *extra: str) -> None:
    if HAS_GPU:
        session.install("-e", ".[all]", *extra)
    else:
        session.install("-c", ".ci/constraints-cpu.txt", "-e", ".[all-cpu]", *extra)


def env() -> dict[str, str]:
    return {k: os.environ[k] for k in PASS_ENV if k in os.environ}


def workers(posargs) -> list[str]:
    """pytest-xdist's arguments: two workers where two cores are free (each worker and its
    processes keep to their own cores: tests/conftest.py), a whole test module per worker
    (``loadfile``: a module's fixtures, a smoke run among them, run once). Two at most: each
    worker imports torch, JAX and TensorFlow (~6 GB). ``-n`` in the posargs overrides.
    ``--no-loadscope-reorder``: modules are handed out in collection order, which
    tests/conftest.py sorts slowest first; xdist's own order (most tests first) started the
    parity module, the slowest, 612 s into a 1082 s run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in posargs):
        return []
    return ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The full unit suite, parity across frameworks included. autograd: the fourth-framework
    example plugin (docs/examples/metabench-autograd-protonet), installed and tested;
    submitit and ray: the cluster executors, run through their local modes; hypothesis: the
    property tests of bad input (tests/test_properties.py); import-linter: the layering
    contracts (tests/test_layers.py); a headless Chromium from Debian's
    archive, unpacked into .nox/chromium (.ci/chromium.sh), for the browser test of the HTML
    pages (tests/test_html.py)."""
    install(session, "autograd>=1.7", "submitit>=1.5", "ray>=2.9", "hypothesis>=6.100", "import-linter>=2.1",
            "pytest-xdist>=3.8")
    chromium = os.environ.get("METABENCH_CHROMIUM")
    if not chromium:  # run_install: it runs under --install-only too
        out = session.run_install("bash", ".ci/chromium.sh", ".nox/chromium", external=True, silent=True)
        chromium = out.strip().splitlines()[-1] if out else ""
    # JAX's and TensorFlow's persistent XLA caches, fresh per session and for the tests only:
    # the suite builds the same jitted steps many times over (the contract check builds an
    # adapter per check; a run compiles again in each phase's process), and a cache hit
    # skips XLA's compile, not the tracing, so recompilation checks still see every call.
    # Benchmarks never use them: their first-step times are the compile times they report.
    # TF's cache (its XLA launch ops' executables) is keyed by the HLO program alone
    # (non-strict signatures: a tf.function's generated name differs between processes).
    # (Not session.create_tmp(): it moves TMPDIR into .nox, and Ray's sockets with it.)
    cache = tempfile.mkdtemp(prefix="metabench-xla-cache-")
    xla_cache = {"JAX_COMPILATION_CACHE_DIR": f"{cache}/jax", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
                 "TF_XLA_FLAGS": f"{os.environ.get('TF_XLA_FLAGS', '')} --tf_xla_persistent_cache_directory="
                                 f"{cache}/tensorflow --tf_xla_disable_strict_signature_checks=true".strip()}
    try:
        session.run("pytest", *workers(session.posargs), *session.posargs,
                    env={**env(), **xla_cache, "METABENCH_CHROMIUM": chromium})
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark: ``nox -s bench -- --profile smoke --frameworks torch``."""
    install(session)
    session.run("metabench", "run", *session.posargs, env=env())


@nox.session(python=PYTHON)
def baselines(session: nox.Session) -> None:
    """metabench's default MAML adapters against plain torch.func / JAX / TF MAML on the same
    shapes, weights and episodes (``bench/check/baselines``), into results/<UTC time>-baselines/.
    Extra arguments go to it (e.g. ``-- --rounds 50 --frameworks torch``)."""
    install(session)
    session.run("metabench", "baselines", f"results/{datetime.now(UTC):%Y%m%d-%H%M%S}-baselines",
                *session.posargs, env=env())


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """The GPU check on a machine with an NVIDIA GPU (``bench/check/gpu_check.py``): dispatch
    against synchronised step time and the sync check per adapter, quick parity with torch
    on the GPU, and smoke timing and memory, into results/<UTC time>-gpu-check/. Extra
    arguments go to the check (e.g. ``-- --frameworks torch,jax``)."""
    if not HAS_GPU:
        session.error("nox -s gpu needs an NVIDIA GPU: nvidia-smi was not found")
    install(session)
    session.run("python", "-m", "bench.check.gpu_check", f"results/{datetime.now(UTC):%Y%m%d-%H%M%S}-gpu-check",
                *session.posargs, env=env())


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "bench", "implementations", "tests", "noxfile.py", "docs/examples")
