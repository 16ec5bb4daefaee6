"""What a fourth framework (MLX) met as a plugin, each fixed and held here:

1. a plugin whose framework import breaks leaves ``metabench list`` and ``check`` of every
   other adapter working, with one warning line naming it (and the skeleton keeps ENTRIES
   where no framework is imported: tests/test_scaffold.py);
2. the registry is read once per process, frozen, and a command's subprocesses receive it:
   a plugin installed while parity runs changes nothing in it;
3. ``metabench check``'s quick parity (and a skeleton's generated suite) compares the MAML
   family on Conv-4 (BatchNorm, max-pool, second order), not only on the sinusoid;
4. the contract checks that float64 computes at float64 precision, not only its dtype;
5. ``AdapterInfo.compilation`` is a vocabulary, and the report asks it whether a mode compiles;
8. ``metabench run --help`` says what each profile runs, from the profiles themselves.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.check import contract as check
from bench.check import parity
from bench.cli.main import build_parser, main
from bench.core import registry
from bench.core.adapter import COMPILATION, AdapterInfo, compilation_mode
from bench.core.profiles import PHASE_GROUPS, PROFILES
from bench.core.registry import AdapterEntry
from bench.core.spec import load_spec
from bench.report import tables
from tests.conftest import REPO

BROKEN_FRAMEWORK = "metabench_test_no_such_framework"


def install(site: Path, dist: str, modules: dict[str, str], entry_point: str) -> Path:
    """A plugin as pip installs it: its modules and a dist-info naming ``entry_point``."""
    site.mkdir(parents=True, exist_ok=True)
    for rel, text in modules.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(textwrap.dedent(text))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[metabench.adapters]\n{entry_point}\n")
    importlib.invalidate_caches()
    return site


# ENTRIES in the module that imports the framework: the layout the scaffold used to write
OLD_LAYOUT = {"metabench_oldlayout.py": f'''
    import {BROKEN_FRAMEWORK}  # the framework, broken
    from bench.core.registry import AdapterEntry
    ENTRIES = [AdapterEntry("oldlayout-protonet", "brokenfw", ("protonet",), "metabench_oldlayout:Adapter")]
'''}
# the layout the scaffold writes now: ENTRIES apart, the framework imported by the adapter's module only
NEW_LAYOUT = {
    "metabench_newlayout/__init__.py": '"""imports nothing"""\n',
    "metabench_newlayout/entries.py": '''
        from bench.core.registry import AdapterEntry
        ENTRIES = [AdapterEntry("newlayout-protonet", "brokenfw", ("protonet",),
                                "metabench_newlayout.protonet:Adapter")]
    ''',
    "metabench_newlayout/protonet.py": f"import {BROKEN_FRAMEWORK}\n",
}


@pytest.fixture(scope="module")
def broken_env(tmp_path_factory, data_env) -> dict[str, str]:
    """Both plugins installed, their framework missing."""
    site = tmp_path_factory.mktemp("broken-site")
    install(site, "metabench-oldlayout", OLD_LAYOUT, "oldlayout = metabench_oldlayout:ENTRIES")
    install(site, "metabench-newlayout", NEW_LAYOUT, "newlayout = metabench_newlayout.entries:ENTRIES")
    return {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}{os.pathsep}{site}"}


def metabench(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


WARNING = (f"metabench: warning: plugin metabench-oldlayout (entry point oldlayout = metabench_oldlayout:ENTRIES) "
           f"did not load, its adapters are left out: ModuleNotFoundError: No module named '{BROKEN_FRAMEWORK}'")


# -- 1. a broken plugin is a warning, not a traceback ---------------------------------------

def test_list_works_and_names_the_broken_plugin_in_one_line(broken_env):
    r = metabench(broken_env, "list")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines() == [WARNING], r.stderr
    assert re.search(r"^  torch-protonet ", r.stdout, re.M)
    # ENTRIES apart from the framework: the adapter is listed although its framework is broken
    assert re.search(r"^  newlayout-protonet +protonet", r.stdout, re.M)
    assert "oldlayout-protonet" not in r.stdout


def test_check_of_another_adapter_works_beside_a_broken_plugin(broken_env):
    r = metabench(broken_env, "check", "torch-protonet", "--no-parity")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "torch-protonet: passes the contract" in r.stdout
    assert "Traceback" not in r.stderr and WARNING in r.stderr


@pytest.mark.parametrize("name,says", [
    ("oldlayout-protonet", "unknown adapter 'oldlayout-protonet'; known: torch-maml"),
    ("newlayout-protonet", f"its process failed (exit 1: ModuleNotFoundError: No module named '{BROKEN_FRAMEWORK}')"),
])
def test_checking_the_broken_adapter_is_one_line(broken_env, name, says):
    r = metabench(broken_env, "check", name, "--no-parity")
    errors = [line for line in r.stderr.splitlines() if line.startswith("metabench: error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(errors) == 1 and says in errors[0], r.stderr
    if name == "oldlayout-protonet":  # the unknown name's error says why the plugin is missing
        assert "plugin metabench-oldlayout" in errors[0]


class FakeEntryPoint:
    """What ``importlib.metadata.entry_points`` yields, loading to ``loaded`` (or raising it)."""

    def __init__(self, name: str, loaded, dist: str | None = None):
        self.name, self.value, self._loaded = name, f"{name}_module:ENTRIES", loaded
        self.dist = type("Dist", (), {"name": dist or f"metabench-{name}"})()

    def load(self):
        if isinstance(self._loaded, BaseException):
            raise self._loaded
        return self._loaded


@pytest.fixture
def fake_plugins(monkeypatch):
    """Set the entry points the registry sees (``set(list)``), each time read afresh; the
    real snapshot comes back after the test."""
    current: list = []
    monkeypatch.setattr(registry, "entry_points", lambda group: list(current))
    monkeypatch.delenv(registry.ENTRIES_ENV, raising=False)

    def set_(points):
        current[:] = points
        return registry.refresh()
    yield set_
    monkeypatch.undo()
    registry.refresh()


GOOD = AdapterEntry("good-protonet", "good", ("protonet",), "good_module:Good", options={"x": 1}, default=("cpu",))


def test_a_plugin_that_does_not_load_is_left_out_with_one_line(fake_plugins, capsys):
    snap = fake_plugins([FakeEntryPoint("broken", ImportError("No module named 'mlx'\nsecond line")),
                         FakeEntryPoint("wrong", ["not an entry"]),
                         FakeEntryPoint("twice", [AdapterEntry("torch-maml", "x", ("maml",), "x:Y")]),
                         FakeEntryPoint("good", [GOOD])])
    assert "good-protonet" in snap.table and registry.entries()["torch-maml"].framework == "torch"
    problems = registry.plugin_problems()
    assert len(problems) == 3 and all("\n" not in p for p in problems)
    assert problems[0].startswith("plugin metabench-broken (entry point broken = broken_module:ENTRIES) did not "
                                  "load, its adapters are left out: ImportError: No module named 'mlx'")
    assert "gave str, expected bench.core.registry.AdapterEntry" in problems[1]
    assert "adapter name torch-maml is registered twice" in problems[2]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"metabench: warning: {p}" for p in problems]


# -- 2. one snapshot per process, handed to its subprocesses --------------------------------

def test_the_registry_is_a_frozen_snapshot_until_refreshed(fake_plugins):
    fake_plugins([])
    first = registry.entries()
    with pytest.raises(TypeError):
        first["good-protonet"] = GOOD  # read-only
    registry.entry_points = lambda group: [FakeEntryPoint("good", [GOOD])]  # installed meanwhile
    assert registry.entries() is first and "good-protonet" not in first
    assert "good-protonet" in registry.refresh().table


def test_subprocesses_see_the_parents_adapters_not_what_is_installed_since(fake_plugins, tmp_path):
    """A child started with ``child_env`` has the parent's plugins (entries carried whole,
    options and defaults included) and never reads the entry points: a plugin installed
    after the parent started, broken here, is neither listed nor warned about."""
    fake_plugins([FakeEntryPoint("good", [GOOD])])
    site = install(tmp_path / "site", "metabench-oldlayout", OLD_LAYOUT, "oldlayout = metabench_oldlayout:ENTRIES")
    env = {**os.environ, **registry.child_env(), "PYTHONPATH": f"{REPO}{os.pathsep}{site}"}
    code = ("import json; from bench.core import registry; t = registry.entries(); "
            "print(json.dumps([list(t), registry.entry_to_json(t['good-protonet'])]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    names, good = json.loads(r.stdout)
    assert names == list(registry.entries()) and "oldlayout-protonet" not in names
    assert registry.entry_from_json(good) == GOOD
    # the same child without the parent's snapshot finds the broken plugin, and only warns
    bare = {k: v for k, v in env.items() if k != registry.ENTRIES_ENV}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=bare, timeout=120)
    assert "plugin metabench-oldlayout" in r.stderr and "did not load" in r.stderr


def test_a_plugin_installed_while_parity_runs_changes_nothing_in_it(tmp_path, monkeypatch, data_dir, cache_dir):
    """The incident: a plugin (its framework not yet installed) installed while ``metabench
    parity`` ran; the parity ended in ModuleNotFoundError. Here it is installed while the
    compared adapter's process runs, where that process and this one can both see it."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{site}")  # the subprocesses see the folder too
    monkeypatch.delenv(registry.ENTRIES_ENV, raising=False)
    registry.refresh()
    real = parity._run_framework

    def install_meanwhile(framework, requests, device, workdir):
        if framework != parity.REFERENCE:
            install(site, "metabench-oldlayout", OLD_LAYOUT, "oldlayout = metabench_oldlayout:ENTRIES")
        return real(framework, requests, device, workdir)

    monkeypatch.setattr(parity, "_run_framework", install_meanwhile)
    out = tmp_path / "parity.csv"
    try:
        failed = parity.run_parity(specs=["sinusoid-10shot"], algorithms=["maml"],
                                   adapters=["torch-maml@compile=false"], data_dir=str(data_dir),
                                   cache_dir=str(cache_dir), batch_size=parity.QUICK_TASKS,
                                   quick=True, out=out, echo=lambda line: None)
        assert failed == 0 and bool(pd.read_csv(out)["ok"].all())
        assert list(site.glob("metabench_oldlayout*")), "the plugin was installed meanwhile"
        assert "oldlayout-protonet" not in registry.entries() and not registry.plugin_problems()
    finally:
        monkeypatch.undo()
        registry.refresh()


# -- 3. check's quick parity compares Conv-4 ------------------------------------------------

def test_check_compares_the_maml_family_on_conv4_second_order():
    specs = parity.check_specs(["maml", "fomaml"])
    assert specs == ["sinusoid-10shot", "omniglot-5w1s"] and parity.check_specs(["protonet"]) == ["omniglot-5w1s"]
    conv4 = parity.quick_spec(load_spec("omniglot-5w1s").for_algorithm("maml"))
    assert conv4.model.hidden == parity.QUICK_HIDDEN == 16 and conv4.data.dataset == "omniglot"
    assert conv4.maml.first_order is False and conv4.model.batch_norm  # BatchNorm, differentiated twice


def test_metabench_check_runs_quick_parity_on_those_specs(monkeypatch, capsys):
    """What ``metabench check`` hands to parity (the contract and parity stubbed)."""
    asked = {}
    monkeypatch.setattr(check, "check_many_in_subprocess", lambda names, *a, **k: {
        n: [check.Result("c", "case", True)] for n in names})
    monkeypatch.setattr(parity, "run_parity", lambda **kw: asked.update(kw) or 0)
    main(["check", "torch-maml@compile=false", "torch-protonet@dtype=float32"])
    assert asked["specs"] == ["sinusoid-10shot", "omniglot-5w1s"]
    assert set(asked["algorithms"]) == {"maml", "fomaml", "protonet"}
    assert asked["quick"] is True and asked["batch_size"] == parity.QUICK_TASKS


@pytest.mark.slow
def test_the_generated_maml_suite_compares_conv4_and_passes_for_correct_maths(tmp_path, data_env):
    """A skeleton whose maths is written (torch's own MAML here) passes its generated quick
    parity test, which compares MAML and FOMAML on Omniglot's Conv-4 too."""
    from bench.cli import scaffold

    root = scaffold.new_adapter("mytorch-maml", "torch", "maml", tmp_path)
    package = scaffold.package_name("mytorch-maml")
    module = root / package / f"{scaffold.adapter_module('mytorch-maml', 'torch')}.py"
    assert "placeholder = True" in module.read_text()
    module.write_text("from implementations.torch.maml import TorchMAML as MytorchMaml\n")
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(site), str(root)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}{os.pathsep}{site}"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                        "tests/test_mytorch_maml.py::test_quick_parity_as_metabench_check"],
                       cwd=root, capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]
    for algorithm in ("maml", "fomaml"):
        assert re.search(rf"mytorch-maml \| omniglot-5w1s +\| {algorithm} ", r.stdout), r.stdout[-4000:]
    assert "all 4 comparisons within" in r.stdout


# -- 4. float64 computes at float64 precision -----------------------------------------------

class _Toy:
    """An 'adapter' of one smooth function, optionally rounding an intermediate through float32."""

    def __init__(self, rounds: bool):
        self.rounds = rounds

    def set_params(self, params):
        self.w = params["w"]

    def to_device(self, batch):
        return batch

    def probe(self, batch):
        x = batch.support_x.reshape(-1, 16)
        z = x @ self.w
        if self.rounds:  # e.g. an exp computed at float32 accuracy on a float64 array
            z = z.astype(np.float32).astype(np.float64)
        e = np.exp(np.tanh(z))
        return {"support_loss": e.mean(axis=1), "query_logits": e[:, None, :], "meta_grad/w": x.T @ e}


def _toy_batch():
    from bench.core.episodes import EpisodeBatch
    from bench.core.spec import EpisodeShape

    rng = np.random.default_rng(0)
    x = rng.random((2, 6, 4, 4, 1))
    return EpisodeBatch(x, np.zeros((2, 6), int), x, np.zeros((2, 6), int), np.zeros((2, 1)), EpisodeShape(3, 2, 2))


def test_float64_precision_tells_float64_from_float32_rounding():
    params = {"w": np.random.default_rng(1).standard_normal((16, 8))}
    smooth, _ = check.float64_precision(_Toy(rounds=False), params, _toy_batch())
    rounded, where = check.float64_precision(_Toy(rounds=True), params, _toy_batch())
    assert smooth < 1e-13 < check.F64_SMOOTH < 1e-9 < rounded, (smooth, rounded)


def _float64_check(cls, spec_name: str, algorithm: str):
    from bench.core.algorithms import get as get_algorithm

    spec = next(s for s in check.small_specs(algorithm) if spec_name in s.name)
    checks = dict(check.contract_checks(cls, {}, spec, algorithm))
    assert get_algorithm(algorithm)
    return checks


def test_the_contract_fails_an_adapter_that_computes_float64_at_float32_precision(monkeypatch):
    """A torch ProtoNet whose convolutions round through float32 (as MLX's conv2d did on
    float64 arrays): float64 outputs, dtype and all, but float32's precision."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from implementations.torch.protonet import TorchProtoNet

    conv = F.conv2d

    def float32_conv(x, w, b=None, *args, **kwargs):
        b = None if b is None else b.float()
        return conv(x.float(), w.float(), b, *args, **kwargs).to(x.dtype)

    checks = _float64_check(TorchProtoNet, "images", "protonet")
    name = "the float64 diagnostic builds and computes at float64 precision"
    checks[name]()  # the real one passes
    monkeypatch.setattr(torch.nn.functional, "conv2d", float32_conv)
    with pytest.raises(check.CheckFailed) as failed:
        checks[name]()
    said = str(failed.value)
    assert "\n" not in said and said.startswith("float64 outputs agree with float64 only to ")
    assert "the framework computes at float32 precision" in said
    error = float(said.split("only to ")[1].split()[0])
    assert 1e-9 < error < 1e-3


# -- 5. compilation: a vocabulary -----------------------------------------------------------

def test_compilation_is_a_vocabulary_that_the_contract_enforces():
    pytest.importorskip("torch")
    from implementations.torch.protonet import TorchProtoNet

    assert set(COMPILATION) == {"eager", "lazy", "jit", "graph", "xla", "torch.compile"}
    assert {m for m, c in COMPILATION.items() if c.compiled} == {"jit", "graph", "xla", "torch.compile"}

    class FreeText(TorchProtoNet):
        def describe(self):
            info = super().describe()
            return AdapterInfo(**{**info.as_dict(), "compilation": "eager (lazy graph, mx.eval per step)"})

    checks = _float64_check(FreeText, "images", "protonet")
    name = "describe: an AdapterInfo, compilation one of bench.core.adapter.COMPILATION"
    with pytest.raises(check.CheckFailed) as failed:
        checks[name]()
    assert str(failed.value) == ("describe(): compilation 'eager (lazy graph, mx.eval per step)' is not one of eager, "
                                 "lazy, jit, graph, xla, torch.compile: name the mode there and say the rest in "
                                 "compilation_detail")
    dict(check.contract_checks(TorchProtoNet, {}, check.small_specs("protonet")[0], "protonet"))[name]()


def _steps(compilation: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A steps and a timings table of one phase, one row per adapter."""
    base = {"spec": "omniglot-5w1s", "algorithm": "maml", "phase": "outer_step"}
    median = {c: 0.05 if c == "jit" else 0.1 for c in compilation.values()}  # jit: faster, after its compile
    steps = pd.DataFrame([{**base, "framework": a.split("-")[0], "adapter": a, "compilation": c, "median": median[c],
                           "first_step_seconds": 1.0 if c == "jit" else 0.2} for a, c in compilation.items()])
    timings = pd.DataFrame([{**base, "adapter": a, "process": 0, "seconds": median[c] * f}
                            for a, c in compilation.items() for f in (0.9, 1.0, 1.1)])
    return steps, timings


def test_the_report_asks_the_vocabulary_whether_a_mode_compiles():
    """Free text from before the vocabulary maps to its mode: MLX's 'eager (...)' is eager,
    never 'compiled' (no 'repaid after 1 steps'), and its column is headed '(eager)'."""
    steps, timings = _steps({"torch-maml": "eager", "jax-maml": "jit",
                             "mlx-maml": "eager (lazy graph, mx.eval per step)", "mlx2-maml": "lazy"})
    cmp = tables.comparison(steps, timings).set_index("adapter")
    # repaid against the fastest adapter that compiles nothing: 1 + (1.0 - 0.2) / (0.1 - 0.05) steps
    assert cmp.loc["jax-maml", "break_even_steps"] == 1 + 16
    for a in ("torch-maml", "mlx-maml", "mlx2-maml"):
        assert np.isnan(cmp.loc[a, "break_even_steps"]), a
    headers = list(tables.step_time_pivot(cmp.reset_index()).columns)
    assert "mlx (eager)" in headers and "jax (jit)" in headers and not any("mx.eval" in h for h in headers)
    assert compilation_mode("xla").compiled and compilation_mode("made up") is None
    assert tables.compilation_name("eager (lazy graph, mx.eval per step)") == "eager"
    assert tables.compilation_name("numpy") == "numpy"  # the harness's sampling rows: kept as recorded


# -- 8. run --help says what each profile does ----------------------------------------------

def _help(command: str, flag: str) -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return " ".join(next(a for a in sub._actions if flag in a.option_strings).help.split())


def test_run_help_describes_smoke_as_the_profile_runs_it():
    from bench.run.runner import DEFAULT_PHASES, default_algorithms

    said = _help("run", "--phases")
    assert "leaves out parity" not in said
    for name, profile in PROFILES.items():
        clause = re.search(rf"\b{name}: ([^;)]*)", said)[1]
        runs = clause.split(",")[0] if clause.startswith("all four") else None
        phases = PHASE_GROUPS if runs == "all four" else tuple(clause.split(", ")[0].split(","))
        assert phases == DEFAULT_PHASES[name] == profile.phases, (name, clause)
        assert ("parity quick" in clause) == profile.quick_parity, (name, clause)
        assert ("parity full" in clause) == ("parity" in profile.phases and not profile.quick_parity), clause
    smoke = re.search(r"\bsmoke: ([^;]*)", said)[1]
    assert f"{parity.QUICK_HIDDEN} filters or units, {parity.QUICK_TASKS} tasks" in smoke
    algorithms = re.search(r"smoke: ([a-z,]+)", _help("run", "--algorithms"))[1]
    assert tuple(algorithms.split(",")) == default_algorithms("smoke")
