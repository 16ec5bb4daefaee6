"""The adapter contract, generated from the registry: every registered adapter, built-in or
plugin, is checked by ``bench.check.contract`` on small synthetic episodes (parity has its own tests:
tests/test_parity.py, and ``metabench check`` runs it for one adapter)."""

from __future__ import annotations

import pytest

from bench.check import contract as check
from bench.core import registry

ENTRIES = sorted(registry.entries())


@pytest.mark.parametrize("name", ENTRIES)
def test_registered_adapter_keeps_the_contract(name):
    results = check.run_contract(name, threads=1)
    assert results and all(r.ok for r in results), check.format_results(name, results)


def test_a_planted_bug_is_named_by_the_check_that_catches_it(monkeypatch):
    """An adapter whose probe moves its parameters (state leaking out of a 'pure' probe)."""
    from implementations.torch.maml import TorchMAML

    original = TorchMAML.probe

    def leaky_probe(self, batch):
        out = original(self, batch)
        self.set_params({k: v + 1 for k, v in self.get_params().items()})
        return out

    monkeypatch.setattr(TorchMAML, "probe", leaky_probe)
    failed = [r for r in check.run_contract("torch-maml", threads=1) if not r.ok]
    assert {r.check for r in failed} == {"probe: support loss, query outputs, meta-gradient per parameter"}
    assert all("probe changed the parameters" in r.detail for r in failed)
