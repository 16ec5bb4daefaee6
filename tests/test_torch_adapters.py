"""The PyTorch adapters: the contract on tiny specs, MAML's gradients against finite
differences, ProtoNet's loss on a hand-computed case."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bench.episodes import EpisodeBatch, EpisodeSampler
from bench.models import init_params, param_shapes
from bench.spec import load_spec
from bench.training import task_metrics
from implementations.torch import common
from implementations.torch.maml import TorchMAML
from implementations.torch.protonet import TorchProtoNet, neg_sq_distances, prototypes

TorchMAML.configure(threads=2, device="cpu")


def tiny_omniglot(**maml):
    """Omniglot-shaped spec small enough for float64 finite differences: 16x16, 4 filters."""
    s = load_spec("omniglot-5w1s")
    return replace(s, data=replace(s.data, image_size=16), model=replace(s.model, hidden=4),
                   episode=replace(s.episode, n_way=3, n_query=2),
                   maml=replace(s.maml, **{"meta_batch_size": 2, **maml}))


def random_image_batch(spec, b=2, k=1, q=2, seed=0) -> EpisodeBatch:
    rng = np.random.default_rng(seed)
    n, s = spec.episode.n_way, spec.data.image_size
    labels = lambda m: np.broadcast_to(np.repeat(np.arange(n), m), (b, n * m)).copy()
    return EpisodeBatch(rng.random((b, n * k, s, s, 1), np.float32), labels(k),
                        rng.random((b, n * q, s, s, 1), np.float32), labels(q), np.zeros((b, 1)))


def sinusoid_batch(spec, b=3):
    return EpisodeSampler(spec, "train", spec.train_shape("maml")).batch(0, b)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_maml_contract_on_sinusoid(algorithm):
    spec = load_spec("sinusoid-10shot")
    params = init_params(spec, algorithm)
    a = TorchMAML(spec, algorithm, params)
    batch = a.to_device(sinusoid_batch(spec))
    info = a.describe()
    assert info.framework == "torch" and info.device == "cpu" and info.compilation == "eager"
    assert a.config.inner.first_order == (algorithm == "fomaml")
    adapted = a.inner_step(batch)
    assert adapted["fc1.weight"].shape == (3, 40, 1)  # one adapted copy per task
    probe = a.probe(batch)
    assert probe["support_loss"].shape == (3,) and probe["query_logits"].shape == (3, 10, 1)
    assert set(k[len("meta_grad/"):] for k in probe if k.startswith("meta_grad/")) == set(params)
    before = a.predict(batch)
    loss = a.outer_step(batch)
    a.sync(loss)
    assert np.isfinite(float(loss))
    after = a.get_params()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in params.items()}
    assert any(not np.array_equal(after[k], params[k]) for k in params)
    assert before.shape == (3, 10, 1) and np.isfinite(before).all()
    a.set_params(params)
    assert all(np.array_equal(a.get_params()[k], params[k]) for k in params)


def test_protonet_contract_on_omniglot_shapes():
    spec = tiny_omniglot()
    params = init_params(spec, "protonet")
    assert "head.weight" not in params
    a = TorchProtoNet(spec, "protonet", params)
    batch = a.to_device(random_image_batch(spec))
    protos, query = a.adapt(batch)
    assert protos.shape == (2, 3, 4) and query.shape == (2, 6, 4)
    assert a.predict(batch).shape == (2, 6, 3)  # negative squared distances to 3 prototypes
    acc = task_metrics(a, random_image_batch(spec), "protonet")
    assert acc.shape == (2,) and ((0 <= acc) & (acc <= 1)).all()
    probe = a.probe(batch)
    assert probe["query_logits"].shape == (2, 6, 3)
    a.sync(a.outer_step(batch))
    assert any(not np.array_equal(a.get_params()[k], params[k]) for k in params)


def test_canonical_params_have_no_conv_bias_before_batchnorm():
    spec = load_spec("omniglot-5w1s")
    shapes = param_shapes(spec, "maml")
    assert "conv1.bias" not in shapes and shapes["conv1.weight"] == (64, 1, 3, 3)
    assert shapes["head.weight"] == (5, 64)
    no_bn = replace(spec, model=replace(spec.model, batch_norm="none"))
    assert "conv1.bias" in param_shapes(no_bn, "maml") and "bn1.weight" not in param_shapes(no_bn, "maml")


def _float64_meta_loss(adapter: TorchMAML, batch):
    params = {k: v.double() for k, v in adapter.params.items()}
    b = adapter.to_device(batch)
    for name in ("support_x", "query_x") + (("support_y", "query_y") if adapter.regression else ()):
        setattr(b, name, getattr(b, name).double())
    return params, (lambda p: adapter._meta_loss(p, b))


def _directional_fd(loss_fn, params, direction, eps=1e-7) -> float:
    # float64; a small step because ReLU, max-pool and BatchNorm on 3 samples make the
    # meta-loss sharply curved (eps = 1e-5 already crosses kinks on this tiny model)
    plus = {k: params[k] + eps * direction[k] for k in params}
    minus = {k: params[k] - eps * direction[k] for k in params}
    return float((loss_fn(plus) - loss_fn(minus)) / (2 * eps))


@pytest.mark.parametrize("spec_name", ["sinusoid", "omniglot"])
def test_second_order_meta_gradient_matches_finite_differences_and_first_order_does_not(spec_name):
    if spec_name == "sinusoid":
        spec = load_spec("sinusoid-10shot")
        spec = replace(spec, model=replace(spec.model, hidden=8), maml=replace(spec.maml, inner_lr=0.3))
        batch = sinusoid_batch(spec, 2)
    else:
        spec = tiny_omniglot(inner_steps=2)
        batch = random_image_batch(spec)
    torch.manual_seed(0)
    results = {}
    for algorithm in ("maml", "fomaml"):
        a = TorchMAML(spec, algorithm, init_params(spec, algorithm, seed=3))
        params, loss_fn = _float64_meta_loss(a, batch)
        grads = torch.func.grad(loss_fn)(params)
        errors = []
        for _ in range(3):
            direction = {k: torch.randn_like(v) for k, v in params.items()}
            analytic = sum(float((grads[k] * direction[k]).sum()) for k in params)
            numeric = _directional_fd(loss_fn, params, direction)
            errors.append(abs(analytic - numeric) / max(abs(numeric), 1e-12))
        results[algorithm] = max(errors)
    assert results["maml"] < 1e-5, results            # exact second-order gradient
    assert results["fomaml"] > 1e-3, results          # first order drops the Hessian term


def test_first_and_second_order_share_the_adapted_forward_but_not_the_gradient():
    spec = load_spec("sinusoid-10shot")
    batch = sinusoid_batch(spec)
    probes = {}
    for algorithm in ("maml", "fomaml"):
        a = TorchMAML(spec, algorithm, init_params(spec, algorithm))
        probes[algorithm] = a.probe(a.to_device(batch))
    np.testing.assert_array_equal(probes["maml"]["query_logits"], probes["fomaml"]["query_logits"])
    g1, g2 = probes["maml"]["meta_grad/fc1.weight"], probes["fomaml"]["meta_grad/fc1.weight"]
    assert not np.allclose(g1, g2, rtol=1e-3)


def test_protonet_loss_on_a_hand_computed_case():
    # 2-way 1-shot, 2-d embeddings: prototypes (0,0) and (2,0); query (1,0) and (2,1).
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    protos = prototypes(support, 2)
    query = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    logits = neg_sq_distances(query, protos)
    assert logits.tolist() == [[-1.0, -1.0], [-5.0, -1.0]]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    expected = (np.log(2.0) + np.log(1 + np.exp(-4.0))) / 2
    assert abs(float(loss) - expected) < 1e-6
    # prototypes are class means of class-major rows
    two_shot = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 0.0], [6.0, 0.0]])
    assert prototypes(two_shot, 2).tolist() == [[1.0, 1.0], [5.0, 0.0]]


def test_adam_matches_the_textbook_update():
    spec = load_spec("sinusoid-10shot")
    params = init_params(spec, "maml")
    a = TorchMAML(spec, "maml", params)
    batch = a.to_device(sinusoid_batch(spec))
    g = a.probe(batch)["meta_grad/fc2.weight"].astype(np.float64)
    a.outer_step(batch)
    # first Adam step: m_hat = g, v_hat = g^2 -> update lr * g / (|g| + eps)
    expected = params["fc2.weight"] - 1e-3 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(a.get_params()["fc2.weight"], expected, rtol=1e-5, atol=1e-7)


def test_adam_update_is_right_for_a_channels_last_gradient():
    """autograd returns Conv weights' gradients channels_last on a CPU; torch 2.13's fused
    Adam read such a gradient in its parameter's order and moved half the entries the wrong
    way. ``apply_meta_grad`` hands Adam a gradient in its parameter's layout."""
    spec = tiny_omniglot()
    params = init_params(spec, "protonet")
    a = TorchProtoNet(spec, "protonet", params, options={"dtype": "float64"})
    rng = np.random.default_rng(0)
    grads = {k: torch.tensor(rng.standard_normal(v.shape)) for k, v in params.items()}
    grads = {k: g.contiguous(memory_format=torch.channels_last) if g.dim() == 4 else g for k, g in grads.items()}
    assert not grads["conv2.weight"].is_contiguous()
    a.apply_meta_grad(grads)
    lr, eps = a.meta_optimizer.lr, a.meta_optimizer.eps
    for k, g in grads.items():
        g = g.numpy()
        np.testing.assert_allclose(a.get_params()[k], params[k] - lr * g / (np.abs(g) + eps), rtol=1e-12,
                                   atol=1e-15, err_msg=k)


def _vmapped_and_looped_meta_gradients(norm):
    """float64 meta-gradients of a tiny Conv-4 MAML, tasks vmapped and tasks in a loop,
    with BatchNorm computed by ``norm``."""
    spec = tiny_omniglot()
    batch = random_image_batch(spec)
    a = TorchMAML(spec, "maml", init_params(spec, "maml", seed=3))
    a.forward = lambda params, x: torch.nn.functional.linear(
        common.conv4(params, x, True, a._eps, norm=norm), params["head.weight"], params["head.bias"])
    params, _ = _float64_meta_loss(a, batch)
    b = a.to_device(batch)
    sx, qx = b.support_x.double(), b.query_x.double()

    def looped(p):
        return sum(a._task_query_loss(p, sx[t], b.support_y[t], qx[t], b.query_y[t]) for t in range(len(sx))) / len(sx)

    def vmapped(p):
        return torch.func.vmap(a._task_query_loss, in_dims=(None, 0, 0, 0, 0))(
            p, sx, b.support_y, qx, b.query_y).mean()

    g_loop, g_vmap = torch.func.grad(looped)(params), torch.func.grad(vmapped)(params)
    diff = max(float((g_loop[k] - g_vmap[k]).abs().max()) for k in params)
    return diff / max(float(g_loop[k].abs().max()) for k in params)


def test_written_out_batchnorm_gives_vmap_the_right_second_derivative():
    """TorchMAML vmaps its meta-gradient over tasks; its BatchNorm is written out from mean
    and variance, whose vmapped double backward matches the per-task loop."""
    assert _vmapped_and_looped_meta_gradients(common.batch_norm) < 1e-12


def test_vmapped_second_order_through_f_batch_norm_is_still_wrong_in_torch():
    """Why ``common.batch_norm`` exists: torch.func.vmap's second derivative through
    ``F.batch_norm`` disagrees with the loop. When torch fixes it this test fails, and
    MAML may go back to the fused kernel (measure which is faster)."""
    if _vmapped_and_looped_meta_gradients(common.fused_batch_norm) < 1e-10:
        pytest.fail("torch's vmapped double-backward through F.batch_norm now agrees: "
                    "TorchMAML may use common.fused_batch_norm (measure it)")


def test_anil_meta_gradient_matches_finite_differences_and_reaches_the_body():
    """ANIL adapts the head alone; the meta-gradient is still second order (the head's steps
    depend on the body's features), and it reaches every body parameter."""
    from implementations.torch.anil import TorchANIL

    spec = tiny_omniglot(inner_steps=2)
    batch = random_image_batch(spec)
    a = TorchANIL(spec, "anil", init_params(spec, "anil", seed=3))
    params, loss_fn = _float64_meta_loss(a, batch)
    grads = torch.func.grad(loss_fn)(params)
    torch.manual_seed(0)
    for _ in range(3):
        direction = {k: torch.randn_like(v) for k, v in params.items()}
        analytic = sum(float((grads[k] * direction[k]).sum()) for k in params)
        numeric = _directional_fd(loss_fn, params, direction)
        assert abs(analytic - numeric) / max(abs(numeric), 1e-12) < 1e-5
    assert all(float(grads[k].abs().max()) > 0 for k in params)
    # the inner loop moved the head and nothing else
    adapted = a.inner_step(a.to_device(batch))
    assert torch.equal(adapted["conv1.weight"][0], a.params["conv1.weight"])
    assert not torch.equal(adapted["head.weight"][0], a.params["head.weight"])


def test_compiled_maml_matches_eager_and_a_second_adapter_reuses_its_compiled_code():
    """``options["compile"]``: the compiled second-order outer step computes eager's step, and
    a second adapter of the same shapes compiles nothing (dynamo's cache is per code object:
    the harness builds several adapters per cell and would otherwise compile each). The
    contract's tiny sinusoid and batch: one small compile."""
    from bench import check
    from bench.algorithms import get as get_algorithm

    algo = get_algorithm("maml")
    spec = algo.resolve(check.small_specs("maml")[0])
    init = init_params(spec, "maml")
    batch = check.synthetic_batch(spec, algo.train_shape(spec))
    eager, first, second = (TorchMAML(spec, "maml", init, options={"compile": c}) for c in (False, True, True))
    losses = [float(a.outer_step(a.to_device(batch))) for a in (eager, first, second)]
    assert losses[1] == losses[2] and abs(losses[0] - losses[1]) <= 1e-6 * abs(losses[0])
    for k, v in eager.get_params().items():
        np.testing.assert_allclose(first.get_params()[k], v, rtol=1e-5, atol=1e-7)
    assert second.compilation_count() == 0 and eager.compilation_count() is None
    assert second.describe().compilation == "torch.compile"


# -- tasks vmapped or in a loop (the ``tasks`` option) ------------------------------------

@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
@pytest.mark.parametrize("spec_name", ["sinusoid", "omniglot"])
def test_task_loop_and_vmap_compute_the_same_maths(algorithm, spec_name):
    """Float64: the probe (support loss, query logits after adaptation, meta-gradient), one
    inner step, predict after test-time adaptation and two outer steps agree to rounding,
    two inner steps so the second-order graph goes through an adapted BatchNorm."""
    if spec_name == "sinusoid":
        spec = load_spec("sinusoid-10shot")
        spec = replace(spec, model=replace(spec.model, hidden=8), maml=replace(spec.maml, inner_steps=2))
        batch = sinusoid_batch(spec, 3)
    else:
        spec = tiny_omniglot(inner_steps=2, test_inner_steps=3)
        batch = random_image_batch(spec, b=3)
    params = init_params(spec, algorithm, seed=1)
    forms = {f: TorchMAML(spec, algorithm, params, options={"tasks": f, "dtype": "float64"}) for f in ("vmap", "loop")}
    out = {}
    for f, a in forms.items():
        b = a.to_device(batch)
        probe = a.probe(b)
        inner = {k: v.detach().numpy() for k, v in a.inner_step(b).items()}
        logits = a.predict(b)
        a.outer_step(b)
        a.outer_step(b)
        out[f] = (probe, inner, logits, a.get_params())
    for part in range(4):
        ref, got = out["vmap"][part], out["loop"][part]
        if isinstance(ref, dict):
            assert ref.keys() == got.keys()
            for k in ref:
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-11, err_msg=f"part {part}: {k}")
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-11, err_msg=f"part {part}")


def test_auto_picks_the_task_form_by_shape_and_says_which():
    """On a CPU, Conv-4: inner steps loop always, the meta-gradient from 25 query images per
    task or with 1-2 tasks; the MLP stays vmapped; ``describe`` names the forms of the
    training shape."""
    from implementations.torch.maml import TASK_LOOP_QUERY_FROM, TASK_LOOP_UP_TO_TASKS

    small = tiny_omniglot()  # 3-way; training query = k_shot = 1 per class: 3 query images per task
    a = TorchMAML(small, "maml", init_params(small, "maml"))
    assert a.task_loop_for(3, 8) and not a.task_loop_for(3, 8, meta_gradient=True)
    assert a.task_loop_for(TASK_LOOP_QUERY_FROM, 8, meta_gradient=True)
    assert not a.task_loop_for(TASK_LOOP_QUERY_FROM - 1, 8, meta_gradient=True)
    assert a.task_loop_for(3, TASK_LOOP_UP_TO_TASKS, meta_gradient=True)  # vmap over 1-2 tasks: overhead
    assert not a.task_loop_for(3, TASK_LOOP_UP_TO_TASKS + 1, meta_gradient=True)
    # the spec's meta-batch is 2 here: the meta-gradient loops, and describe says so
    assert "the meta-gradient a loop over tasks (2 tasks of 3 query images" in a.describe().notes
    big = tiny_omniglot(train_n_query=9, meta_batch_size=8)  # 27 query images per training task
    assert "the meta-gradient a loop over tasks (8 tasks of 27 query images" in \
        TorchMAML(big, "maml", init_params(big, "maml")).describe().notes
    many = tiny_omniglot(meta_batch_size=8)
    assert "the meta-gradient vmapped over tasks (8 tasks of 3 query images" in \
        TorchMAML(many, "maml", init_params(many, "maml")).describe().notes
    sinusoid = load_spec("sinusoid-10shot")
    s = TorchMAML(sinusoid, "maml", init_params(sinusoid, "maml"))
    assert not s.task_loop_for(100, 1) and not s.task_loop_for(100, 1, meta_gradient=True)
    forced = TorchMAML(sinusoid, "maml", init_params(sinusoid, "maml"), options={"tasks": "loop"})
    assert forced.task_loop_for(1, 25, meta_gradient=True)
    with pytest.raises(ValueError, match="tasks=loop"):
        TorchMAML(small, "maml", init_params(small, "maml"), options={"tasks": "loop", "compile": True})


@pytest.mark.parametrize("tasks", ["loop", "vmap"])
@pytest.mark.parametrize("dataset", ["sinusoid", "omniglot"])
def test_reptile_feeds_adam_theta_minus_the_mean_of_plain_sgd_steps(dataset, tasks):
    """Reptile's outer step, by hand in float64: each task's inner_steps SGD steps on its
    support set from theta (torch.autograd, no torch.func), g = theta - mean(phi), and Adam's
    first step theta - meta_lr * g / (|g| + eps); the returned loss is the mean support loss
    at theta. In both task forms."""
    from bench import check
    from bench.algorithms import get
    from implementations.torch.reptile import TorchReptile

    spec = check.small_specs("reptile")[dataset == "omniglot"]
    algo = get("reptile")
    init = init_params(spec, "reptile")
    batch = check.synthetic_batch(spec, algo.train_shape(spec), tasks=3)
    a = TorchReptile(spec, "reptile", init, options={"dtype": "float64", "tasks": tasks})
    b = a.to_device(batch)
    lr, steps = spec.reptile.inner_lr, spec.reptile.inner_steps
    assert (a.inner_lr, a.inner_steps, a.first_order) == (lr, steps, True)
    theta = {k: torch.tensor(v, dtype=torch.float64) for k, v in init.items()}
    phis, losses = [], []
    for t in range(len(batch)):
        p = {k: v.clone().requires_grad_() for k, v in theta.items()}
        for s in range(steps):
            loss = a.loss(p, b.support_x[t], b.support_y[t])
            if s == 0:
                losses.append(float(loss.detach()))
            grads = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(p.items(), grads)}
        phis.append({k: v.detach() for k, v in p.items()})
    g = {k: (theta[k] - torch.stack([phi[k] for phi in phis]).mean(0)).numpy() for k in theta}
    probe = a.probe(b)
    np.testing.assert_allclose(probe["support_loss"], losses, rtol=1e-12)
    for k in init:
        np.testing.assert_allclose(probe[f"meta_grad/{k}"], g[k], rtol=1e-9, atol=1e-14, err_msg=k)
    loss = a.outer_step(b)
    assert float(loss) == pytest.approx(np.mean(losses), rel=1e-12)
    meta_lr = spec.reptile.meta_lr
    for k, v in a.get_params().items():
        np.testing.assert_allclose(v, init[k] - meta_lr * g[k] / (np.abs(g[k]) + 1e-8), rtol=1e-9, atol=1e-12,
                                   err_msg=k)
