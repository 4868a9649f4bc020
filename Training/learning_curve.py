"""Learning curve of PET guidance: read-out − baseline ΔAUC against the number of subjects.

Each point draws cohorts of ``n`` subjects, cross-validates the regional read-outs
(:mod:`Training.readouts`) with the same subject-grouped folds for every arm, and records each
arm's pooled out-of-fold AUC minus the baseline's. Two data sources:

- ``truth``: the generator's noise-free MRI-visible truth (the oracle's features) with
  optional measurement noise, and the PET as its composite SUVR: seconds per point, any ``n``;
- a matrix of regional image features (prepared cohorts), subsampled by subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from Training.readouts import ReadoutConfig, cross_validate_readouts
from Training.splits import Split

#: The subject counts of the curve.
DEFAULT_SIZES = (50, 100, 200, 400, 800)


def grouped_splits(labels: np.ndarray, subjects: np.ndarray, folds: int, seed: int) -> list[Split]:
    """Subject-grouped stratified folds (train, no validation, test)."""
    from sklearn.model_selection import StratifiedGroupKFold


    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [Split(k, tuple(tr.tolist()), (), tuple(te.tolist()))
            for k, (tr, te) in enumerate(splitter.split(labels, labels, subjects))]


def truth_cohort(n_subjects: int, seed: int, mri_noise: float = 0.0, phantom: Any = None
                 ) -> dict[str, np.ndarray]:
    """Truth-level cohort: MRI = the oracle's features (+ Gaussian noise of ``mri_noise``
    times each feature's SD), PET = the composite SUVR of each session."""
    from AmyloidKDLib.phantom import PhantomConfig, sample_cohort
    from AmyloidKDLib.phantom.ceilings import oracle_features

    sessions = [s for s in sample_cohort(n_subjects, seed, phantom or PhantomConfig())
                if s.mr_session_id is not None]
    x = oracle_features(sessions)
    if mri_noise > 0:
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(99,)))
        x = x + rng.normal(0.0, 1.0, x.shape) * x.std(axis=0) * mri_noise
    return {"mri": x, "pet": np.array([[s.cortical_suvr] for s in sessions]),
            "labels": np.array([s.label for s in sessions]),
            "centiloids": np.array([s.centiloid for s in sessions]),
            "subjects": np.array([s.subject_id for s in sessions])}


def cohort_deltas(data: dict[str, np.ndarray], config: ReadoutConfig, seed: int, folds: int = 5
                  ) -> dict[str, float]:
    """Pooled out-of-fold AUC of every read-out and its difference from the baseline."""
    from sklearn.metrics import roc_auc_score

    splits = grouped_splits(data["labels"], data["subjects"], folds, seed)
    result = cross_validate_readouts(data["mri"], data.get("pet"), data["labels"], data["centiloids"],
                                     data["subjects"], splits, config)
    aucs = {name: float(roc_auc_score(data["labels"], scores)) for name, scores in result["scores"].items()}
    out = {f"{name}_auc": value for name, value in aucs.items()}
    out.update({f"{name} - baseline": aucs[name] - aucs["baseline"]
                for name in aucs if name not in ("baseline", "teacher")})
    return out


def subsample_subjects(data: dict[str, np.ndarray], n_subjects: int, seed: int) -> dict[str, np.ndarray]:
    """The sessions of ``n_subjects`` subjects drawn without replacement."""
    subjects = np.unique(data["subjects"])
    if n_subjects > subjects.size:
        raise ValueError(f"{n_subjects} subjects asked, {subjects.size} available")
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(subjects, n_subjects, replace=False).tolist())
    keep = np.array([s in chosen for s in data["subjects"]])
    return {k: (v[keep] if v is not None else None) for k, v in data.items()}


def learning_curve(make_cohort, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = 10,
                   config: ReadoutConfig | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """``make_cohort(n, repeat) -> data`` per size and repeat; per size the mean and SE over
    repeats of every AUC and Δ."""
    from AmyloidKDLib.progress import progress_bar

    config = config or ReadoutConfig()
    rows = []
    for n in progress_bar(list(sizes), desc="learning curve", unit="size", enabled=progress):
        runs = [cohort_deltas(make_cohort(n, r), config, seed=r) for r in range(repeats)]
        row: dict[str, Any] = {"n_subjects": int(n), "repeats": repeats}
        for key in runs[0]:
            values = np.array([run[key] for run in runs])
            row[key] = float(values.mean())
            row[f"{key}_se"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
        rows.append(row)
    return rows


def plot_learning_curve(curves: dict[str, list[dict[str, Any]]], path: str | Path,
                        keys: Sequence[str] = ("distilled - baseline", "centiloid - baseline")) -> Path:
    """ΔAUC ± 1.96 SE against subjects, one line per (source, comparison)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from AmyloidKDLib.atomic import atomic_path

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for source, rows in curves.items():
        n = np.array([r["n_subjects"] for r in rows])
        for key in keys:
            if key not in rows[0]:
                continue
            mean = np.array([r[key] for r in rows])
            half = 1.959964 * np.array([r[f"{key}_se"] for r in rows])
            axis.errorbar(n, mean, yerr=half, marker="o", capsize=3, label=f"{source}: {key}")
    axis.axhline(0.0, color="grey", lw=0.8)
    axis.set_xscale("log")
    axis.set_xticks(sorted({r["n_subjects"] for rows in curves.values() for r in rows}))
    axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("subjects in the cohort")
    axis.set_ylabel("ΔAUC vs the MRI-only baseline")
    axis.set_title("PET guidance on the same regional read-out (mean ± 95 % CI over repeats)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    return path
