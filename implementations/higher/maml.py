"""MAML and FOMAML the way papers wrote them with ``higher`` (facebookresearch/higher 0.2.1;
its ``examples/maml-omniglot.py`` is the pattern): an ``nn.Module`` model, an SGD inner
optimizer made differentiable by ``higher.innerloop_ctx(model, inner_sgd,
copy_initial_weights=False, track_higher_grads=not first_order)``, a Python loop over the
tasks of a meta-batch, each task's query loss ``.backward()`` accumulating the
meta-gradient in the model's ``.grad``, then ``torch.optim.Adam``.

What differs from the papers' code, so that the numbers are metabench's function:

- the model is metabench's (``bench/core/models.py``): Conv-4 without a conv bias before
  BatchNorm, BatchNorm with the batch's statistics (``track_running_stats=False``, in
  training mode at test time too: MAML's transductive setting), Glorot weights received
  from the harness; the MLP for the sinusoid. Its submodules are named so that
  ``named_parameters()`` is the canonical layout, one to one: ``conv1.weight``,
  ``bn1.weight``, ..., ``head.bias``;
- each task's query loss is divided by the number of tasks before ``backward()``: the
  meta-loss is the tasks' mean (higher's example sums them; Adam is scale-invariant but
  for its eps);
- FOMAML: with ``track_higher_grads=False`` higher detaches the fast weights after each
  step, so ``backward()`` would leave the model's ``.grad`` empty. The first-order
  meta-gradient is the query loss's gradient at the adapted weights, added into the
  model's ``.grad`` by hand, as the papers' FOMAML code with higher does;
- Adam is ``implementations.torch.common.make_adam`` (the harness's ``MetaOptimizer``).

Test-time adaptation is higher's "test mode": ``innerloop_ctx(model, inner_sgd,
track_higher_grads=False)``, as the example's ``test()``.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.core.adapter import AdapterInfo, Option
from bench.core.models import CONV_BLOCKS
from implementations.torch import common

try:
    import higher
except ImportError as e:  # the extra is not installed: one line naming the fix
    raise ImportError("torch-maml-higher needs the higher package, not installed: pip install 'metabench[higher]'",
                      name="higher") from e


class Conv4(nn.Module):
    """metabench's Conv-4 (``bench/core/models.py``): 3x3 conv (padding 1; a bias only without
    BatchNorm) -> BatchNorm (the batch's statistics) -> ReLU -> 2x2 max-pool, four times,
    flattened in (C, H, W) order, then the linear head."""

    def __init__(self, hidden: int, n_out: int, features: int, batch_norm: bool, eps: float):
        super().__init__()
        cin = 1
        for i in range(1, CONV_BLOCKS + 1):
            self.add_module(f"conv{i}", nn.Conv2d(cin, hidden, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                self.add_module(f"bn{i}", nn.BatchNorm2d(hidden, eps=eps, track_running_stats=False))
            cin = hidden
        self.batch_norm = batch_norm
        self.head = nn.Linear(features, n_out)

    def blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i in range(1, CONV_BLOCKS + 1):
            x = getattr(self, f"conv{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x)
            x = F.max_pool2d(F.relu(x), 2)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x)[-1].flatten(1))


class MLP(nn.Module):
    """The sinusoid's MLP: 1 -> hidden -> hidden -> 1, ReLU between."""

    def __init__(self, hidden: int):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(1, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = F.relu(self.fc1(x))
        return [h1, F.relu(self.fc2(h1))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x)[-1])


class HigherMAML(common.TorchAdapter):
    """``torch-maml-higher``. The torch base class gives device, dtype, sync, memory and the
    probe's layout; the parameters are the model's own ``nn.Parameter``s."""

    algorithms = ("maml", "fomaml")
    # The torch base class's options; ``compile`` (its torch.compile variants), where it has
    # one, is refused: the papers' loop is eager Python, and compiling it is not this adapter.
    OPTIONS = {**common.TorchAdapter.OPTIONS,
               "compile": Option(bool, False, (False,), "not offered: higher's per-task loop runs eager")}

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        model = self.config.model
        if self.regression:
            self.model = MLP(model.hidden)
        else:
            n_out, features = np.shape(params["head.weight"])
            self.model = Conv4(model.hidden, n_out, features, self._bn, self._eps)
        self.model.to(device=self._dev, dtype=self._dtype).train()
        self.inner_opt = torch.optim.SGD(self.model.parameters(), lr=self.inner_lr)
        self.set_params(params)

    def set_params(self, params):
        mine = dict(self.model.named_parameters())
        if set(mine) != set(params):
            raise ValueError(f"parameters differ from the model's: {sorted(set(mine) ^ set(params))}")
        with torch.no_grad():
            for name, p in mine.items():
                p.copy_(torch.as_tensor(np.asarray(params[name]), dtype=self._dtype, device=self._dev))
                p.grad = None
        self.params = mine  # the base class's get_params reads them
        self.opt, self.sched = common.make_adam(self.params, self.meta_optimizer, fused=False)  # the papers' Adam

    # -- the maths: higher's way -----------------------------------------------------------
    def loss_fn(self, out, y):
        return F.mse_loss(out, y) if self.regression else F.cross_entropy(out, y)

    def _meta_backward(self, b: common.TorchBatch):
        """The meta-gradient into the model's ``.grad``, one task after another; returns the
        mean query loss and each task's adapted query logits."""
        self.opt.zero_grad(set_to_none=True)
        tasks = len(b)
        qry_losses, qry_logits = [], []
        for i in range(tasks):
            with higher.innerloop_ctx(self.model, self.inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not self.first_order) as (fmodel, diffopt):
                for _ in range(self.inner_steps):
                    spt_loss = self.loss_fn(fmodel(b.support_x[i]), b.support_y[i])
                    diffopt.step(spt_loss)
                logits = fmodel(b.query_x[i])
                qry_loss = self.loss_fn(logits, b.query_y[i])
                if self.first_order:
                    # the fast weights are detached leaves: d(query loss)/d(adapted weights)
                    grads = torch.autograd.grad(qry_loss / tasks, list(fmodel.parameters()))
                    for p, g in zip(self.model.parameters(), grads):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    (qry_loss / tasks).backward()
                qry_losses.append(qry_loss.detach())
                qry_logits.append(logits.detach())
        return torch.stack(qry_losses).mean(), torch.stack(qry_logits)

    def _adapted(self, b: common.TorchBatch, steps: int):
        """Test mode: each task's fast model after ``steps`` SGD steps, no higher-order graph."""
        out = []
        for i in range(len(b)):
            with higher.innerloop_ctx(self.model, self.inner_opt, track_higher_grads=False) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(self.loss_fn(fmodel(b.support_x[i]), b.support_y[i]))
                out.append(fmodel)
        return out

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        info = common.describe(self._dev, "higher.innerloop_ctx (copy_initial_weights=False, track_higher_grads="
                                          "not first_order) over an nn.Module; a Python loop over tasks, "
                                          "loss.backward() per task; FOMAML's gradient at the adapted weights "
                                          "added by hand; BatchNorm F.batch_norm (batch statistics); Adam from "
                                          "torch.optim")
        return AdapterInfo(**{**info.as_dict(), "extra": {**info.extra, "higher": metadata.version("higher")}})

    def inner_step(self, batch):
        return [fmodel.fast_params for fmodel in self._adapted(batch, 1)]

    def outer_step(self, batch):
        loss, _ = self._meta_backward(batch)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return loss

    def adapt(self, batch):
        return self._adapted(batch, self.test_inner_steps)

    def predict(self, batch) -> np.ndarray:
        fmodels = self.adapt(batch)
        with torch.no_grad():
            return torch.stack([f(batch.query_x[i]) for i, f in enumerate(fmodels)]).cpu().numpy()

    def activations(self, batch):
        with torch.no_grad():
            return common.block_activations(self.model.blocks(batch.support_x[0]))

    def probe(self, batch):
        with torch.no_grad():
            support_loss = torch.stack([self.loss_fn(self.model(batch.support_x[i]), batch.support_y[i])
                                        for i in range(len(batch))])
        _, logits = self._meta_backward(batch)
        grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                 for k, p in self.params.items()}
        self.opt.zero_grad(set_to_none=True)
        return self.probe_result(support_loss, logits, grads)
