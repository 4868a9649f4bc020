"""Ceilings: how much amyloid signal the prepared MRI slices carry, before any model is trained.

:func:`probe_auc` is a linear probe on the prepared slice stacks: one channel of each case's
MRI stack, flattened, standardised, PCA (fit on the training fold only) and an L2 logistic
regression with a fixed C, in subject-grouped stratified k-fold cross-validation; the pooled
out-of-fold AUC is returned. A trained model should beat it; one far below it is not learning
what its input holds. :func:`cohort_ceilings` puts it next to the generator's oracle
(:func:`AmyloidKDLib.phantom.ceilings.oracle_auc`, the best any MRI measure of a synthetic
cohort can do) for one cohort.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: What each number means (printed by ``amyloidkd ceilings`` and stored in ceilings.json).
MEANINGS = {
    "oracle_auc": "generator's ceiling: CV logistic regression on the noise-free true MRI-visible "
                  "effects (per-region GM loss, global loss, ventricles, WM lesions) vs the label",
    "probe_auc": "linear probe: PCA + L2 logistic regression on the prepared MRI slice pixels, "
                 "subject-grouped CV, pooled out-of-fold AUC; a trained MRI model should beat it",
    "feature_probe_auc": "linear probe on the frozen student encoder's cached features (all slices "
                         "concatenated, PCA 50, L2 logistic C = 0.01), subject-grouped CV: what a "
                         "linear read-out of the features the student's heads see can reach",
    "regional_auc": "regional read-out: GM-weighted mean MRI intensity in 100 parcels of the MNI152 "
                    "grey matter + GM/WM means, L2 logistic regression, on the run's outer folds "
                    "(the classic volumetric approach; Training/readouts.py)",
}

#: The ladder's rungs after the ceilings: (key in a cohort summary's models, label).
LADDER_MODELS = (("regional_teacher", "regional teacher (MRI+PET; not MRI-only)"),
                 ("teacher", "slice teacher (MRI+PET; not MRI-only)"),
                 ("regional_distilled", "regional, distilled from PET teacher"),
                 ("regional_centiloid", "regional, Centiloid target"),
                 ("student", "slice student (paper method, distilled)"),
                 ("baseline", "slice baseline (labels only)"),
                 ("light", "light CNN student (distilled)"))


def ladder_rows(ceilings: dict[str, Any], models: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """The ladder of one cohort, top to bottom: (rung, AUC, what it is). ``models`` is a
    cohort summary's ``models`` (phase -> {"auc", ...}); missing rungs are left out."""
    rows: list[tuple[str, float | None, str]] = [
        ("oracle (generator truth)", ceilings.get("oracle_auc"), "ceiling"),
        ("regional read-out (MRI)", (models.get("regional") or {}).get("auc", ceilings.get("regional_auc")),
         "classic peer"),
        ("pixel probe (slices)", ceilings.get("probe_auc"), "ceiling of the slice input"),
        ("feature probe (frozen encoder)", ceilings.get("feature_probe_auc"), "ceiling of the heads' input")]
    rows += [(label, models[key]["auc"], "model") for key, label in LADDER_MODELS if key in models]
    return [row for row in rows if row[1] is not None]


def format_ladder(ceilings: dict[str, Any], models: dict[str, Any]) -> str:
    """The ladder as a plain-text table (printed by the demo and the benchmark)."""
    rows = ladder_rows(ceilings, models)
    width = max(len(r[0]) for r in rows)
    oracle = ceilings.get("oracle_auc")
    lines = [f"{'rung':{width}s}  AUC    vs oracle  kind", "-" * (width + 32)]
    for name, auc, kind in rows:
        gap = f"{auc - oracle:+.3f}" if oracle is not None and name != rows[0][0] else ""
        lines.append(f"{name:{width}s}  {auc:.3f}  {gap:>9s}  {kind}")
    return "\n".join(lines)


def _features(dataset: Any, channel: int | None) -> np.ndarray:
    return np.stack([np.asarray((stack if channel is None else stack[:, channel]).float().numpy(),
                                np.float32).reshape(-1) for stack in dataset.mri])


def probe_auc(dataset: Any, seed: int = 0, folds: int = 5, components: int = 20,
              c: float = 0.1, channel: int | None = 0) -> float:
    """Pooled out-of-fold AUC of a linear probe on ``dataset``'s MRI slices.

    Args:
        dataset: a :class:`Training.data.SliceDataset` (``.mri``, ``.labels``, ``.subjects``).
        seed: shuffles the subject-grouped stratified folds.
        folds: number of folds (each subject's cases stay in one fold).
        components: PCA components (fewer when a training fold is smaller).
        c: inverse L2 strength of the logistic regression; fixed, never tuned on test folds.
        channel: the channel of the ``[N, 3, S, S]`` stacks used (they are repeats); None
            uses each whole stack as it is (e.g. encoder features ``[N, F]``).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _features(dataset, channel)
    y = np.asarray(dataset.labels, dtype=int)
    groups = np.asarray(dataset.subjects)
    if len(set(y.tolist())) < 2:
        raise ValueError("probe_auc needs amyloid-positive and -negative cases")
    probs = np.zeros(len(y))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y, groups):
        n = min(components, len(train) - 1, x.shape[1])
        model = make_pipeline(StandardScaler(), PCA(n_components=n, random_state=seed),
                              LogisticRegression(C=c, max_iter=2000))
        model.fit(x[train], y[train])
        probs[test] = model.predict_proba(x[test])[:, 1]
    return float(roc_auc_score(y, probs))


def feature_probe_auc(config: Any, dataset: Any, seed: int = 0, folds: int = 5) -> float | None:
    """:func:`probe_auc` on the frozen student encoder's features of ``dataset`` (``[N, F]`` per
    case, concatenated over slices; PCA 50, C = 0.01, set on development cohort 1001), or None
    when the run's student encoder is not frozen. The features come from the run's feature
    cache (``Training.features``), so the cross-validation that follows reuses them."""
    from AmyloidKDLib.models.student import build_encoder
    from Training.features import feature_dataset

    model_config = config.model_config("student") if hasattr(config, "model_config") else None
    if not getattr(model_config, "freeze_encoder", False):
        return None
    encoder = build_encoder(model_config)
    cache = getattr(config.data, "cache_dir", "") or None
    features, _ = feature_dataset(dataset, encoder, cache)
    return probe_auc(features, seed=seed, folds=folds, components=50, c=0.01, channel=None)


def cohort_ceilings(config: Any, dataset: Any, sessions: Sequence[Any], seed: int = 0,
                    regional: dict[str, Any] | None = None) -> dict[str, Any]:
    """Oracle and probe AUC of one cohort.

    Args:
        config: the run's :class:`Training.config.RunConfig` (its ``split.n_folds`` sets the
            probe's folds).
        dataset: the prepared :class:`Training.data.SliceDataset` of the cohort.
        sessions: the cohort's :class:`AmyloidKDLib.phantom.SessionTruth` list (e.g.
            ``sample_cohort(n, seed, phantom_config)``; the same truth the images were made from).
            The oracle uses those with an MR session (``mr_session_id``), as the manifest does.
        regional: :func:`Training.readouts.regional_cross_validation`'s result, when computed:
            adds ``regional_auc`` (the baseline read-out's pooled out-of-fold AUC).
    """
    from sklearn.metrics import roc_auc_score

    from AmyloidKDLib.phantom.ceilings import oracle_auc

    folds = int(getattr(getattr(config, "split", None), "n_folds", 5) or 5)
    labels = np.asarray(dataset.labels)
    with_mri = [s for s in sessions if getattr(s, "mr_session_id", "") is not None]
    return {
        "oracle_auc": oracle_auc(with_mri, seed=seed),
        "probe_auc": probe_auc(dataset, seed=seed, folds=folds),
        "feature_probe_auc": feature_probe_auc(config, dataset, seed=seed, folds=folds),
        "regional_auc": (float(roc_auc_score(regional["labels"], regional["scores"]["baseline"]))
                         if regional is not None else None),
        "n_cases": int(labels.size), "n_positive": int(labels.sum()),
        "n_subjects": len(set(dataset.subjects)), "n_truth_sessions": len(with_mri),
        "meaning": dict(MEANINGS),
    }
