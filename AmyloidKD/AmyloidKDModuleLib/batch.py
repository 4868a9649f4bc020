"""Arguments and case listing of the headless batch script (``Scripts/AmyloidKDBatch.py``).

Kept apart from the script so that it can be tested without Slicer.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from AmyloidKDModuleLib.errors import ModuleError
from AmyloidKDModuleLib.runner import DEVICE_CHOICES, NIFTI_SUFFIXES, SKULL_STRIP_CHOICES, case_name

MANIFEST_COLUMNS = ("t1w", "mri_path")
SUMMARY_COLUMNS = ("case", "input", "status", "probability", "label", "threshold", "error", "seconds")
#: Exit codes of the batch script, the same meaning as the predict CLI's.
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def build_batch_parser() -> argparse.ArgumentParser:
    """The batch script's parser (``Slicer --no-main-window --python-script SCRIPT -- ARGS``)."""
    parser = argparse.ArgumentParser(
        prog="AmyloidKDBatch.py",
        description="Load each MRI as a Slicer node, run the AmyloidKD logic, save the outputs.")
    parser.add_argument("--input", required=True, type=Path,
                        help="a NIfTI file, a folder of NIfTI files, or a manifest CSV (column t1w or mri_path)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per case)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="student checkpoint folder (default: the one saved in the module's settings)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--skull-strip", choices=SKULL_STRIP_CHOICES, default="hd-bet-v1")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per case (default: no limit)")
    parser.add_argument("--no-scene", action="store_true",
                        help="do not save a Slicer scene (<case>.mrb) with the overlays per case")
    return parser


def parse_batch_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; a leading ``--`` (Slicer's separator) is dropped."""
    args = list(argv)
    if args and args[0] == "--":
        args = args[1:]
    return build_batch_parser().parse_args(args)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def list_cases(input_path: str | os.PathLike) -> list[Path]:
    """The MRI files named by ``input_path`` (file, folder or manifest CSV), in a stable order.

    Relative paths in a manifest are taken relative to the manifest's folder. Raises
    ModuleError when nothing usable is found or two inputs would share a case name.
    """
    path = Path(input_path)
    if not path.exists():
        raise ModuleError(f"{path} does not exist; pass a NIfTI file, a folder of NIfTI files or a manifest CSV.")
    if path.is_dir():
        cases = sorted(p for p in path.iterdir() if p.is_file() and _is_nifti(p))
    elif path.suffix.lower() == ".csv":
        cases = _manifest_cases(path)
    elif _is_nifti(path):
        cases = [path]
    else:
        raise ModuleError(f"{path} is neither a NIfTI file (.nii, .nii.gz), a folder nor a manifest CSV.")
    if not cases:
        raise ModuleError(f"no NIfTI files (.nii, .nii.gz) found in {path}.")
    names = [case_name(c) for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModuleError(f"several inputs share the case name(s) {', '.join(duplicates)}; "
                          "rename the files so that each case name is unique.")
    return cases


def _manifest_cases(manifest: Path) -> list[Path]:
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        column = next((c for c in MANIFEST_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ModuleError(f"{manifest} has no column {' or '.join(MANIFEST_COLUMNS)}; "
                              f"its columns are {', '.join(reader.fieldnames or [])}.")
        cases = []
        for row in reader:
            value = (row[column] or "").strip()
            if value:
                case = Path(value)
                cases.append(case if case.is_absolute() else manifest.parent / case)
    missing = [str(c) for c in cases if not c.is_file()]
    if missing:
        raise ModuleError(f"{manifest} names files that do not exist: {', '.join(missing[:5])}"
                          + (" ..." if len(missing) > 5 else ""))
    return cases


@dataclass
class BatchRow:
    """One line of the batch summary."""

    case: str
    input: str
    status: str
    probability: float | None = None
    label: int | None = None
    threshold: float | None = None
    error: str = ""
    seconds: float | None = None


def write_batch_summary(rows: Iterable[BatchRow], path: str | os.PathLike) -> Path:
    """Write the summary CSV atomically (temporary name, then rename)."""
    target = Path(path)
    temporary = target.with_name(target.name + ".part")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    os.replace(temporary, target)
    return target


def batch_exit_code(rows: Sequence[BatchRow]) -> int:
    """0 when every case succeeded, 1 when any failed."""
    return EXIT_OK if all(r.status == "ok" for r in rows) else EXIT_SOME_FAILED
