"""Second-order MAML written plainly in TensorFlow, as TF MAML tutorials write it: the
meta-parameters are ``tf.Variable``s, each task's adapted weights are tensors
``w - inner_lr * grad`` from an inner ``tf.GradientTape`` nested in the outer one, a
Python loop over the tasks, ``tf.keras.optimizers.Adam``, the whole outer step in one
``tf.function`` (``jit_compile=True``: XLA). BatchNorm from ``tf.nn.moments`` and
``tf.nn.batch_normalization``, ``tf.nn.max_pool2d``, images NHWC with HWIO kernels.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def dense(p, name, x):
    return tf.matmul(x, p[f"{name}.weight"]) + p[f"{name}.bias"]


def mlp(p, x):
    return dense(p, "head", tf.nn.relu(dense(p, "fc2", tf.nn.relu(dense(p, "fc1", x)))))


def moments_exact(x, axes):
    """Mean and biased variance with the gradient through the mean inside the variance
    (``tf.nn.moments`` stops it: exact first derivatives, not MAML's second)."""
    mean = tf.reduce_mean(x, axes)
    return mean, tf.reduce_mean(tf.square(x - mean), axes)


def conv4(p, x, eps, moments=tf.nn.moments):
    for i in range(1, 5):
        x = tf.nn.conv2d(x, p[f"conv{i}.weight"], strides=1, padding="SAME")
        mean, var = moments(x, axes=[0, 1, 2])
        x = tf.nn.batch_normalization(x, mean, var, p[f"bn{i}.bias"], p[f"bn{i}.weight"], eps)
        x = tf.nn.max_pool2d(tf.nn.relu(x), ksize=2, strides=2, padding="VALID")
    features = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [x.shape[0], -1])  # (C, H, W): the head's order
    return dense(p, "head", features)


# canonical (PyTorch) layout <-> this module's: conv OIHW <-> HWIO, linear (out, in) <-> (in, out)
def _to_tf(a):
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _to_canonical(a):
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


class PlainTFMAML:
    def __init__(self, config, params: dict[str, np.ndarray], jit_compile: bool = False, exact_bn: bool = False):
        # exact_bn: the tutorial's code with its BatchNorm variance written out, so that its
        # second-order meta-gradient is MAML's (the baseline that computes metabench's maths)
        self.name = ("plain-tf-xla" if jit_compile else "plain-tf") + ("-exactbn" if exact_bn else "")
        self.moments = moments_exact if exact_bn else tf.nn.moments
        inner, meta = config.inner, config.meta_optimizer
        self.inner_lr, self.inner_steps = inner.lr, inner.steps
        self.regression, self.eps = config.regression, config.model.bn_eps
        self.weights = {k: tf.Variable(_to_tf(np.asarray(v))) for k, v in params.items()}
        self.opt = tf.keras.optimizers.Adam(learning_rate=meta.lr, beta_1=meta.b1, beta_2=meta.b2,
                                            epsilon=meta.eps)
        self._step = tf.function(self._outer_step, jit_compile=jit_compile)
        self._grads = tf.function(self._meta_grad, jit_compile=jit_compile)

    def loss(self, p, x, y):
        if self.regression:
            return tf.reduce_mean(tf.square(mlp(p, x) - y))
        logits = conv4(p, x, self.eps, self.moments)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

    def task_query_loss(self, sx, sy, qx, qy):
        p = self.weights
        for _ in range(self.inner_steps):
            with tf.GradientTape() as tape:
                tape.watch(p)  # after the first step the adapted weights are tensors, not variables
                loss = self.loss(p, sx, sy)
            g = tape.gradient(loss, p)
            p = {k: p[k] - self.inner_lr * g[k] for k in p}
        return self.loss(p, qx, qy)

    def _meta_grad(self, sx, sy, qx, qy):
        with tf.GradientTape() as tape:
            losses = [self.task_query_loss(sx[i], sy[i], qx[i], qy[i]) for i in range(sx.shape[0])]
            loss = tf.add_n(losses) / len(losses)
        return tape.gradient(loss, list(self.weights.values())), loss

    def _outer_step(self, sx, sy, qx, qy):
        grads, loss = self._meta_grad(sx, sy, qx, qy)
        self.opt.apply_gradients(zip(grads, self.weights.values()))
        return loss

    @staticmethod
    def to_device(batch):
        def move(a):
            return tf.constant(a.astype(np.int32) if a.dtype.kind == "i" else a)
        return tuple(move(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))

    def step(self, batch):
        return self._step(*batch)

    def sync(self, out) -> None:
        out.numpy()  # a host read: the step (its variable updates included) has run

    def meta_grad(self, batch) -> dict[str, np.ndarray]:
        grads, _ = self._grads(*batch)
        return {k: _to_canonical(g.numpy()) for k, g in zip(self.weights, grads)}

    def get_params(self) -> dict[str, np.ndarray]:
        return {k: np.array(_to_canonical(v.numpy())) for k, v in self.weights.items()}

    def compilation_count(self):
        return self._step.experimental_get_tracing_count()


PROTONET_PARAMS = tuple(f"{kind}{i}.{p}" for i in range(1, 5) for kind, p in (("conv", "weight"), ("bn", "weight"),
                                                                             ("bn", "bias")))


class PlainTFProtoNet:
    """Prototypical Networks as TF's examples write them: ``tf.Variable`` weights, Conv-4 from
    ``tf.nn`` ops (BatchNorm by ``tf.nn.moments``: first derivatives are all ProtoNet needs),
    support and query embedded in one pass per episode, squared Euclidean distances to the
    class means, ``tf.GradientTape`` and ``tf.keras.optimizers.Adam`` in one ``tf.function``
    (``jit_compile``: XLA); a training step's episodes in a Python loop.

    Its float32 is imprecise, as the tutorials' code is: ``tf.nn.moments`` reduces each
    channel's N x H x W values in one sequential float32 sum, and on protonet-20w5s-5q the
    float32 meta-gradient is 1.7e-2 from its own float64 one (the float64 ones agree with
    metabench's to 5e-13; metabench's float32, which reduces in stages
    (``implementations.tensorflow.common.batch_norm``), is 8.7e-5 from float64). The grid
    shows it and judges metabench only against plain forms that agree (``run.grid_rows``)."""

    def __init__(self, config, params: dict[str, np.ndarray], jit_compile: bool = False):
        self.name = "plain-tf-protonet" + ("-xla" if jit_compile else "")
        meta = config.meta_optimizer
        self.eps = config.model.bn_eps
        self.n_way, self.k_shot = config.train_shape.n_way, config.train_shape.k_shot
        self.weights = {k: tf.Variable(_to_tf(np.asarray(params[k]))) for k in PROTONET_PARAMS}
        self.opt = tf.keras.optimizers.Adam(learning_rate=meta.lr, beta_1=meta.b1, beta_2=meta.b2,
                                            epsilon=meta.eps)
        self._step = tf.function(self._outer_step, jit_compile=jit_compile)
        self._grads = tf.function(self._meta_grad, jit_compile=jit_compile)

    def embed(self, x):
        p = self.weights
        for i in range(1, 5):
            x = tf.nn.conv2d(x, p[f"conv{i}.weight"], strides=1, padding="SAME")
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            x = tf.nn.batch_normalization(x, mean, var, p[f"bn{i}.bias"], p[f"bn{i}.weight"], self.eps)
            x = tf.nn.max_pool2d(tf.nn.relu(x), ksize=2, strides=2, padding="VALID")
        return tf.reshape(x, [x.shape[0], -1])

    def episode_loss(self, sx, qx, qy):
        z = self.embed(tf.concat([sx, qx], 0))
        n_support = sx.shape[0]
        protos = tf.reduce_mean(tf.reshape(z[:n_support], [self.n_way, self.k_shot, -1]), 1)
        logits = -tf.reduce_sum(tf.square(z[n_support:, None, :] - protos[None]), -1)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=qy, logits=logits))

    def _meta_grad(self, sx, qx, qy):
        with tf.GradientTape() as tape:
            loss = tf.add_n([self.episode_loss(sx[t], qx[t], qy[t]) for t in range(sx.shape[0])]) / sx.shape[0]
        return tape.gradient(loss, list(self.weights.values())), loss

    def _outer_step(self, sx, qx, qy):
        grads, loss = self._meta_grad(sx, qx, qy)
        self.opt.apply_gradients(zip(grads, self.weights.values()))
        return loss

    @staticmethod
    def to_device(batch):
        return (tf.constant(batch.support_x), tf.constant(batch.query_x), tf.constant(batch.query_y.astype(np.int32)))

    step, sync, meta_grad, get_params, compilation_count = (
        PlainTFMAML.step, PlainTFMAML.sync, PlainTFMAML.meta_grad, PlainTFMAML.get_params,
        PlainTFMAML.compilation_count)
