"""``metabench new-adapter``: the skeleton it writes installs offline with pip, registers
through its entry point, passes every contract check as it stands (placeholder maths), and
its generated suite runs; bad input is refused in one line with exit 2, writing nothing."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
# (name, framework, algorithm): a framework metabench does not know, ProtoNet and MAML
CASES = [("numpylib-protonet", "numpylib", "protonet"), ("numpylib-maml", "numpylib", "maml")]
MATHS = {"protonet": ("outer_step", "adapt", "predict", "probe"),
         "maml": ("inner_step", "outer_step", "adapt", "predict", "probe")}


def module_name(name: str) -> str:
    return "metabench_" + name.replace("-", "_")


def metabench(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Both skeletons written by the CLI, installed by pip (offline, no build isolation)
    into a folder that goes on PYTHONPATH: (folder, environment, what the CLI printed)."""
    tmp = tmp_path_factory.mktemp("scaffold")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    printed = {}
    for name, framework, algorithm in CASES:
        r = metabench("new-adapter", name, "--framework", framework, "--algorithm", algorithm,
                      "--dir", str(tmp), env=env)
        assert r.returncode == 0, r.stderr
        printed[name] = r.stdout
    site = tmp / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(site),
                          *(str(tmp / f"metabench-{name}") for name, _, _ in CASES)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return tmp, {**env, "PYTHONPATH": f"{REPO}{os.pathsep}{site}"}, printed


@pytest.mark.parametrize("name,framework,algorithm", CASES)
def test_the_skeleton_is_a_package_with_placeholder_maths_marked(generated, name, framework, algorithm):
    tmp, _, printed = generated
    root, module = tmp / f"metabench-{name}", module_name(name)
    pyproject = (root / "pyproject.toml").read_text()
    assert f'name = "metabench-{name}"' in pyproject and 'build-backend = "setuptools.build_meta"' in pyproject
    assert f'[project.entry-points."metabench.adapters"]\n{name} = "{module}:ENTRIES"' in pyproject
    source = (root / f"{module}.py").read_text()
    assert len(source.splitlines()) < 150
    assert f'framework = "{framework}"' in source and "placeholder = True" in source
    served = '("maml", "fomaml")' if algorithm == "maml" else f'("{algorithm}",)'
    assert f"algorithms = {served}" in source
    # every maths method says what the real one computes, right where it is defined
    for method in MATHS[algorithm]:
        assert re.search(rf"def {method}\(self, batch\):\n        # TODO\(maths\): \S", source), method
    assert "TorchAdapter" not in source  # a framework metabench does not know: no base class to suggest
    test = (root / "tests" / f"test_{module}.py").read_text()
    assert "check.run_contract(NAME)" in test and "parity.run_parity(adapters=[NAME]" in test
    # the next steps, each a command that runs as printed
    steps = [line.strip() for line in printed[name].splitlines() if line.startswith("  ")]
    assert steps[0] == f"pip install -e {root}"
    commands = [shlex.split(re.sub(r"\s+#.*", "", s)) for s in steps[1:]]
    assert [c[:2] for c in commands] == [["metabench", "check"], ["metabench", "parity"], ["metabench", "run"]]
    assert all(name in c for c in commands)
    for c in commands:
        build_parser().parse_args(c[1:])


def test_a_builtin_framework_is_told_its_base_class(tmp_path, capsys):
    assert main(["new-adapter", "mytorch-maml", "--framework", "torch", "--algorithm", "fomaml",
                 "--dir", str(tmp_path)]) == 0
    source = (tmp_path / "metabench-mytorch-maml" / "metabench_mytorch_maml.py").read_text()
    assert "subclass implementations.torch.common.TorchAdapter instead of" in source


def test_metabench_list_shows_the_installed_adapters(generated):
    _, env, _ = generated
    r = metabench("list", env=env)
    assert r.returncode == 0, r.stderr
    for name, _, algorithm in CASES:
        assert re.search(rf"^  {name} +{algorithm}", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_metabench_check_passes_every_contract_check(generated, name):
    _, env, _ = generated
    r = metabench("check", name, "--no-parity", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    n = re.fullmatch(rf"{name}: (\d+) of (\d+) contract checks pass", first)
    assert n and n[1] == n[2] and int(n[1]) >= 7, first
    assert "FAIL" not in r.stdout


def test_the_generated_suite_runs_its_contract_test(generated):
    """The package's own tests: the contract passes; the parity test is marked, so
    ``-m "not parity"`` leaves it out (it fails until the maths is written)."""
    tmp, env, _ = generated
    name = CASES[0][0]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not parity",
                        "tests"], cwd=tmp / f"metabench-{name}", capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "1 passed, 1 deselected" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_the_placeholder_adam_is_torchs_adam(generated):
    """The skeleton's numpy Adam (kept until the framework's replaces it) is the harness's
    meta-optimizer: torch.optim.Adam with StepLR, to float64 rounding, over a halving."""
    torch = pytest.importorskip("torch")
    from bench.algorithms import MetaOptimizer
    from bench.models import init_params
    from bench.spec import load_spec
    from implementations.torch.common import make_adam

    tmp, _, _ = generated
    module = module_name(CASES[1][0])
    found = importlib.util.spec_from_file_location(module, tmp / "site" / f"{module}.py")
    mod = importlib.util.module_from_spec(found)
    found.loader.exec_module(mod)
    cls = getattr(mod, mod.ENTRIES[0].target.split(":")[1])
    spec = load_spec("sinusoid-10shot")
    init = init_params(spec, "maml")
    adapter = cls(spec, "maml", init, options={"dtype": "float64"})
    meta = MetaOptimizer(0.01, halve_every=2)
    adapter.meta_optimizer = meta
    params = {k: torch.tensor(v, dtype=torch.float64) for k, v in init.items()}
    opt, sched = make_adam(params, meta)
    rng = np.random.default_rng(0)
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape) for k, v in init.items()}
        adapter._adam_step(grads)
        for k, p in params.items():
            p.grad = torch.from_numpy(grads[k])
        opt.step()
        sched.step()
    for k, p in params.items():
        np.testing.assert_allclose(adapter.get_params()[k], p.numpy(), rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("args,says", [
    (["Bad_Name", "--framework", "mylib", "--algorithm", "maml"], "name 'Bad_Name' must be lowercase"),
    (["mylib-", "--framework", "mylib", "--algorithm", "maml"], "name 'mylib-' must be lowercase"),
    (["mylib-leo", "--framework", "mylib", "--algorithm", "leo"], "unknown algorithm 'leo'"),
    (["mylib-maml", "--framework", "", "--algorithm", "maml"], "--framework '' must be a non-empty word"),
    (["torch-maml", "--framework", "torch", "--algorithm", "maml"], "torch-maml is already registered"),
])
def test_bad_input_is_refused_in_one_line_writing_nothing(tmp_path, capsys, args, says):
    assert main(["new-adapter", *args, "--dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and says in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_reptile_skeleton_says_what_its_outer_step_computes():
    from bench.scaffold import next_steps, render

    module = render("mylib-reptile", "mylib", "reptile")["metabench_mylib_reptile.py"]
    assert 'algorithms = ("reptile",)' in module and "def inner_step" in module
    assert "nothing differentiated through them (phi_i); the pseudo-gradient g =" in module
    assert any("--specs sinusoid-10shot" in step for step in next_steps(Path("x"), "mylib-reptile", "reptile"))


def test_an_existing_package_folder_is_left_alone(tmp_path, capsys):
    args = ["new-adapter", "mylib-protonet", "--framework", "mylib", "--algorithm", "protonet",
            "--dir", str(tmp_path)]
    assert main(args) == 0
    module = tmp_path / "metabench-mylib-protonet" / "metabench_mylib_protonet.py"
    module.write_text("# my work so far\n")
    capsys.readouterr()
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "already exists" in err, err
    assert module.read_text() == "# my work so far\n"
