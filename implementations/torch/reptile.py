"""Reptile (Nichol et al. 2018) with ``torch.func``: MAML's adapter whose meta-gradient is
Reptile's pseudo-gradient. Each task takes ``inner_steps`` SGD steps on its support set
from theta (phi_i, nothing differentiated through them); ``theta - mean_i(phi_i)`` goes to
the same fused torch.optim Adam (``apply_meta_grad``) as MAML's meta-gradient. The paper's
``theta += eps * (mean phi - theta)`` is SGD with step eps on that pseudo-gradient; Adam on
it is the common reimplementation choice (``bench.algorithms.reptile``).

Everything else is ``TorchMAML``'s: the loss, ``inner_update``, the inner step, test-time
adaptation, the probe, and the tasks' form. The pseudo-gradient is inner steps only, so it
takes the form MAML's inner steps take (the ``tasks`` option; auto: a loop over tasks for
Conv-4 on a CPU, vmapped otherwise).
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value, vmap

from bench.adapter import AdapterInfo
from implementations.torch.maml import TorchMAML


class TorchReptile(TorchMAML):
    algorithms = ("reptile",)

    def task_loop_for(self, query_per_task: int, tasks: int, meta_gradient: bool = False) -> bool:
        return super().task_loop_for(query_per_task, tasks)  # the pseudo-gradient is inner steps

    def reptile_task(self, params, x, y):
        """One task's ``inner_steps`` SGD steps from ``params``: phi and the support loss at
        ``params`` (the first step's forward pass)."""
        losses = []
        for _ in range(self.inner_steps):
            g, loss = grad_and_value(self.loss)(params, x, y)
            params = self.inner_update(params, g)
            losses.append(loss)
        return params, losses[0]

    def pseudo_gradient(self, phi, losses):
        """``theta - mean_i(phi_i)`` and the mean support loss at theta."""
        return {k: self.params[k] - phi[k].mean(0) for k in self.params}, losses.mean()

    def _meta_grad(self, b):
        # self.params do not require grad: torch.func builds each step's graph only
        return self.pseudo_gradient(*vmap(self.reptile_task, in_dims=(None, 0, 0))(
            self.params, b.support_x, b.support_y))

    _meta_grad_func = _meta_grad  # what the compile option would compile

    def _loop_meta_grad(self, b):
        per_task = [self.reptile_task(self.params, b.support_x[t], b.support_y[t]) for t in range(len(b))]
        phi = {k: torch.stack([p[k] for p, _ in per_task]) for k in self.params}
        return self.pseudo_gradient(phi, torch.stack([loss for _, loss in per_task]))

    def describe(self) -> AdapterInfo:
        return self.describe_as(f"torch.func; Reptile: theta - mean of {self.inner_steps} SGD steps per task, "
                                f"nothing differentiated through them, to Adam from torch.optim (fused); "
                                f"{self.task_forms()}")
