"""The TensorFlow adapters: the contract on tiny specs, and numerical parity with the torch
adapters (the reference), graph and XLA.

Tiny specs keep every test to seconds on CPU: hidden 8, 32x32 synthetic images (the final
feature map is 2x2, so the canonical (C, H, W) flattening is exercised), 3-way 2-shot.
Parity is ``max|a - b| / max|b|`` over a whole quantity, 1e-4 in float32.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")

from bench.core.adapter import AdapterInfo, MemoryReading  # noqa: E402
from bench.core.algorithms import MetaOptimizer  # noqa: E402
from bench.core.episodes import EpisodeBatch, sampler_for  # noqa: E402
from bench.core.models import init_params  # noqa: E402
from bench.core.spec import load_spec  # noqa: E402
from bench.measure.training import task_metrics  # noqa: E402
from implementations.tensorflow import common as tf_common  # noqa: E402
from implementations.tensorflow.maml import TFMAML  # noqa: E402
from implementations.tensorflow.protonet import TFProtoNet  # noqa: E402
from implementations.torch import common as torch_common  # noqa: E402
from implementations.torch.maml import TorchMAML  # noqa: E402
from implementations.torch.protonet import TorchProtoNet  # noqa: E402

TOL = 1e-4
B = 2


@pytest.fixture(scope="module", autouse=True)
def _configure():
    torch_common.configure(1, "cpu")
    tf_common.configure(1, "cpu")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def flat(d: dict, prefix: str = "") -> np.ndarray:
    """One quantity over every parameter (as ``bench.check.parity`` compares), names sorted."""
    return np.concatenate([np.ravel(d[prefix + k]) for k in sorted(k[len(prefix):] for k in d if k.startswith(prefix))])


def compare(got: dict, want: dict, got_after: dict, want_after: dict, lr: float) -> dict:
    """Relative errors of the probe quantities and of the parameters after one Adam step.

    Adam's first update is lr * g / |g| per element: a meta-gradient element that is zero in
    exact arithmetic (e.g. a BatchNorm shift the loss is invariant to) has a rounding-noise
    sign, so its update may differ by 2 lr between frameworks. Such elements (below 1e-5 of
    the largest meta-gradient) are held to |difference| <= 2 lr instead.
    """
    errors = {k: rel(got[k], want[k]) for k in ("support_loss", "query_logits")}
    errors["meta_grad"] = rel(flat(got, "meta_grad/"), flat(want, "meta_grad/"))
    g, a, b = flat(want, "meta_grad/"), flat(got_after), flat(want_after)
    noise = np.abs(g) < 1e-5 * np.abs(g).max()
    errors["params_after"] = float(np.abs(a - b)[~noise].max() / np.abs(b).max())
    assert np.all(np.abs(a - b)[noise] <= 2.01 * lr), "an update beyond Adam's step size"
    return errors


def tiny_spec(name: str, **maml):
    spec = load_spec(name)
    r = dataclasses.replace
    if spec.is_regression:
        return r(spec, model=r(spec.model, hidden=8), maml=r(spec.maml, **maml))
    return r(spec, data=r(spec.data, image_size=32), episode=r(spec.episode, n_way=3, k_shot=2, n_query=2),
             model=r(spec.model, hidden=8), maml=r(spec.maml, train_n_query=2, **maml),
             protonet=r(spec.protonet, train_n_way=0, train_n_query=0))


def make_batch(spec, algorithm: str, seed: int = 0) -> EpisodeBatch:
    if spec.is_regression:
        return sampler_for(spec, "train", algorithm).batch(seed, B)
    rng = np.random.default_rng(seed)
    e, s = spec.episode, spec.data.image_size

    def images(n):  # sparse binary "strokes", like Omniglot's ink on background
        return (rng.random((B, n, s, s, 1)) < 0.2).astype(np.float32)

    labels = lambda per_class: np.broadcast_to(np.repeat(np.arange(e.n_way), per_class), (B, e.n_way * per_class))
    return EpisodeBatch(images(e.n_way * e.k_shot), labels(e.k_shot).astype(np.int64).copy(),
                        images(e.n_way * e.n_query), labels(e.n_query).astype(np.int64).copy(), np.zeros((B, 1)))


def build(spec, algorithm, jit, params=None):
    params = init_params(spec, algorithm) if params is None else params
    tf_cls, torch_cls = (TFProtoNet, TorchProtoNet) if algorithm == "protonet" else (TFMAML, TorchMAML)
    return tf_cls(spec, algorithm, params, options={"jit_compile": jit}), torch_cls(spec, algorithm, params)


# -- parity with the torch adapters --------------------------------------------------------
# Omniglot MAML takes two inner steps in graph mode, so that the Hessian terms of successive
# steps compose (one under XLA, whose compilation of it is slow). XLA runs the cases whose
# maths differs from graph mode (MAML's max-pool under XLA is written out, see
# common.max_pool_2x2_elementwise); first order differs from second order only by the
# stop_gradient, checked in graph mode.
CASES = [
    pytest.param("sinusoid-10shot", "maml", False, id="sinusoid-maml-graph"),
    pytest.param("sinusoid-10shot", "maml", True, id="sinusoid-maml-xla"),
    pytest.param("sinusoid-10shot", "fomaml", False, id="sinusoid-fomaml-graph"),
    pytest.param("omniglot-5w1s", "protonet", False, id="omniglot-protonet-graph"),
    pytest.param("omniglot-5w1s", "protonet", True, id="omniglot-protonet-xla"),
    pytest.param("omniglot-5w1s", "maml", False, id="omniglot-maml-graph"),
    pytest.param("omniglot-5w1s", "maml", True, id="omniglot-maml-xla"),
    pytest.param("omniglot-5w1s", "fomaml", False, id="omniglot-fomaml-graph"),
]


@pytest.mark.parametrize("name, algorithm, jit", CASES)
def test_parity_with_torch_adapter(name, algorithm, jit):
    spec = tiny_spec(name, inner_steps=1 if jit or name.startswith("sinusoid") else 2)
    batch = make_batch(spec, algorithm)
    tfa, ta = build(spec, algorithm, jit)
    tb, ttb = tfa.to_device(batch), ta.to_device(batch)
    got, want = tfa.probe(tb), ta.probe(ttb)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    tfa.outer_step(tb)
    ta.outer_step(ttb)
    lr = spec.protonet.meta_lr if algorithm == "protonet" else spec.maml.meta_lr
    errors = compare(got, want, tfa.get_params(), ta.get_params(), lr)
    assert max(errors.values()) < TOL, errors
    if spec.is_regression:  # test-time adaptation and metric
        assert rel(tfa.predict(tb), ta.predict(ttb)) < TOL


def test_adam_and_step_size_halving_match_torch():
    """The same gradients into torch.optim.Adam + StepLR and into the TF Adam: same updates."""
    rng = np.random.default_rng(0)
    init = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.zeros(4, np.float32)}
    tp = {k: torch.tensor(v) for k, v in init.items()}
    opt, sched = torch_common.make_adam(tp, MetaOptimizer(1e-2, halve_every=2))
    tv = [tf.Variable(v) for v in init.values()]
    adam = tf_common.Adam(tv, MetaOptimizer(1e-2, halve_every=2))
    apply = tf.function(adam.apply)
    for _ in range(5):
        grads = [rng.standard_normal(v.shape).astype(np.float32) * 10.0 ** rng.uniform(-6, 0) for v in init.values()]
        for p, g in zip(tp.values(), grads, strict=True):
            p.grad = torch.tensor(g)
        opt.step()
        sched.step()
        apply([tf.constant(g) for g in grads])
    for (k, p), v in zip(tp.items(), tv, strict=True):  # the total updates, over five steps and two halvings
        assert rel(v.numpy() - init[k], p.detach().numpy() - init[k]) < 1e-5, k


# -- the contract ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, algorithm", [("omniglot-5w1s", "maml"), ("sinusoid-10shot", "fomaml"),
                                             ("omniglot-5w1s", "protonet")])
def test_contract(name, algorithm):
    spec = tiny_spec(name)
    p0 = init_params(spec, algorithm)
    cls = TFProtoNet if algorithm == "protonet" else TFMAML
    cls.configure(1, "cpu")  # a second configure in one process must not raise
    a = cls(spec, algorithm, p0, options={"jit_compile": False})
    info = a.describe()
    assert isinstance(info, AdapterInfo) and info.framework == "tensorflow" and info.compilation == "graph"
    assert a.peak_memory() == MemoryReading(None, None)
    with pytest.raises(ValueError):
        cls(spec, algorithm, p0, options={"jit": True})  # a misspelt option is refused, not ignored

    params = a.get_params()
    assert {k: (v.shape, v.dtype) for k, v in params.items()} == {k: (v.shape, v.dtype) for k, v in p0.items()}
    assert all(np.array_equal(params[k], p0[k]) for k in p0)

    batch = make_batch(spec, algorithm)
    b = a.to_device(batch)
    nq = batch.query_y.shape[1]
    probe = a.probe(b)
    assert all(np.array_equal(a.get_params()[k], p0[k]) for k in p0), "probe changed the parameters"
    assert probe["support_loss"].shape == (B,)
    n_out = 1 if spec.is_regression else spec.episode.n_way
    assert probe["query_logits"].shape == (B, nq, n_out)
    assert {k: v.shape for k, v in probe.items() if k.startswith("meta_grad/")} == \
        {f"meta_grad/{k}": v.shape for k, v in p0.items()}

    if algorithm == "protonet":
        protos, query = a.adapt(b)
        assert protos.shape[:2] == (B, spec.episode.n_way) and query.shape[:2] == (B, nq)
        assert protos.shape[2] == query.shape[2] == spec.model.hidden * 2 * 2
    else:
        adapted = a.inner_step(b)
        assert set(adapted) == set(p0) and all(adapted[k].shape[0] == B for k in p0)
        assert set(a.adapt(b)) == set(p0)

    assert a.predict(b).shape == (B, nq, n_out)
    metric = task_metrics(a, batch, algorithm)
    assert metric.shape == (B,) and metric.dtype == np.float64
    assert np.all(metric >= 0) and (spec.is_regression or np.all(metric <= 1))

    loss = a.outer_step(b)
    a.sync(loss)
    assert np.isfinite(float(loss))
    after_one = a.get_params()
    assert any(not np.array_equal(after_one[k], p0[k]) for k in p0)
    count = a.compilation_count()
    a.sync(a.outer_step(b))
    assert a.compilation_count() == count, "a second step of the same shape retraced"

    a.set_params(p0)  # resets Adam: the next step repeats the first one
    assert all(np.array_equal(a.get_params()[k], p0[k]) for k in p0)
    a.outer_step(b)
    assert all(np.array_equal(a.get_params()[k], after_one[k]) for k in p0)


def test_xla_describes_itself():
    spec = tiny_spec("sinusoid-10shot")
    a = TFMAML(spec, "maml", init_params(spec, "maml"), options={"jit_compile": True})
    assert a.describe().compilation == "xla"


def test_layout_roundtrip():
    conv = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)  # OIHW
    hwio = tf_common.to_tf_layout("conv1.weight", conv)
    assert hwio.shape == (3, 3, 3, 2) and hwio[1, 2, 0, 1] == conv[1, 0, 1, 2]
    c, h, w = fmap = (4, 2, 3)
    head = np.arange(5 * c * h * w, dtype=np.float32).reshape(5, c * h * w)  # (out, C*H*W)
    tf_head = tf_common.to_tf_layout("head.weight", head, fmap)  # rows in NHWC (H, W, C) order
    assert tf_head[1 * w * c + 2 * c + 3, 4] == head[4, 3 * h * w + 1 * w + 2]
    lin = np.arange(6, dtype=np.float32).reshape(2, 3)
    for name, v, f in (("conv1.weight", conv, None), ("fc1.weight", lin, None), ("fc1.bias", lin[0], None),
                       ("head.weight", head, fmap)):
        assert np.array_equal(tf_common.to_canonical(name, tf_common.to_tf_layout(name, v, f), f), v)
