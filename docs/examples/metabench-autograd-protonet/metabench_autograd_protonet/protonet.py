"""autograd-protonet: Prototypical Networks in autograd (HIPS), a fourth framework.

`metabench new-adapter autograd-protonet --framework autograd --algorithm protonet`, with
its backend (backend.py) and its maths written (docs/adapters.md walks through it). The
maths is numpy through `autograd.numpy`. It runs eagerly, on one core where numpy's BLAS has
one thread, so it is an example of the plugin path rather than a contender; the summary
flags its threads when they differ from the run's.
"""

import autograd.numpy as anp
import numpy as np
from autograd import grad, value_and_grad
from autograd.scipy.special import logsumexp

from metabench_autograd_protonet.backend import AutogradAdapter, conv4


class AutogradProtonet(AutogradAdapter):
    algorithms = ("protonet",)

    # -- the maths
    def _embed(self, p, b, i):
        """Episode ``i`` of batch ``b``, support and query in one pass (BatchNorm's statistics
        cover both): prototypes [n_way, d] (class means of class-major rows), queries [q, d]."""
        z = conv4(p, anp.concatenate([b.support_x[i], b.query_x[i]]), self.eps)
        n_support = b.support_x.shape[1]
        return z[:n_support].reshape(b.shape.n_way, -1, z.shape[1]).mean(axis=1), z[n_support:]

    def _logits(self, p, b, i):
        protos, query = self._embed(p, b, i)
        return -anp.sum((query[:, None, :] - protos[None, :, :]) ** 2, axis=-1)

    def _episode_loss(self, p, b, i):
        logits, y = self._logits(p, b, i), b.query_y[i]
        return anp.mean(logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])

    def _loss(self, p, b):
        return sum(self._episode_loss(p, b, i) for i in range(len(b))) / len(b)

    def outer_step(self, batch):
        loss, grads = value_and_grad(self._loss)(self.params, batch)
        self._adam_step(grads)
        return loss

    def adapt(self, batch):
        return [self._embed(self.params, batch, i) for i in range(len(batch))]

    def predict(self, batch):
        return np.stack([self._logits(self.params, batch, i) for i in range(len(batch))])

    def probe(self, batch):
        losses = [self._episode_loss(self.params, batch, i) for i in range(len(batch))]
        return {"support_loss": np.array(losses, self.dtype), "query_logits": self.predict(batch),
                **{f"meta_grad/{k}": g for k, g in grad(self._loss)(self.params, batch).items()}}
