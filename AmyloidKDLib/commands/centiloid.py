"""``amyloidkd centiloid INPUT --out DIR``: SUVR and Centiloid of amyloid PET (standard VOIs).

INPUT is one PET (with ``--mri`` and ``--tracer``) or a manifest CSV with columns ``pet_path``,
``t1w``, ``tracer`` and optional ``case``. Each PET goes rigid to its MRI, the MRI to MNI152
(``fast`` preparation by default), and the unscaled PET is sampled in the CTX and WhlCbl VOIs
(:mod:`AmyloidKDLib.centiloid`). ``DIR/centiloid.csv`` gets one row per case and
``DIR/<case>_centiloid_qc.png`` shows the VOIs over the PET and the MRI. docs/centiloid.md.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import sys
import warnings
from pathlib import Path

from AmyloidKDLib import executor
from AmyloidKDLib.atomic import is_disk_full, write_text_atomic
from AmyloidKDLib.cli import EXIT_OK, EXIT_SOME_FAILED
from AmyloidKDLib.errors import AmyloidKDError, ConfigError, InputError

#: Columns of ``centiloid.csv``, in order.
COLUMNS = ("case", "tracer", "suvr", "centiloid", "reference", "voi_set", "input_kind", "status",
           "error", "ctx_mean", "reference_mean", "pet", "mri", "seconds")
PREP_PRESETS = ("fast", "paper")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``centiloid`` subcommand."""
    parser = subparsers.add_parser(
        "centiloid", help="SUVR and Centiloid of amyloid PET in the standard VOIs",
        description="Quantify amyloid PET: PET rigid to its T1 MRI, MRI to MNI152, SUVR = "
                    "mean(CTX) / mean(WhlCbl) of the unscaled PET, Centiloid by the tracer's "
                    "published equation. INPUT: one PET (with --mri and --tracer) or a manifest "
                    "CSV with columns pet_path, t1w, tracer and optional case.")
    parser.add_argument("input", metavar="INPUT", help="a PET .nii/.nii.gz (or 4dfp) or a manifest .csv")
    parser.add_argument("--out", required=True, help="output folder (centiloid.csv, QC pictures)")
    parser.add_argument("--mri", help="the subject's T1-weighted MRI, for a single PET INPUT")
    parser.add_argument("--tracer", help="tracer of a single PET INPUT (PiB, florbetapir/AV45, "
                                         "florbetaben/FBB, flutemetamol/FMM, NAV4694); in a "
                                         "manifest, fills rows whose tracer cell is empty")
    parser.add_argument("--suvr-input", action="store_true",
                        help="the PET files are already SUVR images (e.g. PUP's msum_SUVR), not "
                             "static PET in Bq/ml or SUV; they are re-referenced to WhlCbl")
    parser.add_argument("--frame", metavar="K|A:B|all",
                        help="for 4-D (dynamic) PET: the frame to use (0-based), or A:B for the "
                             "mean of frames A to B-1, or all")
    parser.add_argument("--voi-dir", help="folder with GAAIN's voi_ctx_2mm.nii and "
                                          "voi_WhlCbl_2mm.nii (default: $AMYLOIDKD_VOI_DIR, else "
                                          "the built-in approximation, marked in voi_set)")
    parser.add_argument("--equations", metavar="FILE",
                        help="JSON of extra or replacement tracer equations: "
                             '{"NAME": {"slope": a, "intercept": b, "source": "..."}}')
    parser.add_argument("--preset", default="fast", choices=PREP_PRESETS,
                        help="MRI preparation preset (default fast: skull-free T1, coarse "
                             "registration at 2 mm; paper: N4, HD-BET, 1 mm)")
    parser.add_argument("--cache-dir", help="content-addressed preparation cache folder")
    parser.add_argument("--no-qc", action="store_true", help="do not write the QC pictures")
    parser.add_argument("--write-vois", action="store_true",
                        help="also write DIR/<case>_vois.nii.gz: the VOIs on the MRI's own grid and "
                             "voxel order (1 CTX, 2 WhlCbl), e.g. for a viewer")
    executor.add_arguments(
        parser, jobs_help="cases quantified in parallel: worker processes with --scheduler local",
        threads_help="ITK threads per case for registration (default 1)")
    parser.set_defaults(func=run)


def read_cases(args: argparse.Namespace) -> list[dict]:
    """The cases to quantify, each ``{"case", "pet", "mri", "tracer"}``; every tracer is checked.

    Raises:
        InputError: missing files, a manifest without the needed columns, an empty cell, an
            unknown tracer, a single PET without --mri or --tracer, repeated case names.
    """
    from AmyloidKDLib.centiloid import tracer_equation
    from AmyloidKDLib.layouts import case_name, read_csv_table, read_image_manifest

    path = Path(args.input)
    if not path.exists():
        raise InputError(f"{path}: no such file; give a PET file or a manifest CSV")
    if path.suffix.lower() != ".csv":
        if not args.mri or not args.tracer:
            raise InputError("a single PET INPUT needs --mri T1_FILE and --tracer NAME")
        if not Path(args.mri).is_file():
            raise InputError(f"{args.mri}: no such file (--mri)")
        cases = [{"case": case_name(path), "pet": str(path), "mri": str(args.mri),
                  "tracer": args.tracer}]
    else:
        table = read_csv_table(path, "manifest")
        tracer_column = table.column("tracer")
        if tracer_column is None and not args.tracer:
            raise InputError(f"{table.path}: manifest needs a tracer column (or give --tracer "
                             "for every row)")
        rows = read_image_manifest(path)
        named = "case" in table.header
        cases = []
        for row, image_case in zip(table.rows, rows):
            if image_case.problem or image_case.pet is None:
                raise InputError(image_case.problem or f"{image_case.where}: empty pet_path; "
                                 "every row needs a PET and a T1 MRI")
            tracer = (row.get(tracer_column) if tracer_column else "") or args.tracer
            if not tracer:
                raise InputError(f"{image_case.where}: empty tracer cell; fill it or give --tracer")
            cases.append({"case": image_case.case if named else case_name(image_case.pet),
                          "pet": str(image_case.pet), "mri": str(image_case.mri),
                          "tracer": tracer})
        names = [c["case"] for c in cases]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InputError(f"{table.path}: case names repeat ({', '.join(repeated[:3])}); add a "
                             "case column with one name per row")
    equations = _equations(args)
    for case in cases:
        tracer_equation(case["tracer"], equations)
    return cases


def _equations(args: argparse.Namespace):
    from AmyloidKDLib.centiloid import read_equations

    return read_equations(args.equations) if args.equations else None


def _check_frames(cases: list[dict], frames) -> None:
    """A 4-D PET without --frame is refused before any work (header reads only)."""
    from AmyloidKDLib.centiloid import load_pet

    if frames is not None:
        return
    import nibabel as nib

    for case in cases:
        if case["pet"].lower().endswith((".nii", ".nii.gz")) and Path(case["pet"]).is_file():
            try:
                shape = nib.load(case["pet"]).shape
            except Exception:
                continue  # unreadable files are reported by the case itself
            if len(shape) == 4 and shape[3] > 1:
                load_pet(case["pet"], None)  # raises the one-line InputError


def quantify_one(case: dict, options: dict) -> dict:
    """Quantify one case and draw its QC picture; per-case failures go into the row."""
    import time

    from AmyloidKDLib.centiloid import load_pet, load_voi_set, parse_frames, quantify_pet
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.volume import load_volume

    start = time.perf_counter()
    row = {"case": case["case"], "pet": case["pet"], "mri": case["mri"], "tracer": case["tracer"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pet = load_pet(case["pet"], parse_frames(options["frame"]))
            mri = load_volume(case["mri"], "T1w")
        equations = None
        if options["equations"]:
            from AmyloidKDLib.centiloid import read_equations
            equations = read_equations(options["equations"])
        result = quantify_pet(pet, mri, case["tracer"], vois=load_voi_set(options["voi_dir"]),
                              config=PrepConfig.preset(options["preset"]),
                              input_kind=options["input_kind"], equations=equations,
                              cache_dir=options["cache_dir"])
        row.update(result.row())
        if options.get("vois"):
            _write_vois(result, mri, case, Path(options["out"]))
        if options["qc"]:
            from AmyloidKDLib.centiloid_qc import render_centiloid_qc
            render_centiloid_qc(result, Path(options["out"]) / f"{case['case']}_centiloid_qc.png",
                                case=case["case"])
        row.update(status="ok", error="")
    except AmyloidKDError as exc:
        row.update(status="failed", error=str(exc))
    except Exception as exc:  # one broken case must not stop a batch; its error is reported
        if is_disk_full(exc):
            raise
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    row["seconds"] = f"{time.perf_counter() - start:.2f}"
    return row


def _write_vois(result, mri, case: dict, out: Path) -> Path:
    """``<case>_vois.nii.gz`` on the MRI's grid, stored in the MRI file's own voxel order."""
    import nibabel as nib
    import numpy as np

    from AmyloidKDLib.centiloid import vois_on_mri
    from AmyloidKDLib.volume import reorient_for_storage, save_volume

    order = ("".join(nib.aff2axcodes(nib.load(case["mri"]).affine))
             if case["mri"].lower().endswith((".nii", ".nii.gz")) else "RAS")
    out.mkdir(parents=True, exist_ok=True)
    return save_volume(reorient_for_storage(vois_on_mri(result, mri), order),
                       out / f"{case['case']}_vois.nii.gz", dtype=np.uint8)


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in COLUMNS})
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    """Quantify every case; one bad single PET is an error (exit 2, nothing written)."""
    from AmyloidKDLib.centiloid import load_voi_set, parse_frames
    from AmyloidKDLib.registration import set_registration_threads

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    executor.check_scheduler(args.scheduler)
    executor.read_cluster_config(args.cluster_config)
    frames = parse_frames(args.frame)
    cases = read_cases(args)
    _check_frames(cases, frames)
    vois = load_voi_set(args.voi_dir)  # a bad --voi-dir stops before any work
    set_registration_threads(args.threads)
    out = Path(args.out)
    options = {"frame": args.frame, "voi_dir": args.voi_dir, "equations": args.equations,
               "preset": args.preset, "input_kind": "suvr" if args.suvr_input else "static",
               "cache_dir": args.cache_dir, "qc": not args.no_qc, "out": str(out),
               "vois": args.write_vois}
    task = functools.partial(quantify_one, options=options)
    # a bar and a line per case for batches; one PET reports only its result (or its error)
    per_case = len(cases) > 1 and getattr(args, "progress", "bar") != "none"
    rows = []
    for index, row, error in executor.map_cases(
            task, cases, scheduler=args.scheduler, jobs=args.jobs, threads=args.threads,
            cluster_config=args.cluster_config,
            progress=per_case and getattr(args, "progress", "bar") == "bar", desc="centiloid"):
        if error is not None:
            row = {**cases[index], "status": "failed", "error": error}
        rows.append(row)
        if per_case:
            print(f"{row['case']}: " + (f"SUVR {row['suvr']}, {row['centiloid']} CL "
                                        f"({row['tracer']})" if row["status"] == "ok"
                                        else f"failed: {row['error']}"), file=sys.stderr)
    order = {case["case"]: i for i, case in enumerate(cases)}
    rows.sort(key=lambda r: order[r["case"]])
    if len(cases) == 1 and rows[0]["status"] != "ok":
        raise InputError(f"{rows[0]['case']}: {rows[0]['error']}")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "centiloid.csv", _csv_text(rows))
    failed = sum(r["status"] != "ok" for r in rows)
    note = " (approximate VOIs: not standard Centiloid values)" if vois.approximate else ""
    print(f"quantified {len(rows) - failed} of {len(rows)} PET into {out / 'centiloid.csv'}{note}"
          + (f"; {failed} failed" if failed else ""))
    return EXIT_SOME_FAILED if failed else EXIT_OK


__all__ = ["COLUMNS", "quantify_one", "read_cases", "register", "run"]
