"""Prototypical Networks (Snell et al. 2017): prototypes are class means of the support
embeddings, logits are negative squared Euclidean distances, loss is cross-entropy.

Support and query are embedded in one forward pass, as in the reference implementation,
so BatchNorm's batch statistics cover the whole episode.

Episodes run in a Python loop, each differentiated by ``torch.autograd.grad`` and the
gradients summed. Measured on 2 CPU threads, float32, outer step, the three forms in one
process, rounds alternated (``/tmp/lv/proto.py`` in issue 23's closing note), ms, 60-way
1-shot 5-query (the training episode) / 5-way 1-shot 15-query x 4 / 5-way 1-shot 1-query x 32:
``vmap`` over episodes with ``torch.func.grad_and_value`` 421 / 395 / -; a loop under
``grad_and_value`` 243 / 132 / 182; this loop 224 / 103 / 141, within 2% of the same loop
written plainly (138-219) and of it in ``channels_last`` (no faster here: 101-220).

``options["compile"]`` (not registered: no ``torch-protonet-compile`` until float32 parity
holds): the meta-gradient and ``adapt`` are each one ``torch.compile`` graph (Inductor,
``dynamic=False``, ``fullgraph``). It compiles, and float64 parity holds
(meta-gradient 5.7e-12 from eager's), but float32
parity on omniglot-5w1s fails (2 tasks): meta-gradient 6.3e-3 from torch's, its own
float32-vs-float64 error 6.4e-3 against eager's 2.9e-4. Not yet found where Inductor loses
it; the first suspect is its decomposition of ``F.batch_norm`` (``common.batch_norm``'s
two-pass form is the thing to try).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from bench.core.adapter import AdapterInfo
from implementations.torch import common


def prototypes(support: torch.Tensor, n_way: int) -> torch.Tensor:
    """[n_way * k_shot, d] class-major support embeddings -> [n_way, d] class means."""
    return support.reshape(n_way, -1, support.shape[-1]).mean(dim=1)


def neg_sq_distances(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """[q, d], [n, d] -> [q, n] logits: -||query - prototype||^2."""
    return -((query[:, None, :] - protos[None, :, :]) ** 2).sum(-1)


class TorchProtoNet(common.TorchAdapter):
    algorithms = ("protonet",)

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self.set_params(params)
        # the step functions, compiled under options["compile"]
        self._meta_grad_step = self.step_function(self._meta_grad_func) if self._compiled else self._meta_grad
        self._adapt_step = self.step_function(self._adapt)

    def _episode_logits(self, params, sx, qx):
        n_support = sx.shape[0]
        z = common.conv4(params, torch.cat([sx, qx]), self._bn, self._eps, norm=common.fused_batch_norm)
        n_way = n_support // self._k_shot
        return neg_sq_distances(z[n_support:], prototypes(z[:n_support], n_way))

    def _episode_loss(self, params, sx, qx, qy):
        return F.cross_entropy(self._episode_logits(params, sx, qx), qy)

    def _loss(self, params, b):
        # a loop over episodes, not vmap: vmapped, every convolution and F.batch_norm of Conv-4
        # ran 1.8-3x slower on a CPU, one episode included (module docstring)
        losses = [self._episode_loss(params, b.support_x[t], b.query_x[t], b.query_y[t]) for t in range(len(b))]
        return torch.stack(losses).mean()

    @property
    def _k_shot(self) -> int:
        return self.config.test_shape.k_shot  # training episodes have the same shot

    def describe(self) -> AdapterInfo:
        return self.describe_as("episodes by loop; support and query embedded in one pass; "
                                "Adam from torch.optim (fused), step size halved on schedule")


    def _meta_grad(self, batch):
        """The meta-gradient by reverse-mode autograd, episode by episode (one episode's graph
        alive at a time): faster than ``torch.func.grad_and_value`` of the mean loss on a CPU,
        and than one backward through every episode (module docstring)."""
        params = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        n, total, loss_sum = len(batch), None, 0.0
        for t in range(n):
            loss = self._episode_loss(params, batch.support_x[t], batch.query_x[t], batch.query_y[t]) / n
            grads = torch.autograd.grad(loss, list(params.values()))
            total = grads if total is None else [a + g for a, g in zip(total, grads)]
            loss_sum = loss_sum + loss.detach()
        return dict(zip(params, total)), loss_sum

    def _meta_grad_func(self, batch):
        """The meta-gradient as one ``torch.func`` transform: what ``torch.compile`` captures."""
        return grad_and_value(self._loss)(self.params, batch)

    def outer_step(self, batch):
        grads, loss = self._meta_grad_step(batch)
        self.apply_meta_grad(grads)
        return loss

    def _adapt(self, params, sx, qx):
        n_support = sx.shape[1]
        n_way = n_support // self._k_shot

        def one(sx, qx):
            z = common.conv4(params, torch.cat([sx, qx]), self._bn, self._eps, norm=common.fused_batch_norm)
            return prototypes(z[:n_support], n_way), z[n_support:]
        per_episode = [one(sx[t], qx[t]) for t in range(sx.shape[0])]
        return torch.stack([p for p, _ in per_episode]), torch.stack([q for _, q in per_episode])

    def adapt(self, batch):
        """The episode's class prototypes and query embeddings: [B, n_way, d], [B, n_query_total, d]."""
        with torch.no_grad():
            return self._adapt_step(self.params, batch.support_x, batch.query_x)

    def predict(self, batch) -> np.ndarray:
        protos, query = self.adapt(batch)
        with torch.no_grad():
            return vmap(neg_sq_distances)(query, protos).cpu().numpy()

    def activations(self, batch):
        """The body's blocks on the first episode's support and query sets (one pass)."""
        with torch.no_grad():
            x = torch.cat([batch.support_x[0], batch.query_x[0]])
            blocks = common.conv4_blocks(self.params, x, self._bn, self._eps, norm=common.fused_batch_norm)
        return common.block_activations(blocks)

    def max_pool_inputs(self, batch):
        """The probe's one pass on the first episode: support and query together."""
        x = torch.cat([batch.support_x[0], batch.query_x[0]])
        return {"support+query": common.pool_inputs(self.params, x, self._bn, self._eps)}

    def probe(self, batch):
        with torch.no_grad():
            episodes = range(len(batch))
            logits = torch.stack([self._episode_logits(self.params, batch.support_x[t], batch.query_x[t])
                                  for t in episodes])
            loss = torch.stack([F.cross_entropy(logits[t], batch.query_y[t]) for t in episodes])
        # ProtoNet has no inner loop: its "support loss" is the episode loss itself.
        return self.probe_result(loss, logits, self._meta_grad_step(batch)[0])
