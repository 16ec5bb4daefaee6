"""Second-order MAML written plainly in PyTorch, as the ``torch.func`` MAML tutorial
(functorch's ``maml-omniglot-transforms``) writes it: pure functions of a parameter dict,
``torch.func.grad`` for the inner step, ``vmap`` over the tasks, ``.backward()`` of the
mean query loss for the meta-gradient and ``torch.optim.Adam``. BatchNorm is
``F.batch_norm(training=True)`` (what ``nn.BatchNorm2d(track_running_stats=False)`` calls),
or, with ``exact_bn``, written out from mean and variance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap


def mlp(p, x):
    x = F.relu(F.linear(x, p["fc1.weight"], p["fc1.bias"]))
    x = F.relu(F.linear(x, p["fc2.weight"], p["fc2.bias"]))
    return F.linear(x, p["head.weight"], p["head.bias"])


def batch_norm_functional(x, weight, bias, eps):
    return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


def batch_norm_exact(x, weight, bias, eps):
    """BatchNorm from mean and variance: torch 2.13's vmapped second derivative through
    ``F.batch_norm`` is wrong, through this it is right."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]


def conv4(p, x, eps, batch_norm=batch_norm_functional):
    for i in range(1, 5):
        x = F.conv2d(x, p[f"conv{i}.weight"], padding=1)
        x = batch_norm(x, p[f"bn{i}.weight"], p[f"bn{i}.bias"], eps)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), p["head.weight"], p["head.bias"])


class PlainTorchMAML:
    def __init__(self, config, params: dict[str, np.ndarray], exact_bn: bool = False):
        # exact_bn: the tutorial's code with BatchNorm written out, so that its second-order
        # meta-gradient is MAML's (the baseline that computes metabench's maths)
        self.name = "plain-torch-exactbn" if exact_bn else "plain-torch"
        norm = batch_norm_exact if exact_bn else batch_norm_functional
        inner, meta = config.inner, config.meta_optimizer
        if config.regression:
            forward, loss_of = mlp, F.mse_loss
        else:
            eps = config.model.bn_eps
            forward, loss_of = (lambda p, x: conv4(p, x, eps, norm)), F.cross_entropy

        def loss(p, x, y):
            return loss_of(forward(p, x), y)

        def task_query_loss(p, sx, sy, qx, qy):
            for _ in range(inner.steps):
                g = grad(loss)(p, sx, sy)
                p = {k: p[k] - inner.lr * g[k] for k in p}
            return loss(p, qx, qy)

        self._tasks_loss = vmap(task_query_loss, in_dims=(None, 0, 0, 0, 0))
        self.params = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        self.opt = torch.optim.Adam(self.params.values(), lr=meta.lr, betas=(meta.b1, meta.b2), eps=meta.eps)

    @staticmethod
    def to_device(batch):
        def move(a):
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.permute(0, 1, 4, 2, 3).contiguous() if t.dim() == 5 else t  # NHWC -> NCHW
        return tuple(move(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))

    def _meta_loss(self, params, batch):
        return self._tasks_loss(params, *batch).mean()

    def step(self, batch):
        self.opt.zero_grad(set_to_none=True)
        loss = self._meta_loss(self.params, batch)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def sync(self, out) -> None:
        pass  # eager CPU: the step has finished when it returns

    def meta_grad(self, batch) -> dict[str, np.ndarray]:
        """The meta-gradient at the current parameters, which it leaves as they are."""
        params = {k: v.detach().clone().requires_grad_() for k, v in self.params.items()}
        self._meta_loss(params, batch).backward()
        return {k: v.grad.numpy().copy() for k, v in params.items()}

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.params.items()}

    def compilation_count(self):
        return None
