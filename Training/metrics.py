"""Statistics of a binary amyloid classifier: the paper's metrics with bootstrap CIs, the
validation-F1-optimal threshold, DeLong's test and the paired student-vs-baseline comparison.

Metrics are computed from confusion counts so that thousands of bootstrap resamples stay
cheap; ``Testing/training/test_metrics.py`` checks every one against scikit-learn. Tables,
figures and report files are in :mod:`Training.report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from AmyloidKDLib.errors import ConfigError, InputError

#: Threshold-dependent metrics of the paper's table, in its column order.
THRESHOLD_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "specificity", "npv")
#: Every metric a report carries (threshold metrics plus ROC AUC).
ALL_METRICS: tuple[str, ...] = THRESHOLD_METRICS + ("auc",)


@dataclass
class EvalConfig:
    """How a run is evaluated."""

    n_bootstrap: int = 1000      # bootstrap resamples for each 95 % CI
    confidence: float = 0.95     # CI level
    seed: int = 0                # bootstrap RNG seed (reports are reproducible)
    default_threshold: float = 0.5
    calibration: str = "platt"   # platt: fit scale * logit + offset on validation | none

    def __post_init__(self) -> None:
        if self.calibration not in ("platt", "none"):
            raise ConfigError(f"evaluation.calibration must be 'platt' or 'none', got {self.calibration!r}.")
        if self.n_bootstrap < 10:
            raise ConfigError(f"evaluation.n_bootstrap must be >= 10, got {self.n_bootstrap}.")
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"evaluation.confidence must be in (0.5, 1), got {self.confidence}.")
        if not 0.0 < self.default_threshold < 1.0:
            raise ConfigError(
                f"evaluation.default_threshold must be in (0, 1), got {self.default_threshold}.")


def _as_arrays(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise InputError(f"labels and scores differ in length ({y.size} vs {s.size}).")
    if y.size == 0:
        raise InputError("no cases to evaluate: the label list is empty.")
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"labels must be 0 or 1, got values {sorted(set(y.tolist()))}.")
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or infinite values; check the model's outputs.")
    return y, s


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's ``zero_division=0``)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_counts(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray
                        ) -> dict[str, np.ndarray]:
    """The threshold metrics from confusion counts (arrays broadcast: one value per resample).

    Undefined ratios (e.g. precision with no positive prediction) are 0, as scikit-learn
    reports them with ``zero_division=0``.
    """
    precision = _safe_divide(tp, tp + fp)
    recall = _safe_divide(tp, tp + fn)
    return {
        "accuracy": _safe_divide(tp + tn, tp + fp + tn + fn),
        "precision": precision,
        "recall": recall,
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
        "specificity": _safe_divide(tn, tn + fp),
        "npv": _safe_divide(tn, tn + fn),
    }


def threshold_metrics(y_true: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                      threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1, specificity and NPV with ``probability >= threshold`` positive."""
    y, p = _as_arrays(y_true, probabilities)
    pred = p >= threshold
    tp = np.sum(pred & (y == 1))
    fp = np.sum(pred & (y == 0))
    tn = np.sum(~pred & (y == 0))
    fn = np.sum(~pred & (y == 1))
    return {k: float(v) for k, v in metrics_from_counts(tp, fp, tn, fn).items()}


def roc_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); NaN with a single class."""
    y, s = _as_arrays(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def _bootstrap_aucs(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUC of each bootstrap resample (rows of ``idx``); NaN where one class is missing."""
    ys = y[idx]
    ranks = stats.rankdata(s[idx], axis=1)
    n_pos = ys.sum(axis=1).astype(float)
    n_neg = ys.shape[1] - n_pos
    u = (ranks * ys).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def evaluate_predictions(y_true: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
                         threshold: float = 0.5, config: EvalConfig | None = None
                         ) -> dict[str, dict[str, float]]:
    """Every metric of the report with its percentile-bootstrap CI (cases resampled with replacement).

    Returns ``{metric: {"value", "ci_low", "ci_high"}}`` for ``ALL_METRICS``.
    """
    config = config or EvalConfig()
    y, p = _as_arrays(y_true, probabilities)
    idx = _bootstrap_indices(y.size, config.n_bootstrap, config.seed)
    ys, preds = y[idx], p[idx] >= threshold
    tp = np.sum(preds & (ys == 1), axis=1)
    fp = np.sum(preds & (ys == 0), axis=1)
    tn = np.sum(~preds & (ys == 0), axis=1)
    fn = np.sum(~preds & (ys == 1), axis=1)
    boot = metrics_from_counts(tp, fp, tn, fn)
    boot["auc"] = _bootstrap_aucs(y, p, idx)
    point = threshold_metrics(y, p, threshold)
    point["auc"] = roc_auc(y, p)
    result = {}
    for name in ALL_METRICS:
        lo, hi = _percentile_ci(np.asarray(boot[name], dtype=float), config.confidence)
        result[name] = {"value": point[name], "ci_low": lo, "ci_high": hi}
    return result


def f1_optimal_threshold(y_true: Sequence[int] | np.ndarray,
                         probabilities: Sequence[float] | np.ndarray) -> float:
    """The threshold that maximises F1 on these (validation) cases.

    Candidates lie midway between consecutive distinct probabilities (plus one below the
    smallest), so the chosen cut separates the validation cases the same way on both sides
    of it and does not sit on a single case's score. Ties go to the highest threshold
    (fewest positive calls).
    """
    y, p = _as_arrays(y_true, probabilities)
    if y.sum() == 0:
        raise InputError("cannot choose an F1-optimal threshold: the validation set has no "
                         "positive case. Use a larger or stratified validation split.")
    distinct = np.unique(p)
    candidates = np.concatenate([[distinct[0] / 2], (distinct[:-1] + distinct[1:]) / 2])
    preds = p[None, :] >= candidates[:, None]
    tp = np.sum(preds & (y == 1), axis=1)
    fp = np.sum(preds & (y == 0), axis=1)
    fn = np.sum(~preds & (y == 1), axis=1)
    f1 = _safe_divide(2 * tp, 2 * tp + fp + fn)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(candidates[best])


def _midrank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average")


def delong_test(y_true: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                scores_b: Sequence[float] | np.ndarray) -> dict[str, float]:
    """DeLong's test for two correlated ROC AUCs on the same cases (DeLong et al. 1988).

    Uses the structural components (placement values) of each score; the covariance of
    the two AUC estimates gives a z statistic for ``auc_a - auc_b``.

    Returns ``auc_a``, ``auc_b``, ``difference``, ``se``, ``z``, ``p_value`` and the
    normal-approximation 95 % CI of the difference.
    """
    y, a = _as_arrays(y_true, scores_a)
    _, b = _as_arrays(y_true, scores_b)
    if a.shape != b.shape:
        raise InputError("the two models were scored on different numbers of cases.")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise InputError(f"DeLong's test needs >= 2 positive and >= 2 negative cases, "
                         f"got {m} and {n}.")
    v10, v01, aucs = [], [], []
    for s in (a, b):
        all_ranks = _midrank(s)
        pos_ranks, neg_ranks = _midrank(s[pos]), _midrank(s[neg])
        v10.append((all_ranks[pos] - pos_ranks) / n)       # per positive: fraction of negatives below
        v01.append(1 - (all_ranks[neg] - neg_ranks) / m)   # per negative: fraction of positives above
        aucs.append(float(np.mean(v10[-1])))
    s10 = np.cov(np.vstack(v10))
    s01 = np.cov(np.vstack(v01))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = aucs[0] - aucs[1]
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        z, p_value = 0.0 if diff == 0 else math.copysign(math.inf, diff), 1.0 if diff == 0 else 0.0
    else:
        z = diff / se
        p_value = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": aucs[0], "auc_b": aucs[1], "difference": diff, "se": se, "z": float(z),
            "p_value": float(p_value), "ci_low": diff - 1.959963984540054 * se,
            "ci_high": diff + 1.959963984540054 * se}


def compare_paired(y_true: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                   scores_b: Sequence[float] | np.ndarray, config: EvalConfig | None = None,
                   names: tuple[str, str] = ("student", "baseline")) -> dict[str, object]:
    """Paired comparison of two models on identical cases: DeLong's test and a paired bootstrap.

    The paired bootstrap resamples cases once per replicate and scores both models on the
    same resample, giving a percentile CI for ``AUC_a - AUC_b`` that makes no normality
    assumption. Both are reported; neither is chosen for the reader.
    """
    config = config or EvalConfig()
    y, a = _as_arrays(y_true, scores_a)
    _, b = _as_arrays(y_true, scores_b)
    idx = _bootstrap_indices(y.size, config.n_bootstrap, config.seed)
    diffs = _bootstrap_aucs(y, a, idx) - _bootstrap_aucs(y, b, idx)
    lo, hi = _percentile_ci(diffs, config.confidence)
    finite = diffs[np.isfinite(diffs)]
    return {
        "model_a": names[0], "model_b": names[1], "n_cases": int(y.size),
        "delong": delong_test(y, a, b),
        "bootstrap": {"difference": roc_auc(y, a) - roc_auc(y, b), "ci_low": lo, "ci_high": hi,
                      "fraction_a_better": float(np.mean(finite > 0)) if finite.size else float("nan"),
                      "n_bootstrap": config.n_bootstrap},
    }


def evaluate_model(y_true: Sequence[int] | np.ndarray, test_probabilities: Sequence[float] | np.ndarray,
                   optimal_threshold: float, config: EvalConfig | None = None
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """The report's two rows for one model: at the default θ and at the validation-optimal θ."""
    config = config or EvalConfig()
    return {"default": evaluate_predictions(y_true, test_probabilities, config.default_threshold, config),
            "optimal": evaluate_predictions(y_true, test_probabilities, optimal_threshold, config)}
