"""Adapter options are declared by each class and refused when unknown or ill-typed: a
misspelt option would otherwise benchmark the default under the variant's name."""

from __future__ import annotations

import pytest

from bench.core import registry
from bench.core.adapter import Adapter, Option
from bench.core.models import init_params
from bench.core.spec import load_spec


class _Declared(Adapter):
    framework = "none"
    algorithms = ("maml",)
    OPTIONS = {**Adapter.OPTIONS, "unroll": Option(int, 1), "mode": Option(str, None, ("a", "b"))}
    describe = to_device = sync = get_params = set_params = outer_step = adapt = predict = probe = None


@pytest.mark.parametrize("options, words", [
    ({"unrol": 2}, "unknown option 'unrol'; _Declared accepts: dtype, unroll, mode"),
    ({"unroll": "2"}, "option unroll must be int, got '2'"),
    ({"unroll": True}, "option unroll must be int, got True"),      # bool is not an int here
    ({"mode": "c"}, "option mode must be one of a, b, got 'c'"),
    ({"dtype": "float16"}, "option dtype must be one of float32, float64, got 'float16'"),
])
def test_unknown_or_ill_typed_options_are_named(options, words):
    assert _Declared.option_problems(options) == [words]


def test_the_options_used_are_every_declared_one_with_its_value():
    spec = load_spec("sinusoid-10shot")
    a = _Declared(spec, "maml", init_params(spec, "maml"), options={"mode": "b"})
    assert a.options == {"dtype": "float32", "unroll": 1, "mode": "b"}
    with pytest.raises(ValueError, match="unknown option 'speed'"):
        _Declared(spec, "maml", init_params(spec, "maml"), options={"speed": 3})


def test_every_registered_entry_passes_its_class_the_options_it_declares():
    """Built-in variants (jit_compile, conv) are declared by their classes; imports every
    framework, so it also proves each entry's target exists."""
    for entry in registry.entries().values():
        cls = registry.load_adapter_class(entry)
        assert cls.option_problems(entry.options) == [], entry.name
        assert set(entry.algorithms) <= set(cls.algorithms), entry.name


def test_a_default_can_depend_on_the_device():
    """TF's MAML default is its XLA variant on a CPU, where it measured fastest, and graph
    mode on a GPU (not measured there); ProtoNet's graph mode everywhere. Parity and a run
    pick their adapters the same way."""
    from bench.check.parity import _adapter_name, _targets
    from bench.run.runner import plan_cells

    def chosen(algorithm, device):
        return {e.name for e in registry.select(frameworks=["tensorflow"], algorithms=[algorithm], device=device)}

    assert chosen("maml", "cpu") == {"tensorflow-maml-xla"} and chosen("maml", "cuda") == {"tensorflow-maml"}
    assert chosen("protonet", "cpu") == chosen("protonet", "cuda") == {"tensorflow-protonet"}
    assert _adapter_name("tensorflow", "fomaml", "cpu") == "tensorflow-maml-xla"
    assert [t[1] for t in _targets(["tensorflow"], None, ["maml"], "cuda")] == ["tensorflow-maml"]
    cells = plan_cells(profile="smoke", frameworks=["tensorflow"], algorithms=["maml"], specs=["sinusoid-10shot"],
                       adapters=None, device="cpu", threads=1, data_dir=None, cache_dir=None)
    assert [c.adapter for c in cells] == ["tensorflow-maml-xla"]
    # named adapters run on any device, defaults or not
    assert [e.name for e in registry.select(names=["tensorflow-maml"], device="cpu")] == ["tensorflow-maml"]


def test_an_adapter_name_can_carry_options():
    """``torch-maml@compile=true``: a registered entry with options from the command line,
    values as TOML reads them; a variant, never a default; its full name names its cells."""
    from bench.core.errors import AdapterError

    e = registry.get("torch-maml@compile=true")
    base = registry.get("torch-maml")
    assert (e.name, e.options, e.default, e.target) == ("torch-maml@compile=true", {"compile": True}, False,
                                                        base.target)
    assert registry.get("tensorflow-maml@jit_compile=true@task_batching=map_fn").options == {
        "jit_compile": True, "task_batching": "map_fn"}
    with pytest.raises(AdapterError, match="'compile' must be option=value"):
        registry.get("torch-maml@compile")
    with pytest.raises(AdapterError, match="unknown adapter 'torch-mamll'"):
        registry.get("torch-mamll@compile=true")
    assert [e.name for e in registry.select(names=["torch-maml@compile=true", "jax-maml"])] == [
        "jax-maml", "torch-maml@compile=true"]
