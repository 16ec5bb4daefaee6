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


class PlainTorchMAMLLoop(PlainTorchMAML):
    """Second-order MAML as ``higher`` and the papers' PyTorch code write it: a Python loop
    over the tasks, the inner step by ``torch.autograd.grad(create_graph=True)``,
    ``F.batch_norm`` (right outside ``vmap``), each task's query loss ``.backward()`` into
    the accumulated ``.grad``, ``torch.optim.Adam``. ``channels_last``: images and conv
    weights in that memory format (oneDNN's preferred layout on a CPU); ``exact_bn``:
    BatchNorm written out (``F.batch_norm``'s CPU float32 statistics are thread-dependent and
    imprecise: up to 1.4e-2 on the meta-gradient at 1 thread)."""

    def __init__(self, config, params: dict[str, np.ndarray], channels_last: bool = False, exact_bn: bool = False):
        super().__init__(config, params)
        self.name = "plain-torch-loop" + ("-cl" if channels_last else "") + ("-exactbn" if exact_bn else "")
        self.channels_last = channels_last
        inner = config.inner
        if config.regression:
            forward, loss_of = mlp, F.mse_loss
        else:
            eps = config.model.bn_eps
            norm = batch_norm_exact if exact_bn else batch_norm_functional
            forward, loss_of = (lambda p, x: conv4(p, x, eps, norm)), F.cross_entropy

        def loss(p, x, y):
            return loss_of(forward(p, x), y)

        def task_query_loss(p, sx, sy, qx, qy):
            for _ in range(inner.steps):
                g = torch.autograd.grad(loss(p, sx, sy), list(p.values()), create_graph=True)
                p = {k: v - inner.lr * gk for (k, v), gk in zip(p.items(), g)}
            return loss(p, qx, qy)

        self._task_query_loss = task_query_loss
        if channels_last:
            with torch.no_grad():
                for v in self.params.values():
                    if v.dim() == 4:
                        v.data = v.data.contiguous(memory_format=torch.channels_last)

    def to_device(self, batch):
        sx, sy, qx, qy = super().to_device(batch)
        if self.channels_last and sx.dim() == 5:
            sx, qx = ([t.contiguous(memory_format=torch.channels_last) for t in x] for x in (sx, qx))
        return sx, sy, qx, qy

    def _backward(self, params, batch) -> torch.Tensor:
        sx, sy, qx, qy = batch
        n, total = len(sx), 0.0
        for t in range(n):
            loss = self._task_query_loss(params, sx[t], sy[t], qx[t], qy[t]) / n
            loss.backward()
            total += float(loss)
        return torch.tensor(total)

    def step(self, batch):
        self.opt.zero_grad(set_to_none=True)
        loss = self._backward(self.params, batch)
        self.opt.step()
        return loss

    def meta_grad(self, batch) -> dict[str, np.ndarray]:
        params = {k: v.detach().clone().requires_grad_() for k, v in self.params.items()}
        self._backward(params, batch)
        return {k: v.grad.numpy().copy() for k, v in params.items()}


class PlainTorchProtoNet:
    """Prototypical Networks as the PyTorch tutorials write them: an ``nn.Sequential`` Conv-4
    (``nn.Conv2d``, ``nn.BatchNorm2d`` in training mode, ReLU, max-pool), support and query
    embedded in one pass per episode, squared Euclidean distances to the class means,
    ``.backward()`` and ``torch.optim.Adam``; ``channels_last`` as above."""

    def __init__(self, config, params: dict[str, np.ndarray], channels_last: bool = False):
        from torch import nn

        self.name = "plain-torch-protonet" + ("-cl" if channels_last else "")
        self.channels_last = channels_last
        m = config.model
        layers, cin = [], 1
        for i in range(1, 5):
            # in the weights' dtype (float64 in the float64 check, bench.check.baselines.maths)
            dtype = torch.from_numpy(params[f"conv{i}.weight"]).dtype
            conv = nn.Conv2d(cin, m.hidden, 3, padding=1, bias=False, dtype=dtype)
            bn = nn.BatchNorm2d(m.hidden, eps=m.bn_eps, track_running_stats=False, dtype=dtype)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(params[f"conv{i}.weight"]))
                bn.weight.copy_(torch.from_numpy(params[f"bn{i}.weight"]))
                bn.bias.copy_(torch.from_numpy(params[f"bn{i}.bias"]))
            layers += [conv, bn, nn.ReLU(), nn.MaxPool2d(2)]
            cin = m.hidden
        self.net = nn.Sequential(*layers, nn.Flatten())
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.n_way, self.k_shot = config.train_shape.n_way, config.train_shape.k_shot
        meta = config.meta_optimizer
        self.opt = torch.optim.Adam(self.net.parameters(), lr=meta.lr, betas=(meta.b1, meta.b2), eps=meta.eps)
        self._names = [f"{kind}{i}.{p}" for i in range(1, 5) for kind, p in (("conv", "weight"), ("bn", "weight"),
                                                                               ("bn", "bias"))]

    def to_device(self, batch):
        def move(a):
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.permute(0, 1, 4, 2, 3).contiguous() if t.dim() == 5 else t
        sx, sy, qx, qy = (move(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
        return sx, qx, qy

    def _backward(self, batch) -> torch.Tensor:
        sx, qx, qy = batch
        n, total = len(sx), 0.0
        for t in range(n):
            x = torch.cat([sx[t], qx[t]])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            z = self.net(x)
            support, query = z[:sx.shape[1]], z[sx.shape[1]:]
            protos = support.reshape(self.n_way, self.k_shot, -1).mean(1)
            logits = -((query[:, None, :] - protos[None]) ** 2).sum(-1)
            loss = F.cross_entropy(logits, qy[t]) / n
            loss.backward()
            total += float(loss)
        return torch.tensor(total)

    def step(self, batch):
        self.opt.zero_grad(set_to_none=True)
        loss = self._backward(batch)
        self.opt.step()
        return loss

    def sync(self, out) -> None:
        pass

    def meta_grad(self, batch) -> dict[str, np.ndarray]:
        """The meta-gradient at the current parameters (no optimizer step: they stay)."""
        self.opt.zero_grad(set_to_none=True)
        self._backward(batch)
        grads = {k: p.grad.contiguous().numpy().copy() for k, p in zip(self._names, self.net.parameters())}
        self.opt.zero_grad(set_to_none=True)
        return grads

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: p.detach().contiguous().numpy().copy() for k, p in zip(self._names, self.net.parameters())}

    def compilation_count(self):
        return None
