"""``metabench new-adapter``: the package it writes installs offline with pip, registers
through its entry point (ENTRIES in a module that imports no framework), takes a second
adapter of the same framework with ``--into`` (one shared backend), passes every contract
check as it stands (placeholder maths), reports the framework's own version, and its
generated suite runs; bad input is refused in one line with exit 2, writing nothing."""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.cli import scaffold
from bench.cli.main import build_parser, main
from bench.core.models import init_params

REPO = Path(__file__).resolve().parent.parent
# (name, framework, algorithm): a framework metabench does not know, ProtoNet, then MAML added
# to the same package with --into (one backend for both)
CASES = [("numpylib-protonet", "numpylib", "protonet"), ("numpylib-maml", "numpylib", "maml")]
PACKAGE = "metabench_numpylib_protonet"
MODULES = {"numpylib-protonet": "protonet", "numpylib-maml": "maml"}
MATHS = {"protonet": ("outer_step", "adapt", "predict", "probe"),
         "maml": ("inner_step", "outer_step", "adapt", "predict", "probe")}


def metabench(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A package written by the CLI for ProtoNet, MAML added to it with --into, installed by
    pip (offline, no build isolation) into a folder that goes on PYTHONPATH: (the package
    folder, environment, what the CLI printed for each adapter)."""
    tmp = tmp_path_factory.mktemp("scaffold")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    root = tmp / "metabench-numpylib-protonet"
    printed = {}
    (name, framework, algorithm), (name2, framework2, algorithm2) = CASES
    r = metabench("new-adapter", name, "--framework", framework, "--algorithm", algorithm, "--dir", str(tmp), env=env)
    assert r.returncode == 0, r.stderr
    printed[name] = r.stdout
    r = metabench("new-adapter", name2, "--framework", framework2, "--algorithm", algorithm2, "--into", str(root),
                  env=env)
    assert r.returncode == 0, r.stderr
    printed[name2] = r.stdout
    site = tmp / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(site), str(root)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return root, {**env, "PYTHONPATH": f"{REPO}{os.pathsep}{site}"}, printed


def imports(source: str) -> set[str]:
    """The modules a source file imports (top level and inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module)
    return out


def test_the_package_keeps_its_entries_apart_from_the_framework(generated):
    """ENTRIES lives in entries.py, which imports nothing but the registry (nor does the
    package's __init__): listing the adapters imports no framework and no adapter module."""
    root, env, _ = generated
    pyproject = (root / "pyproject.toml").read_text()
    assert ('[project.entry-points."metabench.adapters"]\n'
            f'metabench-numpylib-protonet = "{PACKAGE}.entries:ENTRIES"') in pyproject
    assert 'name = "metabench-numpylib-protonet"' in pyproject and f'packages = ["{PACKAGE}"]' in pyproject
    assert imports((root / PACKAGE / "__init__.py").read_text()) == set()
    assert imports((root / PACKAGE / "entries.py").read_text()) == {"bench.core.registry"}
    listed = subprocess.run([sys.executable, "-c", f"import sys, {PACKAGE}.entries as e; "
                             "print([x.target for x in e.ENTRIES]); print(sorted(m for m in sys.modules "
                             f"if m.startswith('{PACKAGE}')))"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    targets, loaded = listed.stdout.splitlines()
    assert targets == str([f"{PACKAGE}.protonet:NumpylibProtonet", f"{PACKAGE}.maml:NumpylibMaml"])
    assert loaded == str([PACKAGE, f"{PACKAGE}.entries"])  # neither backend nor an adapter's module


@pytest.mark.parametrize("name,framework,algorithm", CASES)
def test_the_skeleton_is_a_package_with_placeholder_maths_marked(generated, name, framework, algorithm):
    root, _, printed = generated
    backend = (root / PACKAGE / "backend.py").read_text()
    assert f'framework = "{framework}"' in backend and "class NumpylibAdapter(Adapter):" in backend
    assert "TODO(backend)" in backend and "TorchAdapter" not in backend  # no base class to suggest
    source = (root / PACKAGE / f"{MODULES[name]}.py").read_text()
    assert len(source.splitlines()) < 100
    assert f"from {PACKAGE}.backend import NumpylibAdapter" in source and "(NumpylibAdapter):" in source
    assert "placeholder = True" in source
    served = '("maml", "fomaml")' if algorithm == "maml" else f'("{algorithm}",)'
    assert f"algorithms = {served}" in source
    # every maths method says what the real one computes, right where it is defined
    for method in MATHS[algorithm]:
        assert re.search(rf"def {method}\(self, batch\):\n        # TODO\(maths\): \S", source), method
    test = (root / "tests" / f"test_{name.replace('-', '_')}.py").read_text()
    assert "check.run_contract(NAME)" in test and "parity.run_parity(adapters=[NAME]" in test
    # the next steps, each a command that runs as printed
    steps = [line.strip() for line in printed[name].splitlines() if line.startswith("  ")]
    assert re.sub(r"\s+#.*", "", steps[0]) == f"pip install -e {root}"
    commands = [shlex.split(re.sub(r"\s+#.*", "", s)) for s in steps[1:]]
    assert [c[:2] for c in commands] == [["metabench", "check"], ["metabench", "parity"], ["metabench", "run"]]
    assert all(name in c for c in commands)
    for c in commands:
        build_parser().parse_args(c[1:])


def test_a_second_adapter_shares_the_packages_backend(generated):
    """--into wrote a module and a test for MAML and added its line to ENTRIES; both classes
    subclass the one backend class."""
    root, env, printed = generated
    assert sorted(p.name for p in (root / PACKAGE).glob("*.py")) == [
        "__init__.py", "backend.py", "entries.py", "maml.py", "protonet.py"]
    assert sorted(p.name for p in (root / "tests").glob("*.py")) == ["test_numpylib_maml.py",
                                                                     "test_numpylib_protonet.py"]
    assert "added numpylib-maml to" in printed["numpylib-maml"]
    code = (f"from {PACKAGE}.backend import NumpylibAdapter; from {PACKAGE}.maml import NumpylibMaml; "
            f"from {PACKAGE}.protonet import NumpylibProtonet; "
            "print(NumpylibMaml.__bases__ == NumpylibProtonet.__bases__ == (NumpylibAdapter,))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == "True", r.stderr


def test_into_refuses_another_framework_and_foreign_folders_writing_nothing(tmp_path, capsys):
    assert main(["new-adapter", "mylib-protonet", "--framework", "mylib", "--algorithm", "protonet",
                 "--dir", str(tmp_path)]) == 0
    root = tmp_path / "metabench-mylib-protonet"
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    capsys.readouterr()
    cases = [(["otherlib-maml", "--framework", "otherlib", "--algorithm", "maml", "--into", str(root)],
              "holds mylib adapters (its backend.py), not otherlib"),
             (["mylib-protonet2", "--framework", "mylib", "--algorithm", "protonet", "--into", str(tmp_path)],
              "no readable pyproject.toml"),
             (["mylib-protonet", "--algorithm", "protonet", "--into", str(root)], "already"),
             (["mylib-maml", "--algorithm", "maml"], "--framework is required")]
    for args, says in cases:
        assert main(["new-adapter", *args]) == 2, args
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and says in err, (args, err)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    # --framework may be left out with --into: the package's backend names it
    assert main(["new-adapter", "mylib-anil", "--algorithm", "anil", "--into", str(root)]) == 0
    assert '"mylib-anil", "mylib", ("anil",)' in (root / "metabench_mylib_protonet" / "entries.py").read_text()


def _load(root: Path, package: str, module: str, monkeypatch):
    """``package.module`` of a generated package folder, imported from its source."""
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module(f"{package}.{module}")


@pytest.mark.parametrize("framework", ["numpylib", "pandas", "numpy"])
def test_describe_reports_the_frameworks_version_never_numpys(tmp_path, framework, monkeypatch):
    """The generated describe() reads the framework's distribution (importlib.metadata), with
    "unknown" while FRAMEWORK_DISTRIBUTION names none installed: numpy's version only for numpy."""
    from importlib import metadata

    from bench.core.spec import load_spec

    name = f"{framework}-protonet"
    root = scaffold.new_adapter(name, framework, "protonet", tmp_path)
    mod = _load(root, scaffold.package_name(name), "protonet", monkeypatch)
    cls = getattr(mod, f"{framework.capitalize()}Protonet")
    spec = load_spec("omniglot-5w1s")
    info = cls(spec, "protonet", init_params(spec, "protonet")).describe()
    assert info.framework == framework and info.compilation_problem() is None
    expected = "unknown" if framework == "numpylib" else metadata.version(framework)
    assert info.framework_version == expected
    assert (info.framework_version == np.__version__) == (framework == "numpy")
    assert "TODO(backend): the distribution that installs" in (root / scaffold.package_name(name) /
                                                               "backend.py").read_text()


def test_a_builtin_framework_is_told_its_base_class(tmp_path, capsys):
    assert main(["new-adapter", "mytorch-maml", "--framework", "torch", "--algorithm", "fomaml",
                 "--dir", str(tmp_path)]) == 0
    source = (tmp_path / "metabench-mytorch-maml" / "metabench_mytorch_maml" / "backend.py").read_text()
    assert "subclass implementations.torch.common.TorchAdapter instead of" in source


def test_metabench_list_shows_the_installed_adapters(generated):
    _, env, _ = generated
    r = metabench("list", env=env)
    assert r.returncode == 0, r.stderr
    for name, _, algorithm in CASES:
        assert re.search(rf"^  {name} +{algorithm}", r.stdout, re.M), r.stdout


def test_metabench_check_passes_every_contract_check(generated):
    _, env, _ = generated
    names = [c[0] for c in CASES]
    r = metabench("check", *names, "--no-parity", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in names:
        first = next(line for line in r.stdout.splitlines() if line.startswith(f"{name}: ") and "contract" in line)
        n = re.fullmatch(rf"{name}: (\d+) of (\d+) contract checks pass", first)
        assert n and n[1] == n[2] and int(n[1]) >= 9, first
    assert "FAIL" not in r.stdout


def test_the_generated_suite_runs_its_contract_test(generated):
    """The package's own tests: the contract passes; the parity tests are marked, so
    ``-m "not parity"`` leaves them out (they fail until the maths is written)."""
    root, env, _ = generated
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not parity",
                        "tests"], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "2 passed, 4 deselected" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_the_placeholder_adam_is_torchs_adam(generated, monkeypatch):
    """The skeleton's numpy Adam (kept until the framework's replaces it) is the harness's
    meta-optimizer: torch.optim.Adam with StepLR, to float64 rounding, over a halving."""
    torch = pytest.importorskip("torch")
    from bench.core.algorithms import MetaOptimizer
    from bench.core.spec import load_spec
    from implementations.torch.common import make_adam

    root, _, _ = generated
    cls = _load(root, PACKAGE, "maml", monkeypatch).NumpylibMaml
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
    from bench.cli.scaffold import next_steps, render

    files = render("mylib-reptile", "mylib", "reptile")
    module = next(text for path, text in files.items() if path.endswith("/reptile.py"))
    assert 'algorithms = ("reptile",)' in module and "def inner_step" in module
    assert "nothing differentiated through them (phi_i); the pseudo-gradient g =" in module
    assert any("--specs sinusoid-10shot" in step for step in next_steps(Path("x"), "mylib-reptile", "reptile"))


def test_an_existing_package_folder_is_left_alone(tmp_path, capsys):
    args = ["new-adapter", "mylib-protonet", "--framework", "mylib", "--algorithm", "protonet",
            "--dir", str(tmp_path)]
    assert main(args) == 0
    module = tmp_path / "metabench-mylib-protonet" / "metabench_mylib_protonet" / "protonet.py"
    module.write_text("# my work so far\n")
    capsys.readouterr()
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "already exists" in err, err
    assert module.read_text() == "# my work so far\n"
