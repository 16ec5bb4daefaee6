"""``torch-maml-higher`` (implementations/higher): MAML the papers' way with facebookresearch/higher,
registered through the ``metabench.adapters`` entry point like a plugin. The contract suite
checks it with every registered adapter (tests/test_adapter_contract.py); here: that it
computes torch-maml's function (float64), that listing it imports no framework, and that a
missing ``higher`` is one line naming the extra. Needs ``higher`` installed (the ``higher``
extra, in ``all`` and ``all-cpu``): a missing package fails here, it is not skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.check.contract import small_specs, synthetic_batch
from bench.check.parity import TOLERANCE_64, relative_error
from bench.core import registry
from bench.core.algorithms import get as get_algorithm
from bench.core.models import init_params

REPO = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_registered_through_the_entry_point_without_importing_a_framework():
    r = _python("import sys\n"
                "from bench.core import registry\n"
                "entry = registry.get('torch-maml-higher')\n"
                "assert entry not in registry.builtin_entries() and not entry.default, entry\n"
                "assert entry.target == 'implementations.higher.maml:HigherMAML', entry\n"
                "assert entry.algorithms == ('maml', 'fomaml'), entry\n"
                "loaded = {'torch', 'higher'} & set(sys.modules)\n"
                "assert not loaded, loaded\n")
    assert r.returncode == 0, r.stderr[-2000:]
    # default=False: a run that names only frameworks does not plan it
    assert "torch-maml-higher" not in [e.name for e in registry.select(frameworks=["torch"])]


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_computes_torch_mamls_function_in_float64(algorithm):
    """Probe (support loss, adapted query logits, meta-gradient), one outer step's
    parameters and the predictions: torch-maml's numbers at float64 rounding."""
    from implementations.higher.maml import HigherMAML
    from implementations.torch.maml import TorchMAML

    algo = get_algorithm(algorithm)
    for spec in small_specs(algorithm):  # an 8-unit sinusoid MLP and a 16x16 8-filter Conv-4
        spec = algo.resolve(spec)
        init = init_params(spec, algorithm)
        train = synthetic_batch(spec, algo.train_shape(spec), seed=0, tasks=3)
        test = synthetic_batch(spec, spec.episode, seed=1, tasks=3)
        ours, ref = (cls(spec, algorithm, init, options={"dtype": "float64"}) for cls in (HigherMAML, TorchMAML))
        a, b = ours.probe(ours.to_device(train)), ref.probe(ref.to_device(train))
        assert set(a) == set(b)
        for key in b:
            assert relative_error(a[key], b[key]) <= TOLERANCE_64, (spec.name, key, relative_error(a[key], b[key]))
        assert relative_error(ours.predict(ours.to_device(test)), ref.predict(ref.to_device(test))) <= TOLERANCE_64
        for adapter in (ours, ref):
            adapter.outer_step(adapter.to_device(train))
        pa, pb = ours.get_params(), ref.get_params()
        for key in pb:
            assert np.abs(pa[key] - pb[key]).max() <= TOLERANCE_64, (spec.name, key)


def test_fomaml_is_first_order_and_maml_second_order():
    """higher detaches the fast weights when track_higher_grads=False: FOMAML's gradient must
    still reach the parameters (added by hand), and differ from MAML's."""
    from implementations.higher.maml import HigherMAML

    algo = get_algorithm("maml")
    spec = algo.resolve(small_specs("maml")[1])  # the small Conv-4
    init = init_params(spec, "maml")
    batch = synthetic_batch(spec, algo.train_shape(spec), seed=0)
    grads = {}
    for algorithm in ("maml", "fomaml"):
        a = HigherMAML(spec, algorithm, init, options={"dtype": "float64"})
        grads[algorithm] = {k: v for k, v in a.probe(a.to_device(batch)).items() if k.startswith("meta_grad/")}
    assert all(np.abs(g).max() > 0 for g in grads["fomaml"].values())
    assert max(relative_error(grads["fomaml"][k], grads["maml"][k]) for k in grads["maml"]) > 1e-3


def test_without_higher_the_preflight_line_names_the_extra():
    r = _python("import sys, json\n"
                "sys.modules['higher'] = None  # as if not installed\n"
                "from bench.run import preflight\n"
                "print(json.dumps(preflight.probe('torch', 'cpu', {'torch-maml-higher': "
                "{'target': 'implementations.higher.maml:HigherMAML', 'options': {}}})))\n")
    assert r.returncode == 0, r.stderr[-2000:]
    problems = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert "torch-maml-higher" in problems[0] and problems[0].count("pip install 'metabench[higher]'") == 1, problems
    assert "install the package that provides" not in problems[0], problems  # the fix, said once
