"""``amyloidkd demo --out DIR``: the whole method end to end on a synthetic cohort, on a CPU.

Generates a small phantom cohort (the real MNI152 template, random anatomy, PET driven by
Centiloid, weak MRI atrophy, some subjects with several sessions), prepares it, makes one
subject-level train / validation / test split, trains the teacher, the distilled student
and the MRI-only baseline with the ``cpu`` preset, evaluates them (table, paired comparison,
report), and predicts one held-out case with ``amyloidkd predict``. ``DIR/checkpoints/student``
is a checkpoint a fresh install can use right away.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from Training.commands.common import add_config_arguments, config_from_args
from Training.report import format_comparison
from Training.workflow import CohortSource, evaluate_run, prepare_run, run_phases

#: Demo cohort: subjects and seed (about 50 cases: some subjects have 2-3 sessions).
DEMO_SUBJECTS = 40
DEMO_SEED = 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="synthetic cohort -> prepare -> teacher, student, baseline -> report -> predict",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (reused if it exists)")
    parser.add_argument("--subjects", type=int, default=DEMO_SUBJECTS, help="synthetic subjects")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="cohort seed")
    parser.add_argument("--light", action="store_true", help="also train the light CNN student")
    parser.add_argument("--skip-predict", action="store_true", help="do not run 'amyloidkd predict'")
    add_config_arguments(parser, default_preset="cpu")
    parser.set_defaults(func=run)


def make_cohort(out_dir: Path, subjects: int, seed: int, progress: bool = True) -> Path:
    """The demo's phantom cohort (2 mm MRI, T1w only) as a manifest; reused when already there."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    manifest = out_dir / "manifest.csv"
    if manifest.is_file():
        return manifest
    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",))
    return generate_cohort(out_dir, subjects, seed, "manifest", config, overwrite=True, progress=progress)


def run(args: argparse.Namespace) -> int:
    """Run the demo; print the metrics table, the comparison and the report's path."""
    started = time.perf_counter()
    out = Path(args.out)
    config = config_from_args(args)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = now - since
        print(f"[demo] {name}: {timings[name]:.0f} s", flush=True)
        return now

    t = time.perf_counter()
    print(f"[demo] synthetic cohort of {args.subjects} subjects in {out / 'cohort'}", flush=True)
    manifest = make_cohort(out / "cohort", args.subjects, args.seed, config.engine.progress)
    t = lap("cohort", t)
    dataset, split = prepare_run(config, CohortSource(manifest=str(manifest)), out)
    print(f"[demo] {len(dataset)} cases ({int(dataset.labels.sum())} amyloid-positive) from "
          f"{len(set(dataset.subjects))} subjects; subject-level split: train {len(split.train)}, "
          f"val {len(split.val)}, test {len(split.test)}", flush=True)
    t = lap("prepare", t)
    phases = ("teacher", "student", "baseline") + (("light",) if args.light else ())
    results = run_phases(config, dataset, split, out, phases)
    t = lap("train", t)
    report, evaluation = evaluate_run(config, dataset, split, out,
                                      {name: (r.model, r.threshold) for name, r in results.items()})
    t = lap("evaluate", t)
    print()
    print(evaluation["table"])
    for comparison in evaluation["comparisons"]:
        print(format_comparison(comparison))
    print(f"\nreport: {report}")
    print(f"student checkpoint: {results['student'].checkpoint}")
    if not args.skip_predict:
        predict_one(out, dataset, split, results["student"].checkpoint)
        lap("predict", t)
    print(f"[demo] total {time.perf_counter() - started:.0f} s")
    return 0


def predict_one(out: Path, dataset, split, checkpoint: Path) -> None:
    """Run ``amyloidkd predict`` on the first held-out test case's raw MRI."""
    import csv

    from AmyloidKDLib.cli import run as library_cli
    from Training.cohort import read_manifest
    from Training.data import case_id

    index = split.test[0]
    info = dataset.info[index]
    records = {case_id(r): r for r in read_manifest(out / "cohort" / "manifest.csv")}
    record = records.get(info.case_id)
    if record is None:
        print(f"[demo] cannot find the raw MRI of {info.case_id}; skipping prediction")
        return
    target = out / "prediction"
    code = library_cli(["predict", str(record.mri["T1w"]), "--checkpoint", str(checkpoint),
                        "--out", str(target), "--device", "cpu"])
    results = target / "results.csv"
    if code != 0 or not results.is_file():
        print(f"[demo] prediction of {info.case_id} failed (exit {code}); see above")
        return
    row = next(csv.DictReader(results.open()))
    print(f"[demo] predicted held-out case {info.case_id} (truth: label {info.label}, "
          f"Centiloid {info.centiloid:.1f}): probability {float(row['probability']):.3f}, "
          f"label {row['label']} at threshold {float(row['threshold']):.3f}; outputs in {target}")
