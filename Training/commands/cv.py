"""``amyloidkd cv``: k-fold subject-level cross-validation of all four models with pooled metrics.

Each fold trains the teacher, the distilled student, the light student and the baseline on
its own train / validation subjects and scores its test subjects; the test predictions of
all folds are pooled (every case is tested exactly once) for AUC and F1 with bootstrap CIs
that resample subjects, and the paired student-vs-baseline comparison.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from Training.centiloid_readout import attach_to_run
from Training.commands.common import (add_config_arguments, add_data_arguments, config_from_args,
                                      source_from_args)
from Training.config import RunConfig
from Training.phases import PHASES
from Training.pooling import (FoldPredictions, pool_fold_predictions, pooled_evaluation,
                              write_pooled_predictions)
from Training.report import format_comparison, format_table, write_json, write_report
from Training.splits import cross_validation_splits
from Training.workflow import (MODEL_NAMES, CohortSource, build_dataset, evaluate_run, load_records,
                               run_phases, split_to_ids, write_cohort_json)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``cv`` subcommand."""
    parser = subparsers.add_parser("cv", help="k-fold subject-level cross-validation of all models",
                                   description=__doc__.split("\n\n")[1] if __doc__ else None)
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder: report.md, metrics, the shared cache and one "
                             "run folder per fold")
    parser.add_argument("--folds", type=int, default=None, help="number of folds (default: split.n_folds)")
    parser.add_argument("--run-folds", type=int, default=None,
                        help="train only the first K folds (a quicker, partial estimate)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def cross_validate(config: RunConfig, source: CohortSource, out: Path, phases: tuple[str, ...],
                   run_folds: int | None = None) -> dict[str, Any]:
    """Train and test every fold; pool the test predictions; write ``out/report.md`` (with
    ``metrics.json``, ``metrics.csv`` and ``pooled_predictions.csv``).

    The pooled CIs resample subjects (:func:`Training.pooling.pooled_evaluation`). Returns
    ``report``, ``models``, ``thresholds``, ``comparisons``, ``folds`` (per-fold AUC and
    time), ``table``, ``resampling`` and ``pooled``: the out-of-fold arrays of
    :func:`Training.pooling.pool_fold_predictions` (``case_ids``, ``subjects``, ``labels``,
    ``centiloids``, ``folds``, ``probabilities`` and ``thresholds`` per phase).
    """
    out.mkdir(parents=True, exist_ok=True)
    if not config.data.cache_dir:
        config.data.cache_dir = str(out / "cache")
    config.save(out / "config.json")
    records = load_records(source, config)
    write_cohort_json(out, source, config, records)
    dataset = build_dataset(config, records, out)
    splits = cross_validation_splits(dataset.subjects, dataset.labels, config.split)
    fold_predictions: list[FoldPredictions] = []
    fold_rows = []
    for split in splits[:run_folds or len(splits)]:
        fold_dir = out / f"fold{split.fold}"
        write_json(fold_dir / "split.json", split_to_ids(split, dataset))
        started = time.perf_counter()
        results = run_phases(config, dataset, split, fold_dir, phases)
        attach_to_run(config, dataset, records, split, fold_dir, phases)   # the MRI Centiloid read-out
        _, evaluation = evaluate_run(config, dataset, split, fold_dir,
                                     {name: (r.model, r.threshold) for name, r in results.items()})
        test = list(split.test)
        fold_predictions.append(FoldPredictions(
            fold=split.fold, case_ids=[dataset.info[i].case_id for i in test],
            subjects=[dataset.subjects[i] for i in test], labels=evaluation["labels"],
            probabilities={p: evaluation["probabilities"][p] for p in phases},
            thresholds={p: results[p].threshold for p in phases},
            centiloids=[dataset.info[i].centiloid for i in test]))
        fold_rows.append({"fold": split.fold, "seconds": time.perf_counter() - started,
                          **{f"{p}_auc": evaluation["models"][MODEL_NAMES[p]]["default"]["auc"]["value"]
                             for p in phases}})
        print(f"fold {split.fold}: " + ", ".join(f"{p} AUC {fold_rows[-1][f'{p}_auc']:.3f}" for p in phases)
              + f" ({fold_rows[-1]['seconds']:.0f} s)", flush=True)
    pooled = pool_fold_predictions(fold_predictions)
    write_pooled_predictions(out / "pooled_predictions.csv", pooled)
    evaluation = pooled_evaluation(pooled, config.evaluation, MODEL_NAMES)
    results, thresholds = evaluation["models"], evaluation["thresholds"]
    comparisons = evaluation["comparisons"]
    report = write_report(out, results, thresholds, comparisons,
                          extra={"folds": fold_rows, "n_cases": int(pooled["labels"].size)},
                          resampling=evaluation["resampling"])
    return {"report": report, "models": results, "thresholds": thresholds, "comparisons": comparisons,
            "folds": fold_rows, "table": format_table(results, thresholds),
            "resampling": evaluation["resampling"], "pooled": pooled}


def run(args: argparse.Namespace) -> int:
    """Run the cross-validation and print the pooled table."""
    overrides = [f"split.n_folds={args.folds}"] if args.folds else []
    args.overrides = overrides + list(args.overrides)
    config = config_from_args(args)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    summary = cross_validate(config, source_from_args(args), Path(args.out), phases, args.run_folds)
    print(summary["table"])
    for comparison in summary["comparisons"]:
        print(format_comparison(comparison))
    print(f"report: {summary['report']}")
    return 0
