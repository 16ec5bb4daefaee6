"""MAML (Finn et al. 2017) and its first-order form: adapt all parameters by ``inner_steps``
gradient steps on each task's support set, meta-learn through the adaptation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.algorithms.base import Algorithm

if TYPE_CHECKING:
    from bench.spec import EpisodeShape, EpisodeSpec


class MAMLFamily(Algorithm):
    """Algorithms configured by the ``[maml]`` section: training episodes have the
    evaluation's way and shot, and ``maml.train_n_query`` query samples (0: the shot)."""

    def train_shape(self, spec: EpisodeSpec) -> EpisodeShape:
        from bench.spec import EpisodeShape

        e = spec.episode
        return EpisodeShape(e.n_way, e.k_shot, spec.maml.train_n_query or e.k_shot)


MAML = MAMLFamily("maml", "maml", ("inner_step", "outer_step"),
                  "MAML, second order: the meta-gradient flows through the inner gradient steps")
FOMAML = MAMLFamily("fomaml", "maml", ("inner_step", "outer_step"),
                    "first-order MAML: the inner gradients are constants to the meta-gradient",
                    section_overrides={"first_order": True})
