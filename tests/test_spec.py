"""The episode-spec format: built-in specs load, every invalid field is named in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from dataclasses import replace
from importlib import resources

import pytest

from bench.core.errors import SpecError
from bench.core.spec import builtin_spec_names, load_spec, spec_from_dict

EXPECTED = {"omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s", "omniglot-100x10",
            "sinusoid-5shot", "sinusoid-10shot", "sinusoid-20shot"}


def raw(name="omniglot-5w1s") -> dict:
    return tomllib.loads(resources.files("bench.core.specs").joinpath(f"{name}.toml").read_text())


def test_builtin_specs_are_the_papers_settings():
    assert set(builtin_spec_names()) == EXPECTED
    s = load_spec("omniglot-5w1s")
    assert (s.episode.n_way, s.episode.k_shot, s.maml.inner_lr, s.maml.inner_steps, s.maml.test_inner_steps,
            s.maml.meta_batch_size) == (5, 1, 0.4, 1, 3, 32)
    assert (s.protonet.train_n_way, s.protonet.train_n_query, s.protonet.lr_halve_every) == (60, 5, 2000)
    s = load_spec("omniglot-20w1s")
    assert (s.maml.inner_lr, s.maml.inner_steps, s.maml.meta_batch_size) == (0.1, 5, 16)
    s = load_spec("sinusoid-10shot")
    assert (s.episode.k_shot, s.maml.inner_lr, s.maml.meta_batch_size, s.model.hidden) == (10, 0.01, 25, 40)
    assert s.algorithms() == ("maml", "fomaml", "anil")
    s = load_spec("omniglot-100x10")
    assert (s.data.max_train_classes, s.data.max_train_images_per_class) == (100, 10)


def test_profiles_change_budgets_not_episodes():
    s = load_spec("omniglot-5w1s")
    for profile in ("smoke", "cpu", "paper"):
        p = s.with_profile(profile, "maml")
        assert p.episode == s.episode and p.train_shape("maml") == s.train_shape("maml")
        assert p.data == s.data and p.model == s.model
    # paper keeps the spec's budget; the algorithm's target comes from [targets]
    assert s.with_profile("paper", "maml").budget == replace(s.budget, target=s.targets.get("maml", 0.0))
    steps = {p: s.with_profile(p, "maml").budget.meta_train_steps for p in ("smoke", "cpu")}
    assert steps["smoke"] < steps["cpu"]


def test_fomaml_is_maml_with_first_order():
    s = load_spec("omniglot-5w1s")
    assert not s.for_algorithm("maml").maml.first_order
    assert s.for_algorithm("fomaml").maml.first_order


def _error(mutate, name="omniglot-5w1s") -> SpecError:
    r = raw(name)
    mutate(r)
    with pytest.raises(SpecError) as info:
        spec_from_dict(r, "x.toml")
    return info.value


@pytest.mark.parametrize("mutate, field, words", [
    (lambda r: r["episode"].update(n_wya=5), "episode.n_wya", "unknown field"),
    (lambda r: r.update(colour="red"), "colour", "unknown field"),
    (lambda r: r["episode"].update(n_way="5"), "episode.n_way", "must be an integer"),
    (lambda r: r["maml"].update(inner_lr="fast"), "maml.inner_lr", "must be a number"),
    (lambda r: r["maml"].update(first_order=1), "maml.first_order", "true or false"),
    (lambda r: r["episode"].update(n_way=2000), "episode.n_way", "exceeds the 688 classes of the 'val' split"),
    (lambda r: r["episode"].update(n_query=20), "episode.n_query", "k_shot + n_query = 21 exceeds the 20"),
    (lambda r: r["episode"].update(k_shot=0), "episode.k_shot", "must be > 0"),
    (lambda r: r["episode"].update(n_query=-3), "episode.n_query", "must be > 0"),
    (lambda r: r["maml"].update(meta_batch_size=0), "maml.meta_batch_size", "must be > 0"),
    (lambda r: r["data"].update(image_size=0), "data.image_size", "must be > 0"),
    (lambda r: r["data"].update(dataset="imagenet"), "data.dataset", "allowed: omniglot, sinusoid"),
    (lambda r: r["data"].update(test_split="holdout"), "data.test_split", "allowed: train, val"),
    (lambda r: r["model"].update(batch_norm="running"), "model.batch_norm", "allowed: transductive, none"),
    (lambda r: r["protonet"].update(train_n_way=5000), "protonet.train_n_way", "exceeds the 4112 training"),
    (lambda r: r["protonet"].update(distance="cosine"), "protonet.distance", "allowed: squared_euclidean"),
    (lambda r: r["data"].update(max_train_classes=99999), "data.max_train_classes", "use at most 4112"),
    (lambda r: r.pop("episode"), "episode", "is required"),
    (lambda r: r["episode"].pop("k_shot"), "episode.k_shot", "is required"),
    (lambda r: r.update(profiles={"fast": {}}), "profiles.fast", "unknown profile"),
    (lambda r: r.update(profiles={"cpu": {"meta_train_steps": 0}}), "profiles.cpu.meta_train_steps", "> 0"),
    (lambda r: r.update(profiles={"cpu": {"maml": {"speed": 1}}}), "profiles.cpu.maml.speed", "unknown field"),
    (lambda r: (r.pop("maml"), r.pop("protonet")), "maml", "needs a [maml] or a [protonet]"),
])
def test_invalid_field_is_named_with_what_is_allowed(mutate, field, words):
    err = _error(mutate)
    assert err.field == field
    assert words in str(err)
    assert "\n" not in str(err)


def test_sinusoid_rejects_classification_settings():
    assert _error(lambda r: r["episode"].update(n_way=5), "sinusoid-10shot").field == "episode.n_way"
    assert _error(lambda r: r.update(protonet={}), "sinusoid-10shot").field == "protonet"
    assert _error(lambda r: r["data"].update(amplitude=[5.0, 0.1]), "sinusoid-10shot").field == "data.amplitude"


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env)


def test_validate_exits_0_on_valid_spec(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(resources.files("bench.core.specs").joinpath("omniglot-5w5s.toml").read_text())
    r = _cli("validate", str(path))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


@pytest.mark.parametrize("text, field", [
    ('name = "x"\n[data]\ndataset = "omniglot"\n[episode]\nn_way = 5\nk_shot = 1\nn_query = 15\nsurprise = 1\n'
     '[maml]\ninner_lr = 0.4\n', "episode.surprise"),
    ('name = "x"\n[data]\ndataset = "omniglot"\n[episode]\nn_way = 5\nk_shot = 10\nn_query = 15\n'
     '[maml]\ninner_lr = 0.4\n', "episode.n_query"),
    ('name = "x"\n[data]\ndataset = "mnist"\n[episode]\nn_way = 5\nk_shot = 1\nn_query = 1\n'
     '[maml]\ninner_lr = 0.4\n', "data.dataset"),
    ('name = "x"\n[data\n', "toml"),
])
def test_validate_prints_one_line_and_exits_2_without_traceback(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    r = _cli("validate", str(path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f": {field}:" in r.stderr


def test_unknown_builtin_name_lists_the_builtin_specs():
    r = _cli("validate", "omniglot-5w2s")
    assert r.returncode == 2 and "omniglot-5w1s" in r.stderr and "Traceback" not in r.stderr


def test_list_shows_specs_profiles_and_adapters():
    r = _cli("list")
    assert r.returncode == 0
    for word in (*EXPECTED, "smoke", "cpu", "paper", "torch-maml", "jax-protonet", "tensorflow-maml-xla"):
        assert word in r.stdout


@pytest.mark.parametrize("mutate, field, words", [
    (lambda r: r["maml"].update(inner_lr=float("nan")), "maml.inner_lr", "must be a finite number, got nan"),
    (lambda r: r["maml"].update(meta_lr=float("inf")), "maml.meta_lr", "must be a finite number, got inf"),
    (lambda r: r["protonet"].update(meta_lr=float("-inf")), "protonet.meta_lr", "finite number, got -inf"),
    (lambda r: r["model"].update(bn_eps=float("nan")), "model.bn_eps", "must be a finite number"),
    (lambda r: r["data"].update(image_size=15), "data.image_size", "(15 -> 7 -> 3 -> 1 -> 0); use at least 16"),
    (lambda r: r.update(name="my spec"), "name", "names folders and table rows"),
])
def test_values_that_would_fail_inside_a_cell_are_refused_on_load(mutate, field, words):
    err = _error(mutate)
    assert err.field == field and words in str(err) and "\n" not in str(err)


def test_sinusoid_ranges_are_finite_and_x_range_is_not_a_point():
    assert _error(lambda r: r["data"].update(phase=[0.0, float("inf")]), "sinusoid-10shot").field == "data.phase"
    assert _error(lambda r: r["data"].update(x_range=[2.0, 2.0]), "sinusoid-10shot").field == "data.x_range"


def test_the_smallest_image_size_conv4_can_pool_loads():
    r = raw()
    r["data"]["image_size"] = 16
    assert spec_from_dict(r, "x.toml").data.image_size == 16


def test_a_utf8_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.toml"
    spec = resources.files("bench.core.specs").joinpath("sinusoid-10shot.toml")
    path.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())
    assert load_spec(path).name == "sinusoid-10shot"


def test_a_file_that_is_not_utf8_is_named_with_the_fix(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match=r"file: not UTF-8 text \(byte 0xe9 at offset 11\); .* save it as UTF-8"):
        load_spec(path)
