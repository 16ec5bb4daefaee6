"""Adapters by name: ``torch-maml``, ``jax-protonet``, ``tensorflow-maml-xla``, ...

An entry names its class as ``"module:Class"`` so that the harness can list, select and
plan adapters without importing any framework; only ``load_adapter_class`` imports, and
the harness calls it in the framework's own process (``bench.worker``).

Third-party adapters register through the ``metabench.adapters`` entry-point group; each
entry point loads to an ``AdapterEntry`` (or a list of them)::

    [project.entry-points."metabench.adapters"]
    mylib = "mylib.metabench:ENTRIES"
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
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
    default: bool = True               # run when the user names only frameworks/algorithms
    description: str = ""


BUILTIN: tuple[AdapterEntry, ...] = (
    AdapterEntry("torch-maml", "torch", ("maml", "fomaml"), "implementations.torch.maml:TorchMAML",
                 description="torch.func functional MAML, eager"),
    AdapterEntry("torch-anil", "torch", ("anil",), "implementations.torch.anil:TorchANIL",
                 description="torch.func ANIL (inner loop on the head), eager"),
    AdapterEntry("torch-protonet", "torch", ("protonet",), "implementations.torch.protonet:TorchProtoNet",
                 description="Prototypical Networks, eager"),
    AdapterEntry("jax-maml", "jax", ("maml", "fomaml"), "implementations.jax.maml:JaxMAML",
                 description="pure-function MAML, outer step jitted once, tasks vmapped (im2col convs on CPU)"),
    AdapterEntry("jax-maml-xlaconv", "jax", ("maml", "fomaml"), "implementations.jax.maml:JaxMAML",
                 options={"conv": "xla"}, default=False,
                 description="as jax-maml, lax.conv_general_dilated also on CPU (grouped convs under vmap)"),
    AdapterEntry("jax-anil", "jax", ("anil",), "implementations.jax.anil:JaxANIL",
                 description="pure-function ANIL (inner loop on the head), jitted, tasks vmapped"),
    AdapterEntry("jax-protonet", "jax", ("protonet",), "implementations.jax.protonet:JaxProtoNet",
                 description="Prototypical Networks, step jitted"),
    AdapterEntry("tensorflow-maml", "tensorflow", ("maml", "fomaml"),
                 "implementations.tensorflow.maml:TFMAML", options={"jit_compile": False},
                 description="nested GradientTape MAML in tf.function (graph)"),
    AdapterEntry("tensorflow-anil", "tensorflow", ("anil",), "implementations.tensorflow.anil:TFANIL",
                 options={"jit_compile": False}, description="nested GradientTape ANIL in tf.function (graph)"),
    AdapterEntry("tensorflow-protonet", "tensorflow", ("protonet",),
                 "implementations.tensorflow.protonet:TFProtoNet", options={"jit_compile": False},
                 description="Prototypical Networks in tf.function (graph)"),
    AdapterEntry("tensorflow-maml-xla", "tensorflow", ("maml", "fomaml"),
                 "implementations.tensorflow.maml:TFMAML", options={"jit_compile": True}, default=False,
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


def get(name: str) -> AdapterEntry:
    table = entries()
    if name not in table:
        raise AdapterError(f"unknown adapter {name!r}; known: {', '.join(table)}")
    return table[name]


def select(frameworks=None, algorithms=None, names=None) -> list[AdapterEntry]:
    """Entries matching the filters; without ``names``, only default entries."""
    out = []
    for entry in entries().values():
        if names is not None:
            if entry.name in names:
                out.append(entry)
            continue
        if not entry.default:
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
