"""``python -m bench.baselines.precision`` on eager torch alone: its float32 meta-gradient
against its own float64 on the baselines' Omniglot batch, and that batch's near-ties."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_eager_torch_float32_is_near_float64_and_the_batch_has_near_ties(data_env):
    proc = subprocess.run([sys.executable, "-m", "bench.baselines.precision", "--adapters", "torch-maml",
                           "--threads", "1"], cwd=REPO, env=data_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    error = float(re.search(r"torch-maml: float32 meta-gradient (\S+) from", proc.stdout).group(1))
    assert 0 < error < 1e-4  # float32 rounding, within parity's tolerance
    ties = int(re.search(r"cannot order in the batch: (\d+)", proc.stdout).group(1))
    assert ties > 0  # 163 on 2 threads: the batch's 300 query images are full of them
