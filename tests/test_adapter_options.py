"""Adapter options are declared by each class and refused when unknown or ill-typed: a
misspelt option would otherwise benchmark the default under the variant's name."""

from __future__ import annotations

import pytest

from bench import registry
from bench.adapter import Adapter, Option
from bench.models import init_params
from bench.spec import load_spec


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
