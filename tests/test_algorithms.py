"""The algorithm layer: what the harness asks of an algorithm, answered without a framework."""

from __future__ import annotations

import numpy as np
import pytest

from bench.algorithms import ALGORITHMS, ANIL, FOMAML, MAML, PROTONET, REPTILE, InnerLoop, MetaOptimizer, get
from bench.errors import MetabenchError
from bench.models import param_shapes
from bench.spec import EpisodeShape, load_spec

OMNIGLOT = load_spec("omniglot-5w1s")


def test_every_algorithm_is_registered_once_by_name():
    assert list(ALGORITHMS) == ["maml", "fomaml", "anil", "protonet", "reptile"]
    assert get("anil") is ANIL and get("reptile") is REPTILE
    with pytest.raises(MetabenchError, match="unknown algorithm 'leo'; known: maml, fomaml, anil, protonet, reptile"):
        get("leo")


def test_a_spec_configures_the_algorithms_whose_section_it_has():
    assert OMNIGLOT.algorithms() == ("maml", "fomaml", "anil", "protonet", "reptile")
    assert load_spec("sinusoid-10shot").algorithms() == ("maml", "fomaml", "anil", "reptile")
    assert load_spec("omniglot-5w5s").algorithms() == ("maml", "fomaml", "anil", "protonet")  # no [reptile]


def test_an_algorithm_resolves_its_section_and_nothing_else():
    assert FOMAML.resolve(OMNIGLOT).maml.first_order and not MAML.resolve(OMNIGLOT).maml.first_order
    assert ANIL.resolve(OMNIGLOT) == OMNIGLOT
    assert OMNIGLOT.for_algorithm("fomaml").maml.first_order


def test_training_episodes_and_phases_come_from_the_algorithm():
    assert MAML.train_shape(OMNIGLOT) == ANIL.train_shape(OMNIGLOT) == EpisodeShape(5, 1, 1)
    assert PROTONET.train_shape(OMNIGLOT) == EpisodeShape(60, 1, 5)   # Snell: 60-way training
    assert MAML.phases == ("inner_step", "outer_step") and PROTONET.phases == ("outer_step", "adapt")
    assert "head.weight" in param_shapes(OMNIGLOT, "anil") and "head.weight" not in param_shapes(OMNIGLOT, "protonet")


def test_the_meta_optimizer_and_its_halving_schedule():
    assert MAML.meta_optimizer(OMNIGLOT) == MetaOptimizer(1e-3, 0, 0.9, 0.999, 1e-8)
    proto = PROTONET.meta_optimizer(OMNIGLOT)
    assert proto.halve_every == 2000
    assert [proto.step_size(t) for t in (0, 1999, 2000, 4000)] == [1e-3, 1e-3, 5e-4, 2.5e-4]


def test_the_harness_computes_accuracy_and_mse_from_predictions():
    logits = np.array([[[2.0, 1.0], [0.0, 3.0], [1.0, 1.0]]])   # argmax 0, 1, 0 (a tie goes to the first)
    assert MAML.metric(logits, np.array([[0, 0, 0]]), regression=False).tolist() == [2 / 3]
    outputs = np.array([[[1.0], [3.0]]])
    assert MAML.metric(outputs, np.array([[[0.0], [1.0]]]), regression=True).tolist() == [2.5]


def test_reptile_reads_its_own_section_and_trains_on_train_shots_with_one_query_per_class():
    assert REPTILE.section == "reptile" and REPTILE.phases == ("inner_step", "outer_step") and REPTILE.has_head
    assert REPTILE.resolve(OMNIGLOT) == OMNIGLOT.for_algorithm("reptile") == OMNIGLOT
    assert REPTILE.train_shape(OMNIGLOT) == EpisodeShape(5, 10, 1)          # Nichol: 10 shots per class
    sinusoid = load_spec("sinusoid-10shot")
    assert REPTILE.train_shape(sinusoid) == EpisodeShape(1, 10, 1)          # train_shots 0: the episode's k_shot
    assert REPTILE.inner_loop(OMNIGLOT) == InnerLoop(0.1, 5, 10, first_order=True)
    assert REPTILE.meta_optimizer(OMNIGLOT) == MetaOptimizer(1e-3) and REPTILE.meta_batch_size(OMNIGLOT) == 5
    assert "head.weight" in param_shapes(OMNIGLOT, "reptile")
    config = REPTILE.adapter_config(OMNIGLOT)
    assert config.train_shape == EpisodeShape(5, 10, 1) and config.test_shape == OMNIGLOT.episode
    assert config.inner.first_order and config.meta_batch_size == 5


def test_reptile_step_flops_count_forward_and_backward_passes_on_the_support_set():
    from bench.flops import BACKWARD, forward

    for spec in (OMNIGLOT, load_spec("sinusoid-10shot")):
        config = REPTILE.adapter_config(spec)
        n_out = 1 if spec.is_regression else spec.episode.n_way
        train = (1 + BACKWARD) * forward(config, config.train_shape.n_way * config.train_shape.k_shot, n_out)
        test = (1 + BACKWARD) * forward(config, spec.episode.n_way * spec.episode.k_shot, n_out)
        assert REPTILE.step_flops("inner_step", config, 3) == 3 * train
        assert REPTILE.step_flops("outer_step", config, 3) == 3 * config.inner.steps * train
        assert REPTILE.step_flops("adapt", config, 3) == 3 * config.inner.test_steps * test
        assert REPTILE.step_flops("predict", config, 3) is None
