"""Benchmark: how much amyloid signal do the prepared slices carry? (not part of CI)

Reads a cohort that ``bench_cv.py`` has prepared (its ``--out`` folder) and prints, on the
same subject-level folds as the cross-validation:

- the generator's ceiling: AUC of the *true* regional GM loss, ventricle expansion and age
  of each session (``ground_truth/sessions.csv``), i.e. what a perfect MRI measurement of
  the simulated effects could reach;
- linear probes: PCA + L2 logistic regression on average-pooled MRI or PET slice pixels,
  pooled out-of-fold AUC, overall and per PET tracer.

A model that trains well should beat the linear probe; one far below it is not learning
what its input holds.

    python Testing/benchmarks/bench_signal.py --out /tmp/amyloidkd_cv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    """Print the ceiling and linear-probe tables for the cohort in ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the --out folder of bench_cv.py")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--components", type=int, default=20, help="PCA components of the probe")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from Training.config import load_config
    from Training.splits import cross_validation_splits
    from Training.workflow import CohortSource, build_dataset, load_records

    out = Path(args.out)
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.is_file():
        parser.error(f"{manifest} not found: run bench_cv.py --out {out} first")
    config = load_config("cpu", [f"split.n_folds={args.folds}", "engine.progress=false",
                                 f"data.cache_dir={out / 'cache'}"])
    records = load_records(CohortSource(manifest=str(manifest)), config)
    dataset = build_dataset(config, records, out / "cv")
    labels = dataset.labels
    tracers = np.array([str(getattr(r, "tracer", "") or "") for r in records])
    print(f"{len(labels)} cases, {labels.sum()} amyloid-positive, folds by subject: {args.folds}")

    truth_path = out / "cohort" / "ground_truth" / "sessions.csv"
    if truth_path.is_file():
        truth = {row["session_id"]: row for row in csv.DictReader(truth_path.open())}
        ids = [c.case_id for c in dataset.info]
        if all(i in truth for i in ids):
            print("\n| generator's true effect | AUC |\n| --- | --- |")
            for name in ("regional_gm_loss", "ventricle_expansion", "global_gm_loss", "age"):
                values = np.array([float(truth[i][name]) for i in ids])
                print(f"| {name} | {roc_auc_score(labels, values):.3f} |")

    splits = cross_validation_splits(dataset.subjects, labels, config.split)
    print("\n| linear probe | pooled AUC | " + " | ".join(f"{t} only" for t in sorted(set(tracers))) + " |")
    print("| --- | --- |" + " --- |" * len(set(tracers)))
    for modality, stacks in (("MRI", dataset.mri), ("PET", dataset.pet)):
        if any(s is None for s in stacks):
            continue
        features = np.stack([torch.nn.functional.avg_pool2d(s.float()[:, :1], 4).flatten().numpy()
                             for s in stacks])
        probs = np.zeros(len(labels))
        for split in splits:
            train, test = list(split.train) + list(split.val), list(split.test)
            model = make_pipeline(StandardScaler(), PCA(args.components, random_state=0),
                                  LogisticRegression(C=0.1, max_iter=5000))
            model.fit(features[train], labels[train])
            probs[test] = model.predict_proba(features[test])[:, 1]
        per_tracer = [roc_auc_score(labels[tracers == t], probs[tracers == t]) for t in sorted(set(tracers))]
        print(f"| {modality} pixels (4x4 pooled), PCA {args.components} + logistic | "
              f"{roc_auc_score(labels, probs):.3f} | " + " | ".join(f"{a:.3f}" for a in per_tracer) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
