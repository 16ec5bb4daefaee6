"""The frameworks, one record each: everything the harness knows about a framework by name.

``FRAMEWORKS`` holds the built-in ones (torch, JAX, TensorFlow); ``get(name)`` returns a
built-in's record or, for a framework a plugin brings, a generic one. Nothing else in
``bench`` keeps a table keyed by framework names (``tests/test_frameworks.py`` checks):
a new built-in framework is its folder (``implementations/<name>/``), one record here,
its adapters' lines in ``bench.core.registry`` and its extra in ``pyproject.toml``.

Importing this module imports no framework: a GPU probe imports its framework when called,
and the harness calls it only in the framework's own process (``bench.run.preflight``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

# Okabe-Ito's colour-blind-safe hues: a built-in framework's is its record's, every other
# framework gets one of these, chosen by its name's checksum (the same in every run).
OTHER_COLOURS = ("#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
# Variables every process records whatever its framework (threads, devices, BLAS); a
# framework's own are its record's ``env_keys``.
COMMON_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "NVIDIA_TF32_OVERRIDE",
                   "OPENBLAS_CORETYPE")


@dataclass(frozen=True)
class Framework:
    name: str                       # as adapters and the registry name it: "torch", "jax", "tensorflow"
    display: str                    # how prose names it (the report's answer line): "torch", "JAX", "TF"
    module: str                     # its top-level import, looked up (not imported) to see it is installed
    packages: tuple[str, ...]       # distributions whose versions each of its processes records
    extra: str | None               # pip install 'metabench[EXTRA]' installs it (None: not metabench's)
    cpu_extra: str | None           # the same without CUDA libraries, where that is another package
    colour: str                     # its hue in every figure and page (variants: shades of it)
    env_keys: tuple[str, ...]       # environment variables its runtime reads, recorded with each measurement
    gpu_probe: Callable[[], None] | None  # raises, in its own words, when it cannot use the GPU
    gpu_fix: str                    # what to do when ``gpu_probe`` raises
    base: str | None                # its adapters' base class, "module:Class" (the scaffold names it)
    base_provides: str              # what ``base`` already implements, for the scaffold's comment
    order: int                      # its place in tables and figures (plugins: after every built-in)
    # its built-in adapters' entries, "module:ENTRIES" in a module that imports no framework
    # (the registry lists them); None for a plugin's framework, whose entry points list them
    entries: str | None = None

    @property
    def import_names(self) -> tuple[str, ...]:
        """``packages`` as top-level import names: an ImportError naming one of them is
        fixed by installing the extra."""
        return tuple(p.replace("-", "_") for p in self.packages)


# -- the GPU probes: called in the framework's own process only (bench.run.preflight.probe) --

def _torch_sees_gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no GPU: torch.cuda.is_available() "
                           f"is False (CUDA build: {torch.version.cuda})")


def _jax_sees_gpu() -> None:
    import jax

    jax.devices("gpu")


def _tensorflow_sees_gpu() -> None:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        raise RuntimeError(f"tensorflow {tf.__version__} lists no GPU (tf.config.list_physical_devices)")


TORCH = Framework(
    name="torch", display="torch", module="torch", packages=("torch",), extra="torch", cpu_extra=None,
    colour="#D55E00", env_keys=(), order=0, entries="implementations.torch:ENTRIES",
    gpu_probe=_torch_sees_gpu, gpu_fix="install a CUDA build of torch (pytorch.org/get-started)",
    base="implementations.torch.common:TorchAdapter",
    base_provides="device and dtype, parameters as leaf tensors in the canonical layout, torch.optim Adam "
                  "from self.meta_optimizer (apply_meta_grad), sync, peak memory, the probe's layout "
                  "(probe_result)")
JAX = Framework(
    name="jax", display="JAX", module="jax", packages=("jax", "jaxlib", "optax"), extra="jax", cpu_extra=None,
    colour="#0072B2", env_keys=("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION"),
    order=1, entries="implementations.jax:ENTRIES",
    gpu_probe=_jax_sees_gpu, gpu_fix="pip install 'jax[cuda12]'",
    base="implementations.jax.common:JaxAdapter",
    base_provides="device and dtype (jax_enable_x64 for float64), parameters as a pytree with an optax state "
                  "(set self._optimizer before set_params), sync over outputs and state, peak memory, the "
                  "probe's layout (probe_result)")
TENSORFLOW = Framework(
    name="tensorflow", display="TF", module="tensorflow", packages=("tensorflow", "tensorflow-cpu", "keras"),
    extra="tensorflow", cpu_extra="tensorflow-cpu", colour="#E69F00",
    env_keys=("TF_XLA_FLAGS", "TF_FORCE_GPU_ALLOW_GROWTH", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"),
    order=2, entries="implementations.tensorflow:ENTRIES",
    gpu_probe=_tensorflow_sees_gpu,
    gpu_fix="pip install 'metabench[tensorflow]' (not tensorflow-cpu) with a matching CUDA",
    base="implementations.tensorflow.common:TFAdapter",
    base_provides="the jit_compile option, device and dtype, tf.Variables in TF layout with Adam from "
                  "self.meta_optimizer, tf.function step functions counted for recompilation (_compile), "
                  "sync, peak memory, the probe's layout (probe_result)")

FRAMEWORKS: dict[str, Framework] = {f.name: f for f in (TORCH, JAX, TENSORFLOW)}


def names() -> tuple[str, ...]:
    """The built-in frameworks, in their order."""
    return tuple(sorted(FRAMEWORKS, key=lambda n: FRAMEWORKS[n].order))


@cache
def get(name: str) -> Framework:
    """``name``'s record: a built-in's, or for any other framework (a plugin's) a generic
    one, the same in every run: its name for display, package and import, no extra, no GPU
    probe, no base class, a colour from ``OTHER_COLOURS`` by its name's checksum, after the
    built-ins in order."""
    if name in FRAMEWORKS:
        return FRAMEWORKS[name]
    return Framework(name=name, display=name, module=name, packages=(name,), extra=None, cpu_extra=None,
                     colour=OTHER_COLOURS[zlib.crc32(name.encode()) % len(OTHER_COLOURS)], env_keys=(),
                     gpu_probe=None, gpu_fix="", base=None, base_provides="", order=len(FRAMEWORKS))


def env_keys() -> tuple[str, ...]:
    """The environment variables every measurement records: the common ones, then each
    built-in framework's, in order."""
    return COMMON_ENV_KEYS + tuple(k for n in names() for k in FRAMEWORKS[n].env_keys)
