"""The generated suite of autograd-protonet: the adapter contract, then parity with PyTorch
(the same numbers in float64 to 1e-9, and in float32 within tolerance)."""

import pytest

from bench.check import contract as check
from bench.check import parity

NAME = "autograd-protonet"
ALGORITHMS = ["protonet"]  # those it serves


def test_contract():
    """What the harness relies on (bench/check/contract.py): shapes, float64 computed at float64
    precision, determinism, an Adam step, a compilation mode metabench knows."""
    results = check.run_contract(NAME)
    assert results and all(r.ok for r in results), check.format_results(NAME, results)


@pytest.mark.parity
def test_parity_with_pytorch():
    """Support losses, adapted query logits, meta-gradient and parameters after one Adam step
    equal PyTorch's on the same weights and episodes, in float64 (1e-9) and float32."""
    failed = parity.run_parity(adapters=[NAME], specs=["omniglot-5w1s"], algorithms=ALGORITHMS,
                               batch_size=2)
    assert failed == 0, "parity with PyTorch failed: the table above says where"


@pytest.mark.parity
def test_quick_parity_as_metabench_check():
    """What `metabench check` compares, in seconds (16 filters, 2 tasks), on omniglot-5w1s:
    Conv-4 on Omniglot (BatchNorm and max-pool)."""
    failed = parity.run_parity(adapters=[NAME], specs=parity.check_specs(ALGORITHMS),
                               algorithms=ALGORITHMS, batch_size=2, quick=True)
    assert failed == 0, "quick parity with PyTorch failed: the table above says where"
