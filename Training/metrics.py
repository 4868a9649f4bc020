"""Statistics of a binary amyloid classifier: the paper's metrics with bootstrap CIs, the
validation-F1-optimal threshold, DeLong's test and the paired student-vs-baseline comparison.

Cohorts hold several sessions (cases) per subject, and sessions of one subject are not
independent. Every function that computes a CI therefore takes ``groups`` (the subject id of
each case): with it, the bootstrap resamples *subjects* with replacement and keeps all their
cases (cluster bootstrap), and DeLong's test becomes Obuchowski's (1997) clustered version.
``groups=None`` treats each case as its own subject and gives the case-level numbers.

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


def _group_codes(groups: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Integer subject code (0..G-1) per case, or None when ``groups`` is None."""
    if groups is None:
        return None
    g = np.asarray(groups).ravel()
    if g.size != n:
        raise InputError(f"groups and labels differ in length ({g.size} vs {n}): give one subject "
                         f"id per case.")
    _, codes = np.unique(g, return_inverse=True)
    return codes.ravel()


def resampling_info(groups: Sequence[object] | np.ndarray | None, n_cases: int) -> dict[str, object]:
    """What a bootstrap resamples: ``{"resampling": "subjects"|"cases", "n_subjects", "n_cases"}``."""
    codes = _group_codes(groups, n_cases)
    if codes is None:
        return {"resampling": "cases", "n_subjects": int(n_cases), "n_cases": int(n_cases)}
    return {"resampling": "subjects", "n_subjects": int(codes.max()) + 1 if codes.size else 0,
            "n_cases": int(n_cases)}


def _cluster_bootstrap_weights(codes: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Case weights of each cluster-bootstrap resample, shape ``(n_bootstrap, n_cases)``.

    Each resample draws as many subjects as there are, with replacement; a case's weight is
    how often its subject was drawn (all of a subject's cases come along). With one case per
    subject (codes 0..n-1) the draws, and so the resamples, equal :func:`_bootstrap_indices`'s.
    """
    n_groups = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_bootstrap, n_groups))
    flat = (draws + n_groups * np.arange(n_bootstrap)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_bootstrap * n_groups).reshape(n_bootstrap, n_groups)
    return counts[:, codes].astype(float)


def _weighted_counts(y: np.ndarray, pred: np.ndarray, weights: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted confusion counts (tp, fp, tn, fn) per resample (rows of ``weights``)."""
    cells = np.stack([pred & (y == 1), pred & (y == 0), ~pred & (y == 0), ~pred & (y == 1)], axis=1)
    tp, fp, tn, fn = (weights @ cells.astype(float)).T
    return tp, fp, tn, fn


def _weighted_aucs(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each weighted resample (ties count one half); NaN with one class.

    Exact for integer weights: equal to the AUC of the resample in which each case appears
    ``weight`` times. Cases are sorted by score once; per resample, a cumulative sum of the
    negatives' weights credits every positive with the negative weight strictly below its
    score plus half of that tied with it.
    """
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    w = weights[:, order]
    # Tie blocks: [start, end) of the block of equal scores each sorted case belongs to.
    new_block = np.concatenate([[True], s_sorted[1:] != s_sorted[:-1]])
    block = np.cumsum(new_block) - 1
    starts = np.flatnonzero(new_block)
    ends = np.concatenate([starts[1:], [s.size]])
    neg_cum = np.zeros((w.shape[0], s.size + 1))
    np.cumsum(w * (y_sorted == 0), axis=1, out=neg_cum[:, 1:])
    pos = y_sorted == 1
    credit = 0.5 * (neg_cum[:, starts[block[pos]]] + neg_cum[:, ends[block[pos]]])
    u = np.sum(w[:, pos] * credit, axis=1)
    w_pos = w[:, pos].sum(axis=1)
    w_neg = neg_cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((w_pos > 0) & (w_neg > 0), u / (w_pos * w_neg), np.nan)


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
                         threshold: float = 0.5, config: EvalConfig | None = None,
                         groups: Sequence[object] | np.ndarray | None = None
                         ) -> dict[str, dict[str, float]]:
    """Every metric of the report with its percentile-bootstrap CI.

    ``groups`` (one subject id per case): the bootstrap resamples subjects with replacement
    and takes all their cases (cluster bootstrap), as sessions of one subject are correlated.
    ``None``: cases are resampled as if independent.

    Returns ``{metric: {"value", "ci_low", "ci_high"}}`` for ``ALL_METRICS``.
    """
    config = config or EvalConfig()
    y, p = _as_arrays(y_true, probabilities)
    codes = _group_codes(groups, y.size)
    if codes is None:
        idx = _bootstrap_indices(y.size, config.n_bootstrap, config.seed)
        ys, preds = y[idx], p[idx] >= threshold
        tp = np.sum(preds & (ys == 1), axis=1)
        fp = np.sum(preds & (ys == 0), axis=1)
        tn = np.sum(~preds & (ys == 0), axis=1)
        fn = np.sum(~preds & (ys == 1), axis=1)
        boot = metrics_from_counts(tp, fp, tn, fn)
        boot["auc"] = _bootstrap_aucs(y, p, idx)
    else:
        weights = _cluster_bootstrap_weights(codes, config.n_bootstrap, config.seed)
        boot = metrics_from_counts(*_weighted_counts(y, p >= threshold, weights))
        boot["auc"] = _weighted_aucs(y, p, weights)
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


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components (placement values) of one score.

    ``v10``, per positive: the fraction of negatives scored below it (ties one half);
    ``v01``, per negative: the fraction of positives scored above it. Both average to the AUC.
    """
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    all_ranks = _midrank(s)
    pos_ranks, neg_ranks = _midrank(s[pos]), _midrank(s[neg])
    v10 = (all_ranks[pos] - pos_ranks) / n
    v01 = 1 - (all_ranks[neg] - neg_ranks) / m
    return v10, v01


def _difference_test(aucs: Sequence[float], var: float) -> dict[str, float]:
    """z test, p value and normal 95 % CI of ``aucs[0] - aucs[1]`` with variance ``var``."""
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


def _paired_arrays(y_true: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                   scores_b: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, a = _as_arrays(y_true, scores_a)
    _, b = _as_arrays(y_true, scores_b)
    if a.shape != b.shape:
        raise InputError("the two models were scored on different numbers of cases.")
    m = int((y == 1).sum())
    n = y.size - m
    if m < 2 or n < 2:
        raise InputError(f"DeLong's test needs >= 2 positive and >= 2 negative cases, "
                         f"got {m} and {n}.")
    return y, a, b


def delong_test(y_true: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                scores_b: Sequence[float] | np.ndarray,
                groups: Sequence[object] | np.ndarray | None = None) -> dict[str, float]:
    """DeLong's test for two correlated ROC AUCs on the same cases (DeLong et al. 1988).

    Uses the structural components (placement values) of each score; the covariance of
    the two AUC estimates gives a z statistic for ``auc_a - auc_b``. With ``groups`` (subject
    id per case) it is Obuchowski's clustered version, :func:`clustered_auc_test`.

    Returns ``auc_a``, ``auc_b``, ``difference``, ``se``, ``z``, ``p_value`` and the
    normal-approximation 95 % CI of the difference.
    """
    if groups is not None:
        return clustered_auc_test(y_true, scores_a, scores_b, groups)
    y, a, b = _paired_arrays(y_true, scores_a, scores_b)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    v10, v01 = zip(*(_placements(y, s) for s in (a, b)))
    aucs = [float(np.mean(v)) for v in v10]
    s10 = np.cov(np.vstack(v10))
    s01 = np.cov(np.vstack(v01))
    cov = s10 / m + s01 / n
    return _difference_test(aucs, float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))


def clustered_auc_test(y_true: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                       scores_b: Sequence[float] | np.ndarray,
                       groups: Sequence[object] | np.ndarray) -> dict[str, float]:
    """Obuchowski's (1997, Biometrics 53:567) nonparametric test of two AUCs on clustered data.

    A cluster is a subject with any number of positive and negative cases (sessions). The
    structural components of :func:`delong_test` are summed per cluster, ``V10_i`` over the
    cluster's positives and ``V01_i`` over its negatives; with ``m_i`` / ``n_i`` its positive /
    negative counts, ``M``, ``N`` the totals, ``I`` the number of clusters and ``I10`` /
    ``I01`` those with at least one positive / negative case::

        S10 = I10 / ((I10 - 1) M) * sum_i (V10_i - m_i θ)(V10_i - m_i θ)'
        S01 = I01 / ((I01 - 1) N) * sum_i (V01_i - n_i θ)(V01_i - n_i θ)'
        S11 = I / (I - 1)         * sum_i (V10_i - m_i θ)(V01_i - n_i θ)'
        Cov(θ) = S10 / M + S01 / N + (S11 + S11') / (M N)

    (θ the vector of the two AUCs; the diagonal is each AUC's variance, the off-diagonal the
    covariance the paired test needs). With one case per cluster, ``S11 = 0`` and the
    result equals :func:`delong_test`. Same keys as :func:`delong_test`.
    """
    y, a, b = _paired_arrays(y_true, scores_a, scores_b)
    codes = _group_codes(groups, y.size)
    assert codes is not None
    pos, neg = y == 1, y == 0
    n_clusters = int(codes.max()) + 1
    m_i = np.bincount(codes[pos], minlength=n_clusters).astype(float)
    n_i = np.bincount(codes[neg], minlength=n_clusters).astype(float)
    big_m, big_n = m_i.sum(), n_i.sum()
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        raise InputError(f"the clustered AUC test needs >= 2 subjects with a positive case and >= 2 "
                         f"with a negative case, got {i10} and {i01}.")
    d10, d01, aucs = [], [], []
    for s in (a, b):
        v10, v01 = _placements(y, s)
        auc = float(np.mean(v10))
        aucs.append(auc)
        d10.append(np.bincount(codes[pos], weights=v10, minlength=n_clusters) - m_i * auc)
        d01.append(np.bincount(codes[neg], weights=v01, minlength=n_clusters) - n_i * auc)
    d10_, d01_ = np.vstack(d10), np.vstack(d01)
    s10 = i10 / ((i10 - 1) * big_m) * (d10_ @ d10_.T)
    s01 = i01 / ((i01 - 1) * big_n) * (d01_ @ d01_.T)
    s11 = n_clusters / (n_clusters - 1) * (d10_ @ d01_.T)
    cov = s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)
    return _difference_test(aucs, float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))


def clustered_auc_variance(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                           groups: Sequence[object] | np.ndarray | None = None) -> tuple[float, float]:
    """(AUC, its variance) of one model: Obuchowski's with ``groups``, DeLong's without."""
    y, s = _as_arrays(y_true, scores)
    # Compared against a constant score (AUC 1/2, zero variance, zero covariance), the
    # variance of the difference is the model's own.
    constant = np.zeros_like(s)
    result = delong_test(y, s, constant, groups)
    return result["auc_a"], result["se"] ** 2


def compare_paired(y_true: Sequence[int] | np.ndarray, scores_a: Sequence[float] | np.ndarray,
                   scores_b: Sequence[float] | np.ndarray, config: EvalConfig | None = None,
                   names: tuple[str, str] = ("student", "baseline"),
                   groups: Sequence[object] | np.ndarray | None = None) -> dict[str, object]:
    """Paired comparison of two models on identical cases: DeLong's test and a paired bootstrap.

    The paired bootstrap resamples once per replicate and scores both models on the same
    resample, giving a percentile CI for ``AUC_a - AUC_b`` that makes no normality
    assumption. Both are reported; neither is chosen for the reader.

    ``groups`` (subject id per case): the bootstrap resamples subjects (all their cases come
    along) and ``"delong"`` is Obuchowski's clustered test; ``resampling`` says which was
    done (``"subjects"`` or ``"cases"``) and ``n_subjects`` how many subjects there are.
    """
    config = config or EvalConfig()
    y, a = _as_arrays(y_true, scores_a)
    _, b = _as_arrays(y_true, scores_b)
    codes = _group_codes(groups, y.size)
    if codes is None:
        idx = _bootstrap_indices(y.size, config.n_bootstrap, config.seed)
        diffs = _bootstrap_aucs(y, a, idx) - _bootstrap_aucs(y, b, idx)
    else:
        weights = _cluster_bootstrap_weights(codes, config.n_bootstrap, config.seed)
        diffs = _weighted_aucs(y, a, weights) - _weighted_aucs(y, b, weights)
    lo, hi = _percentile_ci(diffs, config.confidence)
    finite = diffs[np.isfinite(diffs)]
    info = resampling_info(groups, y.size)
    return {
        "model_a": names[0], "model_b": names[1], "n_cases": int(y.size),
        "n_subjects": info["n_subjects"], "resampling": info["resampling"],
        "delong": delong_test(y, a, b, groups),
        "bootstrap": {"difference": roc_auc(y, a) - roc_auc(y, b), "ci_low": lo, "ci_high": hi,
                      "fraction_a_better": float(np.mean(finite > 0)) if finite.size else float("nan"),
                      "n_bootstrap": config.n_bootstrap},
    }


def evaluate_model(y_true: Sequence[int] | np.ndarray, test_probabilities: Sequence[float] | np.ndarray,
                   optimal_threshold: float, config: EvalConfig | None = None,
                   groups: Sequence[object] | np.ndarray | None = None
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """The report's two rows for one model: at the default θ and at the validation-optimal θ.

    ``groups``: subject id per case, for the cluster bootstrap (see :func:`evaluate_predictions`).
    """
    config = config or EvalConfig()
    return {"default": evaluate_predictions(y_true, test_probabilities, config.default_threshold, config,
                                            groups),
            "optimal": evaluate_predictions(y_true, test_probabilities, optimal_threshold, config, groups)}
