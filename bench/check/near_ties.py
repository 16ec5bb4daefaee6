"""Max-pool windows that float32 cannot decide: parity's test at the tie itself.

A 2x2 max-pool passes its gradient to one input of each window, the largest. When a
window's two largest inputs are closer than float32 rounding moves them, a float32
computation may take either, and the gradient jumps by a whole input's share: on
Omniglot ANIL one such window (episode 2's query image 0, block 2, its two largest inputs
2.0e-6 apart at 1.7, where torch's own float32 error is 2.2e-6) put JAX's and
TensorFlow's float32 meta-gradient 1.7e-2 from torch's and from their own float64, with
float64 agreeing to 3e-15 (docs/fairness.md). No tolerance
tells that from a wrong adapter; the windows themselves do.

In the reference's process (torch), for each task of the compared batch, this module
recomputes every max-pool's input along the passes the algorithm makes (MAML family: the
support set with the meta-parameters, the query set with the task's adapted parameters;
ProtoNet: support and query in one pass) in float64 and in float32. A window is near-tied
when its float64 top two differ by more than float64 rounding (``EXACT``: ties of identical
receptive fields, harmless) and by at most ``TIE_FACTOR`` x torch's own float32 error of
that window's inputs, and its maximum is positive (after the ReLU, a window of zeros passes
no gradient whichever input it picks).

``bench.check.parity`` asks for the near-ties of the compared batch and for the first tie-free
tasks. A float32 failure on a batch with near-ties, float64 agreeing, is compared again on
tie-free tasks: if it passes there, the row passes and says which window was tied and by
how much; if it fails there too, the failure stands, now without that excuse. (On
ProtoNet's 60-way episodes nearly every episode has a near-tied window, so parity skips
the search there: it read ``SEARCH_FACTOR`` x the batch of episodes and found none.
Scanning only when a comparison fails would be the better order; not yet made.)
"""

from __future__ import annotations

import numpy as np

# How much closer than torch's own float32 error the top two of a window must be to count
# as undecidable in float32: another framework's float32 error may be a few times torch's.
TIE_FACTOR = 4.0
# Top two this close (relative, a few float64 ulps) are a tie of identical receptive fields
# computed in a different order (blank regions of binary images): identical inputs give the
# weights the same gradient whichever position takes it, so such ties are harmless.
EXACT = 1e-12
# One row per near-tied window, in this order.
FIELDS = ("task", "pass", "image", "block", "channel", "row", "col", "top", "gap", "error32")
PASSES = ("support", "query", "support+query")
# Tasks looked at, at most, to find a tie-free batch: batch size x this.
SEARCH_FACTOR = 8


def window_ties(z64: np.ndarray, z32: np.ndarray, factor: float = TIE_FACTOR) -> np.ndarray:
    """Near-tied 2x2 windows of one max-pool input (NCHW, float64 and float32 results of the
    same pass): rows (image, channel, row, col, top, gap, error32), row and col the window's
    position in the pooled output. A trailing odd row or column is not pooled, as in torch."""
    n, c, h, w = z64.shape
    h2, w2 = h // 2, w // 2

    def windows(z):
        z = np.asarray(z, np.float64)[:, :, :2 * h2, :2 * w2]
        return z.reshape(n, c, h2, 2, w2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h2, w2, 4)

    v64, v32 = windows(z64), windows(z32)
    ordered = np.sort(v64, axis=-1)
    top, gap = ordered[..., -1], ordered[..., -1] - ordered[..., -2]
    error = np.abs(v32 - v64).max(axis=-1)
    near = (top > 0) & (gap > EXACT * top) & (gap <= factor * error)
    idx = np.argwhere(near)
    if not len(idx):
        return np.zeros((0, 7))
    sel = tuple(idx.T)
    return np.column_stack([idx, top[sel], gap[sel], error[sel]])


def task_ties(adapter64, adapter32, episode) -> np.ndarray:
    """Near-tied windows of one episode (a batch of one), rows as ``FIELDS`` without the task.
    ``adapter64``/``adapter32``: the reference adapter built in float64 and float32 from the
    same parameters; each gives its max-pool inputs (``Adapter.max_pool_inputs``). None for
    a model without max-pool (the sinusoid MLP)."""
    if adapter64.config.regression:
        return np.zeros((0, len(FIELDS) - 1))
    inputs64 = adapter64.max_pool_inputs(adapter64.to_device(episode))
    inputs32 = adapter32.max_pool_inputs(adapter32.to_device(episode))
    if not inputs64:
        raise ValueError(f"{type(adapter64).__name__} does not offer max_pool_inputs: the near-tie test "
                         "needs the reference adapter's max-pool inputs")
    rows = []
    for name, blocks64 in inputs64.items():
        p = PASSES.index(name)
        for block, (z64, z32) in enumerate(zip(blocks64, inputs32[name]), 1):
            for image, channel, row, col, top, gap, err in window_ties(z64, z32):
                rows.append((p, image, block, channel, row, col, top, gap, err))
    return np.array(rows, dtype=np.float64).reshape(-1, len(FIELDS) - 1)


def scan(make_adapter, sampler, episodes: list[int], batch_size: int):
    """The near-ties of ``episodes`` (rows as ``FIELDS``, ``task`` the position in the batch)
    and the first ``batch_size`` tie-free training episodes (indices), or fewer when the
    first ``SEARCH_FACTOR`` x ``batch_size`` do not hold that many.
    ``make_adapter(dtype)``: the reference adapter from the compared parameters."""
    a64, a32 = make_adapter("float64"), make_adapter("float32")
    cache: dict[int, np.ndarray] = {}

    def ties_of(index: int) -> np.ndarray:
        if index not in cache:
            cache[index] = task_ties(a64, a32, sampler.episode(index))
        return cache[index]

    rows = [np.column_stack([np.full(len(ties_of(e)), t), ties_of(e)]) for t, e in enumerate(episodes)]
    batch_ties = np.concatenate(rows) if rows else np.zeros((0, len(FIELDS)))
    free = []
    for index in range(SEARCH_FACTOR * batch_size):
        if len(free) == batch_size:
            break
        if not len(ties_of(index)):
            free.append(index)
    return batch_ties, np.array(free, dtype=np.int64)


def describe(ties: np.ndarray, episodes: list[int], most: int = 2) -> str:
    """'2 max-pool windows tied at float32 resolution: episode 2's query image 3, block 2,
    channel 12, window (3, 5): top two 5.6e-07 apart at 6.2, torch's float32 error there 1.1e-06; ...'"""
    ties = ties[np.argsort(ties[:, FIELDS.index("gap")] / np.maximum(ties[:, FIELDS.index("error32")], 1e-300))]
    parts = []
    for r in ties[:most]:
        t, p, image, block, channel, row, col, top, gap, err = r
        parts.append(f"episode {episodes[int(t)]}'s {PASSES[int(p)]} image {int(image)}, block {int(block)}, "
                     f"channel {int(channel)}, window ({int(row)}, {int(col)}): top two {gap:.1e} apart at "
                     f"{top:.2g}, torch's float32 error there {err:.1e}")
    more = f"; +{len(ties) - most} more" if len(ties) > most else ""
    s = "s" if len(ties) != 1 else ""
    return f"{len(ties)} max-pool window{s} tied at float32 resolution ({'; '.join(parts)}{more})"
