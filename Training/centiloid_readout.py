"""Fit a checkpoint's Centiloid read-out and its CV+ interval (AmyloidKDLib.centiloid_readout).

``amyloidkd train`` calls :func:`attach_to_run` after its phases: the read-out is fitted on
the run's training cases (train and validation sets; the test set stays untouched) that have
a measured Centiloid, and written into every student checkpoint of the run. The benchmark
``Testing/benchmarks/bench_centiloid_interval.py`` calls :func:`fit_centiloid_readout`, the
same function, inside its cross-validation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from AmyloidKDLib.centiloid_readout import DEFAULT_ALPHA, CentiloidReadout, RidgeModel
from Training.readouts import centiloid_target, fit_linear, subject_splits

logger = logging.getLogger(__name__)

#: Fewest training cases with a measured Centiloid for a read-out (fewer: none is stored): the
#: smallest n whose 90 % CV+ interval is finite, ⌈0.9·(n + 1)⌉ ≤ n. So few cases make a valid
#: but very wide interval (its bounds are then the extreme held-out residuals).
MIN_CASES = 9
#: Folds of the CV+ interval (fewer when there are fewer subjects).
CV_FOLDS = 5
#: The student checkpoints that get the read-out.
STUDENT_PHASES = ("student", "baseline", "light")


def fit_ridge(x: np.ndarray, centiloids: np.ndarray, alpha: float) -> RidgeModel:
    """Ridge regression of the standardised Centiloid on standardised ``x``
    (:func:`Training.readouts.fit_linear` with λ = 1, the regional Centiloid read-out)."""
    z, mean, sd = centiloid_target(centiloids)
    fit = fit_linear(x, np.zeros(len(z)), z, lam=1.0, alpha=alpha)
    return RidgeModel(fit.mean, fit.scale, fit.weights, fit.bias, mean, sd)


def subject_folds(subjects: Sequence[str], labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each case's fold (0..K-1): subject-disjoint, stratified by label where possible."""
    from sklearn.model_selection import GroupKFold

    groups = np.asarray([str(s) for s in subjects])
    labels = np.asarray(labels, dtype=int)
    k = max(2, min(folds, len(set(groups.tolist()))))
    if min(np.bincount(labels, minlength=2)) >= k:
        splits = subject_splits(labels, groups, folds, seed)
    else:
        splits = GroupKFold(n_splits=k).split(labels, labels, groups)
    assignment = np.full(len(groups), -1)
    for fold, (_, held_out) in enumerate(splits):
        assignment[held_out] = fold
    return assignment


def fit_centiloid_readout(x: np.ndarray, centiloids: Sequence[float], subjects: Sequence[str],
                          labels: Sequence[int], parcellation: Any, *, ridge_alpha: float = 10.0,
                          alpha: float = DEFAULT_ALPHA, folds: int = CV_FOLDS,
                          seed: int = 0) -> CentiloidReadout:
    """The read-out on all cases, the fold models and their held-out residuals (CV+)."""
    x = np.asarray(x, dtype=np.float64)
    cl = np.asarray(centiloids, dtype=np.float64)
    assignment = subject_folds(subjects, np.asarray(labels, dtype=int), folds, seed)
    fold_models, residuals = [], np.zeros(len(cl))
    for fold in range(int(assignment.max()) + 1):
        held_out = assignment == fold
        model = fit_ridge(x[~held_out], cl[~held_out], ridge_alpha)
        residuals[held_out] = np.abs(cl[held_out] - model.predict(x[held_out]))
        fold_models.append(model)
    details = {"n_cases": int(len(cl)), "n_subjects": int(len(set(map(str, subjects)))),
               "ridge_alpha": float(ridge_alpha), "folds": len(fold_models), "seed": int(seed),
               "median_residual": float(np.median(residuals))}
    return CentiloidReadout(fit_ridge(x, cl, ridge_alpha), fold_models, residuals, assignment, alpha,
                            np.asarray(parcellation.centroids_mm, np.float64), parcellation.resolution,
                            parcellation.signature, details)


def readout_for_run(config: Any, dataset: Any, records: Sequence[Any], split: Any,
                    run_dir: str | Path) -> CentiloidReadout | None:
    """The read-out fitted on the run's train + validation cases with a measured Centiloid
    (``records``: the dataset's records, in its order); None (logged) when fewer than
    :data:`MIN_CASES` have one."""
    from AmyloidKDLib.regional_features import parcellation_for
    from Training.regional import regional_data

    training = sorted(set(split.train) | set(split.val))
    with_cl = [i for i in training if np.isfinite(dataset.info[i].centiloid)]
    if len(with_cl) < MIN_CASES:
        logger.warning("no Centiloid read-out: %d training cases have a measured Centiloid (needs %d)",
                       len(with_cl), MIN_CASES)
        return None
    n_parcels = config.regional.n_parcels
    data = regional_data([records[i] for i in with_cl], config, config.cache_root(run_dir), n_parcels)
    parcellation = parcellation_for(config.prep_config(), n_parcels)
    return fit_centiloid_readout(
        data.mri, [float(dataset.info[i].centiloid) for i in with_cl],
        [dataset.subjects[i] for i in with_cl], dataset.labels[with_cl], parcellation,
        ridge_alpha=config.regional.alpha, seed=config.split.seed)


def attach_to_run(config: Any, dataset: Any, records: Sequence[Any], split: Any, run_dir: str | Path,
                  phases: Sequence[str]) -> CentiloidReadout | None:
    """Fit the read-out and store it in the checkpoints of the student ``phases`` just trained."""
    from AmyloidKDLib.checkpoint import set_centiloid_readout

    targets = [Path(run_dir) / "checkpoints" / p for p in phases if p in STUDENT_PHASES]
    targets = [t for t in targets if t.is_dir()]
    if not targets:
        return None
    readout = readout_for_run(config, dataset, records, split, run_dir)
    if readout is not None:
        for target in targets:
            set_centiloid_readout(target, readout.to_dict())
    return readout
