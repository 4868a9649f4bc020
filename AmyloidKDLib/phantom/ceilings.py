"""The generator's own ceiling: how well its noise-free, MRI-visible truth predicts the label.

:func:`oracle_auc` fits a logistic regression on the *true* per-session quantities an MRI
could in principle see (per-region GM loss, global GM loss, ventricle expansion, WM lesion
load) -- not the Centiloid, not the tracer, not the age as a number -- with subject-grouped
stratified 5-fold cross-validation, and scores the pooled out-of-fold predictions against the
session label (measured Centiloid > threshold). No model working from images of this cohort
can be expected to beat it; it runs on :func:`~AmyloidKDLib.phantom.truth.sample_cohort`
truth only (no images), so it is cheap on thousands of subjects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from AmyloidKDLib.phantom.truth import SessionTruth

#: Names of the oracle's features after the per-region losses.
ORACLE_SCALARS = ("global_gm_loss", "ventricle_expansion", "wm_lesion_load")


def oracle_features(sessions: Sequence[SessionTruth]) -> np.ndarray:
    """(n_sessions, n_regions + 3): the noise-free MRI-visible truth of each session."""
    return np.array([[*s.region_gm_loss, *(getattr(s, n) for n in ORACLE_SCALARS)]
                     for s in sessions], dtype=float)


def oracle_auc(sessions: Sequence[SessionTruth], seed: int = 0, folds: int = 5) -> float:
    """Pooled out-of-fold AUC of a subject-grouped CV logistic regression on
    :func:`oracle_features` against the session label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = oracle_features(sessions)
    y = np.array([s.label for s in sessions], dtype=int)
    groups = np.array([s.subject_id for s in sessions])
    if len(set(y)) < 2:
        raise ValueError("oracle_auc needs both amyloid-positive and -negative sessions")
    probs = np.zeros(len(y))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        model.fit(x[train], y[train])
        probs[test] = model.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, probs))
