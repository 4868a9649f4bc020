"""Regional read-out variants on prepared benchmark cohorts (development seeds only).

For each ``--cohort DIR`` (a cohort folder that ``amyloidkd benchmark`` left: ``cohort/`` and
``cache/``), reads the prepared cases from the cache and cross-validates the regional
read-outs (Training/readouts.py) on the protocol's outer folds for every variant on the
command line; prints one table row per (cohort, variant) and the mean over cohorts.

    python Testing/benchmarks/bench_readouts.py --cohort runs/dev/cohort-1011 runs/dev/cohort-1012 \
        --parcels 50 100 200 --alpha 0.01 0.1 1 --distill-weight 0.5
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", nargs="+", required=True, help="benchmark cohort folders")
    parser.add_argument("--parcels", type=int, nargs="+", default=[100])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.1])
    parser.add_argument("--teacher-alpha", type=float, nargs="+", default=[0.1])
    parser.add_argument("--distill-weight", type=float, nargs="+", default=[0.5])
    parser.add_argument("--config", default="protocol")
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from Training.benchmark import is_development_seed
    from Training.config import load_config
    from Training.readouts import regional_cross_validation
    from Training.workflow import CohortSource, build_dataset, load_records

    rows = []
    for folder in map(Path, args.cohort):
        seed = int(folder.name.rsplit("-", 1)[-1])
        if not is_development_seed(seed):
            print(f"refusing {folder}: seed {seed} is not a development seed", file=sys.stderr)
            return 2
        config = load_config(args.config, [f"data.cache_dir={folder / 'cache'}", "engine.progress=false"])
        records = load_records(CohortSource(manifest=str(folder / "cohort" / "manifest.csv")), config)
        dataset = build_dataset(config, records, folder)
        for parcels, alpha, teacher_alpha, lam in itertools.product(
                args.parcels, args.alpha, args.teacher_alpha, args.distill_weight):
            config.regional.n_parcels, config.regional.alpha = parcels, alpha
            config.regional.teacher_alpha, config.regional.distill_weight = teacher_alpha, lam
            started = time.perf_counter()
            result = regional_cross_validation(config, dataset, records, folder / "cache")
            aucs = {k: roc_auc_score(result["labels"], v) for k, v in result["scores"].items()}
            rows.append({"seed": seed, "parcels": parcels, "alpha": alpha, "teacher_alpha": teacher_alpha,
                         "lambda": lam, **aucs, "teacher_target_auc": float(np.mean(result["teacher_target_auc"])),
                         "seconds": time.perf_counter() - started})
            r = rows[-1]
            print(f"| {seed} | {parcels} | {alpha:g} | {teacher_alpha:g} | {lam:g} | {r['baseline']:.3f} | "
                  f"{r['distilled']:.3f} | {r['centiloid']:.3f} | {r.get('teacher', float('nan')):.3f} | "
                  f"{r['teacher_target_auc']:.3f} | {r['seconds']:.0f} |", flush=True)
    print("\nmean over cohorts")
    print("| parcels | alpha | teacher alpha | λ | baseline | distilled | centiloid | teacher | distilled − baseline | centiloid − baseline |")
    print("| --- " * 10 + "|")
    keys = sorted({(r["parcels"], r["alpha"], r["teacher_alpha"], r["lambda"]) for r in rows})
    for key in keys:
        group = [r for r in rows if (r["parcels"], r["alpha"], r["teacher_alpha"], r["lambda"]) == key]
        m = {k: float(np.mean([g[k] for g in group])) for k in ("baseline", "distilled", "centiloid", "teacher")}
        print(f"| {key[0]} | {key[1]:g} | {key[2]:g} | {key[3]:g} | {m['baseline']:.3f} | {m['distilled']:.3f} | "
              f"{m['centiloid']:.3f} | {m['teacher']:.3f} | {m['distilled'] - m['baseline']:+.3f} | "
              f"{m['centiloid'] - m['baseline']:+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
