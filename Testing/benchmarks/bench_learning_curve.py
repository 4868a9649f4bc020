"""Learning curve of PET guidance: regional read-out ΔAUC (distilled / Centiloid target − labels
only) against the number of subjects, at truth level and on prepared images.

- truth level: the generator's MRI-visible truth (``--mri-noise`` × each feature's SD of
  Gaussian noise added, 0 = the oracle's own features) and its PET; development seeds
  1000 + repeat; seconds per point.
- images (``--cohort DIR ...``, benchmark cohort folders of development seeds): the regional
  measures of every prepared case, pooled over the cohorts (subject ids made unique), and
  subsampled by subject for each size.

Prints one table per source and writes the PNG (``--out``, default learning_curve.png).

    python Testing/benchmarks/bench_learning_curve.py --repeats 8 --out docs/learning_curve.png \
        --cohort runs/dev/cohort-1011 runs/dev/cohort-1012
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def image_cohort(folders: list[Path], config_name: str) -> dict[str, np.ndarray]:
    """Regional measures, labels, Centiloids and subjects of the prepared cohorts, pooled."""
    from Training.config import load_config
    from Training.regional import regional_data
    from Training.workflow import CohortSource, build_dataset, load_records

    parts = []
    for folder in folders:
        config = load_config(config_name, [f"data.cache_dir={folder / 'cache'}", "engine.progress=false"])
        records = load_records(CohortSource(manifest=str(folder / "cohort" / "manifest.csv")), config)
        dataset = build_dataset(config, records, folder)
        data = regional_data(records, config, folder / "cache", config.regional.n_parcels)
        parts.append({"mri": data.mri, "pet": data.pet, "labels": np.asarray(dataset.labels),
                      "centiloids": np.array([c.centiloid for c in dataset.info]),
                      "subjects": np.array([f"{folder.name}/{s}" for s in dataset.subjects])})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print("| subjects | repeats | baseline AUC | distilled − baseline | centiloid − baseline | teacher AUC |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n_subjects']} | {r['repeats']} | {r['baseline_auc']:.3f} | "
              f"{r['distilled - baseline']:+.3f} ± {1.96 * r['distilled - baseline_se']:.3f} | "
              f"{r['centiloid - baseline']:+.3f} ± {1.96 * r['centiloid - baseline_se']:.3f} | "
              f"{r['teacher_auc']:.3f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--mri-noise", type=float, default=1.0,
                        help="truth-level measurement noise, × each feature's SD")
    parser.add_argument("--cohort", nargs="*", default=[], help="prepared benchmark cohort folders")
    parser.add_argument("--config", default="protocol")
    parser.add_argument("--out", default="learning_curve.png")
    parser.add_argument("--skip-truth", action="store_true", help="only the image-level curve")
    parser.add_argument("--add-curves", metavar="JSON",
                        help="curves of an earlier run (its --out with .json) drawn in the same plot")
    args = parser.parse_args()

    from Training.config import load_config
    from Training.learning_curve import (learning_curve, plot_learning_curve, subsample_subjects,
                                         truth_cohort)
    from Training.readouts import ReadoutConfig

    settings = load_config(args.config, []).regional
    config = ReadoutConfig(alpha=settings.alpha, teacher_alpha=settings.teacher_alpha,
                           distill_weight=settings.distill_weight, temperature=settings.temperature,
                           inner_folds=settings.inner_folds)
    import json

    curves = json.loads(Path(args.add_curves).read_text()) if args.add_curves else {}
    started = time.perf_counter()
    if not args.skip_truth:
        curves[f"truth (noise {args.mri_noise:g})"] = rows = learning_curve(
            lambda n, r: truth_cohort(n, 1000 + r, args.mri_noise), args.sizes, args.repeats, config)
        print_rows(f"truth level, MRI noise {args.mri_noise:g} x SD ({time.perf_counter() - started:.0f} s)", rows)
    if args.cohort:
        pooled = image_cohort([Path(c) for c in args.cohort], args.config)
        available = len(np.unique(pooled["subjects"]))
        sizes = [n for n in args.sizes if n <= available]
        started = time.perf_counter()
        curves["images"] = rows = learning_curve(lambda n, r: subsample_subjects(pooled, n, r), sizes,
                                                 args.repeats, config)
        print_rows(f"images: {len(args.cohort)} prepared cohorts, {available} subjects "
                   f"({time.perf_counter() - started:.0f} s)", rows)
    Path(args.out).with_suffix(".json").write_text(json.dumps(curves, indent=1))
    print(f"\nwritten: {plot_learning_curve(curves, args.out)} and its .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
