"""The linear probe on prepared slices: finds a planted signal, finds none where there is none."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from Training.ceilings import probe_auc


def _dataset(signal: float, n_subjects: int = 60, seed: int = 0) -> SimpleNamespace:
    """Tiny stand-in of a SliceDataset: [4, 3, 16, 16] float16 stacks, 1-2 cases per subject;
    positives have ``signal`` added to one corner patch (under pixel noise of sd 1)."""
    rng = np.random.default_rng(seed)
    mri, labels, subjects = [], [], []
    for s in range(n_subjects):
        label = int(s % 3 == 0)
        for _ in range(1 + s % 2):
            image = rng.normal(size=(4, 1, 16, 16))
            image[:, :, :4, :4] += signal * label
            mri.append(torch.from_numpy(np.repeat(image, 3, axis=1)).to(torch.float16))
            labels.append(label)
            subjects.append(f"S{s:03d}")
    return SimpleNamespace(mri=mri, labels=np.array(labels), subjects=subjects)


def test_probe_finds_a_planted_signal():
    auc = probe_auc(_dataset(1.0), seed=0)
    assert auc > 0.9


def test_probe_finds_nothing_without_a_signal():
    aucs = [probe_auc(_dataset(0.0, seed=k), seed=k) for k in range(3)]
    assert 0.3 < np.mean(aucs) < 0.7
