"""Benchmark: k-fold subject-level cross-validation of teacher, distilled student, light
student and baseline on a synthetic cohort with the ``cpu`` preset (not part of CI).

Prints, per model, AUC and F1 (θ = 0.5 and validation-optimal θ) with bootstrap 95 % CIs on
the pooled out-of-fold test predictions, the paired student-vs-baseline comparison (DeLong
and paired bootstrap), and the time per step. Target: <= 60 minutes on 2 CPU cores for the
full run (``--subjects 120 --folds 5``).

    python Testing/benchmarks/bench_cv.py --out /tmp/amyloidkd_cv                 # full
    python Testing/benchmarks/bench_cv.py --out /tmp/cv_small --subjects 40 --run-folds 1

``--atrophy`` / ``--ventricle`` set the phantom's MRI effect of amyloid (GM fraction lost in
the atrophy regions and ventricle expansion, per 100 Centiloid). The benchmark uses 0.4 for
both, not the phantom's default 0.06: at 0.06 even the generator's *true* regional GM loss and
ventricle expansion separate the classes only with AUC 0.69 / 0.75 on this cohort, and at 0.2
the MRI-only models stayed near chance, so the student-vs-baseline comparison said nothing.
At 0.4 the baseline reaches a pooled AUC of about 0.78 and the teacher 0.95
(docs/training.md has the numbers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the cohort, run the cross-validation, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="work folder (cohort, cache, folds, report)")
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--run-folds", type=int, default=None, help="train only the first K folds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phases", default="teacher,student,light,baseline")
    parser.add_argument("--atrophy", type=float, default=0.4, help="PhantomConfig.atrophy_per_100cl")
    parser.add_argument("--ventricle", type=float, default=0.4, help="PhantomConfig.ventricle_per_100cl")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
    from Training.commands.cv import cross_validate
    from Training.config import load_config
    from Training.report import format_comparison
    from Training.workflow import CohortSource

    out = Path(args.out)
    timings = {}
    started = time.perf_counter()
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.is_file():
        extra = {k: v for k, v in (("atrophy_per_100cl", args.atrophy),
                                   ("ventricle_per_100cl", args.ventricle)) if v is not None}
        phantom = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), **extra)
        generate_cohort(out / "cohort", args.subjects, args.seed, "manifest", phantom, overwrite=True)
    timings["cohort"] = time.perf_counter() - started
    config = load_config("cpu", [f"split.n_folds={args.folds}", "engine.progress=false",
                                 f"data.cache_dir={out / 'cache'}", *args.overrides])
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    t = time.perf_counter()
    summary = cross_validate(config, CohortSource(manifest=str(manifest)), out / "cv", phases, args.run_folds)
    timings["prepare + train + evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    print()
    print(f"{args.subjects} subjects, {summary['report'].parent}: pooled out-of-fold test predictions "
          f"of {len(summary['folds'])} fold(s) of {args.folds}")
    print()
    print(f"{'model':22s} {'AUC [95% CI]':24s} {'F1 @0.5 [95% CI]':24s} {'F1 @val-opt [95% CI]':24s}")
    for name, rows in summary["models"].items():
        cells = []
        for row, metric in (("default", "auc"), ("default", "f1"), ("optimal", "f1")):
            v = rows[row][metric]
            cells.append(f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]")
        print(f"{name:22s} " + " ".join(f"{c:24s}" for c in cells))
    if len(summary["folds"]) > 1:
        print()
        print("per-fold test AUC (mean ± sd over folds; pooling above also tests calibration across folds)")
        for phase in phases:
            aucs = [fold[f"{phase}_auc"] for fold in summary["folds"]]
            print(f"{phase:22s} {statistics.mean(aucs):.3f} ± {statistics.stdev(aucs):.3f}  "
                  + " ".join(f"{a:.3f}" for a in aucs))
    print()
    for comparison in summary["comparisons"]:
        print(format_comparison(comparison))
    print()
    print("| step | seconds |\n| --- | --- |")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.0f} |")
    for fold in summary["folds"]:
        print(f"| fold {fold['fold']} (train + evaluate) | {fold['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
