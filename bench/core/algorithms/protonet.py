"""Prototypical Networks (Snell et al. 2017): class prototypes are the mean embedding of the
support samples; logits are negative squared Euclidean distances to the prototypes. No
inner loop and no head; the step size may halve on a schedule (``lr_halve_every``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.core.algorithms.base import AdapterConfig, Algorithm, Check, EpisodeShape, Fail, Settings, SpecView, setting

DISTANCES = ("squared_euclidean",)


@dataclass(frozen=True)
class ProtoNetSettings(Settings):
    """The ``[protonet]`` section (``docs/spec-format.md``)."""

    train_n_way: int = setting(0, above=False)    # classes per training episode; 0: episode.n_way
    train_n_query: int = setting(0, above=False)  # 0: episode.n_query
    distance: str = setting("squared_euclidean", choices=DISTANCES)
    meta_lr: float = setting(1e-3)
    lr_halve_every: int = setting(2000, above=False)  # Adam step size halved every so many episodes; 0: never
    meta_batch_size: int = setting(1)


class ProtoNetAlgorithm(Algorithm):
    train_way_field = "train_n_way"
    train_query_field = "train_n_query"

    def validate(self, settings: ProtoNetSettings, spec: SpecView, fail: Fail) -> None:
        if spec.is_regression:
            fail(self.section, "Prototypical Networks classify; the sinusoid dataset is regression: "
                 f"remove the [{self.section}] section")

    def quick_settings(self, settings: ProtoNetSettings) -> ProtoNetSettings:
        """Train at the test episode's shape: Snell's 60-way training episodes are most of
        a full comparison's time."""
        return replace(settings, train_n_way=0, train_n_query=0)

    def train_shape(self, spec: SpecView) -> EpisodeShape:
        """Training episodes may have more classes (Snell: 60-way) and their own query size."""
        e, p = spec.episode, spec.settings(self.section)
        return EpisodeShape(p.train_n_way or e.n_way, e.k_shot, p.train_n_query or e.n_query)

    def training_shapes(self, spec: dict) -> str:
        e, p = spec.get("episode", {}), spec.get(self.section) or {}
        return (f"Conv-4, {p.get('train_n_way')}-way {e.get('k_shot')}-shot {p.get('train_n_query')}-query training "
                f"episodes")

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


PROTONET = ProtoNetAlgorithm(
    "protonet", "protonet", ProtoNetSettings, ("outer_step", "adapt"),
    "Prototypical Networks: class means of embeddings, negative squared distances",
    has_head=False, has_inner_loop=False, regression=False,
    diagnosis=Check(
        support_loss="the episode loss differs: the embedding (model, BatchNorm, padding, pooling), "
                     "the prototypes (class means), the distance (squared Euclidean) or the loss",
        query_logits="the episode loss agrees, the query logits (negative squared distances to the "
                     "prototypes) do not",
        meta_grad="the logits agree, the gradient does not: the loss's mean over episodes, or one "
                  "layer's gradient"),
    maths={
        "outer_step": "embed each episode's support and query in one pass (Conv-4, BatchNorm on the "
                      "batch's statistics: bench/core/models.py); prototypes = class means of the support "
                      "embeddings (labels are class-major); logits = -squared distances of the queries to "
                      "the prototypes; loss = mean over episodes of the query cross-entropy; its gradient "
                      "w.r.t. self.params; one Adam step (self._adam_step); return the loss.",
        "adapt": "each episode's prototypes [n_way, d] and query embeddings [n_query_total, d], as in "
                 "outer_step, from self.params.",
        "predict": "-squared distances of the query embeddings to the prototypes (self.adapt(batch)), "
                   "[B, n_query_total, n_way].",
        "probe": "from self.params, changing nothing: support_loss [B] (no inner loop: each episode's "
                 "query loss), query_logits [B, n_query_total, n_way] (the -squared distances), "
                 "meta_grad/<param> (the gradient outer_step applies, canonical shape).",
    })
