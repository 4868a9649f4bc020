"""Linear read-outs of regional measures: the MRI-only baseline, generalised distillation from
a PET teacher, and a Centiloid-target read-out, all on the same features, differing only in
their training target.

Every read-out is a standardised linear score ``f = x·w + b`` fitted in float64 (Newton's
method; deterministic, and independent of torch's CPU kernels) to

    loss = (1 − λ)·mean BCE(t, σ(f)) + λ·mean (f − z)² / 2 + α·|w|² / 2

with ``t`` a (possibly soft) label and ``z`` a regression target:

- ``baseline``: the label alone (λ = 0, t = y): an L2 logistic regression.
- ``distilled``: generalised distillation (Lopez-Paz et al. 2016, after Vapnik's learning using
  privileged information): the label softened towards a PET teacher's belief,
  ``t = (1 − w)·y + w·σ(teacher logit / T)``, where the teacher's logit for each training
  case is *cross-fitted* (the teacher that scores a case never trained on its subject), so it
  carries what PET knows about that case rather than a memorised label.
- ``centiloid``: ridge regression on the measured Centiloid (λ = 1, ``z`` the training fold's
  standardised Centiloid): its score is a predicted Centiloid, ranking cases by amyloid burden.

The teacher is the same kind of read-out on the MRI and the PET regional measures together.
Probabilities use one fixed map per read-out, the same in every fold, so that pooled
out-of-fold predictions rank cases as the scores do (per-fold Platt scaling, fitted on a few
inner cases and sometimes refused, mixed scales across folds and cost 0.04 pooled AUC on
development cohort 1011): the logistic read-outs' own σ(score), and for the Centiloid
read-out σ((predicted CL − label threshold) / :data:`CENTILOID_SCALE`). The decision threshold is chosen for F1 on its
own cross-fitted training-fold scores (inner folds), never on a small validation set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Centiloid units per logit of the Centiloid read-out's probability map (fixed, not fitted).
CENTILOID_SCALE = 20.0
#: Teacher logits are clipped to ±this (a near-separating teacher has unbounded logits).
LOGIT_CLIP = 8.0
#: The read-outs, in report order: name -> (target, λ).
READOUTS = ("baseline", "distilled", "centiloid")


@dataclass
class ReadoutConfig:
    """Settings of the regional read-outs (fixed on development seeds; see docs/benchmarks.md)."""

    alpha: float = 10.0           # L2 strength on the standardised weights (all read-outs)
    teacher_alpha: float = 0.1    # L2 strength of the PET teacher
    distill_weight: float = 0.5   # w: how far the distilled read-out's labels move to the teacher's
    temperature: float = 2.0      # T: the teacher's logit is softened by it
    label_threshold: float = 20.6  # Centiloid above which a case is amyloid-positive
    inner_folds: int = 5          # cross-fitting folds inside a training fold
    seed: int = 0


@dataclass
class LinearReadout:
    """A fitted standardised linear score, its probability map ``σ(slope·score + offset)`` and
    an F1 threshold."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    link: tuple[float, float] = (1.0, 0.0)   # (slope, offset) of the probability map
    threshold: float = 0.5

    def score(self, x: np.ndarray) -> np.ndarray:
        """The raw linear score (logit scale before calibration)."""
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.bias

    def probability(self, x: np.ndarray) -> np.ndarray:
        """Probability of amyloid positivity (the read-out's fixed map of its score)."""
        a, c = self.link
        return _sigmoid(a * self.score(x) + c)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(v, dtype=np.float64)))


def fit_linear(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, lam: float = 0.0,
               alpha: float = 0.1) -> LinearReadout:
    """Minimise ``(1 − λ)·BCE(y, σ(f)) + λ·(f − z)²/2 + α·|w|²/2`` over standardised ``x``
    (``y`` may be soft labels in [0, 1])."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    xs = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
    n, d1 = xs.shape
    target = np.zeros(n) if z is None else np.asarray(z, dtype=np.float64)
    if lam > 0 and z is None:
        raise ValueError("a regression weight λ > 0 needs a target z")
    penalty = np.full(d1, alpha)
    penalty[-1] = 0.0                      # the bias is not penalised

    def loss(theta: np.ndarray) -> float:
        f = xs @ theta
        bce = np.logaddexp(0.0, f) - y * f
        return float((1 - lam) * bce.mean() + lam * 0.5 * np.mean((f - target) ** 2)
                     + 0.5 * float(np.sum(penalty * theta ** 2)))

    # Damped Newton: the loss is smooth and strictly convex, so a few steps reach the optimum
    # exactly; plain linear algebra in float64 keeps the result independent of thread counts.
    theta = np.zeros(d1)
    if lam >= 1.0:
        theta[-1] = float(target.mean())
    current = loss(theta)
    for _ in range(100):
        f = xs @ theta
        p = _sigmoid(f)
        gradient = xs.T @ ((1 - lam) * (p - y) + lam * (f - target)) / n + penalty * theta
        curvature = (1 - lam) * p * (1 - p) + lam
        hessian = (xs.T * curvature) @ xs / n + np.diag(penalty) + 1e-12 * np.eye(d1)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-6:
            candidate = theta - size * step
            value = loss(candidate)
            if value <= current:
                break
            size *= 0.5
        theta, improvement, current = candidate, current - value, value
        if improvement < 1e-14 or float(np.max(np.abs(gradient))) < 1e-10:
            break
    return LinearReadout(mean, scale, theta[:-1].copy(), float(theta[-1]))


def subject_splits(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list:
    """Stratified, subject-disjoint ``(train, test)`` index pairs; at most one fold per subject."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = max(2, min(folds, len(set(groups.tolist()))))
    return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y, groups))


def cross_fitted_teacher_logits(x_teacher: np.ndarray, y: np.ndarray, groups: np.ndarray,
                                config: ReadoutConfig) -> np.ndarray:
    """Each case's teacher logit from a teacher that never trained on its subject."""
    logits = np.zeros(len(y))
    for inner_train, inner_test in subject_splits(y, groups, config.inner_folds, config.seed):
        teacher = fit_linear(x_teacher[inner_train], y[inner_train], alpha=config.teacher_alpha)
        logits[inner_test] = teacher.score(x_teacher[inner_test])
    return np.clip(logits, -LOGIT_CLIP, LOGIT_CLIP)


def centiloid_target(centiloids: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The Centiloid standardised on these (training) cases, with its mean and SD (a score ``f``
    maps back to ``mean + sd·f`` Centiloid)."""
    cl = np.asarray(centiloids, dtype=np.float64)
    mean, sd = float(cl.mean()), float(cl.std()) or 1.0
    return (cl - mean) / sd, mean, sd


def _targets(name: str, x_teacher: np.ndarray | None, y: np.ndarray, centiloids: np.ndarray,
             groups: np.ndarray, config: ReadoutConfig
             ) -> tuple[np.ndarray, np.ndarray | None, float, tuple[float, float], np.ndarray | None]:
    """(label t, regression target z, λ, probability map, the teacher's cross-fitted logits or
    None) of a read-out on its training cases."""
    if name == "baseline":
        return y.astype(np.float64), None, 0.0, (1.0, 0.0), None
    if name == "distilled":
        if x_teacher is None:
            raise ValueError("the distilled read-out needs PET regional measures for its teacher")
        teacher = cross_fitted_teacher_logits(x_teacher, y, groups, config)
        w = config.distill_weight
        return (1 - w) * y + w * _sigmoid(teacher / config.temperature), None, 0.0, (1.0, 0.0), teacher
    if name == "centiloid":
        z, mean, sd = centiloid_target(centiloids)
        # predicted CL = mean + sd·score; probability σ((CL − threshold) / scale)
        link = (sd / CENTILOID_SCALE, (mean - config.label_threshold) / CENTILOID_SCALE)
        return y.astype(np.float64), z, 1.0, link, None
    raise ValueError(f"unknown read-out {name!r}; choose from {READOUTS}")


def _fit_with_threshold(x: np.ndarray, y: np.ndarray, t: np.ndarray, z: np.ndarray | None, lam: float,
                        link: tuple[float, float], groups: np.ndarray, config: ReadoutConfig) -> LinearReadout:
    """Fit on all of ``x`` (labels ``t``, target ``z``); the F1 threshold against the hard
    labels ``y`` from inner cross-fitted probabilities."""
    from Training.metrics import f1_optimal_threshold

    scores = np.zeros(len(y))
    for inner_train, inner_test in subject_splits(y, groups, config.inner_folds, config.seed + 1):
        model = fit_linear(x[inner_train], t[inner_train], None if z is None else z[inner_train],
                           lam, config.alpha)
        scores[inner_test] = model.score(x[inner_test])
    readout = fit_linear(x, t, z, lam, config.alpha)
    readout.link = link
    readout.threshold = float(f1_optimal_threshold(y, _sigmoid(link[0] * scores + link[1])))
    return readout


def cross_validate_readouts(x_mri: np.ndarray, x_pet: np.ndarray | None, labels: Sequence[int],
                            centiloids: Sequence[float], subjects: Sequence[str],
                            splits: Sequence[Any], config: ReadoutConfig | None = None,
                            readouts: Sequence[str] = READOUTS) -> dict[str, Any]:
    """Out-of-fold predictions of the read-outs (and the PET teacher) over ``splits``.

    ``splits`` are the run's outer folds (``.fold``, ``.train``, ``.val``, ``.test`` index
    tuples); train and val together are a fold's training cases (cross-fitting replaces the
    validation set). Returns ``probabilities``/``scores`` (name -> array over all cases),
    ``thresholds`` and ``fold_auc`` (name -> per-fold AUCs), and ``folds`` of each case.
    """
    from sklearn.metrics import roc_auc_score

    config = config or ReadoutConfig()
    y = np.asarray(labels, dtype=int)
    cl = np.asarray(centiloids, dtype=np.float64)
    groups = np.asarray([str(s) for s in subjects])
    x_mri = np.asarray(x_mri, dtype=np.float64)
    x_teacher = None if x_pet is None else np.concatenate([x_mri, np.asarray(x_pet, np.float64)], axis=1)
    names = list(readouts) + (["teacher"] if x_teacher is not None else [])
    out = {"probabilities": {n: np.full(len(y), np.nan) for n in names},
           "scores": {n: np.full(len(y), np.nan) for n in names},
           "thresholds": {n: [] for n in names}, "fold_auc": {n: [] for n in names},
           "folds": np.full(len(y), -1), "teacher_target_auc": []}
    for split in splits:
        train = np.asarray(sorted(set(split.train) | set(split.val)), dtype=int)
        test = np.asarray(split.test, dtype=int)
        out["folds"][test] = split.fold
        for name in names:
            if name == "teacher":
                t, z, lam, link, x = y[train].astype(np.float64), None, 0.0, (1.0, 0.0), x_teacher
            else:
                t, z, lam, link, teacher = _targets(name, None if x_teacher is None else x_teacher[train],
                                                    y[train], cl[train], groups[train], config)
                x = x_mri
                if teacher is not None:   # how well the cross-fitted teacher ranks the training cases
                    out["teacher_target_auc"].append(float(roc_auc_score(y[train], teacher)))
            readout = _fit_with_threshold(x[train], y[train], t, z, lam, link, groups[train], config)
            out["scores"][name][test] = readout.score(x[test])
            out["probabilities"][name][test] = readout.probability(x[test])
            out["thresholds"][name].append(readout.threshold)
            if len(set(y[test].tolist())) == 2:
                out["fold_auc"][name].append(float(roc_auc_score(y[test], out["scores"][name][test])))
    return out


#: Names the regional read-outs carry next to the slice models (pooled predictions, reports).
ARM_NAMES = {"baseline": "regional", "distilled": "regional_distilled",
             "centiloid": "regional_centiloid", "teacher": "regional_teacher"}


def regional_cross_validation(config: Any, dataset: Any, records: Sequence[Any],
                              cache_root: Any, progress: bool = False) -> dict[str, Any]:
    """The regional read-outs of a prepared cohort, cross-validated on the run's own outer
    folds (``config.split``, the folds ``amyloidkd cv`` uses), so every arm is paired case by
    case with the slice models. Adds ``case_ids``, ``labels`` and ``subjects`` to
    :func:`cross_validate_readouts`' result."""
    from Training.regional import regional_data
    from Training.splits import cross_validation_splits

    settings = config.regional
    data = regional_data(records, config, cache_root, settings.n_parcels, progress)
    splits = cross_validation_splits(dataset.subjects, dataset.labels, config.split)
    readout_config = ReadoutConfig(alpha=settings.alpha, teacher_alpha=settings.teacher_alpha,
                                   distill_weight=settings.distill_weight,
                                   temperature=settings.temperature,
                                   label_threshold=float(config.data.label_threshold),
                                   inner_folds=settings.inner_folds, seed=config.split.seed)
    labels = np.asarray(dataset.labels, dtype=int)
    result = cross_validate_readouts(data.mri, data.pet, labels, [c.centiloid for c in dataset.info],
                                     dataset.subjects, splits, readout_config)
    result.update(case_ids=[c.case_id for c in dataset.info], labels=labels,
                  subjects=list(dataset.subjects))
    return result


def add_to_pooled(pooled: dict[str, Any], regional: dict[str, Any]) -> dict[str, Any]:
    """Put the regional arms into ``pooled`` (:func:`Training.pooling.pool_fold_predictions`'
    arrays) under :data:`ARM_NAMES`, aligned by case id; each case keeps its own fold's θ."""
    position = {c: i for i, c in enumerate(regional["case_ids"])}
    order = np.array([position[c] for c in pooled["case_ids"]])
    folds = np.asarray(regional["folds"])[order]
    for name, probabilities in regional["probabilities"].items():
        arm = ARM_NAMES[name]
        pooled["probabilities"][arm] = np.asarray(probabilities)[order]
        per_fold = dict(enumerate(regional["thresholds"][name]))
        pooled.setdefault("thresholds", {})[arm] = np.array([per_fold[int(f)] for f in folds])
    return pooled
