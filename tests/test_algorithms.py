"""The algorithm layer: what the harness asks of an algorithm, answered without a framework."""

from __future__ import annotations

import numpy as np
import pytest

from bench.core.algorithms import ANIL, FOMAML, MAML, PROTONET, MetaOptimizer, all_algorithms, get
from bench.core.errors import MetabenchError
from bench.core.models import param_shapes
from bench.core.spec import EpisodeShape, load_spec

OMNIGLOT = load_spec("omniglot-5w1s")


def test_every_algorithm_is_registered_once_by_name():
    assert list(all_algorithms())[:4] == ["maml", "fomaml", "anil", "protonet"]
    assert get("anil") is ANIL
    with pytest.raises(MetabenchError, match="unknown algorithm 'reptile'; known: maml, fomaml, anil, protonet"):
        get("reptile")


def test_a_spec_configures_the_algorithms_whose_section_it_has():
    assert OMNIGLOT.algorithms() == ("maml", "fomaml", "anil", "protonet")
    assert load_spec("sinusoid-10shot").algorithms() == ("maml", "fomaml", "anil")


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
