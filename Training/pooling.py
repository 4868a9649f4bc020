"""Pooling the out-of-fold test predictions of a cross-validation, without any training.

Each fold scores its own test subjects; pooled, every case is tested exactly once. The
pooled metrics are those of :mod:`Training.metrics` with the subjects as clusters (sessions
of a subject are correlated; the CIs resample subjects). The ``optimal`` row keeps each
case's own fold's validation threshold: a case counts as positive when its probability is
``>=`` its fold's θ (implemented, as the table needs one θ, by shifting the probability to
``0.5 + (p - θ) / 2`` and scoring at 0.5).

:func:`pool_fold_predictions` and :func:`pooled_evaluation` are pure functions of the
per-fold arrays; ``amyloidkd cv`` (:func:`Training.commands.cv.cross_validate`) feeds them
and ``amyloidkd benchmark`` can reuse the pooled arrays (``pooled_predictions.csv``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from AmyloidKDLib.atomic import write_text_atomic
from AmyloidKDLib.errors import InputError
from Training.metrics import (EvalConfig, compare_paired, evaluate_predictions, resampling_info)
from Training.splits import LeakageError

#: Models compared with the baseline in the paired comparison, in report order.
COMPARED_PHASES: tuple[str, ...] = ("student", "light")


@dataclass
class FoldPredictions:
    """One fold's test cases and every model's predictions on them."""

    fold: int
    case_ids: Sequence[str]
    subjects: Sequence[str]
    labels: Sequence[int]
    probabilities: Mapping[str, Sequence[float]]   # phase -> probability per test case
    thresholds: Mapping[str, float]                 # phase -> this fold's validation-optimal θ
    centiloids: Sequence[float] | None = field(default=None)


def shift_to_threshold(probabilities: Sequence[float] | np.ndarray,
                       thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """``clip(0.5 + (p - θ) / 2, 0, 1)`` per case: ``>= 0.5`` exactly when ``p >= θ``.

    Lets cases with different (per-fold) thresholds be scored at the single θ = 0.5; the
    call is forced to agree with ``p >= θ`` where rounding of ``(p - θ) / 2`` near 0 would
    flip it.
    """
    p = np.asarray(probabilities, dtype=float)
    t = np.asarray(thresholds, dtype=float)
    shifted = np.clip(0.5 + (p - t) / 2, 0.0, 1.0)
    return np.where(p >= t, np.maximum(shifted, 0.5), np.minimum(shifted, np.nextafter(0.5, 0.0)))


def pool_fold_predictions(folds: Sequence[FoldPredictions]) -> dict[str, Any]:
    """The folds' test predictions as one set of arrays (fold order, then case order).

    Returns ``{"case_ids", "subjects", "labels", "centiloids", "folds", "probabilities":
    {phase: array}, "thresholds": {phase: array}}`` with one entry per case; a case's
    threshold is its own fold's. Raises :class:`~AmyloidKDLib.errors.InputError` for
    inconsistent folds (lengths, phases, a case tested twice) and
    :class:`~Training.splits.LeakageError` for a subject tested in two folds.
    """
    if not folds:
        raise InputError("no fold to pool: run at least one fold.")
    phases = tuple(folds[0].probabilities)
    case_ids: list[str] = []
    subjects: list[str] = []
    labels: list[int] = []
    centiloids: list[float] = []
    fold_of_case: list[int] = []
    probabilities: dict[str, list[float]] = {p: [] for p in phases}
    thresholds: dict[str, list[float]] = {p: [] for p in phases}
    subject_fold: dict[str, int] = {}
    seen_cases: set[str] = set()
    for fold in folds:
        n = len(fold.case_ids)
        if tuple(fold.probabilities) != phases or set(fold.thresholds) < set(phases):
            raise InputError(f"fold {fold.fold} has predictions of {sorted(fold.probabilities)} and "
                             f"thresholds of {sorted(fold.thresholds)}; the first fold had {sorted(phases)}.")
        lengths = {len(fold.subjects), len(fold.labels),
                   *(len(v) for v in fold.probabilities.values()),
                   *([len(fold.centiloids)] if fold.centiloids is not None else [])}
        if lengths != {n}:
            raise InputError(f"fold {fold.fold}: case ids, subjects, labels and probabilities differ "
                             f"in length ({n} case ids, lengths {sorted(lengths)}).")
        for case, subject in zip(fold.case_ids, fold.subjects):
            if case in seen_cases:
                raise InputError(f"case {case!r} is tested in two folds; each case must be tested once.")
            seen_cases.add(case)
            owner = subject_fold.setdefault(str(subject), fold.fold)
            if owner != fold.fold:
                raise LeakageError(f"subject {subject!r} is tested in folds {owner} and {fold.fold}.")
        case_ids += [str(c) for c in fold.case_ids]
        subjects += [str(s) for s in fold.subjects]
        labels += [int(v) for v in fold.labels]
        centiloids += ([float(c) for c in fold.centiloids] if fold.centiloids is not None
                       else [float("nan")] * n)
        fold_of_case += [fold.fold] * n
        for phase in phases:
            probabilities[phase] += [float(v) for v in fold.probabilities[phase]]
            thresholds[phase] += [float(fold.thresholds[phase])] * n
    return {"case_ids": np.asarray(case_ids, dtype=str), "subjects": np.asarray(subjects, dtype=str),
            "labels": np.asarray(labels, dtype=int), "centiloids": np.asarray(centiloids, dtype=float),
            "folds": np.asarray(fold_of_case, dtype=int),
            "probabilities": {p: np.asarray(v, dtype=float) for p, v in probabilities.items()},
            "thresholds": {p: np.asarray(v, dtype=float) for p, v in thresholds.items()}}


def _has_two_per_class(groups: np.ndarray, labels: np.ndarray) -> bool:
    """>= 2 distinct groups (subjects or cases) with a positive and >= 2 with a negative case."""
    return min(len(set(groups[labels == 1].tolist())), len(set(groups[labels == 0].tolist()))) >= 2


def pooled_evaluation(pooled: Mapping[str, Any], config: EvalConfig | None = None,
                      names: Mapping[str, str] | None = None, by_subject: bool = True
                      ) -> dict[str, Any]:
    """The report's metrics of pooled out-of-fold predictions.

    Per model (``names[phase]``, default the phase): the ``default`` row at
    ``config.default_threshold`` and the ``optimal`` row with each case's own fold's θ
    (:func:`shift_to_threshold`, scored at 0.5; its AUC is the default row's, as the
    per-fold shift would otherwise mix the folds' scales). The distilled and the light
    student are compared with the baseline when both classes have >= 2 cases; by subject
    (Obuchowski, subject bootstrap) when they have >= 2 subjects, else by case (the
    comparison's ``resampling`` says which). ``by_subject``: CIs resample subjects (else cases).

    Returns ``{"models", "thresholds" (θ per row; ``optimal`` is the mean of the folds' θ),
    "comparisons", "resampling"}``.
    """
    config = config or EvalConfig()
    names = dict(names or {})
    labels = np.asarray(pooled["labels"], dtype=int)
    subjects = np.asarray(pooled["subjects"], dtype=str)
    groups = subjects if by_subject else None
    models: dict[str, Any] = {}
    thresholds: dict[str, dict[str, float]] = {}
    for phase, probs in pooled["probabilities"].items():
        name = names.get(phase, phase)
        optimal = np.asarray(pooled["thresholds"][phase], dtype=float)
        per = {"default": evaluate_predictions(labels, probs, config.default_threshold, config, groups),
               "optimal": evaluate_predictions(labels, shift_to_threshold(probs, optimal), 0.5, config,
                                               groups)}
        per["optimal"]["auc"] = per["default"]["auc"]
        models[name] = per
        thresholds[name] = {"default": config.default_threshold, "optimal": float(np.mean(optimal))}
    probabilities = pooled["probabilities"]
    comparisons = []
    # Obuchowski's clustered test needs >= 2 subjects per class; with fewer, cases (labelled so).
    pairs_by = groups if groups is not None and _has_two_per_class(subjects, labels) else None
    if "baseline" in probabilities and _has_two_per_class(np.arange(labels.size), labels):
        comparisons = [compare_paired(labels, probabilities[p], probabilities["baseline"], config,
                                      (names.get(p, p), names.get("baseline", "baseline")), pairs_by)
                       for p in COMPARED_PHASES if p in probabilities]
    return {"models": models, "thresholds": thresholds, "comparisons": comparisons,
            "resampling": resampling_info(groups, labels.size)}


def write_pooled_predictions(path: str | Path, pooled: Mapping[str, Any]) -> Path:
    """One row per case: case_id, subject_id, fold, label, centiloid, then per phase its
    probability, its fold's threshold and the call at that threshold (``pred_<phase>``)."""
    phases = list(pooled["probabilities"])
    fields = ["case_id", "subject_id", "fold", "label", "centiloid"]
    for phase in phases:
        fields += [f"probability_{phase}", f"threshold_{phase}", f"pred_{phase}"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for k, case in enumerate(pooled["case_ids"]):
        row: dict[str, object] = {"case_id": case, "subject_id": pooled["subjects"][k],
                                  "fold": int(pooled["folds"][k]), "label": int(pooled["labels"][k]),
                                  "centiloid": repr(float(pooled["centiloids"][k]))}
        for phase in phases:
            p, t = float(pooled["probabilities"][phase][k]), float(pooled["thresholds"][phase][k])
            row.update({f"probability_{phase}": repr(p), f"threshold_{phase}": repr(t),
                        f"pred_{phase}": int(p >= t)})
        writer.writerow(row)
    return write_text_atomic(path, buffer.getvalue())
