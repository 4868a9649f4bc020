"""Statistics: metrics equal scikit-learn's, CIs bracket the value, the F1-optimal threshold,
DeLong and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from AmyloidKDLib.errors import ConfigError, InputError
from Training import metrics as tm


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.55, 0.8, 1.01])
def test_threshold_metrics_equal_scikit_learn(fixed_predictions, threshold):
    y, p = fixed_predictions
    pred = (p >= threshold).astype(int)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "specificity": skm.recall_score(y, pred, pos_label=0, zero_division=0),
        "npv": skm.precision_score(y, pred, pos_label=0, zero_division=0),
    }
    got = tm.threshold_metrics(y, p, threshold)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_auc_equals_scikit_learn_including_ties(fixed_predictions):
    y, p = fixed_predictions
    assert tm.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    coarse = np.round(p, 1)  # many ties
    assert tm.roc_auc(y, coarse) == pytest.approx(skm.roc_auc_score(y, coarse), abs=1e-12)


def test_bootstrap_cis_bracket_value_and_resamples_match_scikit_learn(fixed_predictions):
    y, p = fixed_predictions
    config = tm.EvalConfig(n_bootstrap=300, seed=3)
    result = tm.evaluate_predictions(y, p, 0.5, config)
    assert set(result) == set(tm.ALL_METRICS)
    for name, v in result.items():
        assert v["ci_low"] <= v["value"] <= v["ci_high"], name
        assert v["ci_high"] - v["ci_low"] > 0.01, name  # 60 cases cannot give a point CI
    # The vectorised bootstrap AUCs equal scikit-learn's on the same resamples.
    idx = tm._bootstrap_indices(y.size, 20, 11)
    vectorised = tm._bootstrap_aucs(y, p, idx)
    for row, auc in zip(idx, vectorised):
        if len(set(y[row])) == 2:
            assert auc == pytest.approx(skm.roc_auc_score(y[row], p[row]), abs=1e-12)
    # Same seed, same CI: reports are reproducible.
    again = tm.evaluate_predictions(y, p, 0.5, config)
    assert again["auc"] == result["auc"]


def test_threshold_search_finds_the_f1_optimal_theta_on_a_hand_made_case():
    # 4 positives. By hand, F1 per cut (between consecutive scores, high to low):
    # 0/0.33/0.57/0.75 down to 0.60; 0.35|0.40 -> TP3 FP2 FN1 = 6/9; 0.20|0.35 -> TP4 FP2 FN0
    # = 8/10 (the best); 0.10|0.20 -> 8/11; lower cuts add only false positives.
    scores = np.array([0.05, 0.10, 0.20, 0.35, 0.40, 0.60, 0.70, 0.80, 0.90])
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0])
    best = tm.f1_optimal_threshold(labels, scores)
    assert 0.20 < best < 0.35
    assert best == pytest.approx(0.275)
    f1_best = skm.f1_score(labels, scores >= best)
    assert f1_best == pytest.approx(8 / 10)
    for t in np.linspace(0.0, 1.0, 201):  # no threshold does better
        assert skm.f1_score(labels, scores >= t, zero_division=0) <= f1_best + 1e-12


def test_threshold_search_refuses_validation_without_positives():
    with pytest.raises(InputError, match="no positive case"):
        tm.f1_optimal_threshold([0, 0, 0], [0.1, 0.2, 0.3])


def test_delong_detects_a_better_model_and_not_an_identical_one():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    good = y + rng.normal(0, 0.6, size=200)
    noise = rng.normal(0, 1, size=200)
    result = tm.delong_test(y, good, noise)
    assert result["auc_a"] == pytest.approx(skm.roc_auc_score(y, good))
    assert result["auc_b"] == pytest.approx(skm.roc_auc_score(y, noise))
    assert result["p_value"] < 1e-6
    assert result["ci_low"] > 0
    same = tm.delong_test(y, good, good)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_delong_standard_error_agrees_with_the_paired_bootstrap():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 80)
    a = y * 0.8 + rng.normal(0, 1, size=160)
    b = y * 0.5 + rng.normal(0, 1, size=160)
    comparison = tm.compare_paired(y, a, b, tm.EvalConfig(n_bootstrap=2000, seed=2))
    delong, boot = comparison["delong"], comparison["bootstrap"]
    delong_width = delong["ci_high"] - delong["ci_low"]
    boot_width = boot["ci_high"] - boot["ci_low"]
    assert boot_width == pytest.approx(delong_width, rel=0.2)
    assert boot["difference"] == pytest.approx(delong["difference"])


@pytest.mark.parametrize("call, error, message", [
    (lambda: tm.threshold_metrics([0, 1], [0.5]), InputError, "differ in length"),
    (lambda: tm.threshold_metrics([0, 2], [0.5, 0.5]), InputError, "0 or 1"),
    (lambda: tm.threshold_metrics([0, 1], [0.5, float("nan")]), InputError, "NaN or infinite"),
    (lambda: tm.roc_auc([], []), InputError, "no cases to evaluate"),
    (lambda: tm.delong_test([0, 1, 1], [0.1, 0.8, 0.9], [0.2, 0.7, 0.6]), InputError, ">= 2 positive"),
    (lambda: tm.EvalConfig(n_bootstrap=1), ConfigError, "n_bootstrap"),
    (lambda: tm.EvalConfig(confidence=0.3), ConfigError, "confidence"),
    (lambda: tm.EvalConfig(default_threshold=1.0), ConfigError, "default_threshold"),
    (lambda: tm.EvalConfig(calibration="isotonic"), ConfigError, "'platt' or 'none'"),
])
def test_bad_inputs_raise_errors_that_say_what_was_wrong(call, error, message):
    with pytest.raises(error, match=message):
        call()


# Numbers of the case-level functions before ``groups`` existed (commit fb069c5), on the
# fixture's cases with a noisy second model, n_bootstrap=200, seed=4, θ = 0.45.
OLD_EVALUATION = {
    'accuracy': (0.7333333333333333, 0.6333333333333333, 0.8333333333333334),
    'precision': (0.5925925925925926, 0.3806878306878307, 0.7812839673913043),
    'recall': (0.7619047619047619, 0.5787593984962407, 0.9230769230769231),
    'f1': (0.6666666666666666, 0.4862290862290863, 0.8070175438596491),
    'specificity': (0.717948717948718, 0.6, 0.8438100961538462),
    'npv': (0.8484848484848485, 0.7390732265446224, 0.9629960317460317),
    'auc': (0.8095238095238095, 0.6908196385438234, 0.9212624338624339),
}
OLD_DELONG = {'auc_a': 0.8095238095238095, 'auc_b': 0.7521367521367521, 'difference': 0.057387057387057405,
              'se': 0.061294862958926145, 'z': 0.9362457898880144, 'p_value': 0.34914665224279295,
              'ci_low': -0.06274866644975605, 'ci_high': 0.17752278122387086}
OLD_BOOTSTRAP = {'difference': 0.057387057387057405, 'ci_low': -0.04691918834841628,
                 'ci_high': 0.15626825396825408, 'fraction_a_better': 0.865, 'n_bootstrap': 200}


def test_without_groups_the_numbers_are_those_of_the_case_level_functions_bit_for_bit(fixed_predictions):
    y, p = fixed_predictions
    b = np.clip(p + np.random.default_rng(5).normal(0, 0.2, size=p.size), 0, 1)
    config = tm.EvalConfig(n_bootstrap=200, seed=4)
    result = tm.evaluate_predictions(y, p, 0.45, config, groups=None)
    assert {k: (v["value"], v["ci_low"], v["ci_high"]) for k, v in result.items()} == OLD_EVALUATION
    assert tm.evaluate_model(y, p, 0.45, config)["optimal"] == result
    comparison = tm.compare_paired(y, p, b, config)
    assert comparison["delong"] == OLD_DELONG
    assert comparison["bootstrap"] == OLD_BOOTSTRAP
    assert comparison["resampling"] == "cases" and comparison["n_subjects"] == comparison["n_cases"] == 60


def test_with_groups_the_cis_resample_subjects_and_say_so(fixed_predictions):
    y, p = fixed_predictions
    b = np.clip(p + np.random.default_rng(5).normal(0, 0.2, size=p.size), 0, 1)
    subjects = np.arange(y.size) // 2  # two sessions per subject
    config = tm.EvalConfig(n_bootstrap=200, seed=4)
    grouped = tm.evaluate_model(y, p, 0.45, config, groups=subjects)
    assert grouped["optimal"] != tm.evaluate_model(y, p, 0.45, config)["optimal"]
    for metric in tm.ALL_METRICS:  # same point estimates, other intervals
        assert grouped["optimal"][metric]["value"] == OLD_EVALUATION[metric][0]
    comparison = tm.compare_paired(y, p, b, config, groups=subjects)
    assert comparison["resampling"] == "subjects" and comparison["n_subjects"] == 30
    assert comparison["delong"] == tm.clustered_auc_test(y, p, b, subjects)
    assert comparison["delong"]["se"] != OLD_DELONG["se"]
    assert comparison["bootstrap"]["difference"] == OLD_BOOTSTRAP["difference"]
    assert tm.resampling_info(subjects, y.size) == {"resampling": "subjects", "n_subjects": 30, "n_cases": 60}
