"""The backbones, described without a framework: parameter names, shapes and initialisation.

Canonical parameter layout (numpy float32, PyTorch's conventions), shared by every adapter's
``get_params`` / ``set_params``; adapters transpose on import and export:

- Conv-4 (images): for ``i`` in 1..4, ``conv{i}.weight`` [out, in, 3, 3] (OIHW), and with
  BatchNorm ``bn{i}.weight`` (gamma) [out], ``bn{i}.bias`` (beta) [out]; without BatchNorm,
  ``conv{i}.bias`` [out] instead. A bias before BatchNorm is removed by its mean subtraction:
  its true gradient is zero and its computed gradient float32 noise, which Adam's
  normalisation would turn into full-size, framework-dependent updates.
  Each block: 3x3 conv, stride 1, zero padding 1 ("same") -> BatchNorm ->
  ReLU -> 2x2 max-pool, stride 2, floor ("valid"). Features are flattened in (C, H, W)
  order, so a 28x28 input gives 64 x 1 x 1 features.
- MAML's classifier head: ``head.weight`` [n_way, features], ``head.bias`` [n_way].
  ProtoNet has no head: the flattened features are the embedding.
- MLP (sinusoid): ``fc1`` [hidden, 1], ``fc2`` [hidden, hidden], ``head`` [1, hidden], each
  with a bias; ReLU between.

Initialisation (one numpy draw per spec seed, so every framework starts from the same
weights): Glorot-uniform weights (fan-in = in x kh x kw, fan-out = out x kh x kw), as in
the MAML reference for its convolutions; zero biases; BatchNorm gamma 1, beta 0.
"""

from __future__ import annotations

import numpy as np

from bench.core.algorithms import get as get_algorithm
from bench.core.config import CONV_BLOCKS
from bench.core.spec import EpisodeSpec

_INIT_STREAM = 2000  # spawn key of the initialisation draw


def feature_size(spec: EpisodeSpec) -> int:
    """Length of the Conv-4 embedding for the spec's images."""
    side = spec.data.image_size
    for _ in range(CONV_BLOCKS):
        side //= 2
    if side < 1:
        raise ValueError("image_size too small for four 2x2 poolings")
    return spec.model.hidden * side * side


def param_shapes(spec: EpisodeSpec, algorithm: str) -> dict[str, tuple[int, ...]]:
    """Ordered parameter names and shapes of the spec's model for ``algorithm``."""
    h = spec.model.hidden
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.is_regression:
        shapes["fc1.weight"], shapes["fc1.bias"] = (h, 1), (h,)
        shapes["fc2.weight"], shapes["fc2.bias"] = (h, h), (h,)
        shapes["head.weight"], shapes["head.bias"] = (1, h), (1,)
        return shapes
    cin = 1
    for i in range(1, CONV_BLOCKS + 1):
        shapes[f"conv{i}.weight"] = (h, cin, 3, 3)
        if spec.model.batch_norm == "none":
            shapes[f"conv{i}.bias"] = (h,)
        else:
            shapes[f"bn{i}.weight"], shapes[f"bn{i}.bias"] = (h,), (h,)
        cin = h
    if get_algorithm(algorithm).has_head:
        n_out = spec.episode.n_way
        shapes["head.weight"], shapes["head.bias"] = (n_out, feature_size(spec)), (n_out,)
    return shapes


def init_params(spec: EpisodeSpec, algorithm: str, seed: int | None = None,
                train_seed: int = 0) -> dict[str, np.ndarray]:
    """The canonical initial parameters: identical for every framework. A training seed
    ``> 0`` draws another initialisation (``metabench run --seeds``)."""
    seed = spec.seed if seed is None else seed
    key = (_INIT_STREAM,) + ((train_seed,) if train_seed else ())
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))
    params = {}
    for name, shape in param_shapes(spec, algorithm).items():
        if name.startswith("bn") and name.endswith(".weight"):
            params[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            params[name] = np.zeros(shape, np.float32)
        else:
            receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            fan_out, fan_in = shape[0] * receptive, shape[1] * receptive
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            params[name] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return params
