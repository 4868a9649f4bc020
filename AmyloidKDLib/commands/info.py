"""``amyloidkd info PATH...``: what a volume is, and whether it is usable - the first thing to run."""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

from AmyloidKDLib.errors import AmyloidKDError
from AmyloidKDLib.volume import MODALITIES, load_volume


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser(
        "info", help="print shape, spacing, orientation, intensity range and warnings",
        description="Print, per file, the shape, voxel spacing, orientation code (as stored "
                    "and after reorientation to RAS+), intensity range and validation warnings.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="NIfTI files (.nii, .nii.gz)")
    parser.add_argument("--modality", default="T1w", choices=MODALITIES,
                        help="what the files hold, which sets the checks applied (default T1w)")
    parser.add_argument("--replace-nonfinite", action="store_true",
                        help="replace NaN/Inf voxels with 0 instead of refusing the file")
    parser.add_argument("--allow-missing-orientation", action="store_true",
                        help="accept NIfTI headers without orientation (qform/sform codes 0); "
                             "left/right may then be mirrored")
    parser.set_defaults(func=run)


def describe(path: str, modality: str = "T1w", replace_nonfinite: bool = False,
             allow_missing_orientation: bool = False) -> str:
    """A multi-line, human-readable summary of one file (raises AmyloidKDError if unusable)."""
    import nibabel as nib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume = load_volume(path, modality, replace_nonfinite=replace_nonfinite,
                             allow_missing_orientation=allow_missing_orientation)
    stored = "".join(nib.aff2axcodes(nib.load(path).affine))
    lo, p50, hi = np.percentile(volume.data, [0, 50, 100])
    spacing = " x ".join(f"{s:.3g}" for s in volume.spacing)
    lines = [
        f"{path}",
        f"  shape        {volume.shape[0]} x {volume.shape[1]} x {volume.shape[2]}",
        f"  spacing      {spacing} mm",
        f"  orientation  {stored} on disk -> {volume.orientation} after loading",
        f"  intensity    min {lo:.4g}, median {p50:.4g}, max {hi:.4g}",
    ]
    lines += [f"  warning      {w}" for w in volume.warnings] or ["  warnings     none"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Describe each path; stop with the library's error at the first unusable one."""
    for path in args.paths:
        try:
            print(describe(path, args.modality, args.replace_nonfinite,
                           args.allow_missing_orientation))
        except AmyloidKDError:
            sys.stdout.flush()
            raise
    return 0
