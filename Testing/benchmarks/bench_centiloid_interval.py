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
        --subjects 150 --max-subjects 0 100 100 --out runs/centiloid_interval
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


def cohort_features(seed: int, subjects: int, out: Path, max_subjects: int | None = None) -> dict:
    """Regional MRI features, true Centiloid, subject and label of every case of cohort ``seed``
    (of its first ``max_subjects`` subjects when given: subjects are drawn independently, so
    the first K of a cohort are a cohort of K)."""
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
    if max_subjects:
        keep = sorted({row["subject_id"] for row in rows})[:max_subjects]
        rows = [row for row in rows if row["subject_id"] in set(keep)]
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


def cross_validated_intervals(data: dict, parcellation, folds: int = 5, seed: int = 1) -> dict:
    """Out-of-fold Centiloid, bounds and truth of every case: the read-out and its interval
    fitted on the other folds' subjects exactly as ``amyloidkd train`` fits them."""
    from Training.centiloid_readout import fit_centiloid_readout, subject_folds

    outer = subject_folds(data["subjects"], data["labels"], folds, seed)
    pred, lo, hi = (np.full(len(outer), np.nan) for _ in range(3))
    for fold in range(int(outer.max()) + 1):
        test = outer == fold
        readout = fit_centiloid_readout(data["x"][~test], data["centiloid"][~test], data["subjects"][~test],
                                        data["labels"][~test], parcellation)
        pred[test], lo[test], hi[test] = readout.predict(data["x"][test])
    return {"pred": pred, "lo": lo, "hi": hi, "truth": data["centiloid"], "subjects": data["subjects"]}


def clustered_ci(covered: np.ndarray, subjects: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile CI of the coverage, resampling subjects (their sessions together)."""
    rng = np.random.default_rng(seed)
    names, index = np.unique(subjects, return_inverse=True)
    hits = np.bincount(index, weights=covered.astype(float))
    counts = np.bincount(index)
    picks = rng.integers(0, len(names), size=(draws, len(names)))
    values = hits[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def summary_row(name: str, result: dict) -> str:
    """One markdown table row: cases, subjects, coverage (clustered CI, binomial SE), widths, errors."""
    truth, pred, lo, hi = result["truth"], result["pred"], result["lo"], result["hi"]
    covered = (lo <= truth) & (truth <= hi)
    ci = clustered_ci(covered, result["subjects"])
    positive = truth > 20.6
    width = hi - lo
    r = float(np.corrcoef(pred, truth)[0, 1])
    return (f"| {name} | {len(truth)} / {len(set(result['subjects'].tolist()))} | {covered.mean():.3f} "
            f"[{ci[0]:.3f}, {ci[1]:.3f}] | {np.sqrt(0.09 / len(truth)):.3f} | {np.median(width):.1f} "
            f"({np.quantile(width, 0.1):.1f}-{np.quantile(width, 0.9):.1f}) | "
            f"{np.median(np.abs(pred - truth)):.1f} | {r:.2f} | {covered[~positive].mean():.3f} / "
            f"{covered[positive].mean():.3f} | {np.mean(truth):.1f} ± {np.std(truth):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[27301, 27302, 27303])
    parser.add_argument("--subjects", type=int, default=150)
    parser.add_argument("--out", default=str(ROOT / "runs" / "centiloid_interval"))
    parser.add_argument("--max-subjects", type=int, nargs="+", default=None,
                        help="per seed: use only the first K subjects of that cohort (0: all), "
                             "to fit a time budget")
    parser.add_argument("--features-only", action="store_true",
                        help="generate and cache the cohorts' features, no evaluation")
    args = parser.parse_args()
    for seed in args.seeds:
        if any(seed in used for used in USED_SEEDS):
            print(f"refusing seed {seed}: it was used in development or earlier runs", file=sys.stderr)
            return 2
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.regional_features import parcellation_for

    out = Path(args.out)
    limits = args.max_subjects or [0] * len(args.seeds)
    if len(limits) != len(args.seeds):
        print("give one --max-subjects value per seed", file=sys.stderr)
        return 2
    results = []
    for seed, limit in zip(args.seeds, limits):
        started = time.perf_counter()
        data = cohort_features(seed, args.subjects, out, limit or None)
        print(f"cohort {seed}: {len(data['x'])} cases of {len(set(data['subjects']))} subjects, "
              f"features in {time.perf_counter() - started:.0f} s", flush=True)
        if not args.features_only:
            results.append((str(seed), cross_validated_intervals(
                data, parcellation_for(PrepConfig.preset("fast").to_dict()))))
    if args.features_only:
        return 0
    print("\n| cohort | cases / subjects | coverage of the 90 % interval [95 % CI, subjects resampled] | "
          "binomial SE | median width, CL (10th-90th pct) | median abs. error, CL | r | coverage "
          "negatives / positives | true CL mean ± SD |")
    print("| --- " * 9 + "|")
    for name, result in results:
        print(summary_row(name, result))
    pooled = {key: np.concatenate([r[key] if key != "subjects" else np.char.add(f"{n}:", r[key].astype(str))
                                   for n, r in results]) for key in results[0][1]}
    print(summary_row("pooled", pooled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
