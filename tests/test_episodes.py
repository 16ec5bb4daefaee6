"""Episodes: layout, determinism across processes, fingerprints, the low-data subset."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from importlib import resources

import numpy as np
import pytest

from bench.core.episodes import EpisodeSampler, sampler_for
from bench.core.spec import load_spec


@pytest.fixture(scope="module")
def omni(data_dir, cache_dir):
    spec = load_spec("omniglot-5w1s")
    return lambda role="test", algorithm=None, s=spec: sampler_for(s, role, algorithm, data_dir=data_dir,
                                                                  cache_dir=cache_dir)


def test_omniglot_batch_layout(omni):
    b = omni().batch(0, 3)
    assert b.support_x.shape == (3, 5, 28, 28, 1) and b.support_x.dtype == np.float32
    assert b.query_x.shape == (3, 75, 28, 28, 1)
    assert b.support_y.dtype == np.int64
    assert b.support_y[0].tolist() == [0, 1, 2, 3, 4]
    assert b.query_y[1].tolist() == sum(([c] * 15 for c in range(5)), [])
    assert 0.0 <= b.support_x.min() and b.support_x.max() <= 1.0


def test_support_and_query_are_distinct_drawings_of_the_episode_classes(omni):
    b = omni().batch(0, 4)
    for prov in b.provenance:  # [n_way, 1 + k + q]: class, then sample indices
        assert len(set(prov[:, 0])) == 5
        for row in prov:
            assert len(set(row[1:])) == 16


def test_training_shape_follows_the_algorithm(omni):
    assert omni("train", "maml").batch(0, 2).query_x.shape == (2, 5, 28, 28, 1)  # Finn: K query
    assert omni("train", "protonet").batch(0, 1).support_x.shape == (1, 60, 28, 28, 1)  # Snell: 60-way


def test_an_episode_does_not_depend_on_how_it_was_batched(omni):
    s = omni()
    whole = s.batch(0, 6)
    for i in (0, 3, 5):
        alone = s.episode(i)
        assert np.array_equal(alone.support_x[0], whole.support_x[i])
        assert np.array_equal(alone.query_y[0], whole.query_y[i])


def test_roles_draw_from_their_own_splits(omni):
    train, test = omni("train", "maml"), omni("test")
    assert train.n_classes == 4112 and test.n_classes == 1692
    assert train.fingerprint(4) != test.fingerprint(4)


def _fingerprint_in_fresh_process(env, *args) -> str:
    r = subprocess.run([sys.executable, "-m", "bench.cli", "episodes", *args], capture_output=True, text=True,
                       env=env, check=True)
    return r.stdout.strip().rsplit(" ", 1)[-1]


def test_same_spec_gives_same_episodes_across_processes(data_env, omni):
    a = _fingerprint_in_fresh_process(data_env, "omniglot-5w1s", "--count", "100")
    b = _fingerprint_in_fresh_process(data_env, "omniglot-5w1s", "--count", "100")
    assert a == b == omni().fingerprint(100)
    s = _fingerprint_in_fresh_process(data_env, "sinusoid-10shot", "--count", "100")
    assert s == _fingerprint_in_fresh_process(data_env, "sinusoid-10shot", "--count", "100")


def test_changing_the_seed_changes_the_fingerprint(data_dir, cache_dir, tmp_path, data_env):
    spec = load_spec("omniglot-5w1s")
    other = replace(spec, seed=1)
    kw = {"data_dir": data_dir, "cache_dir": cache_dir}
    assert EpisodeSampler(spec, "test", **kw).fingerprint(50) != EpisodeSampler(other, "test", **kw).fingerprint(50)
    text = (resources.files("bench.core.specs") / "omniglot-5w1s.toml").read_text()
    path = tmp_path / "seed7.toml"
    path.write_text(text.replace("seed = 0", "seed = 7"))
    assert _fingerprint_in_fresh_process(data_env, str(path), "--count", "50") != \
        _fingerprint_in_fresh_process(data_env, "omniglot-5w1s", "--count", "50")


def test_fingerprint_covers_the_episode_shape(omni):
    spec = load_spec("omniglot-5w1s")
    five_shot = replace(spec, episode=replace(spec.episode, k_shot=5))
    assert omni().fingerprint(10) != omni(s=five_shot).fingerprint(10)


def test_sinusoid_tasks_follow_finn(tmp_path):
    spec = load_spec("sinusoid-10shot")
    b = EpisodeSampler(spec, "train", spec.train_shape("maml")).batch(0, 500)
    assert b.support_x.shape == (500, 10, 1) and b.query_y.shape == (500, 10, 1)
    amp, phase = b.provenance[:, 0], b.provenance[:, 1]
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and 0 <= phase.min() and phase.max() <= np.pi
    assert -5 <= b.support_x.min() and b.support_x.max() <= 5
    np.testing.assert_allclose(b.support_y[..., 0], amp[:, None] * np.sin(b.support_x[..., 0] - phase[:, None]),
                               rtol=1e-5, atol=1e-5)


def test_low_data_spec_trains_on_100_classes_of_10_images(data_dir, cache_dir):
    spec = load_spec("omniglot-100x10")
    s = sampler_for(spec, "train", "protonet", data_dir=data_dir, cache_dir=cache_dir)
    assert s._pool[0].shape[:2] == (100, 10)
    seen = set()
    for i in range(50):
        seen |= set(s.episode(i).provenance[0][:, 0].tolist())
    assert max(seen) < 100
    # the subset is a seeded choice: the same in every sampler, another with another seed
    again = sampler_for(spec, "train", "protonet", data_dir=data_dir, cache_dir=cache_dir)
    assert np.array_equal(again._pool[0], s._pool[0])
    other = sampler_for(replace(spec, seed=3), "train", "protonet", data_dir=data_dir, cache_dir=cache_dir)
    assert not np.array_equal(other._pool[0], s._pool[0])
    # testing uses the usual split
    assert sampler_for(spec, "test", data_dir=data_dir, cache_dir=cache_dir).n_classes == 1692
