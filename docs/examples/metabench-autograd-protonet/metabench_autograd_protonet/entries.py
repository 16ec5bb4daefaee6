"""The adapters of this package, as metabench lists them (the entry point in pyproject.toml
names ENTRIES). Each names its class as "module:Class", imported only in autograd's own
process. This module imports no framework, and nor may the package's __init__: a broken
autograd must not break `metabench list` for every other adapter. `metabench new-adapter
NAME --framework autograd --algorithm A --into FOLDER` adds an entry here.
"""

from bench.core.registry import AdapterEntry

ENTRIES = [
    AdapterEntry("autograd-protonet", "autograd", ("protonet",),
                 "metabench_autograd_protonet.protonet:AutogradProtonet",
                 description="Prototypical Networks in autograd (numpy), eager, one core"),
]
