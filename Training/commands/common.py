"""Arguments shared by the training subcommands: config, overrides, data source, device."""

from __future__ import annotations

import argparse

from Training.config import RunConfig, list_presets, load_config
from Training.workflow import CohortSource


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str = "cpu") -> None:
    """``--config``, ``--set`` and ``--device`` (``--progress`` is shared by every command)."""
    parser.add_argument("--config", default=default_preset, metavar="NAME_OR_FILE",
                        help=f"the run's settings: a preset name ({', '.join(list_presets())}) "
                             f"or a YAML/JSON file of RunConfig values (default: {default_preset})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set teacher.epochs=3 (repeatable)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to train (default: the config's engine.device)")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--manifest`` / ``--oasis3`` / ``--adni`` and ``--contrast``."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--manifest", metavar="CSV", help="manifest CSV of the cohort")
    group.add_argument("--oasis3", metavar="ROOT", help="OASIS-3 style root folder")
    group.add_argument("--adni", metavar="ROOT", help="ADNI download root: IDA image folders and the "
                                                     "UC Berkeley amyloid CSVs (docs/data_layouts.md)")
    parser.add_argument("--contrast", choices=("T1w", "T2w", "FLAIR", "T2star"), default=None,
                        help="MRI contrast of the run (default: the config's data.contrast)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config: preset or file, then ``--set`` overrides, then the dedicated flags."""
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"engine.device={args.device}")
    if args.progress != "bar":
        overrides.append("engine.progress=false")
    if getattr(args, "contrast", None):  # demo has no --contrast
        overrides.append(f"data.contrast={args.contrast}")
    return load_config(args.config, overrides)


def source_from_args(args: argparse.Namespace) -> CohortSource:
    """The data source the arguments name."""
    return CohortSource(manifest=args.manifest, oasis3=args.oasis3, adni=args.adni)
