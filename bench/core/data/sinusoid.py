"""Sinusoid regression (Finn et al. 2017): y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]. Needs no files."""

from __future__ import annotations

import numpy as np


def sample_task(rng: np.random.Generator, amplitude, phase, x_range, n_points: int):
    """One task's points: ``x``, ``y`` float32 [n_points, 1], and its ``(A, phi)``."""
    a = rng.uniform(*amplitude)
    phi = rng.uniform(*phase)
    x = rng.uniform(*x_range, size=(n_points, 1))
    y = a * np.sin(x - phi)
    return x.astype(np.float32), y.astype(np.float32), (a, phi)
