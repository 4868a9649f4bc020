"""``amyloidkd demo --out DIR``: the whole method end to end on a synthetic cohort, on a CPU.

Generates a synthetic cohort (the real MNI152 template, generated anatomy, PET driven by a
Centiloid value, amyloid-related and unrelated atrophy, some subjects with several sessions),
prepares it, and runs the frozen benchmark protocol (``protocol`` preset): subject-level 5-fold
cross-validation of the teacher (MRI + PET), the distilled MRI-only student, the MRI-only
baseline and the light CNN student. Every subject is tested once, by the models of the fold
that did not train on it. It prints the pooled table, the student − baseline comparison with
subject-cluster CIs and a plain-language reading, then runs ``amyloidkd predict`` on several
held-out cases' raw MRI. ``DIR/checkpoints/student`` is fold 0's student, a checkpoint a fresh
install can use right away.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from Training.commands.common import add_config_arguments, config_from_args

#: Demo cohort: subjects, seed, MRI effect (x the realistic default) and folds.
DEMO_SUBJECTS = 100
DEMO_SEED = 0
DEMO_MRI_EFFECT = 2.0
DEMO_FOLDS = 5
#: Held-out cases predicted with ``amyloidkd predict`` at the end (half positive).
DEMO_PREDICTIONS = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo", help="synthetic cohort -> prepare -> 5-fold CV of all models -> reading -> predict",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (reused if it exists)")
    parser.add_argument("--subjects", type=int, default=DEMO_SUBJECTS, help="synthetic subjects")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="cohort seed")
    parser.add_argument("--mri-effect-scale", type=float, default=DEMO_MRI_EFFECT,
                        help="amyloid-related MRI effect, times the realistic default "
                             f"(default {DEMO_MRI_EFFECT:g}: strong enough for a short run to learn)")
    parser.add_argument("--folds", type=int, default=DEMO_FOLDS, help="cross-validation folds")
    parser.add_argument("--skip-predict", action="store_true", help="do not run 'amyloidkd predict'")
    add_config_arguments(parser, default_preset="protocol")
    parser.set_defaults(func=run)


def make_cohort(out_dir: Path, subjects: int, seed: int, mri_effect_scale: float = 1.0,
                progress: bool = True) -> Path:
    """The demo's phantom cohort (2 mm MRI, T1w only) as a manifest; reused when already there."""
    from AmyloidKDLib.phantom import generate_cohort

    manifest = out_dir / "manifest.csv"
    if manifest.is_file():
        return manifest
    return generate_cohort(out_dir, subjects, seed, "manifest", demo_phantom(mri_effect_scale),
                           overwrite=True, progress=progress)


def demo_phantom(mri_effect_scale: float = 1.0):
    """The demo cohort's generator settings: 2 mm MRI, T1w only."""
    from AmyloidKDLib.phantom import PhantomConfig

    return PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), mri_effect_scale=mri_effect_scale)


def run(args: argparse.Namespace) -> int:
    """Run the demo; print the table, the comparison, the reading and the predictions."""
    from AmyloidKDLib.phantom import sample_cohort
    from Training.benchmark import summarize_cohort
    from Training.ceilings import cohort_ceilings, format_ladder
    from Training.commands.cv import cross_validate
    from Training.readouts import add_to_pooled, regional_cross_validation
    from Training.report import format_comparison
    from Training.workflow import CohortSource, build_dataset, load_records

    started = time.perf_counter()
    out = Path(args.out)
    args.overrides = [f"split.n_folds={args.folds}"] + list(args.overrides)
    config = config_from_args(args)
    if not config.data.cache_dir:
        config.data.cache_dir = str(out / "cache")
    t = time.perf_counter()
    print(f"[demo] synthetic cohort of {args.subjects} subjects in {out / 'cohort'} "
          f"(MRI effect x{args.mri_effect_scale:g} the realistic default)", flush=True)
    manifest = make_cohort(out / "cohort", args.subjects, args.seed, args.mri_effect_scale,
                           config.engine.progress)
    print(f"[demo] cohort: {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    cv = cross_validate(config, CohortSource(manifest=str(manifest)), out / "cv",
                        ("teacher", "student", "baseline", "light"))
    print(f"[demo] prepare + {args.folds}-fold cross-validation: {time.perf_counter() - t:.0f} s",
          flush=True)
    t = time.perf_counter()
    source = CohortSource(manifest=str(manifest))
    records = load_records(source, config)
    dataset = build_dataset(config, records, out / "cv")
    regional = regional_cross_validation(config, dataset, records, config.cache_root(out / "cv"))
    pooled = add_to_pooled(cv["pooled"], regional)
    summary = summarize_cohort(pooled, config.evaluation)
    ceilings = cohort_ceilings(config, dataset, sample_cohort(args.subjects, args.seed,
                                                              demo_phantom(args.mri_effect_scale)),
                               regional=regional)
    print(f"[demo] regional read-outs and ceilings: {time.perf_counter() - t:.0f} s", flush=True)
    print()
    print(cv["table"])
    for comparison in cv["comparisons"]:
        print(format_comparison(comparison))
    print("\nThe ladder (pooled out-of-fold AUC; every MRI-only model against the ceilings):")
    print(format_ladder(ceilings, summary["models"]))
    print()
    for line in reading(summary, args.mri_effect_scale, args.folds, ceilings):
        print(line)
    print(f"\nreport: {cv['report']}")
    checkpoint = _publish_student(out)
    print(f"student checkpoint (fold 0): {checkpoint}")
    if not args.skip_predict:
        t = time.perf_counter()
        predict_held_out(out, pooled, checkpoint, progress=args.progress)
        print(f"[demo] predict: {time.perf_counter() - t:.0f} s")
    print(f"[demo] total {time.perf_counter() - started:.0f} s")
    return 0


def reading(summary: dict[str, Any], mri_effect_scale: float, folds: int,
            ceilings: dict[str, Any] | None = None) -> list[str]:
    """What the demo's numbers say, in plain words (every number comes from the arguments)."""
    from Training.benchmark import (MODEL_LABELS, distance_lines, light_equivalence,
                                    student_baseline_verdict)

    models = summary["models"]
    lines = ["What this shows:",
             f"- Data: {summary['n_subjects']} synthetic subjects ({summary['n_cases']} sessions, "
             f"{summary['n_positive_cases']} amyloid-positive) made from the MNI152 template. "
             + (f"The MRI effect of amyloid is {mri_effect_scale:g}x the realistic default, so that "
                "a short run shows learning; real MRI carries less signal."
                if mri_effect_scale != 1.0 else "The MRI effect of amyloid is the realistic default."),
             f"- Every subject was tested once, by the {folds}-fold models that never trained on it; "
             "CIs resample subjects.",
             "- The teachers see MRI and PET: upper references, not usable without PET. All other "
             "models see only MRI. The slice models follow the paper (frozen encoder, attention "
             "heads; the student distilled from the slice teacher, the baseline from labels alone, "
             "the light CNN distilled). The regional read-outs are linear models on 100 regional "
             "grey-matter measures: one on labels alone, one distilled from a PET teacher "
             "(cross-fitted), one trained on the measured Centiloid."]
    for phase, name in MODEL_LABELS.items():
        if phase not in models:
            continue
        row = models[phase]
        text = f"- {name}: AUC {row['auc']:.3f} (95 % CI {row['ci_low']:.3f} to {row['ci_high']:.3f})"
        if "teacher" not in phase and row["auc"] < 0.5:
            text += (" - below 0.5, i.e. worse than chance; "
                     + ("its CI includes 0.5, so it is compatible with chance on this cohort."
                        if row["ci_high"] >= 0.5 else "its CI lies below 0.5: a real failure to look into."))
        elif "teacher" not in phase and row["ci_low"] <= 0.5:
            text += " - its CI includes 0.5: not clearly better than chance on this cohort."
        lines.append(text)
    if ceilings:
        lines.append("- Against the ladder:")
        lines += ["  " + line for line in distance_lines({p: r["auc"] for p, r in models.items()}, ceilings)]
    comparisons = summary["comparisons"]
    comparison = comparisons.get("student - baseline")
    if comparison:
        d, lo, hi = comparison["difference"], comparison["ci_low"], comparison["ci_high"]
        verdict = student_baseline_verdict(lo, hi)
        lines.append(f"- Student - baseline: ΔAUC {d:+.3f} (95 % CI {lo:+.3f} to {hi:+.3f}, "
                     f"clustered DeLong p = {comparison['p_value']:.2g}): {verdict}.")
    for name in ("distilled - regional", "centiloid - regional"):
        row = comparisons.get(name)
        if row:
            lines.append(f"- Regional read-out, {name.split(' - ')[0]} target - labels only: ΔAUC "
                         f"{row['difference']:+.3f} (95 % CI {row['ci_low']:+.3f} to {row['ci_high']:+.3f})"
                         + (": the CI includes 0, no difference can be seen." if row["ci_low"] <= 0 <= row["ci_high"]
                            else "."))
    row = comparisons.get("light - student")
    if row and "light" in models and "student" in models:
        lines.append(f"- Light - student: ΔAUC {row['difference']:+.3f} (95 % CI {row['ci_low']:+.3f} to "
                     f"{row['ci_high']:+.3f}): " + light_equivalence(
                         row, [models["light"]["ci_low"]], [models["student"]["ci_low"]]) + ".")
    lines.append("- One synthetic cohort decides nothing; `amyloidkd benchmark` replicates the "
                 "protocol on fresh cohorts (docs/training.md).")
    return lines


def _publish_student(out: Path) -> Path:
    """Copy fold 0's student checkpoint to ``out/checkpoints/student`` (what the docs point at)."""
    source = out / "cv" / "fold0" / "checkpoints" / "student"
    target = out / "checkpoints" / "student"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


def held_out_cases(pooled: dict[str, Any], fold: int, n: int) -> list[int]:
    """Up to ``n`` positions of ``pooled`` tested in ``fold``: half positive, half negative,
    spread over the Centiloid range."""
    folds = np.asarray(pooled["folds"])
    labels = np.asarray(pooled["labels"])
    centiloids = np.asarray(pooled["centiloids"], dtype=float)
    chosen: list[int] = []
    for label, k in ((1, n // 2), (0, n - n // 2)):
        members = np.flatnonzero((folds == fold) & (labels == label))
        members = members[np.argsort(centiloids[members])]
        if members.size:
            picks = np.unique(np.linspace(0, members.size - 1, min(k, members.size)).round().astype(int))
            chosen += members[picks].tolist()
    return chosen


def predict_held_out(out: Path, pooled: dict[str, Any], checkpoint: Path,
                     n: int = DEMO_PREDICTIONS, progress: str = "bar") -> None:
    """Run ``amyloidkd predict`` on the raw MRI of held-out cases of fold 0 (the fold whose
    student ``checkpoint`` is) and print truth beside prediction."""
    from AmyloidKDLib.cli import run as library_cli
    from Training.cohort import read_manifest
    from Training.data import case_id

    records = {case_id(r): r for r in read_manifest(out / "cohort" / "manifest.csv")}
    picks = [i for i in held_out_cases(pooled, 0, n) if pooled["case_ids"][i] in records]
    if not picks:
        print("[demo] no held-out case of fold 0 to predict; skipping prediction")
        return
    target = out / "prediction"
    lines = ["case,t1w"] + [f"{pooled['case_ids'][i]},{records[pooled['case_ids'][i]].mri['T1w']}"
                            for i in picks]
    target.mkdir(parents=True, exist_ok=True)
    cases_csv = target / "held_out_cases.csv"
    cases_csv.write_text("\n".join(lines) + "\n")
    # fp32: the calls must not depend on whether this CPU runs bf16 natively (predict's "auto")
    code = library_cli(["predict", str(cases_csv), "--checkpoint", str(checkpoint),
                        "--out", str(target), "--device", "cpu", "--precision", "fp32",
                        "--progress", progress])
    results = target / "results.csv"
    if code != 0 or not results.is_file():
        print(f"[demo] prediction failed (exit {code}); see above")
        return
    rows = {row["case"]: row for row in csv.DictReader(results.open())}
    thresholds = {row.get("threshold") for row in rows.values() if row.get("threshold")}
    theta = f" at its threshold θ = {float(thresholds.pop()):.2f}" if len(thresholds) == 1 else ""
    print(f"\nHeld-out cases of fold 0 predicted from their raw MRI by fold 0's student{theta} "
          f"(amyloidkd predict; outputs in {target}):")
    print(f"  {'case':28s} {'truth':8s} {'Centiloid':>9s} {'probability':>11s}  call")
    for i in picks:
        name = pooled["case_ids"][i]
        row = rows.get(name, {})
        truth = "positive" if int(pooled["labels"][i]) else "negative"
        probability = float(row.get("probability") or math.nan)
        call = ("positive" if row.get("label") == "1" else "negative") if row.get("label") else "failed"
        mark = "" if call == "failed" else ("  (right)" if call == truth else "  (wrong)")
        print(f"  {name:28s} {truth:8s} {float(pooled['centiloids'][i]):9.1f} {probability:11.3f}  "
              f"{call}{mark}")
