"""``amyloidkd benchmark``: replicate the method on fresh synthetic cohorts with a frozen protocol.

For each ``--cohort-seeds`` seed it generates a new cohort (``--subjects`` subjects), prints the
cohort's ceilings (the generator's oracle MRI measure and a linear probe on the prepared
slices), and runs the frozen protocol: subject-level k-fold cross-validation of the teacher,
the distilled student, the MRI-only baseline and the light student. Per cohort it reports each
model's AUC and the student − baseline ΔAUC with subject-cluster CIs; over cohorts the pooled
ΔAUC with its CI and the number of cohorts with a positive sign. Outputs in ``--out``:
``benchmark.json``, ``benchmark.md`` and ``forest.png``; one ``cohort-<seed>/`` folder per cohort.

Seeds 1000-1999 are for development. For a confirmation, choose seeds outside that range
before the run and never tune anything on them (docs/training.md, "The protocol").
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

from Training.benchmark import (DEVELOPMENT_SEEDS, format_number, PROTOCOL_PRESET, file_sha256, forest_plot,
                                is_development_seed, markdown_report, pool_cohorts, summarize_cohort)
from Training.config import PRESET_DIR, RunConfig, load_config
from Training.report import write_json

logger = logging.getLogger(__name__)

#: ``--quick``: tiny cohorts (16 subjects, 3 folds, 2 epochs) that check the software end to end,
#: not the science.
QUICK = {"subjects": 16, "folds": 3,
         "overrides": ("teacher.epochs=2", "student.epochs=2", "light.epochs=2",
                       "evaluation.n_bootstrap=100")}
PHASES = ("teacher", "student", "baseline", "light")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``benchmark`` subcommand."""
    parser = subparsers.add_parser(
        "benchmark", help="replicate the protocol on fresh synthetic cohorts (subject-clustered CIs)",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--cohort-seeds", type=int, nargs="+", required=True, metavar="SEED",
                        help="one fresh cohort per seed; for a confirmation pick seeds outside "
                             f"{DEVELOPMENT_SEEDS.start}-{DEVELOPMENT_SEEDS.stop - 1} before the run")
    parser.add_argument("--subjects", type=int, default=150, help="subjects per cohort (default 150)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (resumable)")
    parser.add_argument("--mri-effect-scale", type=float, default=1.0,
                        help="multiplies the generator's amyloid-related MRI effects "
                             "(1 = the realistic, calibrated default)")
    parser.add_argument("--config", default=PROTOCOL_PRESET, metavar="NAME_OR_FILE",
                        help=f"the protocol preset (default: the frozen '{PROTOCOL_PRESET}')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a protocol setting (the report then says the protocol was modified)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a software check: {QUICK['subjects']} subjects, {QUICK['folds']} folds, "
                             "2 epochs per phase (numbers mean nothing)")
    parser.set_defaults(func=run)


def protocol_file(name_or_path: str) -> Path:
    """The preset file a ``--config`` value names."""
    path = Path(name_or_path)
    return path if path.suffix else PRESET_DIR / f"{name_or_path}.yaml"


def _phantom_config(mri_effect_scale: float):
    from AmyloidKDLib.phantom import PhantomConfig

    return PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), mri_effect_scale=mri_effect_scale)


def _phase_seconds(cv_dir: Path) -> dict[str, float]:
    """Seconds each phase took (fitting plus encoding or reading its frozen encoder's features),
    summed over the folds, from the folds' history.json."""
    seconds: dict[str, float] = {}
    for history in sorted(cv_dir.glob("fold*/*/history.json")):
        data = json.loads(history.read_text())
        phase = history.parent.name
        encoding = data.get("features") or {}
        seconds[phase] = (seconds.get(phase, 0.0) + float(data.get("seconds") or 0.0)
                          + float(encoding.get("encode_seconds") or 0.0))
    return seconds


def run_cohort(seed: int, subjects: int, config: RunConfig, out: Path, mri_effect_scale: float,
               progress: bool = True) -> dict[str, Any]:
    """Generate cohort ``seed``, measure its ceilings, run the cross-validation; the cohort's
    summary (also written to ``out/cohort.json``)."""
    from AmyloidKDLib.phantom import GENERATOR_VERSION, generate_cohort, sample_cohort
    from Training.ceilings import cohort_ceilings, format_ladder
    from Training.commands.cv import cross_validate
    from Training.readouts import ARM_NAMES, add_to_pooled, regional_cross_validation
    from Training.workflow import CohortSource, build_dataset, load_records

    started = time.perf_counter()
    timings: dict[str, float] = {}
    phantom = _phantom_config(mri_effect_scale)
    manifest = out / "cohort" / "manifest.csv"
    if not manifest.is_file():
        generate_cohort(out / "cohort", subjects, seed, "manifest", phantom, overwrite=True,
                        progress=progress)
    timings["generate"] = time.perf_counter() - started
    config = copy.deepcopy(config)
    config.data.cache_dir = str(out / "cache")
    source = CohortSource(manifest=str(manifest))
    t = time.perf_counter()
    records = load_records(source, config)
    dataset = build_dataset(config, records, out)
    timings["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    regional = (regional_cross_validation(config, dataset, records, config.cache_root(out), progress)
                if config.regional.enabled else None)
    timings["regional read-outs"] = time.perf_counter() - t
    t = time.perf_counter()
    ceilings = cohort_ceilings(config, dataset, sample_cohort(subjects, seed, phantom), regional=regional)
    timings["ceilings"] = time.perf_counter() - t
    print(f"[benchmark] cohort {seed}: {len(dataset)} cases of {len(set(dataset.subjects))} subjects; "
          f"ceilings: oracle AUC {ceilings['oracle_auc']:.3f}, probe AUC {ceilings['probe_auc']:.3f}, "
          f"feature probe AUC {format_number(ceilings.get('feature_probe_auc'))}",
          flush=True)
    t = time.perf_counter()
    cv = cross_validate(config, source, out / "cv", PHASES)
    timings["cross-validation"] = time.perf_counter() - t
    timings.update({f"  {phase}": s for phase, s in _phase_seconds(out / "cv").items()})
    pooled = cv["pooled"] if regional is None else add_to_pooled(cv["pooled"], regional)
    summary = summarize_cohort(pooled, config.evaluation)
    summary["fold_auc"] = {p: [row[f"{p}_auc"] for row in cv["folds"]] for p in PHASES}
    if regional is not None:
        summary["fold_auc"].update({ARM_NAMES[k]: v for k, v in regional["fold_auc"].items()})
        summary["regional_teacher_target_auc"] = regional["teacher_target_auc"]
    print(format_ladder(ceilings, summary["models"]), flush=True)
    result = {"seed": seed, "generator_version": GENERATOR_VERSION, "summary": summary,
              "ceilings": ceilings, "timings": timings, "seconds": time.perf_counter() - started}
    write_json(out / "cohort.json", result)
    return result


def _print_timings(seed: int, timings: dict[str, float]) -> None:
    print(f"[benchmark] cohort {seed} time per step: "
          + ", ".join(f"{name.strip()} {seconds:.0f} s" for name, seconds in timings.items()), flush=True)


def run(args: argparse.Namespace) -> int:
    """Run every cohort (reusing finished ones), pool, write the report; print the tables."""
    from AmyloidKDLib.errors import ConfigError
    from AmyloidKDLib.phantom import GENERATOR_VERSION

    subjects, folds = args.subjects, args.folds
    overrides = list(args.overrides)
    if args.quick:
        subjects, folds = QUICK["subjects"], QUICK["folds"]
    if len(set(args.cohort_seeds)) != len(args.cohort_seeds):
        raise ConfigError(f"--cohort-seeds lists a seed twice: {args.cohort_seeds}")
    path = protocol_file(args.config)
    run_overrides = [f"split.n_folds={folds}"] + (list(QUICK["overrides"]) if args.quick else []) + overrides
    if args.progress != "bar":
        run_overrides.append("engine.progress=false")
    config = load_config(args.config, run_overrides)
    development = [s for s in args.cohort_seeds if is_development_seed(s)]
    kind = "quick check" if args.quick else "development" if development else "confirmation"
    if development and not args.quick:
        print(f"[benchmark] seed(s) {development} lie in the development range "
              f"{DEVELOPMENT_SEEDS.start}-{DEVELOPMENT_SEEDS.stop - 1}: this is a development run, "
              "not a confirmation", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = {"path": str(path), "sha256": file_sha256(path), "overrides": overrides,
                "quick": args.quick}
    identity = {"protocol": protocol, "subjects": subjects, "folds": folds,
                "mri_effect_scale": args.mri_effect_scale, "generator_version": GENERATOR_VERSION}
    cohorts = []
    for seed in args.cohort_seeds:
        cohort_dir = out / f"cohort-{seed}"
        done = cohort_dir / "cohort.json"
        identity_file = cohort_dir / "benchmark_identity.json"
        previous = json.loads(identity_file.read_text()) if identity_file.is_file() else None
        if previous is not None and previous != identity:
            raise ConfigError(f"{cohort_dir} holds a run with other settings; use a new --out folder.")
        if previous is not None and done.is_file():
            print(f"[benchmark] cohort {seed}: reusing the finished run in {cohort_dir}", flush=True)
            cohorts.append(json.loads(done.read_text()))
            continue
        write_json(identity_file, identity)
        result = run_cohort(seed, subjects, config, cohort_dir, args.mri_effect_scale,
                            progress=config.engine.progress)
        _print_timings(seed, result["timings"])
        cohorts.append(result)
    result: dict[str, Any] = {"kind": kind, **identity, "cohorts": cohorts,
                              "pooled": pool_cohorts(cohorts)}
    result["figure"] = forest_plot(result, out / "forest.png").name
    write_json(out / "benchmark.json", result)
    report = markdown_report(result)
    from AmyloidKDLib.atomic import write_text_atomic

    write_text_atomic(out / "benchmark.md", report)
    print()
    print(report)
    print(f"report: {out / 'benchmark.md'}")
    return 0
