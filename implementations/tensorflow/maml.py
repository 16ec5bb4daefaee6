"""MAML (Finn et al. 2017), second and first order, with nested ``tf.GradientTape``s.

Functional weights: the meta-parameters are ``tf.Variable``s, the adapted weights of a
task are plain tensors ``w - inner_lr * grad``. The inner tape's gradient is computed
while the outer tape records, so the meta-gradient flows through it (second order);
first order wraps the inner gradients in ``tf.stop_gradient``. The whole outer step
(adaptation of every task, query losses, meta-gradient, Adam update) is one
``tf.function``, traced once per batch shape, XLA-compiled when ``options["jit_compile"]``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bench.core.adapter import AdapterInfo
from implementations.tensorflow import common

# How the tasks of a meta-batch are batched, by jit_compile (options["task_batching"]
# overrides). Measured on 2 shared CPU cores, omniglot-5w1s second-order MAML, meta-batch 32,
# median outer step / first call (trace + graph optimisation or XLA compile), one process:
#   graph: map_fn 1.41 s / 4 s, unrolled loop 1.38 s / 60 s; vectorized_map ~1.5x map_fn's
#          step (separate run), as pfor falls back to a while_loop for Conv2DBackpropFilter
#          with per-task filters
#   XLA:   unrolled loop 1.20 s / 128 s, map_fn 11.0 s / 40 s; vectorized_map does not
#          compile (that fallback while_loop's TensorList accumulators)
# And at small meta-batches (2 threads, quiet, one process, median outer step / first call):
#   graph, sinusoid meta-batch 25: map_fn 3.92 ms / 0.43 s, loop 3.26 ms / 2.31 s
#   graph, omniglot-5w1s meta-batch 4 (15 query per class): map_fn 273 ms / 2.5 s, loop 232 ms / 5.1 s
# Graph: "auto", the unrolled loop up to 25 tasks (15-20% faster steps; its trace, seconds
# longer, is repaid within a few hundred steps), map_fn beyond (as fast as the loop within
# noise at 32 Omniglot tasks and 14x quicker to trace; evaluation's 50-episode chunks).
# XLA: the unrolled loop; XLA:CPU runs the while_loop form ~9x slower.
TASK_BATCHING = {False: "auto", True: "loop"}


class TFMAML(common.TFAdapter):
    algorithms = ("maml", "fomaml")

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self._batching = self.options["task_batching"] = self.options["task_batching"] or TASK_BATCHING[self._jit]
        self._pool = common.max_pool_2x2_elementwise if self._jit else common.max_pool_2x2
        # the head reads NHWC-ordered features: its canonical rows are permuted on import/export
        self._fmap = None if self.regression else self.config.model.feature_map
        self._make_weights(params)
        self._outer_fn = self._compile(self._outer)
        self._probe_fn = self._compile(self._probe)
        self._adapt_fn = self._compile(self._adapt_batch)   # steps is a Python int: one trace per value
        self._predict_fn = self._compile(self._predict)

    # -- the maths -------------------------------------------------------------------------
    def features(self, params, x):
        """The body: the MLP's last hidden layer, or Conv-4's features (NHWC order)."""
        if self.regression:
            return common.mlp_features(params, x)
        return common.conv4(params, x, self._bn, self._eps, canonical_order=False, pool=self._pool)

    def activations(self, batch):
        """The body's blocks on the first task's support set, from the current parameters."""
        params = {k: tf.convert_to_tensor(v) for k, v in self.weights.items()}
        x = batch.support_x[0]
        with tf.device(self._dev):
            blocks = (common.mlp_blocks(params, x) if self.regression
                      else common.conv4_blocks(params, x, self._bn, self._eps, pool=self._pool))
        return common.block_activations(blocks)

    def forward(self, params, x):
        return common.linear(params, "head", self.features(params, x))

    def loss_of_outputs(self, out, y):
        return tf.reduce_mean(tf.square(out - y)) if self.regression else common.cross_entropy(out, y)

    def loss(self, params, x, y):
        return self.loss_of_outputs(self.forward(params, x), y)

    def _adapt_task(self, params, x, y, steps: int):
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(list(params.values()))
                loss = self.loss(params, x, y)
            grads = tape.gradient(loss, params)
            if self.first_order:
                grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
            params = {k: params[k] - self.inner_lr * grads[k] for k in params}
        return params

    def _per_task(self, fn, elems, signature):
        return common.per_task(fn, elems, self._batching, signature)

    @property
    def _scalar(self):
        return tf.TensorSpec([], self._dtype)

    def _current(self):
        # variable reads as tensors: the inner tape watches these, the outer tape sees the reads
        return {k: tf.convert_to_tensor(v) for k, v in self.weights.items()}

    def _meta_grad(self, sx, sy, qx, qy):
        with tf.GradientTape() as tape:
            params = self._current()

            def task_query_loss(t):
                adapted = self._adapt_task(params, t[0], t[1], self.inner_steps)
                return self.loss(adapted, t[2], t[3])

            loss = tf.reduce_mean(self._per_task(task_query_loss, (sx, sy, qx, qy), self._scalar))
        grads = tape.gradient(loss, list(self.weights.values()))
        return grads, loss

    def _outer(self, sx, sy, qx, qy):
        grads, loss = self._meta_grad(sx, sy, qx, qy)
        self.opt.apply(grads)
        return loss

    def _adapt_batch(self, sx, sy, steps):
        params = self._current()
        signature = {k: tf.TensorSpec(v.shape, self._dtype) for k, v in self.weights.items()}
        return self._per_task(lambda t: self._adapt_task(params, t[0], t[1], steps), (sx, sy), signature)

    def _query_outputs(self, adapted, qx):
        n_out = self.weights["head.weight"].shape[-1]  # TF layout (in, out)
        return self._per_task(lambda t: self.forward(t[0], t[1]), (adapted, qx),
                              tf.TensorSpec([qx.shape[1], n_out], self._dtype))

    def _predict(self, sx, sy, qx):
        return self._query_outputs(self._adapt_batch(sx, sy, self.test_inner_steps), qx)

    def _probe(self, sx, sy, qx, qy):
        params = self._current()
        support_loss = self._per_task(lambda t: self.loss(params, t[0], t[1]), (sx, sy), self._scalar)
        logits = self._query_outputs(self._adapt_batch(sx, sy, self.inner_steps), qx)
        grads, _ = self._meta_grad(sx, sy, qx, qy)
        return support_loss, logits, dict(zip(self.weights, grads, strict=True))

    # -- contract --------------------------------------------------------------------------
    def describe(self) -> AdapterInfo:
        batching = (f"auto (an unrolled loop up to {common.LOOP_MAX_TASKS} tasks, map_fn beyond)"
                    if self._batching == "auto" else self._batching)
        notes = (f"nested GradientTape; tasks by {batching} (2 CPU cores, omniglot-5w1s, meta-batch 32, "
                 "step / first call: graph map_fn 1.41 s / 4 s ~ loop 1.38 s / 60 s, vectorized_map ~1.5x "
                 "slower; XLA loop 1.20 s / 128 s, map_fn 11.0 s / 40 s, vectorized_map does not compile; "
                 "meta-batch 4: graph loop 232 ms, map_fn 273 ms); "
                 "inner steps unrolled; whole outer step one tf.function; "
                 + ("max-pool as elementwise maxima (XLA's MaxPoolGradGrad ranks in bfloat16); " if self._jit
                    else "") + "own Adam (torch/optax epsilon form)")
        return common.describe(self.device, self._jit, self._dtype, notes, {"task_batching": self._batching})

    def inner_step(self, batch):
        """Adapted weights after one step, TF layout with a leading task axis."""
        with tf.device(self._dev):
            return self._adapt_fn(batch.support_x, batch.support_y, 1)

    def outer_step(self, batch):
        with tf.device(self._dev):
            return self._outer_fn(*batch.tensors)

    def adapt(self, batch):
        with tf.device(self._dev):
            return self._adapt_fn(batch.support_x, batch.support_y, self.test_inner_steps)

    def predict(self, batch) -> np.ndarray:
        with tf.device(self._dev):
            return self._predict_fn(batch.support_x, batch.support_y, batch.query_x).numpy()

    def probe(self, batch):
        with tf.device(self._dev):
            return self.probe_result(*self._probe_fn(*batch.tensors))
