"""``amyloidkd phantom --out DIR --subjects N --seed S``: write a synthetic PET/MRI cohort."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from AmyloidKDLib.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``phantom`` subcommand."""
    parser = subparsers.add_parser(
        "phantom", help="write a synthetic PET/MRI cohort (the embedded default data)",
        description="Synthesise a PET/MRI cohort from the MNI152 template: amyloid PET that "
                    "shows Centiloid clearly, MRI that shows it weakly, several sessions for "
                    "some subjects, written in the OASIS-3 style layout and/or as a manifest CSV.")
    parser.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    parser.add_argument("--subjects", type=int, default=20, help="number of subjects (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--layout", choices=("manifest", "oasis3", "both", "adni"), default="manifest",
                        help="manifest CSV, OASIS-3 style tree + CSVs, or both (default manifest); "
                             "adni: an IDA-style ADNI download with the CSVs of both generations")
    parser.add_argument("--mri-spacing", type=float, choices=(1.0, 2.0), default=None,
                        help="MRI voxel size in mm (default 1; 2 is 8x faster)")
    parser.add_argument("--skull", action="store_true",
                        help="add a scalp/skull shell so skull stripping has work to do")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="the generator's settings: a JSON file of PhantomConfig values (see "
                             "docs/data_layouts.md; there are no presets); the options above "
                             "override it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a cohort previously written to --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the config from the options and write the cohort."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    values = {}
    if args.config is not None:
        try:
            values = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{args.config}: cannot read a JSON object ({exc})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{args.config}: expected a JSON object of PhantomConfig values")
    if args.mri_spacing is not None:
        values["mri_spacing_mm"] = args.mri_spacing
    if args.skull:
        values["skull"] = True
    config = PhantomConfig.from_dict(values)
    result = generate_cohort(args.out, args.subjects, args.seed, layout=args.layout,
                             config=config, overwrite=args.overwrite,
                             progress=args.progress == "bar")
    print(result)
    return 0
