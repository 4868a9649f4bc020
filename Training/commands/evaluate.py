"""``amyloidkd evaluate --run RUN``: the evaluation report of a run's checkpoints on its test cases."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from AmyloidKDLib.errors import InputError
from Training.config import config_from_json
from Training.workflow import CohortSource, available_models, evaluate_run, prepare_run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate", help="metrics with 95%% CIs, paired comparison, ROC and curves for a run",
        description="Score every checkpoint in RUN/checkpoints on the run's test cases (the split "
                    "in RUN/split.json), at evaluation.default_threshold (0.5 unless set) and at "
                    "the validation-F1-optimal theta, compare the students with the baseline on "
                    "identical cases, and write "
                    "RUN/evaluation/ (report.md, metrics.json/.csv, predictions, PNGs).")
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a run made by 'amyloidkd train'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table and the report's path."""
    run_dir = Path(args.run)
    cohort_file = run_dir / "cohort.json"
    if not cohort_file.is_file():
        raise InputError(f"{run_dir} is not a training run (no cohort.json); train a phase into it first.")
    config = config_from_json(run_dir / "config.json")
    cohort = json.loads(cohort_file.read_text())
    source = CohortSource(manifest=cohort.get("manifest"), oasis3=cohort.get("oasis3"),
                          adni=cohort.get("adni"))
    dataset, split = prepare_run(config, source, run_dir)
    report, results = evaluate_run(config, dataset, split, run_dir, available_models(run_dir))
    print(results["table"])
    for comparison in results["comparisons"]:
        from Training.report import format_comparison

        print(format_comparison(comparison))
    print(f"report: {report}")
    return 0
