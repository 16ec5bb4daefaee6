"""PyTorch adapters: ``torch-maml`` (torch.func), ``torch-anil``, ``torch-protonet`` and
``torch-reptile``. This module imports no framework: it holds the entries the registry
lists (``ENTRIES``); each adapter's own module imports torch."""

from bench.core.registry import AdapterEntry

ENTRIES = [
    AdapterEntry("torch-maml", "torch", ("maml", "fomaml"), "implementations.torch.maml:TorchMAML",
                 description="torch.func functional MAML, eager"),
    AdapterEntry("torch-anil", "torch", ("anil",), "implementations.torch.anil:TorchANIL",
                 description="torch.func ANIL (inner loop on the head), eager"),
    AdapterEntry("torch-protonet", "torch", ("protonet",), "implementations.torch.protonet:TorchProtoNet",
                 description="Prototypical Networks, eager"),
    AdapterEntry("torch-reptile", "torch", ("reptile",), "implementations.torch.reptile:TorchReptile",
                 description="torch.func Reptile (SGD per task, pseudo-gradient to Adam), eager"),
]
