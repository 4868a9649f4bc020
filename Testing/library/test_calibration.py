"""Platt scaling of logits on validation cases: the same fit as scikit-learn, refusals where a
fit would mislead, and probabilities that spread out while the ranking stays the same."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from AmyloidKDLib.calibration import fit_platt


def near_constant_logits(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and logits that rank the cases fairly well but span only ~0.01 (as a barely
    trained head does), around a constant offset of 0.3."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(int)
    labels[:2] = [0, 1]
    logits = 0.3 + 0.004 * (labels + rng.normal(0, 0.7, n))
    return logits, labels


@pytest.mark.parametrize("c", [1.0, 0.1, 10.0])
def test_fit_equals_scikit_learn_logistic_regression_on_the_standardised_logit(c):
    logits, labels = near_constant_logits()
    fit = fit_platt(logits, labels, c=c)
    z = (logits - logits.mean()) / logits.std()
    reference = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(z[:, None], labels)
    a, b = reference.coef_[0, 0], reference.intercept_[0]
    assert fit.scale == pytest.approx(a / logits.std(), rel=1e-5)
    assert fit.offset == pytest.approx(b - a * logits.mean() / logits.std(), rel=1e-5, abs=1e-6)


def test_calibration_spreads_probabilities_and_keeps_the_ranking():
    logits, labels = near_constant_logits()
    raw = 1 / (1 + np.exp(-logits))
    assert raw.max() - raw.min() < 0.01
    fit = fit_platt(logits, labels)
    calibrated = 1 / (1 + np.exp(-(fit.scale * logits + fit.offset)))
    assert calibrated.max() - calibrated.min() > 0.5
    assert roc_auc_score(labels, calibrated) == pytest.approx(roc_auc_score(labels, raw))
    # The mean calibrated probability matches the prevalence (a property of the logistic fit).
    assert calibrated.mean() == pytest.approx(labels.mean(), abs=0.02)


def test_no_fit_where_it_would_mislead():
    logits, labels = near_constant_logits()
    assert fit_platt(logits, np.zeros_like(labels)) is None           # one class only
    assert fit_platt(np.full(labels.shape, 0.3), labels) is None      # nothing to rank with
    assert fit_platt(-logits, labels) is None                          # ranked backwards
    with pytest.raises(ValueError, match="60 logits but 59 labels"):
        fit_platt(logits, labels[:-1])
