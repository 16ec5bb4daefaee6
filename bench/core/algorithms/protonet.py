"""Prototypical Networks (Snell et al. 2017): class prototypes are the mean embedding of the
support samples; logits are negative squared Euclidean distances to the prototypes. No
inner loop and no head; the step size may halve on a schedule (``lr_halve_every``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core.algorithms.base import Algorithm

if TYPE_CHECKING:
    from bench.core.algorithms.base import AdapterConfig
    from bench.core.spec import EpisodeShape, EpisodeSpec


class ProtoNetAlgorithm(Algorithm):
    def train_shape(self, spec: EpisodeSpec) -> EpisodeShape:
        """Training episodes may have more classes (Snell: 60-way) and their own query size."""
        from bench.core.spec import EpisodeShape

        e, p = spec.episode, spec.protonet
        return EpisodeShape(p.train_n_way or e.n_way, e.k_shot, p.train_n_query or e.n_query)

    def step_flops(self, phase: str, config: AdapterConfig, tasks: int) -> float | None:
        """Per episode: support and query embedded in one forward pass; the outer step adds
        its backward pass. Prototypes and distances are not counted (no matrix product)."""
        from bench.core.flops import BACKWARD, body_forward

        shape = config.test_shape if phase == "adapt" else config.train_shape
        embed = body_forward(config, shape.n_way * (shape.k_shot + shape.n_query))
        if phase == "adapt":
            return tasks * embed
        if phase == "outer_step":
            return tasks * (1 + BACKWARD) * embed
        return None


PROTONET = ProtoNetAlgorithm("protonet", "protonet", ("outer_step", "adapt"),
                             "Prototypical Networks: class means of embeddings, negative squared distances",
                             has_head=False)
