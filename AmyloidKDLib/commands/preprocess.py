"""``amyloidkd preprocess INPUT --out DIR``: prepare one MRI or a manifest of cases into MNI space.

Per case the output folder holds ``mri.nii.gz``, ``mask.nii.gz`` (and ``pet.nii.gz``), the
transforms and ``steps.json``. Cases run in parallel (``--jobs`` worker processes, or a cluster
with ``--scheduler``, see :mod:`AmyloidKDLib.executor`); a failing case is listed in
``DIR/errors.csv`` and does not stop the batch (exit code 1 if any case failed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import warnings
import functools
from pathlib import Path

from AmyloidKDLib import executor
from AmyloidKDLib.atomic import is_disk_full, write_json_atomic, write_text_atomic
from AmyloidKDLib.cli import EXIT_OK, EXIT_SOME_FAILED
from AmyloidKDLib.errors import AmyloidKDError, ConfigError, InputError
from AmyloidKDLib.layouts import case_name, read_image_manifest
from AmyloidKDLib.skullstrip import BACKENDS

PREP_PRESETS = ("paper", "fast")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``preprocess`` subcommand."""
    parser = subparsers.add_parser(
        "preprocess", help="skull strip, N4, normalise and register cases to MNI152",
        description="Prepare a NIfTI MRI, or every row of a manifest CSV (column t1w or mri_path, "
                    "optional pet_path and case), into MNI space.")
    parser.add_argument("input", metavar="INPUT", help="a .nii/.nii.gz MRI or a manifest .csv")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per case)")
    parser.add_argument("--pet", help="SUVR PET for a single INPUT file")
    parser.add_argument("--preset", default="paper", choices=PREP_PRESETS,
                        help="preparation preset (default paper; fast: skull-free input, coarse "
                             "registration, 2 mm grid); same as --config NAME")
    parser.add_argument("--config", metavar="NAME_OR_FILE",
                        help="the preparation settings: a preset name (paper, fast) or a JSON "
                             "file of PrepConfig values; replaces --preset")
    parser.add_argument("--skull-strip", choices=BACKENDS, help="override the skull-strip backend")
    parser.add_argument("--cache-dir", help="content-addressed cache folder (re-runs cost ~nothing)")
    executor.add_arguments(
        parser, jobs_help="cases prepared in parallel: worker processes with --scheduler local",
        threads_help="ITK threads per case for N4 and registration; 1 (default) makes repeated "
                     "runs identical, more may be faster but differ slightly")
    parser.add_argument("--allow-missing-orientation", action="store_true",
                        help="accept NIfTI headers without orientation (qform/sform codes 0); "
                             "left/right may then be mirrored")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace):
    from AmyloidKDLib.pipeline import PrepConfig

    if args.config in PREP_PRESETS:
        config = PrepConfig.preset(args.config)
    elif args.config:
        try:
            config = PrepConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{args.config}: cannot read the config ({exc})") from None
    else:
        config = PrepConfig.preset(args.preset)
    if args.skull_strip:
        config.skull_strip.backend = args.skull_strip
    return config


def read_cases(input_path: str, pet: str | None = None) -> list[dict[str, str | None]]:
    """Cases to prepare: ``{"case", "mri", "pet"}`` from one NIfTI file or a manifest CSV.

    Case names, manifest columns and encodings follow :mod:`AmyloidKDLib.layouts`.

    Raises:
        InputError: missing input, unreadable manifest, an empty MRI cell, repeated case names.
    """
    path = Path(input_path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() != ".csv":
        return [{"case": case_name(path), "mri": str(path), "pet": pet}]
    cases = read_image_manifest(path)
    empty = next((c.problem for c in cases if c.problem), None)
    if empty:
        raise InputError(f"{empty}; every row needs an MRI path")
    return [{"case": c.case, "mri": str(c.mri), "pet": str(c.pet) if c.pet else None} for c in cases]


def prepare_one(case: dict, config_dict: dict, out: str, cache_dir: str | None,
                allow_missing_orientation: bool = False) -> dict:
    """Prepare and save one case; returns a result row (status ``ok`` or ``failed``).

    A full disk is raised, not recorded: every later case would fail the same way.
    """
    from AmyloidKDLib.pipeline import PrepConfig, prepare_case, save_prepared
    from AmyloidKDLib.volume import load_volume

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mri = load_volume(case["mri"], "T1w",
                              allow_missing_orientation=allow_missing_orientation)
            pet = (load_volume(case["pet"], "PET",
                               allow_missing_orientation=allow_missing_orientation)
                   if case["pet"] else None)
        prepared = prepare_case(mri, pet, PrepConfig.from_dict(config_dict), cache_dir=cache_dir)
        save_prepared(prepared, Path(out) / case["case"])
        seconds = sum(step["seconds"] for step in prepared.steps)
        return {**case, "status": "ok", "error": "", "seconds": f"{seconds:.2f}"}
    except AmyloidKDError as exc:
        return {**case, "status": "failed", "error": str(exc), "seconds": ""}
    except Exception as exc:  # a broken case must not stop the batch; its error is reported
        if is_disk_full(exc):
            raise
        return {**case, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": ""}


def run(args: argparse.Namespace) -> int:
    """Prepare every case; write ``cases.csv`` and ``errors.csv``; exit 1 if any case failed."""
    from AmyloidKDLib.registration import set_registration_threads

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    executor.check_scheduler(args.scheduler)
    executor.read_cluster_config(args.cluster_config)  # a bad file stops before any work
    set_registration_threads(args.threads)  # before any ITK use here or in the workers
    config = _config(args)
    cases = read_cases(args.input, args.pet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config_dict = config.to_dict()
    write_json_atomic(out / "prep_config.json", config_dict)
    task = functools.partial(prepare_one, config_dict=config_dict, out=str(out),
                             cache_dir=args.cache_dir,
                             allow_missing_orientation=args.allow_missing_orientation)
    results = []
    for index, row, error in executor.map_cases(
            task, cases, scheduler=args.scheduler, jobs=args.jobs, threads=args.threads,
            cluster_config=args.cluster_config, progress=True, desc="preprocess"):
        results.append(row if error is None else
                       {**cases[index], "status": "failed", "error": error, "seconds": ""})
    order = {case["case"]: i for i, case in enumerate(cases)}
    results.sort(key=lambda row: order[row["case"]])
    columns = ["case", "mri", "pet", "status", "error", "seconds"]
    for name, rows in (("cases.csv", results), ("errors.csv", [r for r in results if r["status"] != "ok"])):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(out / name, buffer.getvalue())
    failed = sum(r["status"] != "ok" for r in results)
    print(f"prepared {len(results) - failed} of {len(results)} cases into {out}"
          + (f"; {failed} failed, see {out / 'errors.csv'}" if failed else ""))
    return EXIT_SOME_FAILED if failed else EXIT_OK
