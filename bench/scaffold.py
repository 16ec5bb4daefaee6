"""``metabench new-adapter NAME --framework F --algorithm A``: a plugin package skeleton.

It writes ``DIR/metabench-NAME/``: ``pyproject.toml`` (the ``metabench.adapters`` entry
point), ``metabench_<name>.py`` (one adapter class) and ``tests/test_metabench_<name>.py``
(the generated suite: the contract, then parity with PyTorch). The backend methods are
numpy, to be replaced with the framework's; the maths methods are placeholders that keep
every contract check (``bench.check``) but are not the algorithm, marked ``placeholder =
True`` and ``# TODO(maths):``, so ``metabench check NAME --no-parity`` passes at once and
parity fails, saying why, until the maths is written. Walkthrough: docs/adapters.md.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from string import Template

from bench.algorithms import get as get_algorithm
from bench.errors import MetabenchError

NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*\Z")
SERVED_TOGETHER = {"maml": ("maml", "fomaml"), "fomaml": ("maml", "fomaml")}  # one class, first_order from the spec
PARITY_SPEC = {True: "sinusoid-10shot", False: "omniglot-5w1s"}              # by "has an inner loop"
BASES = {  # the built-in frameworks' base classes, and what they provide
    "torch": ("implementations.torch.common.TorchAdapter", "device and dtype, parameters as leaf tensors in "
              "the canonical layout, torch.optim Adam from self.meta_optimizer (apply_meta_grad), sync, "
              "peak memory, the probe's layout (probe_result)"),
    "jax": ("implementations.jax.common.JaxAdapter", "device and dtype (jax_enable_x64 for float64), "
            "parameters as a pytree with an optax state (set self._optimizer before set_params), sync over "
            "outputs and state, peak memory, the probe's layout (probe_result)"),
    "tensorflow": ("implementations.tensorflow.common.TFAdapter", "the jit_compile option, device and dtype, "
                   "tf.Variables in TF layout with Adam from self.meta_optimizer, tf.function step functions "
                   "counted for recompilation (_compile), sync, peak memory, the probe's layout (probe_result)"),
}

_MAML_INNER = ("one inner SGD step on each task's support set from self.params (left unchanged): "
               "p - self.config.inner.lr * grad of the support loss (cross-entropy; MSE for regression)")
_MAML_ORDER = ("second order, through the inner steps (first order when self.config.inner.first_order: "
               "the inner gradients are constants)")
_MAML_TEST_TIME = {
    "adapt": "self.config.inner.test_steps inner steps per task, as inner_step; the adapted parameters.",
    "predict": "the model's outputs on the query set with each task's adapted parameters "
               "(self.adapt(batch)): logits [B, n_query_total, n_way]; regression: [B, n_query, 1].",
    "probe": "from self.params, changing nothing: support_loss [B] (each task's support loss before "
             "adaptation), query_logits (query outputs after self.config.inner.steps inner steps), "
             "meta_grad/<param> (the gradient outer_step applies, canonical shape).",
}
TODO = {  # what each maths method must compute, per algorithm (reference: implementations/torch/)
    "maml": {
        "inner_step": _MAML_INNER + " w.r.t. every parameter. Returns every task's adapted parameters.",
        "outer_step": "adapt each task by self.config.inner.steps inner steps; loss = mean over tasks of the "
                      f"query loss after adaptation; its gradient w.r.t. self.params, {_MAML_ORDER}; "
                      "one Adam step (self._adam_step); return the loss.",
        **_MAML_TEST_TIME,
    },
    "anil": {
        "inner_step": _MAML_INNER + " w.r.t. the head only (head.weight, head.bias), on the body's "
                      "support features computed once. Returns every task's parameters, head adapted.",
        "outer_step": "adapt each task's head by self.config.inner.steps inner steps; loss = mean over tasks "
                      "of the query loss after adaptation; its gradient w.r.t. self.params (the body's "
                      f"through the support and query features), {_MAML_ORDER}; one Adam step "
                      "(self._adam_step); return the loss.",
        **_MAML_TEST_TIME,
    },
    "reptile": {
        "inner_step": _MAML_INNER + " w.r.t. every parameter. Returns every task's adapted parameters.",
        "outer_step": "for each task, self.config.inner.steps inner steps on its support set from self.params, "
                      "nothing differentiated through them (phi_i); the pseudo-gradient g = self.params - mean "
                      "over tasks of phi_i; one Adam step with g as the gradient (self._adam_step); return the "
                      "mean over tasks of the support loss at self.params (before adaptation).",
        **_MAML_TEST_TIME,
    },
    "protonet": {
        "outer_step": "embed each episode's support and query in one pass (Conv-4, BatchNorm on the "
                      "batch's statistics: bench/models.py); prototypes = class means of the support "
                      "embeddings (labels are class-major); logits = -squared distances of the queries to "
                      "the prototypes; loss = mean over episodes of the query cross-entropy; its gradient "
                      "w.r.t. self.params; one Adam step (self._adam_step); return the loss.",
        "adapt": "each episode's prototypes [n_way, d] and query embeddings [n_query_total, d], as in "
                 "outer_step, from self.params.",
        "predict": "-squared distances of the query embeddings to the prototypes (self.adapt(batch)), "
                   "[B, n_query_total, n_way].",
        "probe": "from self.params, changing nothing: support_loss [B] (no inner loop: each episode's "
                 "query loss), query_logits [B, n_query_total, n_way] (the -squared distances), "
                 "meta_grad/<param> (the gradient outer_step applies, canonical shape).",
    },
}
TODO["fomaml"] = TODO["maml"]

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "metabench-$name"
version = "0.1.0"
description = "$algorithm in $framework, a metabench adapter"
requires-python = ">=3.11"
dependencies = ["metabench"]

[project.entry-points."metabench.adapters"]
$name = "$module:ENTRIES"

[tool.setuptools]
py-modules = ["$module"]

[tool.pytest.ini_options]
markers = ["parity: compares with PyTorch's numbers; fails while the maths is a placeholder"]
''')

MODULE = Template('''\
"""$name: $algorithm in $framework, a skeleton from `metabench new-adapter`.

The backend methods are numpy: replace them with $framework's. The maths methods hold
PLACEHOLDER maths that keeps the adapter contract (`metabench check $name --no-parity`
passes) but is not $algorithm: parity fails until every TODO(maths) is done; then delete
`placeholder = True`. Shapes and rules: bench/adapter.py; walkthrough: metabench's docs/adapters.md.
"""

import numpy as np

from bench.adapter import Adapter, AdapterInfo, MemoryReading
from bench.episodes import EpisodeBatch
from bench.registry import AdapterEntry


${base}class $cls(Adapter):
    framework = "$framework"
    algorithms = $algorithms
    placeholder = True  # the maths below is a stand-in: delete this line once it is written

    # -- backend: replace numpy with your framework
    @classmethod
    def configure(cls, threads, device):
        """Replace with your framework's thread counts (intra-op: threads, inter-op: 1) and
        allocator options, set before it does any work."""

    def __init__(self, spec, algorithm, params, device="cpu", options=None):
        super().__init__(spec, algorithm, params, device, options)
        self.dtype = np.dtype(self.options["dtype"])  # float32, or float64: parity's diagnostic
        self.set_params(params)

    def describe(self):
        # replace with your framework's name, version, device name, compilation mode, threads
        return AdapterInfo("$framework", np.__version__, self.device, "cpu", "eager",
                           self.dtype.name, 1, notes="placeholder maths in numpy")

    def to_device(self, batch):
        # replace with your framework's transfer to self.device, in its layout; floats in self.dtype
        f = lambda a: a.astype(self.dtype) if a.dtype.kind == "f" else a
        return EpisodeBatch(f(batch.support_x), batch.support_y, f(batch.query_x), f(batch.query_y),
                            batch.provenance, batch.shape)

    def sync(self, outputs=None):
        pass  # replace with your framework's wait for `outputs`, the parameters and Adam's state

    def get_params(self):
        # replace with your framework's export to numpy, in the canonical layout (bench/models.py)
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, params):
        # replace with your framework's import from the canonical layout; resets Adam's state
        self.params = {k: np.array(v, self.dtype) for k, v in params.items()}
        self._m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._updates = 0

    def reset_peak_memory(self):
        pass  # replace with your framework's peak-memory reset, where it has one

    def peak_memory(self):
        # replace with your framework's peak, e.g. MemoryReading(peak_bytes, "mylib.max_memory")
        return MemoryReading(None, None)

    def compilation_count(self):
        return None  # replace with your framework's trace/compile count (None: eager)

    def _adam_step(self, grads):
        """One Adam update as self.meta_optimizer says (eps added to the bias-corrected sqrt(v),
        torch's placement; step size halved every halve_every updates): replace with your
        framework's Adam, built from the same numbers."""
        opt, t = self.meta_optimizer, self._updates + 1
        lr = opt.step_size(self._updates)
        for k, g in grads.items():
            self._m[k] = opt.b1 * self._m[k] + (1 - opt.b1) * g
            self._v[k] = opt.b2 * self._v[k] + (1 - opt.b2) * g * g
            m_hat, v_hat = self._m[k] / (1 - opt.b1 ** t), self._v[k] / (1 - opt.b2 ** t)
            step = lr * m_hat / (np.sqrt(v_hat) + opt.eps)
            self.params[k] = (self.params[k] - step).astype(self.dtype)
        self._updates = t

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


ENTRIES = [AdapterEntry("$name", "$framework", $algorithms, "$module:$cls",
                        description="$algorithm in $framework (placeholder maths)")]
''')

INNER_STEP = Template('''
    def inner_step(self, batch):
        $todo_inner_step
        return [dict(self.params) for _ in range(len(batch))]  # PLACEHOLDER: every task unadapted
''')

TEST = Template('''\
"""The generated suite of $name: the adapter contract, then parity with PyTorch.

The contract passes from the start. Parity FAILS until the maths is written (every
TODO(maths) in $module.py): that failure is the point, it says that the
numbers are not yet $algorithm's. `pytest -m "not parity"` runs the contract alone.
"""

import pytest

from bench import check, parity

NAME = "$name"
ALGORITHMS = $algorithm_list  # those it serves


def test_contract():
    """What the harness relies on (bench/check.py): shapes, float64, determinism, an Adam step."""
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
''')


def _generic_todo(algorithm: str) -> dict[str, str]:
    return {m: f"{m} of {algorithm}: bench/adapter.py says what it returns, bench/algorithms/ and the "
               f"reference adapter in implementations/torch/ what it computes."
            for m in ("inner_step", "outer_step", "adapt", "predict", "probe")}


def _comment(todo: str) -> str:
    """A TODO as comment lines under 100 columns, the first one's indentation left to the template."""
    return textwrap.fill("TODO(maths): " + todo, 100, initial_indent=" " * 8 + "# ",
                         subsequent_indent=" " * 8 + "#   ", break_on_hyphens=False).lstrip()


def _served(algorithm: str) -> tuple[str, ...]:
    return SERVED_TOGETHER.get(algorithm, (algorithm,))


def _has_inner_loop(algorithm: str) -> bool:
    return "inner_step" in get_algorithm(algorithm).phases


def package_parts(name: str, framework: str, algorithm: str) -> dict[str, str]:
    """What the templates fill in: names, the algorithms served, the parity spec."""
    served = ", ".join(f'"{a}"' for a in _served(algorithm))
    return {"name": name, "framework": framework, "algorithm": algorithm,
            "module": "metabench_" + name.replace("-", "_"),
            "cls": "".join(w.capitalize() for w in name.split("-")),
            "algorithms": f"({served}{',' if len(_served(algorithm)) == 1 else ''})",
            "algorithm_list": f"[{served}]", "spec": PARITY_SPEC[_has_inner_loop(algorithm)]}


def render(name: str, framework: str, algorithm: str) -> dict[str, str]:
    """The package's files, relative path -> text."""
    p, inner = package_parts(name, framework, algorithm), _has_inner_loop(algorithm)
    todo = {f"todo_{k}": _comment(v) for k, v in TODO.get(algorithm, _generic_todo(algorithm)).items()}
    base = ""
    if framework in BASES:
        cls, gives = BASES[framework]
        base = textwrap.fill(f"{framework} is built into metabench: subclass {cls} instead of Adapter. "
                             f"It provides {gives}; the backend methods below are then already written.",
                             100, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False) + "\n"
    module = MODULE.substitute(
        p, **todo, base=base,
        n_out='self.params["head.bias"].shape[0]' if get_algorithm(algorithm).has_head
        else "batch.shape.n_way",
        inner_step=INNER_STEP.substitute(todo) if inner else "",
        adapt="[dict(self.params) for _ in range(len(batch))]  # PLACEHOLDER: every task unadapted" if inner
        else "self._placeholder_outputs(batch)  # PLACEHOLDER: zeros")
    return {"pyproject.toml": PYPROJECT.substitute(p), f"{p['module']}.py": module,
            f"tests/test_{p['module']}.py": TEST.substitute(p)}


def new_adapter(name: str, framework: str, algorithm: str, directory: str | Path = ".") -> Path:
    """Write the package ``directory/metabench-NAME``; refuse (``MetabenchError``, one line)
    a bad name, an empty framework, an unknown algorithm or an existing folder."""
    from bench import registry

    if not NAME.match(name):
        raise MetabenchError(f"new-adapter: name {name!r} must be lowercase letters and digits, words joined "
                             "by '-', e.g. mylib-protonet")
    if not framework.strip() or not re.fullmatch(r"[A-Za-z0-9_.-]+", framework):
        raise MetabenchError(f"new-adapter: --framework {framework!r} must be a non-empty word, e.g. mylib")
    get_algorithm(algorithm)  # unknown: one line naming the known ones
    if name in registry.entries():
        raise MetabenchError(f"new-adapter: an adapter named {name} is already registered; choose another name")
    root = Path(directory) / f"metabench-{name}"
    if root.exists():
        raise MetabenchError(f"new-adapter: {root} already exists; remove it or choose another --dir")
    for rel, text in render(name, framework, algorithm).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def next_steps(root: Path, name: str, algorithm: str) -> list[str]:
    """The commands that take the skeleton to a checked, timed adapter."""
    spec = PARITY_SPEC[_has_inner_loop(algorithm)]
    return [f"pip install -e {root}",
            f"metabench check {name}            # the contract passes; parity fails until the maths is written",
            f"metabench parity --adapters {name} --algorithms {','.join(_served(algorithm))} --specs {spec}",
            f"metabench run --profile smoke --adapters {name}"]
