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


def test_ceilings_command_routes_undotted_settings_to_the_phantom():
    from Training.commands.ceilings import phantom_config

    config = phantom_config(["mri_effect_scale=2", "centiloid_noise_sd=0"])
    assert config.mri_effect_scale == 2.0 and config.centiloid_noise_sd == 0.0
    assert config.mri_spacing_mm == 2.0 and config.contrasts == ("T1w",)


def test_cohort_ceilings_reports_both_numbers():
    from AmyloidKDLib.phantom import sample_cohort
    from Training.ceilings import cohort_ceilings

    sessions = sample_cohort(300, 1200)
    result = cohort_ceilings(SimpleNamespace(split=SimpleNamespace(n_folds=3)), _dataset(1.0), sessions)
    assert result["probe_auc"] > 0.9 and 0.6 < result["oracle_auc"] < 0.95
    assert result["n_truth_sessions"] == sum(s.mr_session_id is not None for s in sessions)
    assert set(result["meaning"]) == {"oracle_auc", "probe_auc", "feature_probe_auc", "regional_auc"}
    assert result["feature_probe_auc"] is None  # no frozen encoder in this config
    assert result["regional_auc"] is None       # no regional read-out given
