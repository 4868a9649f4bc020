"""Batch composition for training: class-balanced batches and Centiloid-aware online negatives.

The teacher's triplet needs, for each anchor, the PET of *another subject* whose Centiloid
differs by at least ``min_gap`` (5 in the paper). Negatives are chosen online among the PET
embeddings already computed for the current batch, and batches come only from the training
fold, so a negative can never be a validation or test case. Class-balanced batches make
such a partner available in practice: a positive and a negative case almost always differ
by far more than 5 Centiloid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from AmyloidKDLib.errors import ConfigError, InputError


class CentiloidNegativeSampler:
    """Chooses triplet negatives within a batch drawn from one training fold.

    Args:
        subjects: subject id of every case of the dataset (indexed by dataset index).
        centiloids: Centiloid of every case (NaN where unknown: such a case is never a negative).
        fold_indices: dataset indices of the training fold; any other index is refused.
        min_gap: smallest |ΔCentiloid| between anchor and negative (paper: 5).
        seed: RNG seed for the random choice among valid candidates.
    """

    def __init__(self, subjects: Sequence[str], centiloids: Sequence[float],
                 fold_indices: Sequence[int], min_gap: float = 5.0, seed: int = 0) -> None:
        if len(subjects) != len(centiloids):
            raise InputError(f"{len(subjects)} subjects but {len(centiloids)} Centiloid values.")
        if min_gap < 0:
            raise ConfigError(f"min_centiloid_gap must be >= 0, got {min_gap}.")
        self.subjects = np.asarray([str(s) for s in subjects])
        self.centiloids = np.asarray(centiloids, dtype=float)
        self.fold = frozenset(int(i) for i in fold_indices)
        self.min_gap = float(min_gap)
        self.rng = np.random.default_rng(seed)

    def valid_matrix(self, batch_indices: Sequence[int]) -> np.ndarray:
        """``valid[a, n]``: batch member ``n`` may serve as the negative of anchor ``a``."""
        idx = np.asarray(batch_indices, dtype=int)
        outside = [int(i) for i in idx if int(i) not in self.fold]
        if outside:
            raise InputError(f"cases {outside[:5]} are not in the training fold; negatives are "
                             f"drawn from the training fold only.")
        subj = self.subjects[idx]
        cl = self.centiloids[idx]
        with np.errstate(invalid="ignore"):
            gap_ok = np.abs(cl[:, None] - cl[None, :]) >= self.min_gap
        return gap_ok & (subj[:, None] != subj[None, :])

    def choose(self, batch_indices: Sequence[int], distances: torch.Tensor | None = None) -> torch.Tensor:
        """Position in the batch of each anchor's negative, or -1 when no member qualifies.

        With ``distances[a, n]`` (anchor-to-PET embedding distances) the closest valid
        negative is taken (online hard negative); without, a random valid one.
        """
        valid = self.valid_matrix(batch_indices)
        chosen = np.full(len(valid), -1, dtype=np.int64)
        dist = None if distances is None else distances.detach().float().cpu().numpy()
        for a, row in enumerate(valid):
            candidates = np.flatnonzero(row)
            if candidates.size == 0:
                continue
            if dist is None:
                chosen[a] = self.rng.choice(candidates)
            else:
                chosen[a] = candidates[np.argmin(dist[a, candidates])]
        return torch.from_numpy(chosen)


class ClassBalancedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches with as many positive as negative cases, drawn from ``indices`` only.

    Each epoch has ``ceil(len(indices) / batch_size)`` batches; each class is visited in a
    fresh random order and the minority class is cycled (oversampled) as needed. Call
    :meth:`set_epoch` so that a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, labels: Sequence[int], indices: Sequence[int], batch_size: int,
                 seed: int = 0) -> None:
        super().__init__()
        if batch_size < 2:
            raise ConfigError(f"class-balanced batches need batch_size >= 2, got {batch_size}.")
        labels = np.asarray(labels).astype(int)
        idx = np.asarray(indices, dtype=int)
        self.by_class = [idx[labels[idx] == c] for c in (0, 1)]
        if any(part.size == 0 for part in self.by_class):
            raise InputError("class-balanced sampling needs both classes in the training set; "
                             f"got {self.by_class[0].size} negatives and {self.by_class[1].size} "
                             "positives.")
        self.batch_size = batch_size
        self.n_batches = math.ceil(idx.size / batch_size)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches :meth:`__iter__` yields (deterministic per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        n_pos = self.batch_size // 2
        n_neg = self.batch_size - n_pos
        streams = []
        for part, per_batch in zip(self.by_class, (n_neg, n_pos)):
            need = per_batch * self.n_batches
            reps = math.ceil(need / part.size)
            streams.append(np.concatenate([rng.permutation(part) for _ in range(reps)])[:need])
        for b in range(self.n_batches):
            batch = np.concatenate([streams[0][b * n_neg:(b + 1) * n_neg],
                                    streams[1][b * n_pos:(b + 1) * n_pos]])
            yield rng.permutation(batch).tolist()
