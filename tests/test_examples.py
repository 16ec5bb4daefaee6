"""docs/examples/metabench-autograd-protonet: a fourth framework (autograd) as a plugin
package, the `metabench new-adapter` skeleton with its maths written. Installed by pip into a
temporary folder (nothing in this project names it), it must keep the contract and compute
torch's ProtoNet: float64 parity at 1e-9, float32 within tolerance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.check.parity import QUANTITIES

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "metabench-autograd-protonet"


@pytest.fixture(scope="module")
def example_env(tmp_path_factory, data_env) -> dict[str, str]:
    try:
        import autograd  # noqa: F401
    except ImportError:
        pytest.fail("autograd is not installed: `nox -s tests` installs it (or pip install autograd)")
    site = tmp_path_factory.mktemp("autograd-site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(site), str(EXAMPLE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {**data_env, "PYTHONPATH": f"{data_env['PYTHONPATH']}:{site}"}


def metabench(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900)


def test_a_fourth_framework_keeps_the_contract(example_env):
    proc = metabench(example_env, "check", "autograd-protonet", "--no-parity")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "autograd-protonet: 9 of 9 contract checks pass" in proc.stdout


def test_a_fourth_framework_computes_torchs_protonet(example_env, tmp_path):
    out = tmp_path / "parity.csv"
    # quick: 16 filters, ProtoNet at the test shape (numpy autograd's 60-way training episodes
    # took minutes); the same maths on real Omniglot episodes, both tiers
    proc = metabench(example_env, "parity", "--quick", "--adapters", "autograd-protonet", "--specs", "omniglot-5w1s",
                     "--algorithms", "protonet", "--batch-size", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    row = pd.read_csv(out).iloc[0]
    assert row["framework"] == "autograd" and bool(row["ok64"]) and bool(row["ok32"])
    assert max(row[f"{q}_64"] for q in QUANTITIES) <= 1e-9
