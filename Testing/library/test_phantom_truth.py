"""The generator's v2 ground truth (no images): random atrophy slopes and patterns, the
measured Centiloid, white-matter lesions, and the oracle AUC the defaults are calibrated to."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from AmyloidKDLib.phantom import (ATROPHY_REGION_NAMES, GENERATOR_VERSION, PhantomConfig,
                                  oracle_auc, sample_cohort, sample_subject)


@pytest.fixture(scope="module")
def big():
    """3000 subjects' truth with the defaults (a few seconds)."""
    return sample_cohort(3000, 1500)


def test_generator_version_is_two():
    assert GENERATOR_VERSION == 2


def test_subjects_have_their_own_atrophy_slope_and_regional_pattern():
    config = PhantomConfig()
    subjects = [sample_subject(i, 1100, config) for i in range(400)]
    slopes = np.array([s.atrophy_slope for s in subjects])
    weights = np.array([s.region_weights for s in subjects])
    assert weights.shape == (400, len(ATROPHY_REGION_NAMES))
    # lognormal around atrophy_per_100cl with log-sd atrophy_slope_sd
    assert abs(np.median(slopes) / config.atrophy_per_100cl - 1) < 0.15
    assert abs(np.log(slopes).std() - config.atrophy_slope_sd) < 0.08
    np.testing.assert_allclose(weights.mean(1), 1.0, atol=1e-3)   # weights average to 1
    # patterns differ: the region each subject loses most varies, each region leads often
    leading = np.bincount(weights.argmax(1), minlength=len(ATROPHY_REGION_NAMES))
    assert leading.min() > 40, leading
    assert weights.std(0).min() > 0.3
    flat = [sample_subject(i, 1100, PhantomConfig(atrophy_slope_sd=0.0,
                                                  atrophy_pattern_concentration=1e6))
            for i in range(20)]
    assert np.ptp([s.atrophy_slope for s in flat]) < 1e-9
    np.testing.assert_allclose([s.region_weights for s in flat], 1.0, atol=0.01)


def test_per_region_loss_follows_the_subjects_pattern():
    config = PhantomConfig(anatomy_sd=0.0, atrophy_per_decade=0.0)
    sessions = [s for s in sample_cohort(300, 1101, config) if s.true_centiloid > 60]
    subjects = {s.index: s for s in (sample_subject(i, 1101, config) for i in range(300))}
    assert len(sessions) > 30
    for s in sessions:
        subject = subjects[int(s.subject_id[3:]) - 1]
        expected = (subject.atrophy_slope * (s.true_centiloid - config.atrophy_onset_cl) / 100
                    * np.array(subject.region_weights))
        np.testing.assert_allclose(s.region_gm_loss, np.clip(expected, -0.15, 0.6), atol=2e-3)
        assert s.amyloid_gm_loss == pytest.approx(expected.mean(), abs=2e-3)


def test_measured_centiloid_is_the_true_one_plus_the_configured_noise(big):
    config = PhantomConfig()
    true = np.array([s.true_centiloid for s in big])
    measured = np.array([s.centiloid for s in big])
    error = measured - true
    assert abs(error.mean()) < 0.3
    assert abs(error.std() - config.centiloid_noise_sd) < 0.25
    assert stats.normaltest(error).pvalue > 1e-3
    quiet = sample_cohort(300, 1500, PhantomConfig(centiloid_noise_sd=0.0))
    assert all(s.centiloid == s.true_centiloid for s in quiet)
    noisy = sample_cohort(3000, 1500, PhantomConfig(centiloid_noise_sd=10.0))
    assert abs(np.std([s.centiloid - s.true_centiloid for s in noisy]) - 10.0) < 0.6


def test_labels_follow_the_measured_centiloid(big):
    assert all(s.label == int(s.centiloid > 20.0) for s in big)
    flipped = [s for s in big if s.label != int(s.true_centiloid > 20.0)]
    # near the threshold some labels disagree with the truth, far from it none
    assert 10 < len(flipped) < 0.1 * len(big)
    assert max(abs(s.true_centiloid - 20.0) for s in flipped) < 6 * 4.0


def test_wm_lesions_grow_with_age_and_do_not_follow_amyloid():
    config = PhantomConfig(age_shift_positive=0.0)   # no age confound: amyloid-independent
    sessions = sample_cohort(3000, 1102, config)
    load = np.array([s.wm_lesion_load for s in sessions])
    age = np.array([s.age for s in sessions])
    true_cl = np.array([s.true_centiloid for s in sessions])
    assert stats.spearmanr(load, age)[0] > 0.3
    assert abs(stats.spearmanr(load, true_cl)[0]) < 0.05
    # longitudinal: a subject's load grows between sessions
    by_subject: dict[str, list] = {}
    for s in sessions:
        by_subject.setdefault(s.subject_id, []).append(s.wm_lesion_load)
    series = [v for v in by_subject.values() if len(v) > 1 and 0 < v[0] and v[-1] < 1.0]
    assert len(series) > 100 and all(np.all(np.diff(v) > 0) for v in series)


def test_oracle_auc_lies_in_the_calibrated_band_and_rises_with_the_effect_scale():
    sessions = sample_cohort(2000, 1103)
    auc = oracle_auc(sessions)
    print(f"oracle AUC, defaults, 2000 subjects: {auc:.3f}")
    assert 0.75 <= auc <= 0.85
    stronger = oracle_auc(sample_cohort(2000, 1103, PhantomConfig(mri_effect_scale=2.0)))
    none = oracle_auc(sample_cohort(2000, 1103, PhantomConfig(mri_effect_scale=0.0)))
    print(f"oracle AUC, mri_effect_scale 2: {stronger:.3f}, 0: {none:.3f}")
    assert stronger > auc + 0.05
    assert none < auc - 0.1       # what is left is the age confound


def test_oracle_sees_no_amyloid_when_there_is_none():
    config = PhantomConfig(mri_effect_scale=0.0, age_shift_positive=0.0)
    auc = oracle_auc(sample_cohort(2000, 1104, config))
    assert 0.45 < auc < 0.56
