"""Report files of an evaluated run: the paper's table as text, the paired comparison,
metrics as JSON and CSV, per-case predictions, ROC and training-curve figures.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``: no
pyplot state, works without a display), like ``AmyloidKDLib/report_png.py``. Every file is
written through :mod:`AmyloidKDLib.atomic`. The statistics themselves are in
:mod:`Training.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from AmyloidKDLib.atomic import atomic_path, write_text_atomic
from Training.metrics import ALL_METRICS, roc_auc

#: Name of the report file, in ``RUN/evaluation/`` and in a cross-validation's ``--out`` folder.
REPORT_NAME = "report.md"


def _json_clean(obj: object) -> object:
    """``obj`` with NaN/inf as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_clean(obj.item())
    return obj


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON with sorted keys, atomically (NaN becomes null)."""
    return write_text_atomic(path, json.dumps(_json_clean(data), indent=2, sort_keys=True) + "\n")


def _new_figure(width: float, height: float):
    """A figure on its own Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG, atomically."""
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return Path(path)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
             title: str = "ROC on the test cases") -> Path:
    """ROC curves of several models (name -> (labels, scores)) in one PNG."""
    from sklearn.metrics import roc_curve

    figure = _new_figure(5, 5)
    ax = figure.subplots()
    for name, (y, s) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    return _save_figure(figure, path)


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | Path,
                         title: str = "training") -> Path:
    """Per-epoch losses (left) and validation metrics (right) from an engine history."""
    epochs = [int(h["epoch"]) for h in history]
    keys = sorted({k for h in history for k in h if k != "epoch" and isinstance(h[k], (int, float))})
    loss_keys = [k for k in keys if "loss" in k]
    other_keys = [k for k in keys if k not in loss_keys and k.startswith("val_")]
    figure = _new_figure(10, 4)
    axes = figure.subplots(1, 2)
    for ax, group, label in ((axes[0], loss_keys, "loss"), (axes[1], other_keys, "validation")):
        for key in group:
            ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", markersize=3, label=key)
        ax.set(xlabel="epoch", ylabel=label, title=f"{title}: {label}")
        if group:
            ax.legend(fontsize=7)
    return _save_figure(figure, path)


@dataclass
class CasePrediction:
    """One test case's outcome, as written to ``predictions_<model>.csv``."""

    case_id: str
    subject_id: str
    label: int
    probability: float
    centiloid: float = float("nan")


def _write_csv(path: str | Path, fields: Sequence[str], rows: Sequence[Mapping[str, object]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def write_predictions(path: str | Path, predictions: Sequence[CasePrediction],
                      thresholds: Mapping[str, float]) -> Path:
    """Per-case predictions with the call at each threshold (columns ``pred_<name>``)."""
    fields = list(asdict(predictions[0]).keys()) if predictions else ["case_id"]
    fields += [f"pred_{name}" for name in thresholds]
    rows: list[dict[str, object]] = []
    for p in predictions:
        row: dict[str, object] = asdict(p)
        row.update({f"pred_{name}": int(p.probability >= t) for name, t in thresholds.items()})
        rows.append(row)
    return _write_csv(path, fields, rows)


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
    formatted = [{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
    return _write_csv(path, ["model", "threshold", "metric", "value", "ci_low", "ci_high"], formatted)


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


def resampling_sentence(resampling: Mapping[str, object] | None) -> str:
    """What the CIs resampled, e.g. "95 % CIs resample subjects (n = 120 subjects, 178 cases)".

    ``resampling`` is :func:`Training.metrics.resampling_info`'s dict; None (not known) gives "".
    """
    if not resampling:
        return ""
    n_cases, n_subjects = resampling.get("n_cases"), resampling.get("n_subjects")
    if resampling.get("resampling") == "subjects":
        return (f"95 % CIs resample subjects (n = {n_subjects} subjects, {n_cases} cases): all "
                f"sessions of a drawn subject come along, and the paired test is Obuchowski's "
                f"clustered DeLong test.")
    return f"95 % CIs resample cases (n = {n_cases} cases), treating every case as independent."


def format_comparison(comparison: Mapping[str, object]) -> str:
    """One paragraph: the paired AUC difference with DeLong p and bootstrap CI (and what was resampled)."""
    d = comparison["delong"]
    b = comparison["bootstrap"]
    assert isinstance(d, Mapping) and isinstance(b, Mapping)
    by_subject = comparison.get("resampling") == "subjects"
    cases = (f"{comparison['n_cases']} identical test cases of {comparison['n_subjects']} subjects"
             if by_subject else f"{comparison['n_cases']} identical test cases")
    test = "Obuchowski's clustered DeLong" if by_subject else "DeLong"
    bootstrap = ("paired subject bootstrap" if by_subject
                 else "paired case bootstrap" if comparison.get("resampling") == "cases"
                 else "paired bootstrap")
    return (f"{comparison['model_a']} vs {comparison['model_b']} on {cases}: "
            f"AUC {d['auc_a']:.3f} vs {d['auc_b']:.3f}, "
            f"difference {d['difference']:+.3f} ({test} 95% CI [{d['ci_low']:+.3f}, "
            f"{d['ci_high']:+.3f}], p = {d['p_value']:.3g}; {bootstrap} 95% CI "
            f"[{b['ci_low']:+.3f}, {b['ci_high']:+.3f}])")


def _threshold_sentence(thresholds: Mapping[str, Mapping[str, float]]) -> str:
    """How the report's two rows per model were thresholded, with the θ actually used."""
    defaults = sorted({float(t["default"]) for t in thresholds.values() if "default" in t})
    default = (f"θ = {defaults[0]:g}" if len(defaults) == 1
               else "the θ in the theta column" if not defaults
               else "θ = " + " / ".join(f"{d:g}" for d in defaults) + " (see the theta column)")
    return (f"`default` uses {default}, `optimal` the θ that maximised F1 on validation "
            f"(its value in brackets in the theta column).")


def write_report(run_dir: str | Path, model_results: Mapping[str, Mapping[str, object]],
                 thresholds: Mapping[str, Mapping[str, float]],
                 comparisons: Sequence[Mapping[str, object]] = (),
                 figures: Sequence[str] = (), extra: Mapping[str, object] | None = None,
                 resampling: Mapping[str, object] | None = None) -> Path:
    """Write ``metrics.json``, ``metrics.csv`` and ``report.md`` into ``run_dir``; returns the report.

    ``thresholds[model]`` holds the θ of each row (``default``, ``optimal``); the report
    states them, so it never claims a threshold that was not used. ``resampling``
    (:func:`Training.metrics.resampling_info`) says whether the CIs resampled subjects or
    cases; the report and ``metrics.json`` state it.
    """
    run_dir = Path(run_dir)
    rows = []
    for model, per_threshold in model_results.items():
        rows += metrics_rows(model, per_threshold)  # type: ignore[arg-type]
    write_metrics_csv(run_dir / "metrics.csv", rows)
    write_json(run_dir / "metrics.json", {"models": model_results, "thresholds": thresholds,
                                          "comparisons": list(comparisons), **(extra or {}),
                                          **({"resampling": dict(resampling)} if resampling else {})})
    lines = ["# AmyloidKD evaluation report", "",
             "Metrics on the held-out test cases; brackets are percentile-bootstrap 95 % CIs. "
             + (resampling_sentence(resampling) + " " if resampling else "")
             + _threshold_sentence(thresholds), "",
             "```", format_table(model_results, thresholds), "```", ""]  # type: ignore[arg-type]
    if comparisons:
        lines += ["## Paired comparison", ""] + [f"- {format_comparison(c)}" for c in comparisons] + [""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    lines += ["Files: `metrics.json`, `metrics.csv`, `predictions_<model>.csv`, `config.json`, "
              "`checkpoints/`.", ""]
    return write_text_atomic(run_dir / REPORT_NAME, "\n".join(lines))
