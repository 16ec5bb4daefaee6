"""The harness's shape, enforced: stages import downward only (import-linter's contracts in
pyproject.toml), no module imports its way back to itself, the harness root stays small,
and no module outside ``bench/core/algorithms`` names an algorithm (the harness asks an
``Algorithm`` instead: ``bench.core.algorithms.base``)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
MAX_ROOT_MODULES = 8
# A MAML study, not the harness's algorithm-agnostic path: metabench's MAML adapters timed
# against plain per-framework MAML (its workloads are MAML shapes by definition).
NAMING_EXEMPT = ("bench/core/algorithms/", "bench/check/baselines/")


def test_import_linter_contracts_hold():
    """Every contract in pyproject.toml's [tool.importlinter]: the stage layers, each stage's
    module layers, and no harness module importing an implementation."""
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


def _modules() -> dict[str, Path]:
    out = {}
    for path in BENCH.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the bench modules it imports, anywhere in it (inside functions and
    ``TYPE_CHECKING`` blocks too: a circle there is still a circle to a reader)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # ``from bench.x import y``: the submodule y where there is one, else the module x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target.startswith("bench"):
                    found = resolve(target)
                    if found and found != module:
                        graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_its_way_back_to_itself():
    graph = import_graph()
    assert sum(map(len, graph.values())) > 100  # the graph was read, not empty
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_harness_root_holds_few_modules():
    root = sorted(p.name for p in BENCH.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def algorithm_names_in(source: str, names: set[str]) -> list[tuple[int, str]]:
    """Where code names an algorithm: a string constant that is an algorithm's name or
    section (``"protonet"``, ``"-maml"``, ``"maml."``), or an attribute named after one
    (``spec.maml``). Docstrings and prose (help text, messages that mention an algorithm in
    a sentence) are not code that branches on a name."""
    tree = ast.parse(source)
    docs = _docstring_ids(tree)
    word = re.compile(r"^[-.]?(" + "|".join(map(re.escape, sorted(names))) + r")[-.]?$")
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if word.match(node.value):
                hits.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.Attribute) and node.attr in names:
            hits.append((node.lineno, f".{node.attr}"))
    return hits


def test_the_naming_check_finds_names():
    src = 'x = "maml"\nif a == "protonet": pass\ny = spec.maml\nz = f"{fw}-maml"\n"""the maml doc"""\n'
    assert sorted(algorithm_names_in(src, {"maml", "protonet"})) == [(1, "'maml'"), (2, "'protonet'"), (3, ".maml"),
                                                                      (4, "'-maml'")]


def test_no_module_outside_the_algorithms_names_an_algorithm():
    from bench.core.algorithms import all_algorithms

    names = {a.name for a in all_algorithms().values()} | {a.section for a in all_algorithms().values()}
    found = []
    for path in sorted(BENCH.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(NAMING_EXEMPT):
            continue
        found += [f"{rel}:{line}: {what}" for line, what in algorithm_names_in(path.read_text(), names)]
    assert found == [], "ask the Algorithm (bench.core.algorithms.base) instead:\n" + "\n".join(found)


@pytest.mark.parametrize("stage", ["core", "measure", "check", "report", "run", "cli"])
def test_every_stage_is_a_package_with_a_docstring(stage):
    init = BENCH / stage / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text()))
