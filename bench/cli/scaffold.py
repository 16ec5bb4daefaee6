"""``metabench new-adapter NAME --framework F --algorithm A [--into FOLDER]``: a plugin package skeleton.

It writes ``DIR/metabench-NAME/``, one package for one framework's adapters:

- ``pyproject.toml``: the ``metabench.adapters`` entry point, naming ``<package>.entries:ENTRIES``;
- ``metabench_<name>/entries.py``: ``ENTRIES``, the adapters as metabench lists them. It
  imports no framework (nor does the package's ``__init__``): the harness imports it in every
  process that lists adapters, and a broken framework must not break ``metabench list``;
- ``metabench_<name>/backend.py``: the framework's base class, shared by the package's
  adapters (threads, device, transfers, sync, parameters, memory, Adam), in numpy to be
  replaced with the framework's (``TODO(backend)``);
- ``metabench_<name>/<algorithm>.py``: the adapter, a subclass of the backend with the maths;
- ``tests/test_<name>.py``: the generated suite (the contract, then parity with PyTorch).

``--into FOLDER`` adds another adapter of the same framework to a package written so: its
module, its test and its line in ``ENTRIES``, sharing ``backend.py``. The maths methods are
placeholders that keep every contract check (``bench.check.contract``) but are not the
algorithm, marked ``placeholder = True`` and ``# TODO(maths):``, so ``metabench check NAME
--no-parity`` passes at once and parity fails, saying why, until the maths is written.
Walkthrough: docs/adapters.md.
"""

from __future__ import annotations

import ast
import keyword
import re
import textwrap
import tomllib
from pathlib import Path
from string import Template

from bench.core.algorithms import all_algorithms
from bench.core.algorithms import get as get_algorithm
from bench.core.errors import MetabenchError
from bench.core.frameworks import get as framework_record

NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")
PARITY_SPEC = {True: "sinusoid-10shot", False: "omniglot-5w1s"}              # by "can regress"
RESERVED_MODULES = {"__init__", "entries", "backend"}  # the package's own modules: no adapter module takes them

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "metabench-$name"
version = "0.1.0"
description = "$framework adapters for metabench"
requires-python = ">=3.11"
dependencies = ["metabench"]  # TODO(backend): add the distribution that installs $framework

# ENTRIES lives in entries.py, which imports no framework: metabench imports it to list adapters
[project.entry-points."metabench.adapters"]
metabench-$name = "$package.entries:ENTRIES"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
markers = ["parity: compares with PyTorch's numbers; fails while the maths is a placeholder"]
''')

INIT = Template('''\
"""metabench-$name: $framework adapters for metabench, from `metabench new-adapter`.

Keep this file free of imports: metabench imports `$package.entries` (and so this
package) in every process that lists adapters, where $framework must not be imported.
Only `backend` and the adapters' modules import $framework, in its own process.
"""
''')

ENTRIES = Template('''\
"""The adapters of this package, as metabench lists them (the entry point in pyproject.toml
names ENTRIES). Each names its class as "module:Class", imported only in $framework's own
process. This module imports no framework, and nor may the package's __init__: a broken
$framework must not break `metabench list` for every other adapter. `metabench new-adapter
NAME --framework $framework --algorithm A --into FOLDER` adds an entry here.
"""

from bench.core.registry import AdapterEntry

ENTRIES = [
$entry]
''')

ENTRY = Template('''\
    AdapterEntry("$name", "$framework", $algorithms,
                 "$package.$module:$cls",
                 description="$algorithm in $framework (placeholder maths)"),
''')

BACKEND = Template('''\
"""The $framework backend that this package's adapters share: $base_cls holds everything
but the algorithm (threads, device, transfers, sync, parameters, memory, Adam). It is numpy
for now: replace each TODO(backend) with $framework's. Each adapter (a module of its own)
subclasses it and writes only the maths. Shapes and rules: bench/core/adapter.py;
walkthrough: metabench's docs/adapters.md.
"""

from importlib import metadata

import numpy as np

from bench.core.adapter import Adapter, AdapterInfo, MemoryReading
from bench.core.episodes import EpisodeBatch

# TODO(backend): import $framework here and in the adapters' modules, never in entries.py or __init__.py

# TODO(backend): the distribution that installs $framework (the name pip installs), if it is not "$framework"
FRAMEWORK_DISTRIBUTION = "$framework"


def framework_version() -> str:
    """The installed version of $framework, recorded with every measurement."""
    try:
        return metadata.version(FRAMEWORK_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"  # TODO(backend): FRAMEWORK_DISTRIBUTION names no installed distribution


${base}class $base_cls(Adapter):
    framework = "$framework"  # one process per framework: this names it

    @classmethod
    def configure(cls, threads, device):
        """TODO(backend): $framework's thread counts (intra-op: threads, inter-op: 1) and
        allocator options, set before it does any work."""

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self.dtype = np.dtype(self.options["dtype"])  # float32, or float64: parity's diagnostic
        self.set_params(params)

    def describe(self):
        # TODO(backend): the device's name and the threads $framework uses.
        # compilation: a word of bench.core.adapter.COMPILATION
        # ($compilations);
        # say the rest in compilation_detail, e.g. "mx.eval once per step"
        return AdapterInfo("$framework", framework_version(), self.device, "cpu", "eager",
                           self.dtype.name, 1, notes="placeholder maths in numpy",
                           compilation_detail="")

    def to_device(self, batch):
        # TODO(backend): $framework's transfer to self.device, in its layout; floats in self.dtype
        f = lambda a: a.astype(self.dtype) if a.dtype.kind == "f" else a
        return EpisodeBatch(f(batch.support_x), batch.support_y, f(batch.query_x), f(batch.query_y),
                            batch.provenance, batch.shape)

    def sync(self, outputs=None):
        pass  # TODO(backend): $framework's wait for `outputs`, the parameters and Adam's state

    def get_params(self):
        # TODO(backend): $framework's export to numpy, in the canonical layout (bench/core/models.py)
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, params):
        # TODO(backend): $framework's import from the canonical layout; resets Adam's state
        self.params = {k: np.array(v, self.dtype) for k, v in params.items()}
        self._m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._updates = 0

    def reset_peak_memory(self):
        pass  # TODO(backend): $framework's peak-memory reset, where it has one

    def peak_memory(self):
        # TODO(backend): $framework's peak, e.g. MemoryReading(peak_bytes, "$framework.max_memory")
        return MemoryReading(None, None)

    def compilation_count(self):
        return None  # TODO(backend): $framework's trace/compile count (None: eager)

    def _adam_step(self, grads):
        """One Adam update as self.meta_optimizer says (eps added to the bias-corrected sqrt(v),
        torch's placement; step size halved every halve_every updates). TODO(backend):
        $framework's Adam, built from the same numbers."""
        opt, t = self.meta_optimizer, self._updates + 1
        lr = opt.step_size(self._updates)
        for k, g in grads.items():
            self._m[k] = opt.b1 * self._m[k] + (1 - opt.b1) * g
            self._v[k] = opt.b2 * self._v[k] + (1 - opt.b2) * g * g
            m_hat, v_hat = self._m[k] / (1 - opt.b1 ** t), self._v[k] / (1 - opt.b2 ** t)
            step = lr * m_hat / (np.sqrt(v_hat) + opt.eps)
            self.params[k] = (self.params[k] - step).astype(self.dtype)
        self._updates = t
''')

MODULE = Template('''\
"""$name: $algorithm in $framework, a skeleton from `metabench new-adapter`.

The backend is $base_cls (backend.py), shared with the package's other adapters. The
maths methods below hold PLACEHOLDER maths that keeps the adapter contract (`metabench check
$name --no-parity` passes) but is not $algorithm: parity fails until every TODO(maths) is
done; then delete `placeholder = True`. Shapes and rules: bench/core/adapter.py.
"""

import numpy as np

from $package.backend import $base_cls


class $cls($base_cls):
    algorithms = $algorithms
    placeholder = True  # the maths below is a stand-in: delete this line once it is written

    # -- the maths: PLACEHOLDERS that keep the contract but are not $algorithm
    def _placeholder_meta_grad(self):
        """PLACEHOLDER: the loss 0.5 * sum(p ** 2) and its gradient, the parameters themselves."""
        loss = sum(0.5 * np.sum(p * p) for p in self.params.values())
        return {k: p.copy() for k, p in self.params.items()}, self.dtype.type(loss)

    def _placeholder_outputs(self, batch):
        """PLACEHOLDER: zeros [B, n_query_total, n_out]."""
        n_out = $n_out
        return np.zeros((len(batch), batch.query_x.shape[1], n_out), self.dtype)
$inner_step
    def outer_step(self, batch):
        $todo_outer_step
        grads, loss = self._placeholder_meta_grad()
        self._adam_step(grads)
        return loss

    def adapt(self, batch):
        $todo_adapt
        return $adapt

    def predict(self, batch):
        $todo_predict
        return self._placeholder_outputs(batch)

    def probe(self, batch):
        $todo_probe
        grads, _ = self._placeholder_meta_grad()
        return {"support_loss": np.zeros(len(batch), self.dtype),
                "query_logits": self._placeholder_outputs(batch),
                **{f"meta_grad/{k}": g for k, g in grads.items()}}
''')

INNER_STEP = Template('''
    def inner_step(self, batch):
        $todo_inner_step
        return [dict(self.params) for _ in range(len(batch))]  # PLACEHOLDER: every task unadapted
''')

TEST = Template('''\
"""The generated suite of $name: the adapter contract, then parity with PyTorch.

The contract passes from the start. Parity FAILS until the maths is written (every
TODO(maths) in $package/$module.py): that failure is the point, it says that the
numbers are not yet $algorithm's. `pytest -m "not parity"` runs the contract alone.
"""

import pytest

from bench.check import contract as check
from bench.check import parity

NAME = "$name"
ALGORITHMS = $algorithm_list  # those it serves


def test_contract():
    """What the harness relies on (bench/check/contract.py): shapes, float64 computed at float64
    precision, determinism, an Adam step, a compilation mode metabench knows."""
    results = check.run_contract(NAME)
    assert results and all(r.ok for r in results), check.format_results(NAME, results)


@pytest.mark.parity
def test_parity_with_pytorch():
    """Support losses, adapted query logits, meta-gradient and parameters after one Adam step
    equal PyTorch's on the same weights and episodes, in float64 (1e-9) and float32. Fails
    while the maths is the skeleton's placeholder."""
    failed = parity.run_parity(adapters=[NAME], specs=["$spec"], algorithms=ALGORITHMS,
                               batch_size=2)
    assert failed == 0, "parity with PyTorch failed: the table above says where"


@pytest.mark.parity
def test_quick_parity_as_metabench_check():
    """What `metabench check` compares, in seconds (16 filters or units, 2 tasks), on
    $check_specs:
    $check_what."""
    failed = parity.run_parity(adapters=[NAME], specs=parity.check_specs(ALGORITHMS),
                               algorithms=ALGORITHMS, batch_size=2, quick=True)
    assert failed == 0, "quick parity with PyTorch failed: the table above says where"
''')


def _generic_todo(algorithm: str) -> dict[str, str]:
    return {m: f"{m} of {algorithm}: bench/core/adapter.py says what it returns, bench/core/algorithms/ and the "
               f"reference adapter in implementations/torch/ what it computes."
            for m in ("inner_step", "outer_step", "adapt", "predict", "probe")}


def _comment(todo: str) -> str:
    """A TODO as comment lines under 100 columns, the first one's indentation left to the template."""
    return textwrap.fill("TODO(maths): " + todo, 100, initial_indent=" " * 8 + "# ",
                         subsequent_indent=" " * 8 + "#   ", break_on_hyphens=False).lstrip()


def _served(algorithm: str) -> tuple[str, ...]:
    """The algorithms one class serves: an algorithm's whole family (MAML and FOMAML: one
    class, first_order from the spec)."""
    family = get_algorithm(algorithm).family
    return tuple(n for n, a in all_algorithms().items() if a.family == family)


def _has_inner_loop(algorithm: str) -> bool:
    return get_algorithm(algorithm).has_inner_loop


def _camel(words: str) -> str:
    return "".join(w.capitalize() for w in re.split(r"[^A-Za-z0-9]+", words) if w)


def package_name(name: str) -> str:
    """The import name of the package ``metabench-NAME``."""
    return "metabench_" + name.replace("-", "_")


def adapter_module(name: str, framework: str) -> str:
    """The module of adapter ``name`` in its package: the name without the framework's
    prefix (``mylib-maml`` -> ``maml``, ``mylib-maml-fused`` -> ``maml_fused``), else the
    whole name (``mylib_2step`` for ``mylib-2step``, whose rest is no module name)."""
    rest = name[len(framework) + 1:] if name.startswith(framework + "-") else name
    module = rest.replace("-", "_")
    if not module.isidentifier() or keyword.iskeyword(module) or module in RESERVED_MODULES:
        module = name.replace("-", "_")
    return module


def base_class(framework: str) -> str:
    """The backend's class: ``mylib`` -> ``MylibAdapter``."""
    cls = _camel(framework) + "Adapter"
    return cls if cls[0].isalpha() else "F" + cls


def package_parts(name: str, framework: str, algorithm: str, package: str | None = None) -> dict[str, str]:
    """What the templates fill in: names, the algorithms served, the parity specs."""
    from bench.check.parity import check_specs
    from bench.core.adapter import COMPILATION

    served = ", ".join(f'"{a}"' for a in _served(algorithm))
    specs = check_specs(list(_served(algorithm)))
    conv4 = "Conv-4 on Omniglot (BatchNorm and max-pool" + ("; second order)" if _has_inner_loop(algorithm) else ")")
    return {"name": name, "framework": framework, "algorithm": algorithm,
            "package": package or package_name(name), "module": adapter_module(name, framework),
            "cls": _camel(name), "base_cls": base_class(framework),
            "algorithms": f"({served}{',' if len(_served(algorithm)) == 1 else ''})",
            "algorithm_list": f"[{served}]", "spec": PARITY_SPEC[get_algorithm(algorithm).regression],
            "check_specs": ", ".join(specs),
            "check_what": f"the sinusoid's MLP and {conv4}" if "sinusoid-10shot" in specs else conv4,
            "compilations": ", ".join(COMPILATION)}


def _base_comment(framework: str) -> str:
    record = framework_record(framework)
    if not record.base:  # a framework metabench does not know: the backend is written from scratch
        return ""
    cls = record.base.replace(":", ".")
    return textwrap.fill(f"{framework} is built into metabench: subclass {cls} instead of Adapter. It provides "
                         f"{record.base_provides}; the methods below are then already written.",
                         100, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False) + "\n"


def _adapter_files(p: dict[str, str]) -> dict[str, str]:
    """The files of one adapter: its module (the maths) and its test."""
    algorithm = p["algorithm"]
    inner = _has_inner_loop(algorithm)
    maths = {**_generic_todo(algorithm), **get_algorithm(algorithm).maths}  # the algorithm's own words first
    todo = {f"todo_{k}": _comment(v) for k, v in maths.items()}
    module = MODULE.substitute(
        p, **todo,
        n_out='self.params["head.bias"].shape[0]' if get_algorithm(algorithm).has_head
        else "batch.shape.n_way",
        inner_step=INNER_STEP.substitute(todo) if inner else "",
        adapt="[dict(self.params) for _ in range(len(batch))]  # PLACEHOLDER: every task unadapted" if inner
        else "self._placeholder_outputs(batch)  # PLACEHOLDER: zeros")
    return {f"{p['package']}/{p['module']}.py": module,
            f"tests/test_{p['name'].replace('-', '_')}.py": TEST.substitute(p)}


def render(name: str, framework: str, algorithm: str) -> dict[str, str]:
    """A new package's files, relative path -> text."""
    p = package_parts(name, framework, algorithm)
    return {"pyproject.toml": PYPROJECT.substitute(p),
            f"{p['package']}/__init__.py": INIT.substitute(p),
            f"{p['package']}/entries.py": ENTRIES.substitute(p, entry=ENTRY.substitute(p)),
            f"{p['package']}/backend.py": BACKEND.substitute(p, base=_base_comment(framework)),
            **_adapter_files(p)}


def _check_input(name: str, framework: str | None, algorithm: str) -> None:
    from bench.core import registry

    if not NAME.match(name):
        raise MetabenchError(f"new-adapter: name {name!r} must be lowercase letters and digits, words joined "
                             "by '-', e.g. mylib-protonet")
    if framework is not None and (not framework.strip() or not re.fullmatch(r"[A-Za-z0-9_.-]+", framework)):
        raise MetabenchError(f"new-adapter: --framework {framework!r} must be a non-empty word, e.g. mylib")
    get_algorithm(algorithm)  # unknown: one line naming the known ones
    if name in registry.entries():
        raise MetabenchError(f"new-adapter: an adapter named {name} is already registered; choose another name")


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def new_adapter(name: str, framework: str | None, algorithm: str, directory: str | Path = ".") -> Path:
    """Write the package ``directory/metabench-NAME``; refuse (``MetabenchError``, one line)
    a bad name, an empty framework, an unknown algorithm or an existing folder."""
    if framework is None:
        raise MetabenchError("new-adapter: --framework is required for a new package (with --into FOLDER, the "
                             "package's backend names it)")
    _check_input(name, framework, algorithm)
    root = Path(directory) / f"metabench-{name}"
    if root.exists():
        raise MetabenchError(f"new-adapter: {root} already exists; remove it, choose another --dir, or add the "
                             f"adapter to it with --into {root}")
    _write(root, render(name, framework, algorithm))
    return root


def existing_package(root: Path) -> tuple[str, str, str]:
    """(import name, framework, backend class) of a package written by ``new-adapter``: the
    package its entry point names, whose ``backend.py`` says the framework. One line otherwise."""
    why = f"new-adapter: --into {root}"
    try:
        pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise MetabenchError(f"{why}: no readable pyproject.toml ({type(e).__name__}); name the folder of a "
                             f"package that `metabench new-adapter` wrote") from None
    targets = list(pyproject.get("project", {}).get("entry-points", {}).get("metabench.adapters", {}).values())
    package = targets[0].partition(":")[0].removesuffix(".entries") if targets else ""
    backend, entries = root / package / "backend.py", root / package / "entries.py"
    if len(targets) != 1 or not targets[0].endswith(".entries:ENTRIES") or not backend.is_file() \
            or not entries.is_file():
        raise MetabenchError(f"{why}: not a package with one metabench.adapters entry point naming "
                             f"<package>.entries:ENTRIES beside a <package>/backend.py, as `metabench new-adapter` "
                             f"writes it; move ENTRIES and the backend there first (docs/adapters.md)")
    source = backend.read_text(encoding="utf-8")
    framework = re.search(r'^\s+framework = "([^"]+)"', source, re.M)
    cls = re.search(r"^class (\w+)\(", source, re.M)
    if not framework or not cls:
        raise MetabenchError(f"{why}: {backend} defines no class with framework = \"...\"")
    return package, framework[1], cls[1]


def _append_entry(entries_py: Path, entry: str) -> str:
    """entries.py with ``entry`` added at the end of its ENTRIES list."""
    text = entries_py.read_text(encoding="utf-8")
    node = next((n for n in ast.parse(text).body if isinstance(n, ast.Assign) and isinstance(n.value, ast.List)
                 and any(isinstance(t, ast.Name) and t.id == "ENTRIES" for t in n.targets)), None)
    if node is None:
        raise MetabenchError(f"new-adapter: {entries_py} has no ENTRIES = [...] list to add the adapter to")
    lines = text.splitlines(keepends=True)
    row, col = node.value.end_lineno - 1, node.value.end_col_offset - 1  # the closing bracket
    before = ("".join(lines[:row]) + lines[row][:col]).rstrip()
    if not before.endswith(("[", ",")):
        before += ","
    return before + "\n" + entry + lines[row][col:] + "".join(lines[row + 1:])


def add_adapter(name: str, framework: str | None, algorithm: str, into: str | Path) -> tuple[Path, list[str]]:
    """Add adapter ``name`` to the package folder ``into`` (written by ``new_adapter``): its
    module, a subclass of the package's backend, its test and its entry in ``entries.py``.
    Returns (the folder, the files written or changed). Refuses, in one line and writing
    nothing, another framework's package, or a module, test or entry that exists."""
    root = Path(into)
    _check_input(name, framework, algorithm)
    package, theirs, base = existing_package(root)
    if framework is not None and framework != theirs:
        raise MetabenchError(f"new-adapter: --into {root} holds {theirs} adapters (its backend.py), not {framework}: "
                             f"a package shares one framework's backend; leave out --into for a package of its own")
    p = {**package_parts(name, theirs, algorithm, package), "base_cls": base}
    entries_py = root / package / "entries.py"
    if f'"{name}"' in entries_py.read_text(encoding="utf-8"):
        raise MetabenchError(f"new-adapter: {entries_py} already lists {name}")
    files = _adapter_files(p)
    taken = [rel for rel in files if (root / rel).exists()]
    if taken:
        raise MetabenchError(f"new-adapter: {root / taken[0]} already exists; choose another name")
    files[f"{package}/entries.py"] = _append_entry(entries_py, ENTRY.substitute(p))
    _write(root, files)
    return root, list(files)


def next_steps(root: Path, name: str, algorithm: str, added: bool = False) -> list[str]:
    """The commands that take the skeleton to a checked, timed adapter."""
    spec = PARITY_SPEC[get_algorithm(algorithm).regression]
    return [f"pip install -e {root}" + ("   # again, unless it is installed editable" if added else ""),
            f"metabench check {name}            # the contract passes; parity fails until the maths is written",
            f"metabench parity --adapters {name} --algorithms {','.join(_served(algorithm))} --specs {spec}",
            f"metabench run --profile smoke --adapters {name}"]
