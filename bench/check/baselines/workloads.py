"""The workloads of the baseline comparison, built from the specs as the harness builds a
cell: the spec's shapes and hyperparameters (with a workload's few overrides), the
canonical initial weights, one training meta-batch.

Two named workloads (``WORKLOADS``), and a grid of shapes (``GRIDS``, ``--grid``) whose
names say their shape: ``maml-5w1s-15q-mb4-1step`` (way, shot, query images per class,
meta-batch, inner steps), ``protonet-60w1s-5q`` (one training episode per step)."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field, replace

import numpy as np

ALGORITHM = "maml"  # second order


@dataclass(frozen=True)
class Workload:
    name: str
    spec: str
    maml_overrides: dict = field(default_factory=dict)  # fields of the spec's [maml] section
    algorithm: str = ALGORITHM
    episode_overrides: dict = field(default_factory=dict)  # fields of [episode] (way, shot)
    protonet_overrides: dict = field(default_factory=dict)  # fields of [protonet]

    def build(self, data_dir=None, cache_dir=None):
        """(spec, adapter config, initial params, one training meta-batch as numpy)."""
        from bench.core.algorithms import get as get_algorithm
        from bench.core.episodes import sampler_for
        from bench.core.models import init_params
        from bench.core.spec import load_spec

        spec = load_spec(self.spec)
        spec = replace(spec, episode=replace(spec.episode, **self.episode_overrides))
        spec = spec.for_algorithm(self.algorithm)
        if self.maml_overrides:
            spec = replace(spec, maml=replace(spec.maml, **self.maml_overrides))
        if self.protonet_overrides:
            spec = replace(spec, protonet=replace(spec.protonet, **self.protonet_overrides))
        config = get_algorithm(self.algorithm).adapter_config(spec)
        params = init_params(spec, self.algorithm)
        sampler = sampler_for(spec, "train", self.algorithm, data_dir=data_dir, cache_dir=cache_dir)
        batch = sampler.batch(0, spec.meta_batch_size(self.algorithm))
        return spec, config, params, batch


WORKLOADS = {
    # Finn et al.'s sinusoid: MLP 1-40-40-1, 10 support and 10 query points, meta-batch 25
    "sinusoid": Workload("sinusoid", "sinusoid-10shot"),
    # Conv-4 with BatchNorm, 5-way 1-shot, 15 query images per class, 4 tasks
    "omniglot": Workload("omniglot", "omniglot-5w1s", {"train_n_query": 15, "meta_batch_size": 4}),
}


# The grid of shapes (issue 23), around the cpu profile's Omniglot MAML (5-way 1-shot, 1
# query per class, meta-batch 8, 1 inner step): query size x meta-batch in full, then way and
# inner steps each at two query sizes; ProtoNet's training episodes by way and shot. Every
# shape of the full cross product would take hours on 2 cores (the largest, 20-way 15-query
# x 32 tasks x 5 steps, alone ~minutes a round); these hold each axis's every value.
MAML_SHAPES = ([(5, 1, q, mb, 1) for q, mb in itertools.product((1, 5, 15), (1, 4, 8, 32))]
               + [(20, 1, q, 4, 1) for q in (1, 5)] + [(5, 1, q, 4, 5) for q in (1, 15)])
PROTONET_SHAPES = [(way, shot, 5) for way in (5, 20, 60) for shot in (1, 5)]
MAML_NAME = re.compile(r"maml-(\d+)w(\d+)s-(\d+)q-mb(\d+)-(\d+)step")
PROTONET_NAME = re.compile(r"protonet-(\d+)w(\d+)s-(\d+)q")


def maml_name(way, shot, query, mb, steps) -> str:
    return f"maml-{way}w{shot}s-{query}q-mb{mb}-{steps}step"


def protonet_name(way, shot, query) -> str:
    return f"protonet-{way}w{shot}s-{query}q"


GRIDS = {"maml": [maml_name(*s) for s in MAML_SHAPES], "protonet": [protonet_name(*s) for s in PROTONET_SHAPES]}
GRIDS["all"] = GRIDS["maml"] + GRIDS["protonet"]


def workload(name: str) -> Workload:
    """A named workload, or a grid shape parsed from its name; KeyError for neither."""
    if name in WORKLOADS:
        return WORKLOADS[name]
    if m := MAML_NAME.fullmatch(name):
        way, shot, query, mb, steps = map(int, m.groups())
        return Workload(name, "omniglot-5w1s", {"train_n_query": query, "meta_batch_size": mb, "inner_steps": steps},
                        episode_overrides={"n_way": way, "k_shot": shot})
    if m := PROTONET_NAME.fullmatch(name):
        way, shot, query = map(int, m.groups())
        return Workload(name, "omniglot-5w1s", algorithm="protonet", episode_overrides={"k_shot": shot},
                        protonet_overrides={"train_n_way": way, "train_n_query": query, "meta_batch_size": 1})
    raise KeyError(name)


def describe(spec, config) -> str:
    """The workload's shapes in one line, for the report."""
    s, m = config.train_shape, config.model
    body = f"MLP 1-{m.hidden}-{m.hidden}-1" if config.regression else \
        f"Conv-4 {m.hidden} filters, BatchNorm, {m.image_size}x{m.image_size}"
    if config.algorithm == "protonet":
        return (f"{spec.name} ProtoNet: {body}; {s.n_way}-way {s.k_shot}-shot, {s.n_query} query per class; "
                f"{spec.protonet.meta_batch_size} episode(s) per step; Adam lr {config.meta_optimizer.lr:g}")
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
