"""MAML (Finn et al. 2017), second and first order, with ``torch.func``.

A task's query loss after adaptation is a pure function of the parameters,
``task_loss(params, support, query)``; the meta-gradient is ``grad`` of the mean over the
meta-batch. First order stops the gradient through the inner gradients.

Every task-batched computation is ``vmap``ped, the second-order meta-gradient included:
BatchNorm is written out from mean and variance (``common.batch_norm``) because torch
2.13's vmapped second derivative through ``F.batch_norm`` is wrong. Measured on 2 CPU
threads, one meta-gradient: sinusoid (25 tasks) 3.3 ms vmapped against 46.6 ms in a
Python loop over tasks; Omniglot 5-way 1-shot (8 tasks) 172 ms against 188 ms.

``options["compile"]``: the outer step's meta-gradient (second order included: ``grad`` of
the vmapped task losses) as one ``torch.compile`` graph (Inductor, ``dynamic=False``,
``fullgraph``), compiled per shape; the inner step and test-time adaptation stay eager.
Everything compiles, Conv-4 and its written-out BatchNorm to second order included. Not a registered adapter yet: the
contract checks generated for every registered adapter compile a dozen graphs (shapes,
dtypes, algorithms), 4 min cold on 2 cores, more than the test suite can spend; ``metabench
baselines`` times it beside ``torch-maml`` and the plain version. Measured on a shared,
loaded machine (rough), 2 threads, one meta-gradient, float32: sinusoid (25 tasks) 0.64 ms
compiled against 8.0 ms eager, 12 s to compile, gradients within 2e-7 of eager; Omniglot
5-way 1-shot (4 tasks, 15 query per class) compiles (105 s) but runs slower, 2.0 s against
eager's 0.76 s. What is slow is Inductor's code, not the captured graph: the same graph
through AOT autograd without Inductor (``backend="aot_eager"``, 11 s to compile) ran 4.2 s
against eager's 13.8 s on the machine then (heavier load).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from bench.adapter import AdapterInfo
from implementations.torch import common


class TorchMAML(common.TorchAdapter):
    algorithms = ("maml", "fomaml")

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self.set_params(params)
        self._vmapped_adapt = {steps: vmap(self._make_adapt(steps), in_dims=(None, 0, 0))
                               for steps in {1, self.inner_steps, self.test_inner_steps}}
        # the meta-gradient, compiled under options["compile"] (one graph per shape)
        self._meta_grad_step = self.step_function(self._meta_grad_func) if self._compiled else self._meta_grad

    # -- the maths -------------------------------------------------------------------------
    def features(self, params, x):
        """The body: the MLP's last hidden layer, or Conv-4's flattened features."""
        return common.mlp_features(params, x) if self.regression else common.conv4(params, x, self._bn, self._eps)

    @staticmethod
    def head(params, features):
        return F.linear(features, params["head.weight"], params["head.bias"])

    def forward(self, params, x):
        return self.head(params, self.features(params, x))

    def loss_of_outputs(self, out, y):
        return F.mse_loss(out, y) if self.regression else F.cross_entropy(out, y)

    def loss(self, params, x, y):
        return self.loss_of_outputs(self.forward(params, x), y)

    def _make_adapt(self, steps: int):
        def adapt(params, x, y):
            for _ in range(steps):
                g = grad(self.loss)(params, x, y)
                if self.first_order:
                    g = {k: v.detach() for k, v in g.items()}
                params = {k: params[k] - self.inner_lr * g[k] for k in params}
            return params
        return adapt

    def _task_query_loss(self, params, sx, sy, qx, qy):
        adapted = self._make_adapt(self.inner_steps)(params, sx, sy)
        return self.loss(adapted, qx, qy)

    def _meta_loss(self, params, b: common.TorchBatch):
        losses = vmap(self._task_query_loss, in_dims=(None, 0, 0, 0, 0))(
            params, b.support_x, b.support_y, b.query_x, b.query_y)
        return losses.mean()

    def _meta_grad(self, b):
        """The meta-gradient by reverse-mode autograd over the vmapped task losses (the inner
        gradients inside stay ``torch.func.grad``): the same numbers as ``grad_and_value`` of
        the meta-loss (bitwise, float32), and faster. Measured back to back on 2 threads, one
        meta-gradient, median: sinusoid (25 tasks) 2.09 ms against 2.91 ms; Omniglot 5-way
        1-shot (4 tasks, 15 query per class) 568 ms against 692 ms."""
        params = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        loss = self._meta_loss(params, b)
        grads = torch.autograd.grad(loss, list(params.values()))
        return dict(zip(params, grads)), loss.detach()

    def _meta_grad_func(self, b):
        """The meta-gradient as one ``torch.func`` transform: what ``torch.compile`` captures
        in one graph (it does not trace ``torch.autograd.grad``)."""
        params = {k: v.detach() for k, v in self.params.items()}
        return torch.func.grad_and_value(self._meta_loss)(params, b)

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        return self.describe_as("torch.func; every step vmapped over tasks, the second-order meta-gradient "
                                "included (BatchNorm written out from mean and variance); Adam from torch.optim "
                                "(fused)")


    def inner_step(self, batch):
        # self.params do not require grad: torch.func.grad builds only the inner graph
        return self._vmapped_adapt[1](self.params, batch.support_x, batch.support_y)

    def outer_step(self, batch):
        grads, loss = self._meta_grad_step(batch)
        self.apply_meta_grad(grads)
        return loss

    def adapt(self, batch):
        return self._vmapped_adapt[self.test_inner_steps](self.params, batch.support_x, batch.support_y)

    def predict(self, batch) -> np.ndarray:
        adapted = self.adapt(batch)
        with torch.no_grad():
            return vmap(self.forward, in_dims=(0, 0))(adapted, batch.query_x).cpu().numpy()

    def activations(self, batch):
        """The body's blocks on the first task's support set, from the current parameters."""
        with torch.no_grad():
            x = batch.support_x[0]
            blocks = (common.mlp_blocks(self.params, x) if self.regression
                      else common.conv4_blocks(self.params, x, self._bn, self._eps))
        return common.block_activations(blocks)

    def probe(self, batch):
        with torch.no_grad():
            support_loss = vmap(self.loss, in_dims=(None, 0, 0))(self.params, batch.support_x, batch.support_y)
        adapted = self._vmapped_adapt[self.inner_steps](self.params, batch.support_x, batch.support_y)
        with torch.no_grad():
            logits = vmap(self.forward, in_dims=(0, 0))(adapted, batch.query_x)
        return self.probe_result(support_loss, logits, self._meta_grad_step(batch)[0])
