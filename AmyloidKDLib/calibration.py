"""Platt scaling: map a model's raw logit to a calibrated one, ``scale * logit + offset``.

Fitted after training on the validation cases (never the test cases) by L2-penalised logistic
regression of the label on the standardised logit, the objective scikit-learn's
``LogisticRegression(C=C)`` minimises: ``sum_i BCE(sigmoid(a z_i + b), y_i) + a^2 / (2 C)``
with the intercept ``b`` unpenalised. The monotone map keeps every within-run ranking (AUC)
as it is; it makes probabilities comparable between runs (CV folds) and meaningful to a reader,
even when a model's raw outputs span only a few thousandths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlattFit:
    """A fitted map ``calibrated = scale * logit + offset`` (in raw logit units)."""

    scale: float
    offset: float


def fit_platt(logits: np.ndarray, labels: np.ndarray, c: float = 1.0, max_iter: int = 1000,
              tol: float = 1e-10) -> PlattFit | None:
    """Platt scaling of ``logits`` against binary ``labels``; None when it cannot be fitted.

    The fit is scikit-learn's ``LogisticRegression(C=c)`` on the standardised logit (a
    training-only dependency, imported here so that applying a fitted map never needs it).
    None (keep the raw logits) when the labels hold one class only, when the logits are all
    equal, or when the fitted slope is not positive (the model ranks these cases backwards,
    and a reversal learned from a handful of validation cases is not to be trusted).
    """
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.size != y.size:
        raise ValueError(f"fit_platt: {z.size} logits but {y.size} labels.")
    if np.unique(y).size < 2:
        logger.warning("calibration skipped: the validation cases hold one class only")
        return None
    mean, sd = float(z.mean()), float(z.std())
    if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, abs(mean)):
        logger.warning("calibration skipped: every validation logit is the same")
        return None
    # Standardised, so that the penalty a^2 / (2C) means the same whatever the logits' spread.
    x = ((z - mean) / sd)[:, None]
    regression = LogisticRegression(C=c, tol=tol, max_iter=max_iter).fit(x, y.astype(int))
    a, b = float(regression.coef_[0, 0]), float(regression.intercept_[0])
    if a <= 0:
        logger.warning("calibration skipped: the validation cases are ranked backwards (slope %.3g)", a)
        return None
    return PlattFit(scale=a / sd, offset=b - a * mean / sd)
