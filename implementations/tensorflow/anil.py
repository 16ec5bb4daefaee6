"""ANIL (Raghu et al. 2020) with nested ``tf.GradientTape``s: MAML's adapter with the inner
loop on the head alone. A task's support features are computed once, under the outer tape
only; the inner tape watches the head; the meta-gradient reaches the body through the
features. Everything else (tf.function, task batching, Adam, XLA option) is ``TFMAML``'s."""

from __future__ import annotations

from dataclasses import replace

import tensorflow as tf

from bench.core.adapter import AdapterInfo
from implementations.tensorflow import common
from implementations.tensorflow.maml import TFMAML

HEAD = ("head.weight", "head.bias")


class TFANIL(TFMAML):
    algorithms = ("anil",)

    def _adapt_task(self, params, x, y, steps: int):
        features = self.features(params, x)
        head = {k: params[k] for k in HEAD}
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(list(head.values()))
                loss = self.loss_of_outputs(common.linear(head, "head", features), y)
            grads = tape.gradient(loss, head)
            if self.first_order:
                grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
            head = {k: head[k] - self.inner_lr * grads[k] for k in head}
        return {**params, **head}

    def describe(self) -> AdapterInfo:
        info = super().describe()
        return replace(info, notes="inner loop on the head over features computed once per set; " + info.notes)
