"""Platt scaling of logits on validation cases: the known optimum of the penalised objective,
refusals where a fit would mislead, and probabilities that spread out while the ranking
stays the same."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
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


#: (C, scale, offset) for :func:`near_constant_logits`, computed with an independent Newton
#: solver of the same objective (the project's solver before it used scikit-learn).
KNOWN_FITS = [(1.0, 362.5970919817834, -110.17066422720765),
              (0.1, 191.38866481311223, -58.403869290090164),
              (10.0, 410.0601745111335, -124.53009564164006)]


@pytest.mark.parametrize("c, scale, offset", KNOWN_FITS)
def test_fit_reaches_the_known_optimum_of_the_penalised_objective(c, scale, offset):
    logits, labels = near_constant_logits()
    fit = fit_platt(logits, labels, c=c)
    assert fit.scale == pytest.approx(scale, rel=1e-5)
    assert fit.offset == pytest.approx(offset, rel=1e-5)
    # First-order conditions of sum BCE + a^2 / (2C) on the standardised logit x (slope a):
    # the unpenalised intercept makes the residuals sum to 0, the slope balances the penalty.
    x = (logits - logits.mean()) / logits.std()
    a = fit.scale * logits.std()
    residual = 1 / (1 + np.exp(-(fit.scale * logits + fit.offset))) - labels
    assert abs(residual.sum()) < 1e-4
    assert abs((residual * x).sum() + a / c) < 1e-4 * max(1.0, a / c)


def test_applying_a_fit_does_not_import_scikit_learn():
    """scikit-learn is a training dependency: the prediction side must not pull it in."""
    code = ("import sys; import AmyloidKDLib.calibration, AmyloidKDLib.models; "
            "assert 'sklearn' not in sys.modules, 'sklearn imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


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
