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
from AmyloidKDLib.atomic import atomic_open
from AmyloidKDLib.errors import InputError
from AmyloidKDLib.layouts import collect_image_cases
from AmyloidKDModuleLib.runner import DEVICE_CHOICES, SKULL_STRIP_CHOICES, TRACER_CHOICES

#: Seconds allowed per case unless --timeout says otherwise: a hung prediction must not keep a
#: headless Slicer alive for ever (a CPU case with HD-BET v2 and SyN takes minutes, not an hour).
DEFAULT_CASE_TIMEOUT_S = 3600.0
SUMMARY_COLUMNS = ("case", "input", "status", "probability", "label", "threshold", "error", "seconds",
                   # the MRI-predicted Centiloid and its 90 % interval (empty when the model has none), and
                   # the PET quantification of a manifest's pet_path (empty without a PET)
                   "centiloid_pred", "centiloid_lo", "centiloid_hi", "tracer", "suvr", "centiloid")
#: The MRI-predicted Centiloid and its 90 % interval: the same names as predict's results.csv.
CENTILOID_COLUMNS = ("centiloid_pred", "centiloid_lo", "centiloid_hi")
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
                        help="student checkpoint folder (default: the one last used in the module, "
                             "announced on stderr and checked)")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    parser.add_argument("--skull-strip", choices=SKULL_STRIP_CHOICES, default=None,
                        help="override the skull stripping the model was trained with (default: as trained)")
    parser.add_argument("--timeout", type=_timeout, default=DEFAULT_CASE_TIMEOUT_S,
                        help=f"seconds allowed per case; the case is stopped and recorded as failed after it "
                             f"(default {DEFAULT_CASE_TIMEOUT_S:g}; 0 = no limit)")
    parser.add_argument("--tracer", default=None,
                        help=f"tracer of the manifest's PET images whose row has no tracer cell "
                             f"({', '.join(TRACER_CHOICES)}); a manifest row with pet_path is quantified "
                             "(SUVR, Centiloid) after its prediction")
    parser.add_argument("--no-scene", action="store_true",
                        help="do not save a Slicer scene (<case>.mrb) with the overlays per case")
    return parser


def _timeout(text: str) -> float | None:
    seconds = float(text)
    if seconds < 0:
        raise argparse.ArgumentTypeError("must be 0 (no limit) or a number of seconds")
    return seconds or None


def parse_batch_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; a leading ``--`` (Slicer's separator) is dropped."""
    args = list(argv)
    if args and args[0] == "--":
        args = args[1:]
    return build_batch_parser().parse_args(args)


def list_cases(input_path: str | os.PathLike) -> list[Path]:
    """The MRI files named by ``input_path`` (file, folder or manifest CSV), in a stable order.

    The same reading as the library's commands (``AmyloidKDLib.layouts``): relative paths in a
    manifest are taken relative to the manifest's folder, cases are named the same way. Raises
    ModuleError when nothing usable is found, a manifest row names no file or a missing one,
    or two inputs would share a case name.
    """
    try:
        cases = collect_image_cases(input_path)
    except InputError as exc:
        raise ModuleError(str(exc)) from None
    unusable = [c.problem or f"{c.mri} does not exist" for c in cases
                if c.mri is None or not c.mri.is_file()]
    if unusable:
        raise ModuleError(f"{input_path}: {'; '.join(unusable[:5])}"
                          + (" ..." if len(unusable) > 5 else ""))
    return [c.mri for c in cases]


def pet_of_cases(input_path: str | os.PathLike, default_tracer: str | None = None) -> dict[Path, tuple[Path, str]]:
    """MRI file -> (PET file, tracer) for the manifest rows that name a PET (``pet_path``); the
    tracer comes from the row's ``tracer`` cell, else ``default_tracer``. Empty for a file or folder.

    Raises ModuleError when a row names a PET but no tracer is known for it.
    """
    path = Path(input_path)
    if not path.name.lower().endswith(".csv"):
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        tracers = [(row.get("tracer") or "").strip() for row in csv.DictReader(handle)]
    try:
        cases = collect_image_cases(path)
    except InputError as exc:
        raise ModuleError(str(exc)) from None
    pets = {}
    for case, tracer in zip(cases, tracers):
        if case.pet is None or case.mri is None:
            continue
        tracer = tracer or default_tracer or ""
        if not tracer:
            raise ModuleError(f"{case.where}: the row names a PET but no tracer; add a tracer column or "
                              f"pass --tracer ({', '.join(TRACER_CHOICES)}).")
        pets[case.mri] = (case.pet, tracer)
    return pets


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
    centiloid_pred: str = ""
    centiloid_lo: str = ""
    centiloid_hi: str = ""
    tracer: str = ""
    suvr: str = ""
    centiloid: str = ""


def centiloid_cells(case_out: str | os.PathLike) -> dict[str, str]:
    """The MRI-predicted Centiloid cells of the one case in ``case_out/results.csv`` (empty
    strings where the model has no Centiloid read-out)."""
    from AmyloidKDModuleLib.runner import read_results

    rows = read_results(case_out)
    extra = rows[0].extra if rows else {}
    return {column: extra.get(column, "") for column in CENTILOID_COLUMNS}


def write_batch_summary(rows: Iterable[BatchRow], path: str | os.PathLike) -> Path:
    """Write the summary CSV atomically (temporary name, then rename)."""
    target = Path(path)
    with atomic_open(target) as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    return target


def batch_exit_code(rows: Sequence[BatchRow]) -> int:
    """0 when every case succeeded, 1 when any failed."""
    return EXIT_OK if all(r.status == "ok" for r in rows) else EXIT_SOME_FAILED
