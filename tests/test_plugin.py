"""A throwaway plugin package, built in a temporary folder and installed by pip (an entry
point only: nothing in this project is edited), used through ``metabench list``, ``check``,
``parity`` and ``run``. Ten planted bugs, each a subclass of a built-in torch adapter, plus
a correct control that only sleeps. ``metabench check`` must catch every bug, each by the
check whose job it is, with a message that says what differs; a run must mark every one of
them in its tables and never call one faster; the control passes everything:

- the second-order term dropped while registered as ``maml``: parity, at the meta-gradient;
- the inner step size times 1.01, and a wrong sign in the inner update: parity, at the
  adapted query outputs;
- a ProtoNet whose distance is not squared: parity, at the episode loss, after the body;
- BatchNorm's epsilon wrong: parity, at the episode loss, in the body's first block;
- BatchNorm on running statistics (MAML, Conv-4): parity on Omniglot, at the support loss;
- running-statistics BatchNorm only at test time (adapt/predict): parity, at the test-time
  outputs;
- an outer step that skips every third update: the contract (every step must update) and
  parity's trajectory;
- a step run in a worker thread that ``sync`` does not wait for, and one whose ``sync``
  returns after 60% of the step: the contract's sync check.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = "metabench_throwaway"

MODULE = '''
"""Variants of the built-in adapters, each with one planted bug (and one without)."""
import concurrent.futures
import copy
import math
import threading
import time

import torch

from bench.core.registry import AdapterEntry
from implementations.torch import common
from implementations.torch.maml import TorchMAML
from implementations.torch.protonet import TorchProtoNet, prototypes


def running_stats_norm(x, weight, bias, eps):
    """BatchNorm with running statistics at their initial values (mean 0, variance 1)."""
    return x * (1 + eps) ** -0.5 * weight[None, :, None, None] + bias[None, :, None, None]


class FirstOrderAsMAML(TorchMAML):
    """Registered as maml, computes FOMAML: the second-order term dropped."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first_order = True


class InnerLrOffMAML(TorchMAML):
    """The inner step size times 1.01."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner_lr *= 1.01


class SignFlippedMAML(TorchMAML):
    """The inner update climbs the support loss: params + lr * grad (in every task form)."""
    def inner_update(self, params, grads):
        return {**params, **{k: params[k] + self.inner_lr * grads[k] for k in grads}}


class RunningStatsMAML(TorchMAML):
    """BatchNorm normalises with running statistics, in training and at test time."""
    def features(self, params, x):
        if self.regression:
            return super().features(params, x)
        return common.conv4(params, x, self._bn, self._eps, norm=running_stats_norm)


class EvalBNAtTestMAML(TorchMAML):
    """Running-statistics BatchNorm in adapt/predict only (eval mode at test time)."""
    _test_time = False

    def features(self, params, x):
        if self.regression or not self._test_time:
            return super().features(params, x)
        return common.conv4(params, x, self._bn, self._eps, norm=running_stats_norm)

    def predict(self, batch):
        self._test_time = True
        try:
            return super().predict(batch)
        finally:
            self._test_time = False


class SkipEveryThirdMAML(TorchMAML):
    """Every third outer step computes its meta-gradient and never applies it."""
    _calls = 0

    def outer_step(self, batch):
        self._calls += 1
        if self._calls % 3 == 0:
            return self._meta_grad_step(batch)[1]
        return super().outer_step(batch)


class UnsquaredProtoNet(TorchProtoNet):
    """Euclidean distance where Snell et al. use its square."""
    def _episode_logits(self, params, sx, qx):
        n_support = sx.shape[0]
        z = common.conv4(params, torch.cat([sx, qx]), self._bn, self._eps, norm=common.fused_batch_norm)
        protos = prototypes(z[:n_support], n_support // self._k_shot)
        return -((z[n_support:, None, :] - protos[None]) ** 2).sum(-1).sqrt()


class WrongEpsProtoNet(TorchProtoNet):
    """BatchNorm's epsilon 100x the spec's."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._eps *= 100


class _Pending:
    """A step's loss still being computed in the worker: reading it waits, as reading an
    asynchronous device array does."""
    def __init__(self, future):
        self.future = future

    def __float__(self):
        return float(self.future.result())

    def __array__(self, dtype=None, copy=None):
        return self.future.result().detach().cpu().numpy()


def threaded(base, partial):
    """``base`` whose outer step runs in one worker thread (steps stay in order); reading
    the parameters waits for the worker, as reading a device array does. ``sync`` does not
    wait (``partial`` False), or waits only until 60% of the meta-batch's tasks are done
    (``partial`` True: the meta-gradient is computed task by task, same maths)."""
    class Threaded(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._worker = concurrent.futures.ThreadPoolExecutor(1)
            self._last, self._most_done = None, threading.Event()

        def _step(self, batch):
            if not partial:
                return base.outer_step(self, batch)
            n = len(batch)
            grads, loss = {}, 0.0
            for i in range(n):
                task = copy.copy(batch)
                for field in ("support_x", "support_y", "query_x", "query_y"):
                    setattr(task, field, getattr(batch, field)[i:i + 1])
                g, task_loss = self._meta_grad(task)
                grads = {k: grads.get(k, 0) + v / n for k, v in g.items()}
                loss = loss + task_loss / n
                if i + 1 == math.ceil(0.6 * n):
                    self._most_done.set()
            self.apply_meta_grad(grads)
            return loss

        def _drain(self):
            if self._last is not None:
                self._last.result()

        def outer_step(self, batch):
            self._most_done.clear()
            self._last = self._worker.submit(self._step, batch)
            return _Pending(self._last)

        def sync(self, outputs=None):
            if partial and self._last is not None:
                self._most_done.wait()

        def get_params(self):
            self._drain()
            return super().get_params()

        def set_params(self, params):
            if hasattr(self, "_worker"):
                self._drain()
            super().set_params(params)

        def probe(self, batch):
            self._drain()
            return super().probe(batch)

        def predict(self, batch):
            self._drain()
            return super().predict(batch)

    Threaded.__name__ = Threaded.__qualname__ = f"Threaded{base.__name__}"
    return Threaded


NoSyncProtoNet = threaded(TorchProtoNet, partial=False)
PartialSyncMAML = threaded(TorchMAML, partial=True)


class SleepyProtoNet(TorchProtoNet):
    """No bug: the built-in maths, 2 ms slower a step."""
    def outer_step(self, batch):
        loss = super().outer_step(batch)
        time.sleep(0.002)
        return loss


def entry(name, algorithms, cls):
    return AdapterEntry(f"throwaway-{name}", "torch", algorithms, f"metabench_throwaway:{cls}", default=False)


ENTRIES = [
    entry("first-order", ("maml",), "FirstOrderAsMAML"),
    entry("inner-lr", ("maml",), "InnerLrOffMAML"),
    entry("sign", ("maml",), "SignFlippedMAML"),
    entry("running-bn", ("maml",), "RunningStatsMAML"),
    entry("eval-bn-at-test", ("maml",), "EvalBNAtTestMAML"),
    entry("skip-third", ("maml",), "SkipEveryThirdMAML"),
    entry("partial-sync", ("maml",), "PartialSyncMAML"),
    entry("unsquared", ("protonet",), "UnsquaredProtoNet"),
    entry("eps", ("protonet",), "WrongEpsProtoNet"),
    entry("nosync", ("protonet",), "NoSyncProtoNet"),
    entry("sleepy", ("protonet",), "SleepyProtoNet"),
]
'''

# each planted bug, and what must catch it: (contract check or parity quantity, where)
PLANTED = {
    "throwaway-first-order": "parity",
    "throwaway-inner-lr": "parity",
    "throwaway-sign": "parity",
    "throwaway-running-bn": "parity",
    "throwaway-eval-bn-at-test": "parity",
    "throwaway-skip-third": "contract",
    "throwaway-partial-sync": "contract",
    "throwaway-unsquared": "parity",
    "throwaway-eps": "parity",
    "throwaway-nosync": "contract",
}
CONTROL = "throwaway-sleepy"

PYPROJECT = f'''
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "metabench-throwaway"
version = "0.1"

[tool.setuptools]
py-modules = ["{PACKAGE}"]

[project.entry-points."metabench.adapters"]
throwaway = "{PACKAGE}:ENTRIES"
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory, data_env) -> dict[str, str]:
    """The package written to a temporary folder and installed by pip into another one,
    which goes on PYTHONPATH (the project's own environment is left as it was)."""
    src, site = tmp_path_factory.mktemp("throwaway-src"), tmp_path_factory.mktemp("throwaway-site")
    (src / f"{PACKAGE}.py").write_text(textwrap.dedent(MODULE))
    (src / "pyproject.toml").write_text(PYPROJECT)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(site), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(site.glob("metabench_throwaway-0.1.dist-info/entry_points.txt"))
    return {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}:{site}"}


def metabench(env, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_list_shows_the_installed_plugin(plugin_env):
    out = metabench(plugin_env, "list").stdout
    for name in (*PLANTED, CONTROL):
        assert name in out


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: its lines' cells, header first."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def contract_block(out: str, name: str) -> list[str]:
    """``metabench check``'s contract lines for adapter ``name`` (after its header line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: ") and "contract checks pass" in line)
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


def test_check_catches_every_planted_bug_and_passes_the_control(plugin_env):
    """One ``metabench check`` of all eleven (the contract in one torch process, quick
    parity in another): a verdict line per adapter naming what failed, and each parity
    diagnosis names the first quantity that differs in float64."""
    proc = metabench(plugin_env, "check", *PLANTED, CONTROL)
    out = proc.stdout
    assert proc.returncode == 1, out[-5000:] + proc.stderr[-3000:]
    verdict = {line.split(":")[0]: line for line in out.splitlines()
               if line.startswith("throwaway-") and (": FAILED" in line or ": passes" in line)}
    assert verdict[CONTROL] == f"{CONTROL}: passes the contract and quick parity", out[-3000:]
    for name, caught_by in PLANTED.items():
        assert verdict[name].startswith(f"{name}: FAILED: {caught_by}"), (name, verdict.get(name), out[-3000:])
    # the contract names the check, with numbers
    for name in ("throwaway-nosync", "throwaway-partial-sync"):
        assert "contract: sync waits for the step's results" in verdict[name]
        fail = [line for line in contract_block(out, name) if line.startswith("  FAIL")]
        assert len(fail) == 1 and "of CPU work ran after sync() returned" in fail[0], fail
        assert "sync must block" in fail[0]
    skipped = "contract: outer steps: deterministic, finite, each changes the parameters"
    assert skipped in verdict["throwaway-skip-third"]
    assert any("outer step 3 of 4 left the parameters unchanged" in line
               for line in contract_block(out, "throwaway-skip-third"))
    # parity: where each difference starts, in the order the maths computes it
    diagnoses = {}
    for line in out.splitlines():
        if line.startswith("FAILED throwaway-"):
            name, where = line.split()[1], line.split(" on ")[1].split(":")[0]
            diagnoses.setdefault(name, {})[where] = line
    first = lambda name, where: diagnoses[name][where].split("first at ")[1].split()[0]
    for where in ("sinusoid-10shot / maml", "omniglot-5w1s / maml"):
        assert first("throwaway-sign", where) == "query_logits" and "inner update" in diagnoses["throwaway-sign"][where]
        assert first("throwaway-inner-lr", where) == "query_logits"
        assert first("throwaway-first-order", where) == "meta_grad"
        assert "its order (second or first)" in diagnoses["throwaway-first-order"][where]
        assert first("throwaway-skip-third", where) == "trajectory"
    # BatchNorm's bugs show on Conv-4 only: check compares the MAML family on Omniglot too
    for name in ("throwaway-running-bn", "throwaway-eval-bn-at-test"):
        assert set(diagnoses[name]) == {"omniglot-5w1s / maml"}, diagnoses[name]
    assert first("throwaway-running-bn", "omniglot-5w1s / maml") == "support_loss"
    test_time = diagnoses["throwaway-eval-bn-at-test"]["omniglot-5w1s / maml"]
    assert first("throwaway-eval-bn-at-test", "omniglot-5w1s / maml") == "test_outputs"
    assert "BatchNorm's mode at test time" in test_time
    unsquared = diagnoses["throwaway-unsquared"]["omniglot-5w1s / protonet"]
    assert "first at support_loss" in unsquared and "distance (squared Euclidean)" in unsquared
    assert "meta-gradient by parameter: conv1.weight" in unsquared
    # the body's blocks, compared one by one, say whether the forward pass parts inside the body
    assert "the body's activations agree at every block (block1, block2, block3, block4)" in unsquared
    eps = diagnoses["throwaway-eps"]["omniglot-5w1s / protonet"]
    assert "first at support_loss" in eps and "the body's activations first differ at block1" in eps
    # threads and sleeps change no number: both pass parity
    assert not {"throwaway-nosync", "throwaway-partial-sync", CONTROL} & set(diagnoses)


def test_a_run_marks_every_planted_bug_and_never_calls_one_faster(plugin_env, tmp_path):
    """A run checks its adapters before timing them (the contract, cached, and parity):
    every planted bug is marked wherever it is timed; the control is not."""
    adapters = ",".join([*PLANTED, CONTROL])
    proc = metabench(plugin_env, "run", "--profile", "smoke", "--adapters", adapters, "--specs", "omniglot-5w1s",
                     "--phases", "parity,timing", "--results-dir", str(tmp_path), "--run-id", "throwaway",
                     "--device", "cpu")
    run = Path(tmp_path) / "throwaway"
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "cells" / f"{CONTROL}__protonet__omniglot-5w1s" / "status.json").exists()
    assert "[contract] 8 of 11 adapters keep the contract" in proc.stdout
    summary = (run / "summary.md").read_text()
    failures = summary.split("## Failures")[1].split("\n## ")[0]
    for name, caught_by in PLANTED.items():
        assert f"- {caught_by} {name} " in failures, (name, failures)
    assert CONTROL not in failures
    assert "failed parity or the contract check" in summary
    timing = summary.split("## Comparison")[1].split("## Parity details")[0]  # every timing table
    marked = 0
    for table in markdown_tables(timing):
        header, rows = table[0], table[2:]
        for row in rows:
            for name in (*PLANTED, CONTROL):
                if name in row[0]:  # a table with one row per adapter
                    assert (f"{name} †" in row[0]) == (name != CONTROL), row
                    marked += name != CONTROL
            for col, title in enumerate(header):  # a table with one column per adapter
                name = title.split(" (")[0]
                if name in PLANTED and row[col] not in ("", "-"):
                    assert "†" in row[col] and "**" not in row[col], (title, row)
                    marked += 1
                if name == CONTROL:
                    assert "†" not in row[col] and "‡" not in row[col], (title, row)
    assert marked >= 3 * len(PLANTED)  # step times, speedups and first steps at least
    # what else used the CPU while the cells ran is recorded, phase by phase
    load = next(line for line in summary.splitlines() if line.startswith("- machine load: "))
    assert "quiet" in load or "BUSY" in load
