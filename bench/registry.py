"""Adapters by name: ``torch-maml``, ``jax-protonet``, ``tensorflow-maml-xla``, ...

An entry names its class as ``"module:Class"`` so that the harness can list, select and
plan adapters without importing any framework; only ``load_adapter_class`` imports, and
the harness calls it in the framework's own process (``bench.worker``).

Third-party adapters register through the ``metabench.adapters`` entry-point group; each
entry point loads to an ``AdapterEntry`` (or a list of them)::

    [project.entry-points."metabench.adapters"]
    mylib = "mylib.metabench:ENTRIES"

A name may carry options, as a spec reference carries overrides:
``torch-maml@compile=true`` is ``torch-maml`` with ``options["compile"] = True`` (values as
TOML reads them), a variant that needs no registry entry of its own. The class's
``OPTIONS`` validate it like any entry's (preflight, before a run), and the full reference
names its cells, so the results say what ran.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

from bench.errors import AdapterError

ENTRY_POINT_GROUP = "metabench.adapters"


@dataclass(frozen=True)
class AdapterEntry:
    name: str                          # unique, "<framework>-<algorithm>[-<variant>]"
    framework: str                     # one process per framework: this names it
    algorithms: tuple[str, ...]        # the algorithms it serves
    target: str                        # "package.module:Class"
    options: dict[str, Any] = field(default_factory=dict)  # passed to the constructor
    # Run when the user names only frameworks/algorithms: True on every device, False never
    # (a variant: --adapters), or on the devices listed ("cpu", "cuda"), where a measured run
    # found it its framework's fastest correct adapter (README: Variants)
    default: bool | tuple[str, ...] = True
    description: str = ""

    def default_on(self, device: str) -> bool:
        return self.default is True or (isinstance(self.default, tuple) and device in self.default)


BUILTIN: tuple[AdapterEntry, ...] = (
    AdapterEntry("torch-maml", "torch", ("maml", "fomaml"), "implementations.torch.maml:TorchMAML",
                 description="torch.func functional MAML, eager"),
    AdapterEntry("torch-anil", "torch", ("anil",), "implementations.torch.anil:TorchANIL",
                 description="torch.func ANIL (inner loop on the head), eager"),
    AdapterEntry("torch-reptile", "torch", ("reptile",), "implementations.torch.reptile:TorchReptile",
                 description="torch.func Reptile (SGD per task, pseudo-gradient to Adam), eager"),
    AdapterEntry("torch-protonet", "torch", ("protonet",), "implementations.torch.protonet:TorchProtoNet",
                 description="Prototypical Networks, eager"),
    AdapterEntry("jax-maml", "jax", ("maml", "fomaml"), "implementations.jax.maml:JaxMAML",
                 description="pure-function MAML, outer step jitted once, tasks vmapped (im2col convs on CPU)"),
    AdapterEntry("jax-maml-xlaconv", "jax", ("maml", "fomaml"), "implementations.jax.maml:JaxMAML",
                 options={"conv": "xla"}, default=False,
                 description="as jax-maml, lax.conv_general_dilated also on CPU (grouped convs under vmap)"),
    AdapterEntry("jax-anil", "jax", ("anil",), "implementations.jax.anil:JaxANIL",
                 description="pure-function ANIL (inner loop on the head), jitted, tasks vmapped"),
    AdapterEntry("jax-reptile", "jax", ("reptile",), "implementations.jax.reptile:JaxReptile",
                 description="pure-function Reptile, outer step jitted once, tasks vmapped"),
    AdapterEntry("jax-protonet", "jax", ("protonet",), "implementations.jax.protonet:JaxProtoNet",
                 description="Prototypical Networks, step jitted"),
    # TF's MAML default differs by device: on a CPU XLA measured fastest (Omniglot 5w1s
    # outer step 115 ms against graph's 176, sinusoid 1.29 against 3.26 ms:
    # results/20261129-cpu-variants) and passes parity; on a GPU it is not measured yet, so
    # graph mode stays. ProtoNet's graph mode measured faster than XLA on the CPU (247 ms
    # against 343): graph everywhere.
    AdapterEntry("tensorflow-maml", "tensorflow", ("maml", "fomaml"),
                 "implementations.tensorflow.maml:TFMAML", options={"jit_compile": False}, default=("cuda",),
                 description="nested GradientTape MAML in tf.function (graph)"),
    AdapterEntry("tensorflow-anil", "tensorflow", ("anil",), "implementations.tensorflow.anil:TFANIL",
                 options={"jit_compile": False}, description="nested GradientTape ANIL in tf.function (graph)"),
    # Reptile, like ANIL, in TF's default form, graph mode, everywhere: its steps are not timed
    # yet (tensorflow-reptile@jit_compile=true is the XLA form)
    AdapterEntry("tensorflow-reptile", "tensorflow", ("reptile",), "implementations.tensorflow.reptile:TFReptile",
                 options={"jit_compile": False}, description="GradientTape Reptile in tf.function (graph)"),
    AdapterEntry("tensorflow-protonet", "tensorflow", ("protonet",),
                 "implementations.tensorflow.protonet:TFProtoNet", options={"jit_compile": False},
                 description="Prototypical Networks in tf.function (graph)"),
    AdapterEntry("tensorflow-maml-xla", "tensorflow", ("maml", "fomaml"),
                 "implementations.tensorflow.maml:TFMAML", options={"jit_compile": True}, default=("cpu",),
                 description="as tensorflow-maml, tf.function(jit_compile=True)"),
    AdapterEntry("tensorflow-protonet-xla", "tensorflow", ("protonet",),
                 "implementations.tensorflow.protonet:TFProtoNet", options={"jit_compile": True},
                 default=False, description="as tensorflow-protonet, tf.function(jit_compile=True)"),
)


def _plugin_entries() -> list[AdapterEntry]:
    found = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        items = loaded if isinstance(loaded, (list, tuple)) else [loaded]
        for item in items:
            if not isinstance(item, AdapterEntry):
                raise AdapterError(f"entry point {ep.name} in {ENTRY_POINT_GROUP} gave {type(item).__name__}, "
                                   f"expected bench.registry.AdapterEntry")
            found.append(item)
    return found


def entries() -> dict[str, AdapterEntry]:
    """Every known adapter, built-in first, then plugins (a plugin may not reuse a name)."""
    table: dict[str, AdapterEntry] = {}
    for entry in (*BUILTIN, *_plugin_entries()):
        if entry.name in table:
            raise AdapterError(f"adapter name {entry.name} is registered twice; rename the plugin's entry")
        table[entry.name] = entry
    return table


OPTION_SEP = "@"  # "torch-maml@compile=true": an entry with options from the command line


def parse_reference(name: str) -> tuple[str, dict[str, Any]]:
    """``"torch-maml@compile=true@dtype=float32"`` -> ``("torch-maml", {"compile": True,
    "dtype": "float32"})``; a malformed option is a one-line error."""
    from bench.spec import _override_value

    base, *parts = name.split(OPTION_SEP)
    options = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise AdapterError(f"adapter {name!r}: {part!r} must be option=value, e.g. torch-maml@compile=true")
        options[key.strip()] = _override_value(value.strip())
    return base, options


def get(name: str) -> AdapterEntry:
    table = entries()
    base, options = parse_reference(name)
    if base not in table:
        raise AdapterError(f"unknown adapter {base!r}; known: {', '.join(table)}")
    if not options:
        return table[base]
    entry = table[base]
    return replace(entry, name=name, options={**entry.options, **options}, default=False,
                   description=f"{entry.description}; options {options}")



def select(frameworks=None, algorithms=None, names=None, device: str = "cpu") -> list[AdapterEntry]:
    """Entries matching the filters; without ``names``, only the entries that are a default
    on ``device``."""
    if names is not None:  # in entries' order, then the references with options in the order given
        table = entries()
        return [e for e in table.values() if e.name in names] + [get(n) for n in names if n not in table]
    out = []
    for entry in entries().values():
        if not entry.default_on(device):
            continue
        if frameworks is not None and entry.framework not in frameworks:
            continue
        if algorithms is not None and not set(entry.algorithms) & set(algorithms):
            continue
        out.append(entry)
    return out


def load_adapter_class(entry: AdapterEntry):
    """Import the adapter's class (and so its framework). Call in the framework's process."""
    module_name, _, class_name = entry.target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)
