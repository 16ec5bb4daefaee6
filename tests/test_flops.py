"""``bench.core.flops`` and the algorithms' step counts: the analytic FLOPs a step's GFLOP/s is
computed from, against counts worked out by hand here."""

from __future__ import annotations

import pytest

from bench.core import flops
from bench.core.algorithms import get
from bench.core.spec import load_spec


def config(spec: str, algorithm: str):
    s = load_spec(spec)
    return get(algorithm).adapter_config(s.for_algorithm(algorithm))


def test_conv4_forward_on_a_28x28_image():
    # 3x3 convolutions, 64 filters, sides 28, 14, 7, 3 (floor pooling)
    by_hand = 2 * 9 * (1 * 64 * 28 ** 2 + 64 * 64 * 14 ** 2 + 64 * 64 * 7 ** 2 + 64 * 64 * 3 ** 2)
    assert flops.conv4_forward(64, 28) == by_hand == pytest.approx(19.63e6, rel=1e-3)


def test_maml_steps_are_multiples_of_forward_passes():
    c = config("omniglot-5w1s", "maml")
    s = c.train_shape
    f = lambda n: flops.conv4_forward(64, 28) * n + 2 * 64 * 5 * n   # body and head
    support, query = f(s.n_way * s.k_shot), f(s.n_way * s.n_query)
    inner = 3 * support                                                # forward + backward
    assert get("maml").step_flops("inner_step", c, 4) == pytest.approx(4 * inner)
    # second order: backward through the whole meta-loss graph
    assert get("maml").step_flops("outer_step", c, 4) == pytest.approx(4 * 3 * (c.inner.steps * inner + query))
    # first order: the inner gradients are constants
    fo = config("omniglot-5w1s", "fomaml")
    assert get("fomaml").step_flops("outer_step", fo, 4) == pytest.approx(4 * (fo.inner.steps * inner + 3 * query))


def test_protonet_and_anil_and_the_mlp():
    c = config("omniglot-5w1s", "protonet")
    s, t = c.train_shape, c.test_shape
    assert get("protonet").step_flops("outer_step", c, 1) == pytest.approx(
        3 * flops.conv4_forward(64, 28) * s.n_way * (s.k_shot + s.n_query))
    assert get("protonet").step_flops("adapt", c, 2) == pytest.approx(
        2 * flops.conv4_forward(64, 28) * t.n_way * (t.k_shot + t.n_query))
    a = config("omniglot-5w1s", "anil")
    # the head-only inner step: the body once on the support set, the head forward and backward
    n_s = a.train_shape.n_way * a.train_shape.k_shot
    assert get("anil").step_flops("inner_step", a, 1) == pytest.approx(
        flops.conv4_forward(64, 28) * n_s + 3 * 2 * 64 * 5 * n_s)
    m = config("sinusoid-10shot", "maml")
    per_point = 2 * (40 + 40 * 40) + 2 * 40   # 1 -> 40 -> 40, then the head 40 -> 1
    assert flops.forward(m, 10, 1) == 10 * per_point
