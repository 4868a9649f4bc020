"""``amyloidkd train teacher|student|baseline|light|all``: train phases of the method into a run folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from AmyloidKDLib.errors import CheckpointError

from Training.commands.common import (add_config_arguments, add_data_arguments, config_from_args,
                                      source_from_args)
from Training.phases import PHASES
from Training.workflow import prepare_run, run_phases

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train the teacher, the distilled student, the baseline or the light student",
        description="Train one phase (or 'all') on a cohort. Cases are prepared once and cached; "
                    "the split is subject-level and stored in OUT/split.json so that later "
                    "phases and 'amyloidkd evaluate' use the same one. The student and the "
                    "light student need the teacher of the same OUT (or --teacher).")
    parser.add_argument("phase", choices=PHASES + ("all",),
                        help="the phase to train; 'all' trains every phase in order "
                             f"({', '.join(PHASES)})")
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    add_config_arguments(parser)
    parser.add_argument("--fold", type=int, default=None,
                        help="use fold K of the stratified group k-fold (default: one hold-out split)")
    parser.add_argument("--teacher", default=None, metavar="CKPT",
                        help="teacher checkpoint folder (default: OUT/checkpoints/teacher)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted phase from its last completed epoch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the cohort and split, then train the chosen phase(s)."""
    config = config_from_args(args)
    phases = PHASES if args.phase == "all" else (args.phase,)
    needs_teacher = {"student", "light"} & set(phases) and "teacher" not in phases
    if needs_teacher and not args.teacher and not (Path(args.out) / "checkpoints" / "teacher").is_dir():
        raise CheckpointError(f"the {args.phase} is distilled from a teacher, and {args.out} has none "
                              f"(checkpoints/teacher). Run 'amyloidkd train teacher' with the same "
                              f"--out first, or pass --teacher CKPT.")
    dataset, split = prepare_run(config, source_from_args(args), args.out, args.fold,
                                 with_pet=True)
    print(f"cases: {len(dataset)} (train {len(split.train)}, val {len(split.val)}, "
          f"test {len(split.test)}); contrast {config.data.contrast}")
    results = run_phases(config, dataset, split, args.out, phases, resume=args.resume,
                         teacher_checkpoint=args.teacher)
    for name, result in results.items():
        best = result.fit.history[result.fit.best_epoch - 1] if result.fit.best_epoch else {}
        summary = ", ".join(f"{k} {best[k]:.3f}" for k in ("val_auc", "val_f1", "val_loss") if k in best)
        print(f"{name}: best epoch {result.fit.best_epoch}/{len(result.fit.history)} ({summary}); "
              f"threshold {result.threshold:.3f}; checkpoint {result.checkpoint}")
    _attach_centiloid_readout(config, dataset, split, args, phases)
    return 0


def _attach_centiloid_readout(config, dataset, split, args: argparse.Namespace, phases) -> None:
    """The MRI Centiloid read-out with its 90 % interval, into the student checkpoints just trained."""
    from Training.centiloid_readout import attach_to_run
    from Training.engine import is_main_process
    from Training.workflow import load_records

    if not is_main_process():
        return
    records = load_records(source_from_args(args), config)
    readout = attach_to_run(config, dataset, records, split, args.out, phases)
    if readout is not None:
        print(f"Centiloid read-out: {readout.details['n_cases']} training cases, held-out median "
              f"|error| {readout.details['median_residual']:.1f} CL; stored in the student checkpoints")
