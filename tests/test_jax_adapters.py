"""The JAX adapters: the adapter contract, and numerical agreement with the PyTorch
reference adapters on the same parameters and episodes.

Agreement is measured per quantity as ``max|jax - torch| / max|torch|`` and must be below
1e-4 (float32). Omniglot-shaped episodes are synthetic (random binary images, class-major
labels, the sampler's layout) so that these tests need no dataset; models are narrowed
(``hidden``) and images shrunk to keep every test a few seconds of compilation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bench.core.adapter import AdapterInfo, MemoryReading
from bench.core.algorithms import MetaOptimizer
from bench.core.episodes import EpisodeBatch, sampler_for
from bench.core.models import init_params, param_shapes
from bench.core.spec import load_spec
from implementations.jax import common
from implementations.jax.maml import JaxMAML
from implementations.jax.protonet import JaxProtoNet
from implementations.torch.maml import TorchMAML
from implementations.torch.protonet import TorchProtoNet

TOL = 1e-4

JaxMAML.configure(threads=1, device="cpu")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def small_omniglot(algorithm: str):
    """omniglot-5w1s with a narrow Conv-4 on 16x16 images (four poolings still leave 1x1)."""
    spec = load_spec("omniglot-5w1s")
    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, image_size=16),
                               model=dataclasses.replace(spec.model, hidden=8),
                               protonet=dataclasses.replace(spec.protonet, train_n_way=6, train_n_query=2))
    return spec.for_algorithm(algorithm)


def synthetic_images(spec, algorithm: str, size: int, seed: int = 0) -> EpisodeBatch:
    """Episodes in the sampler's layout: NHWC float32 images, class-major int64 labels."""
    shape = spec.train_shape(algorithm)
    rng = np.random.default_rng(seed)
    s, n = spec.data.image_size, shape.n_way

    def images(per_class):
        return (rng.random((size, n * per_class, s, s, 1)) < 0.3).astype(np.float32)

    def labels(per_class):
        return np.broadcast_to(np.repeat(np.arange(n), per_class), (size, n * per_class)).astype(np.int64).copy()

    return EpisodeBatch(images(shape.k_shot), labels(shape.k_shot), images(shape.n_query), labels(shape.n_query),
                        provenance=np.zeros((size, 1)))


def case(spec_name: str, algorithm: str, size: int = 2):
    """(spec, canonical initial params, batch) of a parity case."""
    if spec_name == "sinusoid-10shot":
        spec = load_spec(spec_name).for_algorithm(algorithm)
        batch = sampler_for(spec, "train", algorithm).batch(0, size)
    else:
        spec = small_omniglot(algorithm)
        batch = synthetic_images(spec, algorithm, size)
    return spec, init_params(spec, algorithm), batch


def adapters(spec_name: str, algorithm: str, size: int = 2):
    spec, params, batch = case(spec_name, algorithm, size)
    jax_cls, torch_cls = (JaxProtoNet, TorchProtoNet) if algorithm == "protonet" else (JaxMAML, TorchMAML)
    j, t = jax_cls(spec, algorithm, params), torch_cls(spec, algorithm, params)
    return j, t, j.to_device(batch), t.to_device(batch), params


PARITY_CASES = [("sinusoid-10shot", "maml"), ("sinusoid-10shot", "fomaml"), ("omniglot", "protonet"),
                ("omniglot", "fomaml"), ("omniglot", "maml")]


@pytest.fixture(scope="module", params=PARITY_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def parity(request):
    """Both adapters' probes, then both adapters' parameters after one outer step."""
    spec_name, algorithm = request.param
    j, t, jb, tb, init = adapters(spec_name, algorithm)
    pj, pt = j.probe(jb), t.probe(tb)
    lj, lt = float(j.outer_step(jb)), float(t.outer_step(tb))
    return {"probe": (pj, pt), "loss": (lj, lt), "params": (j.get_params(), t.get_params()), "init": init}


def test_probe_reports_the_quantities_torch_reports_with_the_same_shapes(parity):
    pj, pt = parity["probe"]
    assert sorted(pj) == sorted(pt)
    for key in pt:
        assert pj[key].shape == pt[key].shape, key
        assert pj[key].dtype == np.float32, key


def test_probe_agrees_with_torch(parity):
    pj, pt = parity["probe"]
    errors = {key: rel_err(pj[key], pt[key]) for key in pt}
    assert max(errors.values()) < TOL, errors


def test_params_after_one_outer_step_agree_with_torch(parity):
    """Adam's first update is lr * g / (|g| + 1e-8): for a gradient entry at float32 noise
    level (|g| near 1e-8) the update's size is rounding, anywhere in [-lr, lr]. Entries whose
    meta-gradient is below 1e-6 of their tensor's largest are checked only against that
    bound; every other entry must agree to 1e-4 of the tensor's largest magnitude."""
    (gj, gt), pt = parity["params"], parity["probe"][1]
    lr = 1e-3  # meta_lr of both specs
    lj, lt = parity["loss"]
    assert abs(lj - lt) <= TOL * abs(lt)
    for name in gt:
        grad = np.abs(pt[f"meta_grad/{name}"])
        noise = grad < 1e-6 * grad.max()
        diff = np.abs(gj[name].astype(np.float64) - gt[name])
        assert diff[~noise].max(initial=0) <= TOL * np.abs(gt[name]).max(), name
        assert np.all(np.abs(gj[name] - parity["init"][name])[noise] <= lr * (1 + 1e-3)), name


def test_test_time_predictions_agree_with_torch():
    for spec_name, algorithm in [("sinusoid-10shot", "maml"), ("omniglot", "protonet")]:
        j, t, jb, tb, _ = adapters(spec_name, algorithm, size=3)
        pj, pt = j.predict(jb), t.predict(tb)
        assert pj.shape == pt.shape and pj.shape[0] == 3
        assert rel_err(pj, pt) < TOL


# -- the contract ----------------------------------------------------------------------------

def test_describe_names_jax_jit_and_the_choices():
    j, *_ = adapters("sinusoid-10shot", "maml")
    info = j.describe()
    assert isinstance(info, AdapterInfo)
    assert (info.framework, info.compilation, info.device) == ("jax", "jit", "cpu")
    assert "vmap" in info.notes and "inner loop" in info.notes


def test_params_round_trip_in_the_canonical_layout():
    spec, params, _ = case("omniglot", "maml")
    j = JaxMAML(spec, "maml", params)
    out = j.get_params()
    assert list(out) == list(param_shapes(spec, "maml"))
    for name, value in params.items():
        assert out[name].shape == value.shape and out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], value)


def test_conv_weights_are_oihw_and_features_flatten_in_chw_order():
    """A 2x2 final map (32x32 images) makes the flatten order visible: features of channel
    c occupy columns 4c..4c+3 in the canonical (C, H, W) order, as in torch's flatten."""
    spec, params, _ = case("omniglot", "maml")
    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, image_size=32))
    params = init_params(spec, "maml")
    batch = synthetic_images(spec, "maml", 1)
    j, t = JaxMAML(spec, "maml", params), TorchMAML(spec, "maml", params)
    jb, tb = j.to_device(batch), t.to_device(batch)
    fj = common.conv4(j.params, jb.support_x[0], True, spec.model.bn_eps)
    from implementations.torch.common import conv4 as torch_conv4
    ft = torch_conv4(t.params, tb.support_x[0], True, spec.model.bn_eps)
    assert fj.shape == (5, 4 * spec.model.hidden)
    assert rel_err(fj, ft.numpy()) < TOL


def test_im2col_convolution_is_the_same_maths():
    """The "im2col" option against lax.conv_general_dilated: Conv-4 features and their gradient."""
    spec, params, batch = case("omniglot", "protonet")
    j = JaxProtoNet(spec, "protonet", params)
    x = j.to_device(batch).support_x[0]

    def features(p, conv):
        return common.conv4(p, x, True, spec.model.bn_eps, conv)

    def grads(p, conv):
        return jax.grad(lambda q: jnp.sum(jnp.sin(features(q, conv))))(p)

    for fn in (features, grads):
        fn = jax.jit(fn, static_argnums=1)
        out_xla, out_im2col = fn(j.params, "xla"), fn(j.params, "im2col")
        for a, b in zip(jax.tree.leaves(out_im2col), jax.tree.leaves(out_xla), strict=True):
            assert rel_err(a, b) < TOL


def test_set_params_resets_the_optimizer_state():
    j, _, jb, _, init = adapters("sinusoid-10shot", "maml")
    j.outer_step(jb)
    first = j.get_params()
    j.outer_step(jb)
    j.set_params(init)
    j.outer_step(jb)
    after_reset = j.get_params()
    for name in first:
        np.testing.assert_array_equal(after_reset[name], first[name])


def test_outer_step_compiles_once_and_sync_waits_for_every_output():
    j, _, jb, _, init = adapters("sinusoid-10shot", "fomaml")
    losses = []
    for _ in range(3):
        loss = j.outer_step(jb)
        j.sync(loss)
        losses.append(float(loss))
    assert j.compilation_count() == 1
    j.set_params(init)  # fresh arrays of the same shapes: no recompilation
    j.sync(j.outer_step(jb))
    assert j.compilation_count() == 1
    assert losses[2] < losses[0]


def test_inner_step_adapts_every_task_from_the_current_params_without_changing_them():
    j, t, jb, tb, init = adapters("sinusoid-10shot", "maml", size=3)
    adapted = j.inner_step(jb)
    j.sync(adapted)
    ref = t.inner_step(tb)
    for name in init:
        assert adapted[name].shape == (3, *init[name].shape)
        assert rel_err(adapted[name], ref[name].numpy()) < TOL
    assert all(np.array_equal(v, init[k]) for k, v in j.get_params().items())


def test_maml_adapt_takes_test_inner_steps():
    spec, params, batch = case("sinusoid-10shot", "maml")
    spec = dataclasses.replace(spec, maml=dataclasses.replace(spec.maml, test_inner_steps=3))
    j, t = JaxMAML(spec, "maml", params), TorchMAML(spec, "maml", params)
    aj, at = j.adapt(j.to_device(batch)), t.adapt(t.to_device(batch))
    assert max(rel_err(aj[k], at[k].numpy()) for k in params) < TOL
    assert rel_err(j.predict(j.to_device(batch)), t.predict(t.to_device(batch))) < TOL


def test_protonet_adapt_returns_prototypes_and_query_embeddings():
    j, t, jb, tb, _ = adapters("omniglot", "protonet")
    protos, query = j.adapt(jb)
    j.sync((protos, query))
    shape = j.config.train_shape
    d = j.config.model.hidden
    assert protos.shape == (2, shape.n_way, d) and query.shape == (2, shape.n_way * shape.n_query, d)
    tp, tq = t.adapt(tb)
    assert rel_err(protos, tp.numpy()) < TOL and rel_err(query, tq.numpy()) < TOL


def test_adam_step_size_halves_like_torch_steplr():
    """A constant gradient makes every Adam update exactly -lr_t: the schedule, read off."""
    lr, every, steps = 1e-3, 2, 5
    opt = common.make_adam(MetaOptimizer(lr, every))
    params = {"w": np.zeros(3, np.float32)}
    state = opt.init(params)
    jax_updates = []
    for _ in range(steps):
        update, state = opt.update({"w": np.ones(3, np.float32)}, state, params)
        jax_updates.append(float(update["w"][0]))
    w = torch.zeros(3, requires_grad=True)
    topt = torch.optim.Adam([w], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.StepLR(topt, every, gamma=0.5)
    torch_updates = []
    for _ in range(steps):
        before = w.detach().clone()
        w.grad = torch.ones(3)
        topt.step()
        sched.step()
        torch_updates.append(float((w.detach() - before)[0]))
    np.testing.assert_allclose(jax_updates, torch_updates, rtol=1e-4)
    np.testing.assert_allclose(jax_updates, [-lr, -lr, -lr / 2, -lr / 2, -lr / 4], rtol=1e-4)


def test_memory_reading_is_none_on_cpu():
    j, *_ = adapters("sinusoid-10shot", "maml")
    j.reset_peak_memory()
    assert j.peak_memory() == MemoryReading(None, None)


def test_wrong_algorithm_and_unknown_options_are_refused():
    spec, params, _ = case("sinusoid-10shot", "maml")
    with pytest.raises(ValueError):
        JaxProtoNet(spec, "maml", params)
    with pytest.raises(ValueError):
        JaxMAML(spec, "maml", params, options={"inner_loop": "while"})
