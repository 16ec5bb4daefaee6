"""Floating-point operations of the models' forward passes, counted analytically from the
model and the episode shape, so a step's achieved GFLOP/s can be set against what the
machine's matrix multiply does.

Counted: the multiply-adds of convolutions and matrix products (2 FLOPs each), which are
nearly all of the work; BatchNorm, ReLU, pooling, the loss and the optimizer are not. A
step's count is a multiple of forward passes, declared by each algorithm
(``bench.core.algorithms``): a backward pass costs twice its forward (the gradient with
respect to the inputs and to the weights), and differentiating through a gradient (MAML's
second order) costs twice the graph it differentiates. These are the conventional
estimates, not a framework's own count: a framework that fuses or skips work shows as
a higher GFLOP/s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.core.config import CONV_BLOCKS

if TYPE_CHECKING:
    from bench.core.config import AdapterConfig

BACKWARD = 2.0  # a backward pass, in forward passes


def conv4_forward(hidden: int, image_size: int, channels: int = 1) -> float:
    """One image through Conv-4's convolutions (3x3, same padding, 2x2 pooling after each)."""
    flops, side, cin = 0.0, image_size, channels
    for _ in range(CONV_BLOCKS):
        flops += 2.0 * 9 * cin * hidden * side * side
        side, cin = side // 2, hidden
    return flops


def mlp_body_forward(hidden: int) -> float:
    """One point through the sinusoid MLP's body (1 -> hidden -> hidden)."""
    return 2.0 * (hidden + hidden * hidden)


def body_forward(config: AdapterConfig, samples: int) -> float:
    """``samples`` images (Conv-4) or points (MLP) through the body."""
    m = config.model
    per = mlp_body_forward(m.hidden) if m.kind == "mlp" else conv4_forward(m.hidden, m.image_size)
    return per * samples


def head_forward(config: AdapterConfig, samples: int, n_out: int) -> float:
    """``samples`` feature vectors through the linear head."""
    m = config.model
    features = m.hidden if m.kind == "mlp" else m.feature_map[0] * m.feature_map[1] * m.feature_map[2]
    return 2.0 * features * n_out * samples


def forward(config: AdapterConfig, samples: int, n_out: int) -> float:
    return body_forward(config, samples) + head_forward(config, samples, n_out)
