"""ANIL (Raghu et al. 2020) with ``torch.func``: MAML's adapter with the inner loop on the
head alone. A task's support features are computed once; the head takes the inner steps
on them; the meta-gradient reaches the body through the features."""

from __future__ import annotations

from torch.func import grad

from bench.core.adapter import AdapterInfo
from implementations.torch.maml import TorchMAML

HEAD = ("head.weight", "head.bias")


class TorchANIL(TorchMAML):
    algorithms = ("anil",)
    # ANIL's inner loop is on the head over features computed once: always vmapped (its tasks'
    # per-step work is a linear layer), so MAML's task-loop option is not offered.
    OPTIONS = {k: v for k, v in TorchMAML.OPTIONS.items() if k != "tasks"}

    def task_loop_for(self, query_per_task: int, tasks: int, meta_gradient: bool = False) -> bool:
        return False

    def _make_adapt(self, steps: int):
        def adapt(params, x, y):
            features = self.features(params, x)
            head = {k: params[k] for k in HEAD}
            head_loss = lambda h: self.loss_of_outputs(self.head(h, features), y)
            for _ in range(steps):
                g = grad(head_loss)(head)
                if self.first_order:
                    g = {k: v.detach() for k, v in g.items()}
                head = self.inner_update(head, g)
            return {**params, **head}
        return adapt

    def describe(self) -> AdapterInfo:
        return self.describe_as("torch.func; inner loop on the head over features computed once per set; "
                                "every step vmapped over tasks; Adam from torch.optim (fused)")
