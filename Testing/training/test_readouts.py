"""Regional read-outs: the parcellation, the per-parcel measures, the linear fits against
scikit-learn, cross-fitting, and the ladder."""

from __future__ import annotations

import numpy as np
import pytest

from Training.readouts import (ReadoutConfig, add_to_pooled, centiloid_target,
                               cross_fitted_teacher_logits, cross_validate_readouts, fit_linear)
from Training.learning_curve import grouped_splits


def _standardised(x):
    return (x - x.mean(0)) / x.std(0)


def _data(n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    logit = x[:, 0] - 0.8 * x[:, 1] + rng.normal(0, 1.0, n)
    return x, (logit > 0).astype(int), logit


def test_lambda_zero_is_l2_logistic_regression_as_scikit_learn_fits_it():
    from sklearn.linear_model import LogisticRegression

    x, y, _ = _data()
    alpha = 0.05
    ours = fit_linear(x, y, alpha=alpha)
    # mean BCE + α/2 |w|² has the optimum of scikit-learn's C = 1 / (α n)
    theirs = LogisticRegression(C=1 / (alpha * len(y)), tol=1e-12, max_iter=10000).fit(_standardised(x), y)
    np.testing.assert_allclose(ours.weights, theirs.coef_[0], atol=1e-6)
    assert ours.bias == pytest.approx(theirs.intercept_[0], abs=1e-6)


def test_lambda_one_is_ridge_regression_on_the_target():
    from sklearn.linear_model import Ridge

    x, y, z = _data(seed=1)
    alpha = 0.2
    ours = fit_linear(x, y, z, lam=1.0, alpha=alpha)
    # mean (f − z)²/2 + α/2 |w|²  ==  (|f − z|² + α n |w|²) / 2n
    theirs = Ridge(alpha=alpha * len(y)).fit(_standardised(x), z)
    np.testing.assert_allclose(ours.weights, theirs.coef_, atol=1e-8)
    assert ours.bias == pytest.approx(theirs.intercept_, abs=1e-8)
    np.testing.assert_allclose(ours.score(x), theirs.predict(_standardised(x)), atol=1e-8)


def test_a_mixed_loss_lies_between_its_two_ends():
    x, y, z = _data(seed=2)
    z = -z   # a target that disagrees with the labels pulls the weights away from them
    ends = [fit_linear(x, y, z, lam, 0.1).weights for lam in (0.0, 1.0)]
    mixed = fit_linear(x, y, z, 0.5, 0.1).weights
    # the mixed fit's first weight sits strictly between the label-only and target-only fits
    low, high = sorted(e[0] for e in ends)
    assert low < mixed[0] < high


def test_cross_fitted_teacher_logits_do_not_memorise_the_training_cases():
    rng = np.random.default_rng(3)
    n = 100
    x = rng.normal(size=(n, 60))            # pure noise: nothing to learn
    y = rng.integers(0, 2, n)
    groups = np.array([f"s{i}" for i in range(n)])
    from sklearn.metrics import roc_auc_score

    in_sample = fit_linear(x, y, alpha=1e-4).score(x)
    assert roc_auc_score(y, in_sample) > 0.95          # an in-sample teacher memorises
    crossed = cross_fitted_teacher_logits(x, y, groups, ReadoutConfig(teacher_alpha=1e-4))
    assert roc_auc_score(y, crossed) < 0.7             # a cross-fitted one cannot


def test_centiloid_target_is_the_standardised_centiloid():
    z, mean, sd = centiloid_target(np.array([0.0, 20.0, 100.0]))
    assert mean == pytest.approx(40.0) and sd == pytest.approx(np.std([0.0, 20.0, 100.0]))
    np.testing.assert_allclose(z * sd + mean, [0.0, 20.0, 100.0])


def test_soft_labels_fit_as_scikit_learn_fits_duplicated_weighted_cases():
    from sklearn.linear_model import LogisticRegression

    x, y, logit = _data(seed=5)
    soft = 1 / (1 + np.exp(-logit / 2))
    ours = fit_linear(x, soft, alpha=0.1)
    # BCE with a soft label t = weight t on label 1 plus weight 1 − t on label 0
    xs = _standardised(x)
    theirs = LogisticRegression(C=1 / (0.1 * len(y)), tol=1e-12, max_iter=10000).fit(
        np.concatenate([xs, xs]), np.r_[np.ones(len(y)), np.zeros(len(y))],
        sample_weight=np.r_[soft, 1 - soft])
    np.testing.assert_allclose(ours.weights, theirs.coef_[0], atol=1e-6)


def test_cross_validation_scores_each_case_once_and_pet_guidance_can_help():
    rng = np.random.default_rng(4)
    n_subjects = 150
    subjects = np.array([f"s{i}" for i in range(n_subjects)])
    burden = rng.normal(0, 1, n_subjects)                       # the amyloid burden
    mri = np.stack([burden + rng.normal(0, 1.5, n_subjects) for _ in range(5)], axis=1)
    pet = (burden + rng.normal(0, 0.1, n_subjects))[:, None]    # PET sees it almost exactly
    labels = (burden > 0.4).astype(int)
    centiloids = 20.6 + 30 * (burden - 0.4)
    splits = grouped_splits(labels, subjects, 5, 0)
    result = cross_validate_readouts(mri, pet, labels, centiloids, subjects, splits, ReadoutConfig())
    assert sorted(set(result["folds"].tolist())) == [0, 1, 2, 3, 4]
    for name in ("baseline", "distilled", "centiloid", "teacher"):
        assert np.isfinite(result["probabilities"][name]).all()
        assert len(result["fold_auc"][name]) == 5
    from sklearn.metrics import roc_auc_score

    auc = {k: roc_auc_score(labels, v) for k, v in result["scores"].items()}
    assert auc["teacher"] > 0.97
    assert auc["baseline"] > 0.75
    # the continuous burden carries more than its threshold: the Centiloid target is no worse
    assert auc["centiloid"] >= auc["baseline"] - 0.01


def test_regional_arms_join_the_pooled_predictions_by_case_id():
    regional = {"case_ids": ["a", "b", "c"], "folds": np.array([0, 1, 0]),
                "probabilities": {"baseline": np.array([0.1, 0.2, 0.3])},
                "thresholds": {"baseline": [0.4, 0.6]}}
    pooled = {"case_ids": ["c", "a", "b"], "probabilities": {"student": np.zeros(3)},
              "thresholds": {"student": np.zeros(3)}}
    add_to_pooled(pooled, regional)
    np.testing.assert_allclose(pooled["probabilities"]["regional"], [0.3, 0.1, 0.2])
    np.testing.assert_allclose(pooled["thresholds"]["regional"], [0.4, 0.4, 0.6])


def test_parcellation_is_mirrored_and_measures_are_parcel_means():
    from Training.regional import build_parcellation, case_features

    parcellation = build_parcellation(2, 20)
    labels = parcellation.labels
    half = 10
    assert sorted(set(np.unique(labels).tolist())) == list(range(21))
    # a parcel and its homologue have mirrored centroids
    np.testing.assert_allclose(parcellation.centroids_mm[:half, 0], -parcellation.centroids_mm[half:, 0])
    # an image equal to the parcel number gives each parcel its own number back
    features = case_features(labels.astype(float), parcellation)
    np.testing.assert_allclose(features[:20], np.arange(1, 21), atol=1e-9)
    # a uniform image gives the same value everywhere, GM and WM means included
    np.testing.assert_allclose(case_features(np.full(labels.shape, 0.7), parcellation), 0.7, atol=1e-12)


def test_ladder_orders_rungs_and_measures_the_gap_to_the_oracle():
    from Training.ceilings import format_ladder, ladder_rows

    ceilings = {"oracle_auc": 0.8, "probe_auc": 0.6, "feature_probe_auc": None}
    models = {"regional": {"auc": 0.75}, "student": {"auc": 0.55}}
    rows = ladder_rows(ceilings, models)
    assert [r[0] for r in rows][:3] == ["oracle (generator truth)", "regional read-out (MRI)",
                                        "pixel probe (slices)"]
    text = format_ladder(ceilings, models)
    assert "-0.050" in text and "-0.250" in text


def test_teacher_target_diagnostics_measure_auc_range_and_within_class_rank():
    from types import SimpleNamespace

    import torch

    from Training.phases import target_diagnostics

    cases = [(0, 1.0, -2.0), (0, 5.0, -1.0), (0, 10.0, 0.5), (0, -3.0, -3.0),
             (1, 30.0, 3.0), (1, 60.0, 2.0), (1, 90.0, 1.0)]   # positives ranked backwards
    dataset = SimpleNamespace(info=[SimpleNamespace(label=l, centiloid=c) for l, c, _ in cases])
    targets = {i: (torch.zeros(2), torch.tensor(v)) for i, (_, _, v) in enumerate(cases)}
    out = target_diagnostics(targets, dataset)
    assert out["auc"] == pytest.approx(1.0)
    assert (out["logit_min"], out["logit_max"]) == (-3.0, 3.0)
    assert out["spearman_centiloid_negative"] == pytest.approx(1.0)
    assert out["spearman_centiloid_positive"] == pytest.approx(-1.0)


def test_pooled_probabilities_rank_as_the_scores_do_and_the_centiloid_map_is_fixed():
    rng = np.random.default_rng(6)
    n = 120
    subjects = np.array([f"s{i}" for i in range(n)])
    burden = rng.normal(0, 1, n)
    mri = np.stack([burden + rng.normal(0, 1.0, n) for _ in range(4)], axis=1)
    labels = (burden > 0.3).astype(int)
    centiloids = 20.6 + 30 * (burden - 0.3)
    result = cross_validate_readouts(mri, None, labels, centiloids, subjects,
                                     grouped_splits(labels, subjects, 5, 1), ReadoutConfig(),
                                     readouts=("baseline", "centiloid"))
    from scipy.stats import spearmanr

    # one fixed monotone map per read-out: the pooled probabilities keep the scores' order
    # for the logistic read-out exactly, for the Centiloid one up to each fold's mean and SD
    np.testing.assert_allclose(result["probabilities"]["baseline"],
                               1 / (1 + np.exp(-result["scores"]["baseline"])), atol=1e-12)
    assert spearmanr(result["probabilities"]["centiloid"], result["scores"]["centiloid"])[0] > 0.99


def test_teacher_target_auc_measures_the_cross_fitted_teacher_not_the_blended_labels():
    rng = np.random.default_rng(7)
    n = 100
    subjects = np.array([f"s{i}" for i in range(n)])
    labels = rng.integers(0, 2, n)
    mri, pet = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))   # PET that knows nothing
    result = cross_validate_readouts(mri, pet, labels, 20.0 + 10 * labels, subjects,
                                     grouped_splits(labels, subjects, 5, 0), ReadoutConfig(),
                                     readouts=("distilled",))
    # the blended labels contain y and would score ~1; an uninformed teacher scores ~0.5
    assert len(result["teacher_target_auc"]) == 5
    assert np.mean(result["teacher_target_auc"]) < 0.75
