"""A throwaway plugin package, built in a temporary folder and installed by pip (an entry
point only: nothing in this project is edited), used through ``metabench list``, ``check``,
``parity`` and ``run``. Four planted bugs must be caught, each by the tool whose job it
is, with a message that says what differs:

- a wrong sign in MAML's inner update: parity, at the adapted query outputs;
- a ProtoNet whose distance is not squared: parity, at the episode loss, after the body;
- BatchNorm's epsilon wrong: parity, at the episode loss, in the body's first block;
- a sync that does not wait (JAX's asynchronous dispatch): ``check``'s sync check.
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
import torch

from bench.registry import AdapterEntry
from implementations.jax.protonet import JaxProtoNet
from implementations.torch.maml import TorchMAML
from implementations.torch.protonet import TorchProtoNet, prototypes


class SignFlippedMAML(TorchMAML):
    """The inner update climbs the support loss: params + lr * grad."""
    def _make_adapt(self, steps):
        def adapt(params, x, y):
            for _ in range(steps):
                g = torch.func.grad(self.loss)(params, x, y)
                params = {k: params[k] + self.inner_lr * g[k] for k in params}
            return params
        return adapt


class UnsquaredProtoNet(TorchProtoNet):
    """Euclidean distance where Snell et al. use its square."""
    def _episode_logits(self, params, sx, qx):
        from implementations.torch import common
        n_support = sx.shape[0]
        z = common.conv4(params, torch.cat([sx, qx]), self._bn, self._eps, norm=common.fused_batch_norm)
        protos = prototypes(z[:n_support], n_support // self._k_shot)
        return -((z[n_support:, None, :] - protos[None]) ** 2).sum(-1).sqrt()


class WrongEpsProtoNet(TorchProtoNet):
    """BatchNorm's epsilon 100x the spec's."""
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._eps *= 100


class NoSyncProtoNet(JaxProtoNet):
    """Returns before JAX has computed the step."""
    def sync(self, outputs=None):
        pass


class FaithfulProtoNet(TorchProtoNet):
    """No bug: the built-in maths under another name."""


ENTRIES = [
    AdapterEntry("throwaway-sign", "torch", ("maml",), "metabench_throwaway:SignFlippedMAML", default=False),
    AdapterEntry("throwaway-unsquared", "torch", ("protonet",), "metabench_throwaway:UnsquaredProtoNet",
                 default=False),
    AdapterEntry("throwaway-eps", "torch", ("protonet",), "metabench_throwaway:WrongEpsProtoNet", default=False),
    AdapterEntry("throwaway-nosync", "jax", ("protonet",), "metabench_throwaway:NoSyncProtoNet", default=False),
    AdapterEntry("throwaway-faithful", "torch", ("protonet",), "metabench_throwaway:FaithfulProtoNet",
                 default=False),
]
'''

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
    for name in ("throwaway-sign", "throwaway-unsquared", "throwaway-nosync", "throwaway-faithful"):
        assert name in out


def test_check_names_the_sync_that_does_not_wait(plugin_env):
    proc = metabench(plugin_env, "check", "throwaway-nosync", "--no-parity")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.strip().startswith("FAIL")]
    assert len(failed) == 1 and "sync waits for the step's results" in failed[0], proc.stdout
    assert "reading the results right after sync() took" in failed[0]
    assert "longer than once the device was idle" in failed[0]


def test_parity_finds_where_each_planted_bug_starts(plugin_env):
    """Torch variants are compared with torch's reference adapter like any framework;
    the diagnosis names the first quantity that differs in float64."""
    proc = metabench(plugin_env, "parity", "--quick", "--adapters", "throwaway-sign,throwaway-unsquared,"
                     "throwaway-eps,throwaway-faithful", "--specs", "sinusoid-10shot,omniglot-5w1s", "--algorithms",
                     "maml,protonet", "--batch-size", "2")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert ("FAILED for 4 of 5 comparisons: throwaway-sign on sinusoid-10shot / maml, throwaway-sign on "
            "omniglot-5w1s / maml, throwaway-unsquared on omniglot-5w1s / protonet, throwaway-eps on "
            "omniglot-5w1s / protonet") in out
    signs = [line for line in out.splitlines() if line.startswith("FAILED throwaway-sign")]
    assert len(signs) == 2
    for sign in signs:
        assert "float64 differs from torch first at query_logits" in sign and "inner update" in sign
        assert "support_loss agrees" in sign
    unsquared = next(line for line in out.splitlines() if line.startswith("FAILED throwaway-unsquared"))
    assert "first at support_loss" in unsquared and "distance (squared Euclidean)" in unsquared
    assert "meta-gradient by parameter: conv1.weight" in unsquared
    # the body's blocks, compared one by one, say whether the forward pass parts inside the body
    assert "the body's activations agree at every block (block1, block2, block3, block4)" in unsquared
    eps = next(line for line in out.splitlines() if line.startswith("FAILED throwaway-eps"))
    assert "first at support_loss" in eps and "the body's activations first differ at block1" in eps
    assert not any(line.startswith("FAILED throwaway-faithful") for line in out.splitlines())


def test_run_times_the_plugin_and_the_summary_marks_a_failed_one(plugin_env, tmp_path):
    proc = metabench(plugin_env, "run", "--profile", "smoke", "--adapters", "throwaway-faithful,throwaway-unsquared",
                     "--specs", "omniglot-5w1s", "--phases", "parity,timing", "--results-dir", str(tmp_path),
                     "--run-id", "throwaway", "--device", "cpu")
    run = Path(tmp_path) / "throwaway"
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]   # parity failed for one
    assert (run / "cells" / "throwaway-faithful__protonet__omniglot-5w1s" / "status.json").exists()
    summary = (run / "summary.md").read_text()
    assert "FAILED for throwaway-unsquared" in summary
    assert "- parity throwaway-unsquared vs torch on omniglot-5w1s / protonet: float64 differs" in summary
    # what else used the CPU while the cells ran is recorded, phase by phase
    load = next(line for line in summary.splitlines() if line.startswith("- machine load: "))
    assert "quiet" in load or "BUSY" in load
