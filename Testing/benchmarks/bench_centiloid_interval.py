"""Coverage and width of the MRI-predicted Centiloid's 90 % interval on fresh phantom cohorts.

For each ``--seeds`` seed (outside the development range 1000-1999 and the seeds used
before), generates a cohort (``--subjects`` subjects, MRI effect 1, the benchmark's phantom
settings), prepares each MRI alone with the fast preset (as ``amyloidkd predict`` does) and
computes its regional features (:mod:`AmyloidKDLib.regional_features`, cached under
``OUT/cohort-<seed>/features``). Then, in subject-level 5-fold cross-validation, it fits the
Centiloid read-out with its CV+ interval on the training folds with exactly the function
``amyloidkd train`` uses (:func:`Training.centiloid_readout.fit_centiloid_readout`) and
predicts the held-out cases with the function ``predict`` uses
(:meth:`AmyloidKDLib.centiloid_readout.CentiloidReadout.predict`).

Coverage is counted per session (case) of the held-out subjects; its 95 % CI resamples
subjects (sessions of one subject are correlated), and the binomial standard error
sqrt(0.09 / n) is printed beside it.

    python Testing/benchmarks/bench_centiloid_interval.py --seeds 27301 27302 27303 \
        --subjects 150 --out runs/centiloid_interval
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: Seeds this benchmark must not use: the development range and the earlier confirmation runs.
USED_SEEDS = (range(1000, 2000), range(7000, 8000), range(27000, 27300))


def cohort_features(seed: int, subjects: int, out: Path) -> dict:
    """Regional MRI features, true Centiloid, subject and label of every case of cohort ``seed``."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
    from AmyloidKDLib.pipeline import PrepConfig, prepare_case
    from AmyloidKDLib.regional_features import case_features, parcellation_for
    from AmyloidKDLib.volume import load_volume

    folder = out / f"cohort-{seed}"
    manifest = folder / "cohort" / "manifest.csv"
    if not manifest.is_file():
        phantom = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), mri_effect_scale=1.0)
        generate_cohort(folder / "cohort", subjects, seed, "manifest", phantom, overwrite=True,
                        progress=False)
    prep = PrepConfig.preset("fast")
    parcellation = parcellation_for(prep.to_dict())
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    features, centiloids, subject_ids, labels = [], [], [], []
    cache = folder / "features" / parcellation.signature
    cache.mkdir(parents=True, exist_ok=True)
    for row in rows:
        target = cache / f"{row['subject_id']}_{row['session_id']}.npy"
        if not target.is_file():
            t1 = (manifest.parent / row["t1w"]).resolve()
            prepared = prepare_case(load_volume(t1, "T1w"), None, config=prep)
            vector = case_features(prepared.mri.data, parcellation)
            np.save(target.with_suffix(".tmp.npy"), vector)
            target.with_suffix(".tmp.npy").replace(target)
        features.append(np.load(target))
        centiloids.append(float(row["centiloid"]))
        subject_ids.append(row["subject_id"])
        labels.append(int(float(row["label"])))
    return {"x": np.stack(features), "centiloid": np.asarray(centiloids),
            "subjects": np.asarray(subject_ids), "labels": np.asarray(labels)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[27301, 27302, 27303])
    parser.add_argument("--subjects", type=int, default=150)
    parser.add_argument("--out", default=str(ROOT / "runs" / "centiloid_interval"))
    parser.add_argument("--features-only", action="store_true",
                        help="generate and cache the cohorts' features, no evaluation")
    args = parser.parse_args()
    for seed in args.seeds:
        if any(seed in used for used in USED_SEEDS):
            print(f"refusing seed {seed}: it was used in development or earlier runs", file=sys.stderr)
            return 2
    out = Path(args.out)
    for seed in args.seeds:
        started = time.perf_counter()
        data = cohort_features(seed, args.subjects, out)
        print(f"cohort {seed}: {len(data['x'])} cases of {len(set(data['subjects']))} subjects, "
              f"features in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
