"""``bench.check.near_ties``: max-pool windows that float32 cannot decide, found on synthetic
inputs and on the real Omniglot ANIL batch whose float32 parity they explain; and parity's
retry on tie-free episodes, which excuses a tie and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from bench.check import near_ties, parity


def _pool_input(*windows):
    """One image, one channel, 2 x len(windows): each window's four values row-major."""
    z = np.zeros((1, 1, 2, 2 * len(windows)))
    for j, w in enumerate(windows):
        z[0, 0, :, 2 * j:2 * j + 2] = np.reshape(w, (2, 2))
    return z


def test_a_window_whose_top_two_are_closer_than_float32_error_is_near_tied():
    z64 = _pool_input([6.2, 6.2 + 5e-7, 1.0, 2.0],   # near-tied: 5e-7 apart, float32 moved them 1e-6
                      [6.2, 6.3, 1.0, 2.0],          # decided: 0.1 apart
                      [0.5, 0.5, 0.1, 0.2],          # an exact tie (identical receptive fields): harmless
                      [0.0, 0.0, 0.0, 0.0])          # all zeros after the ReLU: no gradient either way
    z32 = z64 + 1e-6
    rows = near_ties.window_ties(z64, z32)
    assert rows.shape == (1, 7)
    image, channel, row, col, top, gap, err = rows[0]
    assert (image, channel, row, col) == (0, 0, 0, 0)
    assert top == pytest.approx(6.2 + 5e-7) and gap == pytest.approx(5e-7, rel=1e-6) and err == pytest.approx(1e-6)
    # a float32 error far below the gap: decidable
    assert len(near_ties.window_ties(z64, z64 + 1e-9)) == 0


def test_odd_sizes_drop_the_last_row_and_column_as_torch_max_pool_does():
    z = np.arange(2 * 3 * 7 * 7, dtype=np.float64).reshape(2, 3, 7, 7)
    z[1, 2, 6, 6] = z[1, 2, 6, 5] + 1e-9   # in the unpooled last row and column: not a window
    assert len(near_ties.window_ties(z, z + 1e-6)) == 0


def test_the_omniglot_anil_batch_has_one_near_tied_window_and_tie_free_episodes(data_dir, cache_dir):
    """The window docs/fairness.md describes: ANIL's compared batch (training episodes 0-3)
    has exactly one, in episode 2's query set at block 2; the tie-free batch leaves it out."""
    from bench.core import registry
    from bench.core.episodes import sampler_for
    from bench.core.models import init_params

    request = {"spec": "omniglot-5w1s", "algorithm": "anil"}
    spec = parity.request_spec(request)
    params = init_params(spec, "anil")
    entry = registry.get("torch-anil")
    cls = registry.load_adapter_class(entry)
    cls.configure(1, "cpu")
    sampler = sampler_for(spec, "train", "anil", data_dir=str(data_dir), cache_dir=str(cache_dir))
    make = lambda dtype: cls(spec, "anil", params, device="cpu", options={**entry.options, "dtype": dtype})
    ties, free = near_ties.scan(make, sampler, [0, 1, 2, 3], 4)
    assert len(ties) == 1, ties
    task, pass_, image, block, *_ = ties[0]
    assert (task, near_ties.PASSES[int(pass_)], block) == (2, "query", 2)
    assert len(free) == 4 and 2 not in free and list(free) == sorted(free)
    text = near_ties.describe(ties, [0, 1, 2, 3])
    assert text.startswith("1 max-pool window tied at float32 resolution (episode 2's query image")


def test_listed_episodes_stack_into_the_same_batch_the_sampler_draws(data_dir, cache_dir):
    from bench.core.episodes import sampler_for
    from bench.core.spec import load_spec

    sampler = sampler_for(load_spec("omniglot-5w1s"), "train", "maml", data_dir=str(data_dir),
                          cache_dir=str(cache_dir))
    a, b = sampler.batch(0, 3), parity.stacked([sampler.episode(e) for e in parity.compared_episodes(
        {"batch_size": 3})])
    for name in ("support_x", "support_y", "query_x", "query_y", "provenance"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert parity.compared_episodes({"batch_size": 4, "episodes": [0, 1, 3, 6]}) == [0, 1, 3, 6]


def _quantities(prefix: str, grad: np.ndarray) -> dict:
    """A comparison's arrays for one request: a 1-parameter model whose meta-gradient is ``grad``."""
    return {f"{prefix}support_loss": np.ones(4), f"{prefix}query_logits": np.ones((4, 5, 5)),
            f"{prefix}meta_grad/w": grad, f"{prefix}params_after/w": -1e-3 * np.sign(grad),
            f"{prefix}trajectory/w": -3e-3 * np.sign(grad), f"{prefix}test_outputs": np.ones((4, 5, 5)),
            f"{prefix}init/w": np.zeros_like(grad)}


def _side(grad32: np.ndarray, grad64: np.ndarray, reference: bool = False, ties: int = 0) -> dict:
    out = {**_quantities("0/", grad32), **_quantities(f"0/{parity.F64}", grad64), "0/placeholder": np.array(False)}
    if reference:
        out.update(_quantities(f"0/{parity.SENS}", grad64))
        out["0/ties"] = np.tile([2, 1, 0, 2, 60, 2, 2, 1.7, 2e-6, 2.2e-6], (ties, 1))
        out["0/tie_free"] = np.array([0, 1, 3, 6])
    return out


@pytest.mark.parametrize("wrong_on_tie_free, ok", [(False, True), (True, False)])
def test_the_tie_free_retry_excuses_a_tie_and_nothing_else(monkeypatch, wrong_on_tie_free, ok):
    """A float32 meta-gradient off by 1.7e-2 on a batch with a near-tied window passes when it
    agrees on tie-free episodes, and fails, saying 'not the tie', when it is off there too."""
    g = np.linspace(1.0, 2.0, 8)
    ref = _side(g, g, reference=True, ties=1)
    first = {"jax": _side(g * (1 + 1.7e-2), g)}
    again = {"torch": _side(g, g, reference=True), "jax": _side(g * (1 + (5e-2 if wrong_on_tie_free else 1e-6)), g)}
    calls = []
    monkeypatch.setattr(parity, "_compute_all", lambda plan, *a, **kw: calls.append(kw["episodes"]) or again)
    cmp = parity._Comparison(first["jax"], ref, 0, 0, 1e-3, 1e-4)
    assert cmp.ok64 and not cmp.ok32
    row = {**cmp.columns(), "diagnosis": cmp.diagnose("anil"), "float32_failure": cmp.first_float32_failure()}
    plan = {"torch": [(0, "torch-anil")], "jax": [(0, "jax-anil")]}
    parity._retry_without_ties([row], plan, {"torch": ref, **first}, [("omniglot-5w1s", "omniglot-5w1s", "anil")],
                               None, 1e-4, "cpu", None, False, lambda *_: None)
    assert calls == [[0, 1, 3, 6]]
    assert row["ok"] is ok
    if ok:
        assert "diagnosis" not in row
        assert row["note"].startswith("near-tie: float32 meta_grad 1.7e-02")
        assert "episode 2's query image 0, block 2, channel 60" in row["note"]
        assert "on tie-free episodes [0, 1, 3, 6] both tiers pass" in row["note"]
    else:
        assert "note" not in row and row["diagnosis"].endswith("not the tie")


def test_no_retry_without_a_tie(monkeypatch):
    g = np.linspace(1.0, 2.0, 8)
    ref = _side(g, g, reference=True, ties=0)
    res = _side(g * (1 + 1.7e-2), g)
    monkeypatch.setattr(parity, "_compute_all", lambda *a, **kw: pytest.fail("retried without a tie"))
    cmp = parity._Comparison(res, ref, 0, 0, 1e-3, 1e-4)
    row = {**cmp.columns(), "diagnosis": cmp.diagnose("anil"), "float32_failure": cmp.first_float32_failure()}
    parity._retry_without_ties([row], {"torch": [(0, "torch-anil")], "jax": [(0, "jax-anil")]},
                               {"torch": ref, "jax": res}, [("omniglot-5w1s", "omniglot-5w1s", "anil")],
                               None, 1e-4, "cpu", None, False, lambda *_: None)
    assert row["ok"] is False and "near-tie" not in row.get("note", "")
