"""Episodes: (spec, split, seed, index) -> numpy arrays, the same in every process.

Layout of an ``EpisodeBatch`` (``B`` episodes, ``N = n_way``, ``K = k_shot``, ``Q = n_query``):

=============  ==========================  ===========================================
array          Omniglot (classification)   sinusoid (regression)
=============  ==========================  ===========================================
``support_x``  float32 [B, N*K, S, S, 1]   float32 [B, K, 1]
``support_y``  int64   [B, N*K]            float32 [B, K, 1]
``query_x``    float32 [B, N*Q, S, S, 1]   float32 [B, Q, 1]
``query_y``    int64   [B, N*Q]            float32 [B, Q, 1]
=============  ==========================  ===========================================

Images are NHWC (channels last, ink = 1.0, background = 0.0); adapters convert to their
framework's preferred layout outside the timed region. Samples are class-major: row ``i``
of the support set has label ``i // K``. Class ``j`` of an episode is the ``j``-th class
drawn, so labels carry no information about the split's class order.

Randomness: episode ``index`` of ``role`` (train / val / test) draws from
``SeedSequence(seed, spawn_key=(role, index))``, independent of every other episode,
so any episode can be produced alone, in any order, in any process. A training seed
``s > 0`` (``metabench run --seeds``) gives the train role a stream of its own,
``spawn_key=(role, index, s)``; validation and test episodes never depend on it, so every
training seed is evaluated on the same test episodes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from bench.core import paths
from bench.core.config import EpisodeShape
from bench.core.data import omniglot, sinusoid
from bench.core.spec import EpisodeSpec

ROLES = {"train": 0, "val": 1, "test": 2}
_SUBSET_STREAM = 1000  # spawn key of the seeded choice of training classes/images


@dataclass
class EpisodeBatch:
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    # What the batch was drawn from: class and sample indices (omniglot) or the task
    # parameters (sinusoid). Not used by adapters; hashed into fingerprints.
    provenance: np.ndarray
    # Every episode's shape (way, shot, query per class), so that an adapter never
    # re-derives it from array sizes; rows are class-major (class c's rows are
    # c*k .. c*k+k-1 in the support set, c*q .. c*q+q-1 in the query set).
    shape: EpisodeShape | None = None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def task(self, i: int) -> EpisodeBatch:
        """Episode ``i`` alone, as a batch of one."""
        return EpisodeBatch(*(a[i:i + 1] for a in (self.support_x, self.support_y, self.query_x,
                                                      self.query_y, self.provenance)), shape=self.shape)


class EpisodeSampler:
    """Draws episodes of one shape from one role's split of a spec's dataset."""

    def __init__(self, spec: EpisodeSpec, role: str, shape: EpisodeShape | None = None, *,
                 data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 allow_download: bool = True, train_seed: int = 0):
        if role not in ROLES:
            raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
        self.train_seed = train_seed if role == "train" else 0
        self.spec = spec
        self.role = role
        self.shape = shape or spec.episode
        self._data_dir = paths.data_dir(data_dir)
        self._cache_dir = paths.cache_dir(cache_dir)
        self._allow_download = allow_download

    # -- the pool of classes this role draws from --------------------------------------
    @cached_property
    def _pool(self) -> tuple[np.ndarray, str]:
        """uint8 [n_classes, n_images, S, S] and the pool's identity string."""
        d = self.spec.data
        split = {"train": d.train_split, "val": d.val_split, "test": d.test_split}[self.role]
        images = omniglot.load_images(self._data_dir, self._cache_dir, d.image_size,
                                      allow_download=self._allow_download)
        classes = omniglot.read_split(self._data_dir, split, allow_download=self._allow_download)
        if not d.rotations:
            classes = [c for c in classes if c[1] == 0]
        pool = omniglot.split_class_images(images, classes)
        ident = hashlib.sha256(repr(classes).encode()).hexdigest()[:16]
        identity = f"{images.identity}/{split}:{ident}/rot={d.rotations}"
        if self.role == "train" and (d.max_train_classes or d.max_train_images_per_class):
            rng = np.random.default_rng(np.random.SeedSequence(self.spec.seed, spawn_key=(_SUBSET_STREAM,)))
            n_cls = d.max_train_classes or pool.shape[0]
            n_img = d.max_train_images_per_class or pool.shape[1]
            cls = np.sort(rng.choice(pool.shape[0], n_cls, replace=False))
            img = np.sort(rng.random((n_cls, pool.shape[1])).argsort(axis=1)[:, :n_img], axis=1)
            pool = pool[cls[:, None], img]
            identity += f"/subset(seed={self.spec.seed},classes={n_cls},images={n_img})"
        return np.ascontiguousarray(pool), identity

    @property
    def identity(self) -> str:
        """The dataset's identity: hashed into every fingerprint."""
        if self.spec.is_regression:
            d = self.spec.data
            return f"sinusoid:A={d.amplitude}:phi={d.phase}:x={d.x_range}"
        return self._pool[1]

    @property
    def n_classes(self) -> int:
        return self._pool[0].shape[0]

    def _rng(self, index: int) -> np.random.Generator:
        key = (ROLES[self.role], index) + ((self.train_seed,) if self.train_seed else ())
        return np.random.default_rng(np.random.SeedSequence(self.spec.seed, spawn_key=key))

    # -- episodes ------------------------------------------------------------------------
    def batch(self, start: int, size: int) -> EpisodeBatch:
        """Episodes ``start .. start+size-1`` stacked along a leading meta-batch axis."""
        if self.spec.is_regression:
            return self._sinusoid_batch(start, size)
        return self._omniglot_batch(start, size)

    def episode(self, index: int) -> EpisodeBatch:
        return self.batch(index, 1)

    def _omniglot_batch(self, start: int, size: int) -> EpisodeBatch:
        pool, _ = self._pool
        n, k, q = self.shape.n_way, self.shape.k_shot, self.shape.n_query
        n_classes, n_images = pool.shape[:2]
        class_idx = np.empty((size, n), dtype=np.int64)
        sample_idx = np.empty((size, n, k + q), dtype=np.int64)
        for b in range(size):
            rng = self._rng(start + b)
            class_idx[b] = rng.choice(n_classes, n, replace=False)
            # an independent permutation of each class's images: first K support, next Q query
            sample_idx[b] = rng.random((n, n_images)).argsort(axis=1)[:, :k + q]
        x = pool[class_idx[:, :, None], sample_idx].astype(np.float32) * np.float32(1 / 255)
        s = x.shape[-1]
        support_x = x[:, :, :k].reshape(size, n * k, s, s, 1)
        query_x = x[:, :, k:].reshape(size, n * q, s, s, 1)
        labels = np.arange(n, dtype=np.int64)
        support_y = np.broadcast_to(np.repeat(labels, k), (size, n * k)).copy()
        query_y = np.broadcast_to(np.repeat(labels, q), (size, n * q)).copy()
        provenance = np.concatenate([class_idx[:, :, None], sample_idx], axis=2)
        return EpisodeBatch(support_x, support_y, query_x, query_y, provenance, self.shape)

    def _sinusoid_batch(self, start: int, size: int) -> EpisodeBatch:
        d = self.spec.data
        k, q = self.shape.k_shot, self.shape.n_query
        xs, ys, params = [], [], []
        for b in range(size):
            x, y, task = sinusoid.sample_task(self._rng(start + b), d.amplitude, d.phase, d.x_range, k + q)
            xs.append(x)
            ys.append(y)
            params.append(task)
        x, y = np.stack(xs), np.stack(ys)
        provenance = np.concatenate([np.asarray(params, dtype=np.float64), x[..., 0].astype(np.float64)], axis=1)
        return EpisodeBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], provenance, self.shape)

    def fingerprint(self, count: int, start: int = 0, chunk: int = 256) -> str:
        """sha256 of the dataset identity, the episode shape and the class and sample
        indices (task parameters and inputs, for sinusoid) of episodes ``start..start+count-1``."""
        h = hashlib.sha256()
        h.update(f"{self.identity}|{self.role}|{self.shape}|seed={self.spec.seed}".encode())
        if self.train_seed:
            h.update(f"|train_seed={self.train_seed}".encode())
        for s0 in range(start, start + count, chunk):
            prov = self.batch(s0, min(chunk, start + count - s0)).provenance
            h.update(np.ascontiguousarray(prov).tobytes())
        return h.hexdigest()


def sampler_for(spec: EpisodeSpec, role: str, algorithm: str | None = None, **kw) -> EpisodeSampler:
    """The sampler of a role: training episodes take the algorithm's training shape."""
    shape = spec.train_shape(algorithm) if (role == "train" and algorithm) else spec.episode
    return EpisodeSampler(spec, role, shape, **kw)
