"""Evaluation of a binary amyloid classifier: the paper's table with bootstrap CIs, the
validation-F1-optimal threshold, the paired student-vs-baseline comparison, plots and the
per-run report.

Metrics are computed from confusion counts so that thousands of bootstrap resamples stay
cheap; ``Testing/test_evaluation.py`` checks every one against scikit-learn.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

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


# ----------------------------------------------------------------------------- report files


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: object) -> None:
    """Write ``data`` as indented JSON atomically (NaN becomes null)."""

    def clean(obj: object) -> object:
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, Mapping):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, np.generic):
            return clean(obj.item())
        return obj

    _atomic_write_text(Path(path), json.dumps(clean(data), indent=2, sort_keys=True) + "\n")


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
             title: str = "ROC on the test cases") -> Path:
    """ROC curves of several models (name -> (labels, scores)) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    return _save_figure(fig, path)


def _save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating the folder) and release it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | Path,
                         title: str = "training") -> Path:
    """Per-epoch losses (left) and validation metrics (right) from an engine history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(h["epoch"]) for h in history]
    keys = sorted({k for h in history for k in h if k != "epoch" and isinstance(h[k], (int, float))})
    loss_keys = [k for k in keys if "loss" in k]
    other_keys = [k for k in keys if k not in loss_keys and k.startswith("val_")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, group, label in ((axes[0], loss_keys, "loss"), (axes[1], other_keys, "validation")):
        for key in group:
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", markersize=3, label=key)
        ax.set(xlabel="epoch", ylabel=label, title=f"{title}: {label}")
        if group:
            ax.legend(fontsize=7)
    return _save_figure(fig, path)


@dataclass
class CasePrediction:
    """One test case's outcome, as written to ``predictions.csv``."""

    case_id: str
    subject_id: str
    label: int
    probability: float
    centiloid: float = float("nan")


def write_predictions(path: str | Path, predictions: Sequence[CasePrediction],
                      thresholds: Mapping[str, float]) -> Path:
    """Per-case predictions with the call at each threshold (columns ``pred_<name>``)."""
    path = Path(path)
    fields = list(asdict(predictions[0]).keys()) if predictions else ["case_id"]
    fields += [f"pred_{name}" for name in thresholds]
    lines: list[dict[str, object]] = []
    for p in predictions:
        row: dict[str, object] = asdict(p)
        row.update({f"pred_{name}": int(p.probability >= t) for name, t in thresholds.items()})
        lines.append(row)
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(lines)
    _atomic_write_text(path, buffer.getvalue())
    return path


def metrics_rows(model: str, results: Mapping[str, Mapping[str, Mapping[str, float]]]
                 ) -> list[dict[str, object]]:
    """Flatten ``{threshold_name: evaluate_predictions(...)}`` into CSV rows."""
    rows = []
    for threshold_name, metrics in results.items():
        for metric, v in metrics.items():
            if metric == "threshold":
                continue
            rows.append({"model": model, "threshold": threshold_name, "metric": metric,
                         "value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"]})
    return rows


def write_metrics_csv(path: str | Path, rows: Sequence[Mapping[str, object]]) -> Path:
    """Long-format metrics table: model, threshold, metric, value, ci_low, ci_high."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["model", "threshold", "metric", "value",
                                                "ci_low", "ci_high"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    _atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)


def format_table(model_results: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
                 thresholds: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The paper's table as text: one row per (model, threshold), value [95 % CI] per metric."""
    header = ["model", "theta"] + [m.upper() if m in ("f1", "npv", "auc") else m.capitalize()
                                   for m in ALL_METRICS]
    rows = [header]
    for model, per_threshold in model_results.items():
        for threshold_name, metrics in per_threshold.items():
            theta = (thresholds or {}).get(model, {}).get(threshold_name)
            label = threshold_name if theta is None else f"{threshold_name} ({theta:.2f})"
            cells = [model, label]
            for m in ALL_METRICS:
                v = metrics[m]
                cells.append(f"{v['value']:.3f} [{v['ci_low']:.2f}, {v['ci_high']:.2f}]")
            rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def format_comparison(comparison: Mapping[str, object]) -> str:
    """One paragraph: the paired AUC difference with DeLong p and bootstrap CI."""
    d = comparison["delong"]
    b = comparison["bootstrap"]
    assert isinstance(d, Mapping) and isinstance(b, Mapping)
    return (f"{comparison['model_a']} vs {comparison['model_b']} on {comparison['n_cases']} "
            f"identical test cases: AUC {d['auc_a']:.3f} vs {d['auc_b']:.3f}, "
            f"difference {d['difference']:+.3f} (DeLong 95% CI [{d['ci_low']:+.3f}, "
            f"{d['ci_high']:+.3f}], p = {d['p_value']:.3g}; paired bootstrap 95% CI "
            f"[{b['ci_low']:+.3f}, {b['ci_high']:+.3f}])")


def evaluate_model(y_true: Sequence[int] | np.ndarray, test_probabilities: Sequence[float] | np.ndarray,
                   optimal_threshold: float, config: EvalConfig | None = None
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """The report's two rows for one model: at the default θ and at the validation-optimal θ."""
    config = config or EvalConfig()
    return {"default": evaluate_predictions(y_true, test_probabilities, config.default_threshold, config),
            "optimal": evaluate_predictions(y_true, test_probabilities, optimal_threshold, config)}


def write_report(run_dir: str | Path, model_results: Mapping[str, Mapping[str, object]],
                 thresholds: Mapping[str, Mapping[str, float]],
                 comparisons: Sequence[Mapping[str, object]] = (),
                 figures: Sequence[str] = (), extra: Mapping[str, object] | None = None) -> Path:
    """Write ``metrics.json``, ``metrics.csv`` and ``report.md`` into ``run_dir``; returns the report."""
    run_dir = Path(run_dir)
    rows = []
    for model, per_threshold in model_results.items():
        rows += metrics_rows(model, per_threshold)  # type: ignore[arg-type]
    write_metrics_csv(run_dir / "metrics.csv", rows)
    write_json(run_dir / "metrics.json", {"models": model_results, "thresholds": thresholds,
                                          "comparisons": list(comparisons), **(extra or {})})
    lines = ["# AmyloidKD evaluation report", "",
             "Metrics on the held-out test cases; brackets are percentile-bootstrap 95 % CIs. "
             "`default` uses θ = 0.5, `optimal` the θ that maximised F1 on validation.", "",
             "```", format_table(model_results, thresholds), "```", ""]  # type: ignore[arg-type]
    if comparisons:
        lines += ["## Paired comparison", ""] + [f"- {format_comparison(c)}" for c in comparisons] + [""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    lines += ["Files: `metrics.json`, `metrics.csv`, `predictions_<model>.csv`, `config.json`, "
              "`checkpoints/`.", ""]
    report = run_dir / "report.md"
    _atomic_write_text(report, "\n".join(lines))
    return report
