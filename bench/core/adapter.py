"""The adapter contract: what every implementation (framework x algorithm) provides.

The harness owns specs, episodes, timing and results; an adapter owns the model maths and
nothing else. It never times itself, never writes files, never reads specs: it is built
from a spec, and reads ``self.config`` (``bench.core.algorithms.AdapterConfig``: the model, the
episode shapes, the inner loop, the meta-optimizer), which the harness resolves from it.
One adapter instance holds one model's parameters and its meta-optimizer state, on one
device.

Calling sequence (``bench.measure.worker`` and the timing suite)::

    cls = registry.load_adapter_class(name)      # imports the framework
    cls.configure(threads=2, device="cpu")        # before any framework op
    adapter = cls(spec, algorithm, init_params, device="cpu", options={...})
    batch = adapter.to_device(sampler.batch(0, B))  # outside every timed region
    adapter.sync(adapter.outer_step(batch))         # what the harness times

Everything returned by a step may be asynchronous (JAX, CUDA): ``sync(out)`` blocks until
``out`` and every state the step updated (new parameters, optimizer state) are computed.

Shapes follow ``bench.core.episodes`` (numpy NHWC images, class-major labels) and parameters
follow ``bench.core.models`` (canonical numpy layout).

``options`` are the registry entry's (variants of one class). Each class declares the
options it accepts in ``OPTIONS`` (name -> ``Option``: type, default, allowed values); an
unknown or ill-typed option is refused before a run (``option_problems``), and
``self.options`` holds every declared option with its value, which the results record.
Every adapter accepts ``dtype = "float64"``, the diagnostic that ``metabench parity``
builds to prove that it computes the reference function at float64 rounding. Benchmarks
run float32.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from bench.core.algorithms import AdapterConfig
from bench.core.algorithms import get as get_algorithm
from bench.core.episodes import EpisodeBatch
from bench.core.spec import EpisodeSpec


@dataclass(frozen=True)
class CompilationMode:
    """How an adapter's steps run, in the words the results use. ``compiled``: the first
    step pays a trace or compilation that the later steps reuse, so the report says after
    how many steps it is repaid against the fastest adapter that compiles nothing."""

    name: str
    compiled: bool
    description: str


# The vocabulary of ``AdapterInfo.compilation`` (the contract check refuses any other word;
# ``AdapterInfo.compilation_detail`` says the rest in free text).
COMPILATION: dict[str, CompilationMode] = {m.name: m for m in (
    CompilationMode("eager", False, "op by op as Python calls them (torch, numpy, autograd)"),
    CompilationMode("lazy", False, "ops recorded into a graph that is evaluated each step, nothing compiled "
                                   "ahead (MLX without mx.compile)"),
    CompilationMode("jit", True, "the step traced and compiled once (jax.jit, mx.compile)"),
    CompilationMode("graph", True, "the step traced into a dataflow graph (tf.function)"),
    CompilationMode("xla", True, "the step compiled by XLA (tf.function(jit_compile=True))"),
    CompilationMode("torch.compile", True, "torch.compile (TorchDynamo and Inductor)"),
)}


def compilation_mode(recorded: Any) -> CompilationMode | None:
    """The vocabulary's mode that a recorded ``compilation`` names: the word itself, or, in
    results from before the vocabulary, free text that starts with one ("eager (lazy graph,
    mx.eval per step)" is eager); None for anything else."""
    if not isinstance(recorded, str):
        return None
    text = recorded.strip()
    if text in COMPILATION:
        return COMPILATION[text]
    for name in sorted(COMPILATION, key=len, reverse=True):
        if text.lower().startswith(name) and not text[len(name):len(name) + 1].isalnum():
            return COMPILATION[name]
    return None


def compilation_name(recorded: Any) -> Any:
    """A recorded ``compilation`` in the vocabulary's word (results from before it carry
    free text: "eager (lazy graph, ...)" is eager); anything else as recorded."""
    mode = compilation_mode(recorded)
    return mode.name if mode is not None else recorded


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter's description of itself, recorded with every measurement."""

    framework: str                 # "torch", "jax", "tensorflow"
    framework_version: str         # the framework's own version (importlib.metadata), not numpy's
    device: str                    # "cpu" or "cuda"
    device_name: str               # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
    compilation: str               # one of COMPILATION: "eager", "lazy", "jit", "graph", "xla", "torch.compile"
    precision: str                 # e.g. "float32, TF32 off"
    threads: int | None            # intra-op threads the framework was set to
    notes: str = ""                # implementation choices (task batching, inner loop form, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    compilation_detail: str = ""   # free text on the mode, e.g. "mx.eval once per step"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def compilation_problem(self) -> str | None:
        """Why ``compilation`` is not a word of the vocabulary, in one line, or None."""
        if self.compilation in COMPILATION:
            return None
        return (f"compilation {self.compilation!r} is not one of {', '.join(COMPILATION)}: name the mode "
                f"there and say the rest in compilation_detail")


@dataclass(frozen=True)
class Option:
    """An option an adapter class accepts. ``default`` None means "chosen by the adapter"
    (e.g. by device); ``choices`` empty means any value of ``type``."""

    type: type
    default: Any = None
    choices: tuple = ()
    help: str = ""

    def problem(self, name: str, value: Any) -> str | None:
        # bool is an int in Python: an option typed int must not take true/false, and the reverse
        if isinstance(value, bool) != (self.type is bool) or not isinstance(value, self.type):
            return f"option {name} must be {self.type.__name__}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"option {name} must be one of {', '.join(map(str, self.choices))}, got {value!r}"
        return None


@dataclass(frozen=True)
class MemoryReading:
    """Peak memory of the steps run since ``reset_peak_memory``, in bytes.

    ``source`` names the API that measured it: "torch.cuda.max_memory_allocated",
    "jax.memory_stats.peak_bytes_in_use", "tf.get_memory_info.peak", or None when the
    framework has no such API on this device (the harness then records the process's
    resident-set growth instead).
    """

    peak_bytes: int | None
    source: str | None


class Adapter(abc.ABC):
    """One algorithm in one framework. Subclasses set the three class attributes."""

    framework: ClassVar[str]
    algorithms: ClassVar[tuple[str, ...]]   # e.g. ("maml", "fomaml") or ("protonet",)
    # True in a skeleton from ``metabench new-adapter`` until its maths is written: the
    # placeholder passes the contract checks, and parity says why it fails.
    placeholder: ClassVar[bool] = False
    # What the CPU memory probe (process peak RSS after the first step) cannot see in this
    # framework, said next to its reading; None where nothing is known to be missed.
    cpu_memory_caveat: ClassVar[str | None] = None
    # Options this class accepts; subclasses extend it: ``OPTIONS = {**Base.OPTIONS, ...}``.
    OPTIONS: ClassVar[dict[str, Option]] = {
        "dtype": Option(str, "float32", ("float32", "float64"),
                        "float32 (benchmarked) or float64 (the parity diagnostic)"),
    }

    @classmethod
    def option_problems(cls, options: dict[str, Any]) -> list[str]:
        """Why ``options`` would not configure this class: unknown names (a typo would
        silently benchmark the default under the variant's name) and ill-typed values."""
        problems = [f"unknown option {name!r}; {cls.__name__} accepts: {', '.join(cls.OPTIONS)}"
                    for name in options if name not in cls.OPTIONS]
        problems += [p for name, value in options.items() if name in cls.OPTIONS
                     for p in [cls.OPTIONS[name].problem(name, value)] if p]
        return problems

    @classmethod
    def configure(cls, threads: int, device: str) -> None:
        """Set thread counts and allocator options before the framework does any work.

        Called once per process, after the adapter module (and its framework) is imported
        and before an adapter is built. ``threads`` applies to intra-op parallelism;
        inter-op parallelism is set to 1 in every framework.
        """

    def __init__(self, spec: EpisodeSpec | AdapterConfig, algorithm: str, params: dict[str, np.ndarray],
                 device: str = "cpu", options: dict[str, Any] | None = None):
        if algorithm not in self.algorithms:
            raise ValueError(f"{type(self).__name__} serves {self.algorithms}, not {algorithm!r}")
        problems = self.option_problems(dict(options or {}))
        if problems:
            raise ValueError(f"{type(self).__name__}: {problems[0]}")
        # the little an adapter may read of the spec, resolved for its algorithm (FOMAML's
        # first_order set); the spec itself stays with the harness
        self.config: AdapterConfig = (spec if isinstance(spec, AdapterConfig)
                                      else get_algorithm(algorithm).adapter_config(spec.for_algorithm(algorithm)))
        self.algorithm = algorithm
        self.regression = self.config.regression
        inner = self.config.inner  # the MAML family's inner loop, under the papers' names
        if inner is not None:
            self.inner_lr, self.inner_steps = inner.lr, inner.steps
            self.test_inner_steps, self.first_order = inner.test_steps, inner.first_order
        # the outer-loop optimizer, from the harness: every framework reproduces it
        self.meta_optimizer = self.config.meta_optimizer
        self.device = device
        # every declared option with its value: what the results record as used
        self.options = {name: opt.default for name, opt in self.OPTIONS.items()} | dict(options or {})

    # -- description, device, parameters -------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> AdapterInfo: ...

    @abc.abstractmethod
    def to_device(self, batch: EpisodeBatch) -> Any:
        """The batch in the framework's layout, on the device. Opaque to the harness."""

    @abc.abstractmethod
    def sync(self, outputs: Any = None) -> None:
        """Block until ``outputs`` and all state updated by the last step are computed."""

    @abc.abstractmethod
    def get_params(self) -> dict[str, np.ndarray]:
        """Current parameters in the canonical layout (``bench.core.models``)."""

    @abc.abstractmethod
    def set_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace the parameters (canonical layout); resets the meta-optimizer state."""

    # -- steps ---------------------------------------------------------------------------
    def inner_step(self, batch: Any) -> Any:
        """MAML: one adaptation step on the support set of every task in ``batch``, from
        the current parameters (which it does not change). Returns the adapted parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no inner step")

    @abc.abstractmethod
    def outer_step(self, batch: Any) -> Any:
        """One meta-training step on a meta-batch: adaptation (MAML) or prototypes
        (ProtoNet), query loss, meta-gradient, optimizer update. Returns the mean query loss."""

    @abc.abstractmethod
    def adapt(self, batch: Any) -> Any:
        """Test-time adaptation: MAML's ``test_inner_steps`` steps from the current
        parameters, ProtoNet's prototypes. Returns the adapted state."""

    @abc.abstractmethod
    def predict(self, batch: Any) -> np.ndarray:
        """Query outputs after test-time adaptation, as numpy [B, n_query_total, n_out]:
        MAML's logits (regression: predictions [B, n_query, 1]), ProtoNet's negative
        squared distances to the prototypes. The harness computes the metric from them
        (``bench.core.algorithms.Algorithm.metric``): every framework's accuracy is the same
        numpy argmax, and no adapter carries metric code."""

    # -- numerical parity probes ---------------------------------------------------------
    @abc.abstractmethod
    def probe(self, batch: Any) -> dict[str, np.ndarray]:
        """Quantities compared across frameworks, from the current parameters, without
        changing them: ``support_loss`` [B] (mean support loss of each task before
        adaptation), ``query_logits`` [B, n_query_total, n_out] (after the training-time
        adaptation: MAML's adapted logits, ProtoNet's negative squared distances), and
        ``meta_grad/<param>`` (the meta-gradient the outer step would apply, canonical layout)."""

    def activations(self, batch: Any) -> dict[str, np.ndarray]:
        """Optional, for ``metabench parity``'s diagnosis: the body's output after each
        block (``block1``, ``block2``, ... in order; Conv-4 in NCHW, the MLP [n, units]) on
        the first episode's training-time input (MAML: its support set; ProtoNet: support
        and query, one pass), from the current parameters. When a float64 comparison fails
        at the loss, the first block that differs says where the maths parts. ``{}``: not
        offered (the torch adapters offer it)."""
        return {}

    def max_pool_inputs(self, batch: Any) -> dict[str, list[np.ndarray]]:
        """Optional, for parity's near-tie test (``bench.check.near_ties``): the input of every
        max-pool (after conv, BatchNorm and ReLU; NCHW, float64 numpy), block by block, along
        the passes the probe makes on the first episode, from the current parameters, keyed
        by pass: ``"support"`` (meta-parameters) and ``"query"`` (the task's adapted
        parameters) for the MAML family, ``"support+query"`` (one pass) for ProtoNet. ``{}``:
        not offered. The reference adapters (torch) offer it."""
        return {}

    # -- memory --------------------------------------------------------------------------
    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window (no-op where the framework cannot)."""

    def peak_memory(self) -> MemoryReading:
        return MemoryReading(None, None)

    def gemm(self, n: int):
        """A function doing one ``n`` x ``n`` float32 matrix product on the adapter's device
        and waiting for it, or None: ``bench.measure.suite`` times it to measure what the machine's
        matrix multiply does in this framework (a step's share of that peak is in the
        report). The framework base classes provide it."""
        return None

    def compilation_count(self) -> int | None:
        """How many times the step functions have been traced/compiled so far, or None for
        eager code. The harness reads it around the timed rounds to detect recompilation."""
        return None
