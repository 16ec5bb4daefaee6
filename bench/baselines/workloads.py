"""The two workloads of the baseline comparison, built from the specs as the harness
builds a cell: the spec's shapes and hyperparameters (with this table's few overrides of
the ``[maml]`` section), the canonical initial weights, one training meta-batch."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

ALGORITHM = "maml"  # second order


@dataclass(frozen=True)
class Workload:
    name: str
    spec: str
    maml_overrides: dict = field(default_factory=dict)  # fields of the spec's [maml] section

    def build(self, data_dir=None, cache_dir=None):
        """(spec, adapter config, initial params, one training meta-batch as numpy)."""
        from bench.algorithms import get as get_algorithm
        from bench.episodes import sampler_for
        from bench.models import init_params
        from bench.spec import load_spec

        spec = load_spec(self.spec).for_algorithm(ALGORITHM)
        spec = replace(spec, maml=replace(spec.maml, **self.maml_overrides))
        config = get_algorithm(ALGORITHM).adapter_config(spec)
        params = init_params(spec, ALGORITHM)
        sampler = sampler_for(spec, "train", ALGORITHM, data_dir=data_dir, cache_dir=cache_dir)
        batch = sampler.batch(0, spec.meta_batch_size(ALGORITHM))
        return spec, config, params, batch


WORKLOADS = {
    # Finn et al.'s sinusoid: MLP 1-40-40-1, 10 support and 10 query points, meta-batch 25
    "sinusoid": Workload("sinusoid", "sinusoid-10shot"),
    # Conv-4 with BatchNorm, 5-way 1-shot, 15 query images per class, 4 tasks
    "omniglot": Workload("omniglot", "omniglot-5w1s", {"train_n_query": 15, "meta_batch_size": 4}),
}


def describe(spec, config) -> str:
    """The workload's shapes in one line, for the report."""
    s, m = config.train_shape, config.model
    body = f"MLP 1-{m.hidden}-{m.hidden}-1" if config.regression else \
        f"Conv-4 {m.hidden} filters, BatchNorm, {m.image_size}x{m.image_size}"
    return (f"{spec.name}: {body}; {s.n_way}-way {s.k_shot}-shot, {s.n_query} query per class; "
            f"meta-batch {spec.maml.meta_batch_size}; {config.inner.steps} inner step(s), inner lr "
            f"{config.inner.lr:g}; Adam lr {config.meta_optimizer.lr:g}")


def batch_digest(batch) -> str:
    """sha256 (first 16 hex digits) of the meta-batch's arrays: every framework's process
    must report the same one."""
    h = hashlib.sha256()
    for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
