"""One record per framework (issue 24): ``bench.core.frameworks`` is the only table of them.

Every built-in framework's record is complete and agrees with the project (its extras in
pyproject.toml, its base class in implementations/), an unknown framework gets the same
generic record in every process, and no other module under bench/ keeps a table keyed by
the built-in frameworks' names.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.core import frameworks
from bench.core.frameworks import FRAMEWORKS, OTHER_COLOURS, Framework

REPO = Path(__file__).resolve().parent.parent
BUILT_IN = ("torch", "jax", "tensorflow")
# Tables keyed by framework that are not facts about a framework: the baseline study's
# experiment design (which plain implementation each framework's adapters are timed
# against, docs/findings.md), where a framework without plain forms simply has no pairs.
NOT_FRAMEWORK_FACTS = {("bench/check/baselines/worker.py", "PAIRS"),
                       ("bench/check/baselines/worker.py", "GRID_PAIRS")}


def test_the_built_in_frameworks_are_torch_jax_and_tensorflow_in_that_order():
    assert frameworks.names() == BUILT_IN
    assert [FRAMEWORKS[n].order for n in BUILT_IN] == [0, 1, 2]
    assert all(FRAMEWORKS[n].name == n for n in FRAMEWORKS)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_framework_has_a_complete_record(name):
    record = frameworks.get(name)
    assert record is FRAMEWORKS[name]
    empty = [f.name for f in dataclasses.fields(Framework)
             if getattr(record, f.name) in (None, "", ()) and f.name not in ("cpu_extra", "env_keys")]
    assert not empty, f"{name}'s record lacks {empty}"
    assert record.packages[0] == record.module == name
    assert record.colour.startswith("#") and len(record.colour) == 7 and record.colour not in OTHER_COLOURS
    assert callable(record.gpu_probe) and record.gpu_fix


def test_the_built_in_colours_and_display_names_are_distinct():
    records = [FRAMEWORKS[n] for n in BUILT_IN]
    assert len({r.colour.lower() for r in records}) == len({r.display for r in records}) == len(records)


def test_every_extra_is_one_of_pyproject_s():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for record in FRAMEWORKS.values():
        assert record.extra in extras, record.name
        assert record.cpu_extra is None or record.cpu_extra in extras, record.name
        # the extra installs the packages recorded: its first requirement is the framework's package
        for extra in filter(None, (record.extra, record.cpu_extra)):
            required = {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in extras[extra]}
            assert required & set(record.packages), (record.name, extra, required)


def test_every_base_class_is_where_the_record_says():
    for record in FRAMEWORKS.values():
        module, _, cls = record.base.partition(":")
        path = REPO / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}, record.base
        assert module.split(".")[:2] == ["implementations", record.name]


def test_an_unknown_framework_gets_a_stable_generic_record():
    record = frameworks.get("mylib")
    assert record == frameworks.get("mylib")
    assert (record.name, record.display, record.module, record.packages) == ("mylib", "mylib", "mylib", ("mylib",))
    assert record.extra is None and record.gpu_probe is None and record.base is None and record.env_keys == ()
    assert record.colour in OTHER_COLOURS and record.order == len(FRAMEWORKS)
    assert "mylib" not in FRAMEWORKS  # asking does not register it
    # the same colour in another process (no hash randomisation): every run's figures agree
    code = "from bench.core import frameworks; print(frameworks.get('mylib').colour)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, timeout=60)
    assert out.stdout.strip() == record.colour, out.stderr
    # plugin frameworks spread over the other colours
    assert len({frameworks.get(f"lib{i}").colour for i in range(40)}) == len(OTHER_COLOURS)


def test_the_environment_keys_are_recorded_once_each():
    keys = frameworks.env_keys()
    assert len(keys) == len(set(keys))
    assert {"XLA_FLAGS", "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"} <= set(keys)


def test_the_record_module_imports_no_other_stage_and_no_framework():
    tree = ast.parse((REPO / "bench/core/frameworks.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    imported = {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in top_level if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.startswith("bench")} - {"bench.core"}, imported
    assert not imported & {"torch", "jax", "tensorflow"}, imported
    code = ("import sys; import bench.core.frameworks as f; f.get('x'); f.env_keys(); "
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def _framework_tables(tree: ast.Module):
    """(line, the top-level name it is assigned to) of every dict display whose keys, or
    tuple, list or set display whose elements, include all three built-in names."""
    owner = {}
    for stmt in tree.body:
        targets = (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                   if isinstance(stmt, ast.AnnAssign | ast.AugAssign) else [])
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        for node in ast.walk(stmt):
            owner[id(node)] = names[0] if names else None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            items = node.keys
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = node.elts
        else:
            continue
        strings = {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
        if set(BUILT_IN) <= strings:
            yield node.lineno, owner.get(id(node))


def test_no_other_module_keeps_a_table_keyed_by_the_frameworks():
    found, allowed = [], set()
    for path in sorted((REPO / "bench").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "bench/core/frameworks.py":
            continue
        for line, name in _framework_tables(ast.parse(path.read_text(), rel)):
            if (rel, name) in NOT_FRAMEWORK_FACTS:
                allowed.add((rel, name))
            else:
                found.append(f"{rel}:{line} ({name or 'inline'})")
    assert not found, "framework tables outside bench/core/frameworks.py (read its records instead): " + \
        ", ".join(found)
    assert allowed == NOT_FRAMEWORK_FACTS, "an exemption no longer needed: " + str(NOT_FRAMEWORK_FACTS - allowed)


def test_the_table_finder_finds_a_table():
    tree = ast.parse('X = {"torch": 1, "jax": 2, "tensorflow": 3}\n'
                     'def f():\n    return ("tensorflow", "jax", "torch", "mylib")\n'
                     'Y = {"torch": 1, "jax": 2}\n')
    assert list(_framework_tables(tree)) == [(1, "X"), (3, None)]
