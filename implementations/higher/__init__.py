"""``torch-maml-higher``: MAML and FOMAML written the way many papers' PyTorch code wrote them,
with facebookresearch/higher (an ``nn.Module`` model, ``higher.innerloop_ctx``, a Python
loop over the meta-batch's tasks, ``loss.backward()``): a reference to read metabench's
``torch-maml`` (torch.func, tasks vmapped) against, on identical episodes and weights.

An optional extra, registered like any plugin, through the ``metabench.adapters`` entry
point group (``pyproject.toml``), never run unless named: ``--adapters torch-maml-higher``.
Needs ``pip install 'metabench[higher]'``. This module imports neither torch nor higher:
the harness imports it to list adapters; only ``implementations.higher.maml`` imports them.
"""

from bench.core.registry import AdapterEntry

ENTRIES = [
    AdapterEntry("torch-maml-higher", "torch", ("maml", "fomaml"), "implementations.higher.maml:HigherMAML",
                 default=False,
                 description="MAML the papers' way: nn.Module, higher.innerloop_ctx, a Python loop over "
                             "tasks, loss.backward() (pip install 'metabench[higher]')"),
]
