"""An algorithm from outside the repository (issue 24): ``fotoy``, a toy first-order MAML
with a settings section of its own (``[fotoy]``) and an adapter in torch and in JAX, a
plugin package with an entry point in each of ``metabench.algorithms`` and
``metabench.adapters`` (``tests/toy_algorithm_plugin.py``). With no harness edit, each
command in a subprocess with the plugin installed:

1. a spec with a ``[fotoy]`` section validates, a bad or unknown value in it is a one-line
   error naming ``fotoy.<field>``, and ``metabench list`` shows the toy's adapters;
2. ``metabench check`` passes the contract and quick parity against the torch adapter, and
   compared something: the built-in check specs have no ``[fotoy]``, so check adds the
   toy's ``check_settings`` to them (a pass on no spec at all would be vacuous);
3. ``metabench parity`` passes on the toy's own spec;
4. a smoke run of both adapters finishes, its summary with fotoy's rows in both frameworks.

The test process itself sees the plugin only in the in-process test, which leaves the
built-in algorithms and adapters as they were.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

import pytest

from bench.core import algorithms, registry
from bench.core.algorithms import BUILTIN
from tests.fake_adapters import metabench
from tests.toy_algorithm_plugin import ADAPTERS, ALGORITHM, PACKAGE, SPEC, install

TORCH, JAX = ADAPTERS["torch"], ADAPTERS["jax"]
CHECK_SPECS = {"sinusoid-10shot", "omniglot-5w1s"}  # bench.check.parity.CHECK_SPECS
FIELDS = "inner_lr, inner_steps, test_inner_steps, meta_batch_size, meta_lr"


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory, data_env) -> dict[str, str]:
    """``data_env`` with the toy plugin installed in a folder on PYTHONPATH."""
    site = install(tmp_path_factory.mktemp("toy-site"))
    return {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}{os.pathsep}{site}"}


@pytest.fixture(scope="module")
def toy_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy-spec") / "toy-sinusoid.toml"
    path.write_text(SPEC)
    return path


def markdown_rows(text: str) -> list[dict[str, str]]:
    """Every row of every markdown table in ``text``, as {column: cell}."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set(":-"):
            rows.append(dict(zip(header, cells)))
    return rows


def errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


# -- 1. specs with the plugin's section --------------------------------------------------

def test_a_spec_with_the_plugins_section_validates_and_its_values_are_checked(toy_env, data_env, toy_spec,
                                                                             tmp_path):
    ok = metabench("validate", str(toy_spec), env=toy_env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{toy_spec}: ok (toy-sinusoid: sinusoid, 1-way 5-shot, algorithms {ALGORITHM})"
    variants = {  # the file's change -> the one line it gives
        ("inner_lr = 0.01", "inner_lr = 0"): "fotoy.inner_lr: must be > 0, got 0.0",
        ("inner_steps = 1", "inner_steps = 1.5"): "fotoy.inner_steps: must be an integer, got 1.5",
        ("meta_lr = 0.001", "meta_lr = 0.001\nfirst_order = true"):
            f"fotoy.first_order: unknown field; allowed: {FIELDS}",
    }
    for (old, new), says in variants.items():
        bad = tmp_path / f"{says.split(':')[0]}.toml"
        bad.write_text(SPEC.replace(old, new, 1))
        proc = metabench("validate", str(bad), env=toy_env)
        assert proc.returncode == 2 and errors(proc) == [f"metabench: error: {bad}: {says}"], proc.stderr
    # without the plugin, [fotoy] is no section at all
    proc = metabench("validate", str(toy_spec), env=data_env)
    assert proc.returncode == 2 and len(errors(proc)) == 1, proc.stderr
    assert errors(proc)[0].startswith(f"metabench: error: {toy_spec}: fotoy: unknown field; allowed: "), proc.stderr


def test_list_shows_the_toy_adapters(toy_env):
    proc = metabench("list", env=toy_env)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    for name in (TORCH, JAX):
        assert re.search(rf"^  {name} +{ALGORITHM} ", proc.stdout, re.M), proc.stdout


# -- 2. metabench check: the contract and quick parity, on specs that have [fotoy] ------------

def test_check_passes_the_contract_and_quick_parity_and_compares_something(toy_env):
    proc = metabench("check", JAX, env=toy_env)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-3000:]
    assert f"{JAX}: passes the contract and quick parity" in out.splitlines()
    # the contract checked the toy on both of its small specs (a check of nothing passes too)
    cases = set(re.findall(rf"^  ok   (\S+ / {ALGORITHM}): ", out, re.M))
    assert cases == {f"tiny-sinusoid / {ALGORITHM}", f"tiny-images / {ALGORITHM}"}, out[:4000]
    assert not re.search(r"^  FAIL", out, re.M)
    # parity compared the toy on both built-in check specs, its section added to them
    rows = [r for r in markdown_rows(out) if r.get("adapter") == JAX]
    assert {(r["spec"], r["algorithm"]) for r in rows} == {(s, ALGORITHM) for s in CHECK_SPECS}, out[-4000:]
    assert [r["ok"] for r in rows if r["ok"]] == ["True", "True"]
    assert "metabench parity: all 2 comparisons within" in out


def test_without_check_settings_check_fails_rather_than_check_nothing(tmp_path, data_env):
    """No built-in check spec has [fotoy]: without the algorithm's check_settings no contract
    check has a spec to run on, which is a failure, not 0 of 0 checks passed."""
    site = install(tmp_path / "site", check_settings=False)
    env = {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}{os.pathsep}{site}"}
    proc = metabench("check", TORCH, "--no-parity", env=env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{TORCH}: 0 of 1 contract checks pass" in proc.stdout
    assert ("FAIL fotoy: the contract checks have a spec to run on: the built-in check specs have no [fotoy] "
            "section: declare the values they should use in its Algorithm's check_settings") in proc.stdout
    assert f"{TORCH}: FAILED: contract: the contract checks have a spec to run on (fotoy)" in proc.stdout


# -- 3. metabench parity on the toy's own spec ----------------------------------------------

def test_parity_on_the_plugins_spec(toy_env, toy_spec):
    proc = metabench("parity", "--adapters", JAX, "--algorithms", ALGORITHM, "--specs", str(toy_spec), env=toy_env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    rows = [r for r in markdown_rows(proc.stdout) if r.get("adapter") == JAX]
    assert {(r["spec"], r["algorithm"]) for r in rows} == {("toy-sinusoid", ALGORITHM)}
    assert len(rows) == 6 and rows[0]["ok"] == "True"
    assert "metabench parity: all 1 comparisons within" in proc.stdout


# -- 4. a smoke run ------------------------------------------------------------------------

def test_a_smoke_run_of_both_toy_adapters(toy_env, toy_spec, tmp_path):
    proc = metabench("run", "--profile", "smoke", "--adapters", f"{TORCH},{JAX}", "--specs", str(toy_spec),
                     "--results-dir", str(tmp_path), "--run-id", "t", "--device", "cpu", env=toy_env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    run = tmp_path / "t"
    for name in (TORCH, JAX):
        assert (run / "cells" / f"{name}__{ALGORITHM}__toy-sinusoid" / "status.json").exists()
    summary = (run / "summary.md").read_text()
    assert f"its float32 result is within tolerance: {JAX}" in summary
    rows = markdown_rows(summary)
    # the accuracy table: one column per framework
    accuracy = [r for r in rows if r.get("spec / algorithm") == f"toy-sinusoid / {ALGORITHM}" and "jax" in r]
    assert len(accuracy) == 1 and accuracy[0]["torch"].startswith("MSE ") and accuracy[0]["jax"].startswith("MSE ")
    # the step times: one row per timed phase
    steps = {r["spec / algorithm / phase"]: r for r in rows if "torch (eager)" in r and "jax (jit)" in r}
    for phase in ("inner_step", "outer_step"):
        row = steps[f"toy-sinusoid / {ALGORITHM} / `{phase}`"]
        assert row["torch (eager)"] and row["jax (jit)"], row


# -- the test process ----------------------------------------------------------------------

def test_in_process_the_harness_reads_the_plugin_and_forgets_it_on_refresh(tmp_path, monkeypatch):
    """What the commands above rely on, in this process: the algorithm is known, check's
    specs gain its section (a file in the cache for parity's subprocesses), the reference is
    its torch adapter, whose source is in parity's cache key; after a refresh without the
    plugin, the built-in algorithms and adapters are what they were."""
    from bench.check import contract, parity
    from bench.core.spec import load_spec

    before = (algorithms.names(), tuple(registry.refresh().table))
    site = install(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    try:
        algorithms.refresh()
        registry.refresh()
        assert algorithms.names() == (*(a.name for a in BUILTIN), ALGORITHM)
        assert algorithms.sections()[ALGORITHM].__name__ == "FoToySettings"
        assert parity.reference_adapter(ALGORITHM) == TORCH
        small = contract.small_specs(ALGORITHM)
        assert [s.name for s in small] == ["tiny-sinusoid", "tiny-images"]
        assert all(s.settings(ALGORITHM).inner_lr == 0.01 and ALGORITHM in s.algorithms() for s in small)
        cache = tmp_path / "cache"
        files = parity.check_specs([ALGORITHM], cache)
        assert [Path(f).parent for f in files] == [cache / "check-specs"] * 2
        specs = [load_spec(f) for f in files]
        assert {s.name for s in specs} == CHECK_SPECS and all(ALGORITHM in s.algorithms() for s in specs)
        assert "maml" in specs[0].algorithms()  # the built-in sections kept
        assert parity.check_specs([ALGORITHM, "maml"], cache) == files  # the same files, named by their text
        assert parity.check_specs(["maml"], cache) == ["sinusoid-10shot", "omniglot-5w1s"]
        request = {"adapter": TORCH, "entry": registry.entry_to_json(registry.get(TORCH)), "spec": files[0],
                   "algorithm": ALGORITHM, "batch_size": 2, "threads": 1, "data_dir": None, "cache_dir": None}
        key = parity.reference_key(request, "cpu")
        adapter = site / PACKAGE / "torch_fotoy.py"
        adapter.write_text(adapter.read_text() + "# edited\n")
        assert parity.reference_key(request, "cpu") != key  # the plugin's reference edited: not cached
    finally:
        monkeypatch.undo()
        for module in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[module]
        importlib.invalidate_caches()
        algorithms.refresh()
        registry.refresh()
    assert (algorithms.names(), tuple(registry.entries())) == before
    assert_without_the_plugin()


def assert_without_the_plugin():
    assert algorithms.names() == tuple(a.name for a in BUILTIN) and ALGORITHM not in algorithms.sections()
    assert not set(ADAPTERS.values()) & set(registry.entries()) and not registry.plugin_problems()


def test_the_test_process_is_left_with_the_builtin_algorithms_and_adapters():
    algorithms.refresh()
    registry.refresh()
    assert_without_the_plugin()
