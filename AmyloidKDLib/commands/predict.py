"""``amyloidkd predict INPUT --checkpoint CKPT --out DIR``: batch prediction with saliency maps.

INPUT is a NIfTI file, a folder of NIfTI files or a manifest CSV (column ``t1w`` or
``mri_path``). DIR receives ``results.csv`` and, per case, the saliency NIfTIs (native and
MNI), the top-region label map and an overview PNG. A case that fails is recorded with its
error and the batch goes on; the exit code is 0 when every case worked, 1 when some failed,
2 for bad usage or input (see docs/INTERFACES.md, "Prediction CLI").
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from AmyloidKDLib import executor
from AmyloidKDLib.atomic import is_disk_full, write_json_atomic, write_text_atomic
from AmyloidKDLib.errors import InputError
from AmyloidKDLib.layouts import case_name, collect_image_cases  # noqa: F401  (case_name: public API)
from AmyloidKDLib.memory import freeze_loaded_objects
from AmyloidKDLib.volume import check_volume, reorient_for_storage, save_volume

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("case", "input", "probability", "label", "threshold", "status", "error",
                  "seconds_prepare", "seconds_model", "seconds_saliency", "seconds_total")
#: The MRI-predicted Centiloid and its 90 % interval, after RESULT_COLUMNS; empty cells when
#: the checkpoint has no Centiloid read-out (docs/centiloid.md, "Centiloid from the MRI").
CENTILOID_COLUMNS = ("centiloid_pred", "centiloid_lo", "centiloid_hi")
SKULL_STRIP_CHOICES = ("hd-bet-v1", "hd-bet", "none")
PROGRESS_PREFIX = "AMYLOIDKD_PROGRESS"
#: Per-case steps reported on the progress channel, in order.
CASE_STEPS = ("load", "prepare", "model", "saliency", "write")
from AmyloidKDLib.cli import EXIT_OK, EXIT_SOME_FAILED  # noqa: E402  (the shared exit codes)

#: Extra results.csv column written when inputs with validation warnings may run.
WARNINGS_COLUMN = "warnings"
#: What a batch in DIR was run with; a re-run with the same record skips finished cases.
RUN_RECORD = "predict_run.json"


@dataclass(frozen=True)
class CaseInput:
    """One case of a batch: its output name and the MRI file it comes from."""

    case: str
    path: Path | None
    problem: str | None = None   # why the case cannot run (e.g. an empty manifest cell)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict", help="predict amyloid positivity and saliency maps for T1 MRIs",
        description="Predict amyloid-beta positivity from T1-weighted MRIs with a trained student "
                    "checkpoint; write results.csv, saliency NIfTIs and an overview PNG per case. "
                    "Research software - not for clinical use.")
    parser.add_argument("input", metavar="INPUT",
                        help="a NIfTI file, a folder of NIfTI files, or a manifest CSV "
                             "(column t1w or mri_path)")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="student checkpoint folder (model.safetensors + checkpoint.json)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model runs (auto: CUDA if available)")
    parser.add_argument("--skull-strip", default=None, choices=SKULL_STRIP_CHOICES,
                        help="override the checkpoint's skull stripping (none: input is already "
                             "skull-stripped)")
    parser.add_argument("--allow-coarse", action="store_true",
                        help="predict inputs that get a validation warning (voxels > 5 mm, "
                             "anisotropy > 4:1) instead of failing them; adds a warnings column")
    parser.add_argument("--allow-missing-orientation", action="store_true",
                        help="accept NIfTI headers without orientation (qform/sform codes 0); "
                             "left/right may then be mirrored")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                        help="numeric precision of the model step (auto: bf16 on GPUs and on CPUs "
                             "with AVX512_BF16/AMX, else fp32; fp16 GPU only; int8 CPU only); "
                             "see docs/inference.md")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="repeatable results, bit for bit (the default): ANTs/ITK runs on one "
                             "thread and PyTorch uses deterministic algorithms. "
                             "--no-deterministic lets ITK use every core (or "
                             "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS), faster on an idle machine, "
                             "with probabilities that may differ slightly between runs; "
                             "see docs/inference.md")
    executor.add_arguments(
        parser, jobs_help="cases predicted in parallel: worker processes with --scheduler local "
                          "(each loads the checkpoint once)",
        threads_help="threads per case (ITK, torch) when cases run in worker processes")
    parser.set_defaults(func=run)  # --progress bar|lines|none: shared by every command (cli.py)


def collect_inputs(input_path: str | os.PathLike) -> list[CaseInput]:
    """The cases named by INPUT: one NIfTI file, the NIfTI files of a folder, or a manifest CSV.

    Names and manifest rules come from :mod:`AmyloidKDLib.layouts` (one rule for every command).

    Raises:
        InputError: INPUT missing, an empty folder, a CSV without a path column, or two inputs
            with the same case name.
    """
    return [CaseInput(c.case, c.mri, c.problem) for c in collect_image_cases(input_path)]


class Progress:
    """Machine-readable progress lines on stdout (``AMYLOIDKD_PROGRESS <fraction> <text>``)."""

    def __init__(self, enabled: bool, n_cases: int) -> None:
        self.enabled = enabled
        self.n_cases = max(n_cases, 1)

    def report(self, case_index: int, step_index: int, text: str) -> None:
        """Report that ``step_index`` (0-based, of ``CASE_STEPS``) of case ``case_index`` is done."""
        if not self.enabled:
            return
        fraction = (case_index + (step_index + 1) / len(CASE_STEPS)) / self.n_cases
        self.line(fraction, text)

    def line(self, fraction: float, text: str) -> None:
        """Print one progress line and flush, so a GUI reading the pipe sees it at once."""
        if self.enabled:
            text = " ".join(str(text).split())
            print(f"{PROGRESS_PREFIX} {min(max(fraction, 0.0), 1.0):.4f} {text}", flush=True)


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    if type(exc).__module__.startswith("AmyloidKDLib"):
        return message
    return f"{type(exc).__name__}: {message}"


def _write_results(rows: list[dict], path: Path, columns: tuple[str, ...] = RESULT_COLUMNS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def run_record(checkpoint: str | os.PathLike, **options: object) -> dict:
    """What a batch's results depend on: the checkpoint (path and content) and the options."""
    folder = Path(checkpoint).resolve()
    digest = hashlib.sha256()
    for name in ("checkpoint.json", "model.safetensors"):
        file = folder / name
        if name.endswith(".json") and file.is_file():
            digest.update(file.read_bytes())
        elif file.is_file():  # size and time stand for the weights (hashing them is slow)
            digest.update(f"{file.stat().st_size} {file.stat().st_mtime_ns}".encode())
    return {"checkpoint": str(folder), "checkpoint_digest": digest.hexdigest(),
            "options": {k: options[k] for k in sorted(options)}}


def finished_rows(out_dir: Path, record: dict) -> dict[tuple[str, str], dict]:
    """Rows of an earlier run into ``out_dir`` that a re-run can keep, keyed by (case, input).

    Kept: status ``ok`` with the case's overview PNG (its last output) on disk, and only when
    the earlier run used the same checkpoint and options (``predict_run.json``).
    """
    try:
        if json.loads((out_dir / RUN_RECORD).read_text()) != record:
            return {}
        with open(out_dir / "results.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError, csv.Error):
        return {}
    return {(row.get("case", ""), row.get("input", "")): row for row in rows
            if row.get("status") == "ok" and (out_dir / f"{row.get('case')}_overview.png").is_file()}


def stored_axis_codes(path: str | os.PathLike) -> str:
    """The voxel order the file at ``path`` is stored in (e.g. ``"LPS"``), from its header."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(nib.load(str(path)).affine))


def ready_for_cases() -> None:
    """Once the checkpoint is loaded, before the first case: import what
    :func:`write_case_outputs` draws with (matplotlib's Agg canvas, about 0.3 s; not at module
    import, as every ``amyloidkd`` command imports this module to build its parser), then
    freeze everything loaded out of later full garbage collections
    (:func:`AmyloidKDLib.memory.freeze_loaded_objects`). The first case then costs what every
    later one does."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    freeze_loaded_objects()


def write_case_outputs(result, out_dir: Path, case: str, storage_code: str = "RAS") -> list[Path]:
    """Write one case's saliency NIfTIs, label map and overview PNG; return their paths.

    The native-grid saliency and label map are stored in the input's own voxel order
    ``storage_code`` (its header's axis codes), so their arrays line up voxel for voxel with the
    input's array, as nnU-Net and TotalSegmentator outputs do; the MNI map stays RAS.
    ``<case>_regions.csv`` lists the atlas regions by their share of the MNI saliency, and
    ``<case>_regions.nii.gz`` (native grid) marks each listed region's voxels with its rank.

    The NIfTIs are compressed in a second thread while the PNG is drawn (zlib releases the
    GIL). Each file is written atomically; if any fails, the others of the case are removed.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    from AmyloidKDLib.report_png import render_overview

    explains = "amyloid-positive class" if result.saliency_target == 1 else "amyloid-negative class"
    niftis = []
    if result.saliency is not None:
        niftis = [(reorient_for_storage(result.saliency, storage_code), out_dir / f"{case}_saliency.nii.gz", np.float32),
                  (result.saliency_mni, out_dir / f"{case}_saliency_mni.nii.gz", np.float32),
                  (reorient_for_storage(result.top_regions, storage_code), out_dir / f"{case}_top_regions.nii.gz",
                   np.uint8)]
        if getattr(result, "region_ranks", None) is not None:  # label k = the region of rank k in <case>_regions.csv
            niftis.append((reorient_for_storage(result.region_ranks, storage_code),
                           out_dir / f"{case}_regions.nii.gz", np.uint16))
    regions = [out_dir / f"{case}_regions.csv"] if niftis and result.saliency_mni is not None else []
    written: list[Path] = []

    def write_niftis() -> None:
        for volume, path, dtype in niftis:
            written.append(save_volume(volume, path, dtype=dtype))
        if regions:  # which named regions hold the saliency (AmyloidKDLib.regions)
            from AmyloidKDLib.regions import load_atlas, region_shares, write_regions_csv

            shares = getattr(result, "regions", None) or region_shares(result.saliency_mni, load_atlas())
            written.append(write_regions_csv(shares, regions[0]))

    with ThreadPoolExecutor(max_workers=1) as pool:
        background = pool.submit(write_niftis)
        try:
            png = render_overview(
                result.mri, result.saliency, result.top_regions, out_dir / f"{case}_overview.png",
                case=case, probability=result.probability, label=result.label,
                threshold=result.threshold, explains=explains)
            written.append(png)
            background.result()
        except BaseException:
            wait([background])  # the writer finishes its file before the case is removed
            for path in written:
                Path(path).unlink(missing_ok=True)
            raise
    return [path for _, path, _ in niftis] + regions + [png]


def _result_columns(allow_coarse: bool, allow_missing_orientation: bool) -> tuple[str, ...]:
    """``results.csv``'s columns: the contract's, the Centiloid's, plus ``warnings`` when an
    ``allow_*`` option is on."""
    return RESULT_COLUMNS + CENTILOID_COLUMNS + (
        (WARNINGS_COLUMN,) if allow_coarse or allow_missing_orientation else ())


def _first_rows(cases: list[CaseInput], columns: tuple[str, ...], threshold: float,
                finished: dict[tuple[str, str], dict] | None) -> list[tuple[dict, bool]]:
    """One results row per case, with ``True`` where an earlier run's row (``finished``) is kept."""
    finished = finished or {}
    rows = []
    for item in cases:
        row = {column: "" for column in columns}
        row.update(case=item.case, input="" if item.path is None else str(item.path),
                   threshold=f"{threshold:.6g}")
        earlier = finished.get((row["case"], row["input"]))
        if earlier is not None:
            row.update({k: v for k, v in earlier.items() if k in row})
        rows.append((row, earlier is not None))
    return rows


def predict_cases(cases: list[CaseInput], predictor, out_dir: Path, *,
                  progress: Progress | None = None,
                  tqdm_factory: Callable | None = None, allow_coarse: bool = False,
                  allow_missing_orientation: bool = False,
                  finished: dict[tuple[str, str], dict] | None = None) -> list[dict]:
    """Predict every case, writing outputs and ``results.csv`` after each; return the rows.

    A case that raises is recorded (``status`` failed, ``error`` one line) and the batch goes on;
    a full disk stops the batch (``OSError``). An input with a validation warning (see
    :func:`AmyloidKDLib.volume.check_volume`) fails unless ``allow_coarse``; with either
    ``allow_*`` option ``results.csv`` gets a ``warnings`` column. Cases in ``finished`` (rows of
    an interrupted earlier run, see :func:`finished_rows`) are kept as they are, not redone.
    """
    from AmyloidKDLib.progress import progress_bar

    out_dir.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress(False, len(cases))
    columns = _result_columns(allow_coarse, allow_missing_orientation)
    first = _first_rows(cases, columns, predictor.threshold, finished)
    rows: list[dict] = []
    bar = (tqdm_factory or progress_bar)(cases, desc="predict", unit="case")
    for index, item in enumerate(bar):
        started = time.perf_counter()
        row, kept = first[index]
        if kept:
            rows.append(row)
            progress.report(index, len(CASE_STEPS) - 1, f"{item.case}: done in an earlier run")
            continue
        predict_one(item, predictor, out_dir, row, allow_coarse=allow_coarse,
                    allow_missing_orientation=allow_missing_orientation,
                    report=lambda step, text, index=index: progress.report(index, step, text))
        row["seconds_total"] = f"{time.perf_counter() - started:.3f}"
        rows.append(row)
        _write_results(rows, out_dir / "results.csv", columns)
        progress.report(index, len(CASE_STEPS) - 1, f"{item.case}: {row['status']}")
    return rows


def predict_one(item: CaseInput, predictor, out_dir: Path, row: dict, *, allow_coarse: bool = False,
                allow_missing_orientation: bool = False,
                report: Callable[[int, str], None] | None = None) -> dict:
    """Predict one case and write its outputs; fill ``row`` (``status`` ok or failed) and return it.

    A case that raises is recorded (``status`` failed, ``error`` one line); a full disk is raised.
    ``report(step_index, text)`` is told each finished step (see :data:`CASE_STEPS`).
    """
    import warnings

    from AmyloidKDLib.volume import load_volume

    report = report or (lambda step, text: None)
    try:
        if item.problem is not None:
            raise InputError(item.problem)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported in the row instead
            mri = load_volume(item.path, "T1w",
                              allow_missing_orientation=allow_missing_orientation)
        coarse = check_volume(mri)
        if coarse and not allow_coarse:
            raise InputError(f"{item.path}: {'; '.join(coarse)}; predict it anyway with "
                             "--allow-coarse (the result is then less reliable)")
        if WARNINGS_COLUMN in row:
            row[WARNINGS_COLUMN] = "; ".join(mri.warnings)
        report(0, f"{item.case}: loaded")
        step_index = {name: i + 1 for i, name in enumerate(("prepare", "model", "saliency"))}
        result = predictor.predict(
            mri, on_step=lambda name: report(step_index[name], f"{item.case}: {name} done"))
        write_case_outputs(result, out_dir, item.case, storage_code=stored_axis_codes(item.path))
        row.update(probability=repr(result.probability), label=str(result.label),
                   status="ok", seconds_prepare=f"{result.timings.get('prepare', 0.0):.3f}",
                   seconds_model=f"{result.timings.get('model', 0.0):.3f}",
                   seconds_saliency=f"{result.timings.get('saliency', 0.0):.3f}")
        for column in CENTILOID_COLUMNS:
            value = getattr(result, column, None)
            row[column] = "" if value is None else f"{value:.2f}"
    except Exception as exc:  # a failing case is recorded, the batch continues
        if is_disk_full(exc):
            raise  # ... except on a full disk, where every later case would fail too
        log.debug("case %s failed:\n%s", item.case, traceback.format_exc())
        row.update(status="failed", error=_one_line(exc))
        print(f"amyloidkd predict: {item.case}: failed: {row['error']}", file=sys.stderr)
    return row


#: Predictors loaded in this (worker) process, by their options: one checkpoint load per worker.
_PREDICTORS: dict[tuple, object] = {}


def _predict_task(work: tuple) -> dict:
    """One case on a Dask worker: ``(item, row, out_dir, predictor options, allow_coarse,
    allow_missing_orientation)`` -> the filled row."""
    from AmyloidKDLib.inference import Predictor

    item, row, out_dir, options, allow_coarse, allow_missing_orientation = work
    key = tuple(sorted(options.items()))
    if key not in _PREDICTORS:
        _PREDICTORS[key] = Predictor(**options)
        ready_for_cases()
    started = time.perf_counter()
    predict_one(item, _PREDICTORS[key], Path(out_dir), row, allow_coarse=allow_coarse,
                allow_missing_orientation=allow_missing_orientation)
    row["seconds_total"] = f"{time.perf_counter() - started:.3f}"
    return row


def predict_on_workers(cases: list[CaseInput], options: dict, out_dir: Path, *, threshold: float,
                       scheduler: str, jobs: int, threads: int, cluster_config: str | None,
                       progress: Progress, allow_coarse: bool = False,
                       allow_missing_orientation: bool = False,
                       finished: dict[tuple[str, str], dict] | None = None) -> list[dict]:
    """:func:`predict_cases` with one task per case on Dask workers (see
    :mod:`AmyloidKDLib.executor`); ``results.csv`` is rewritten, in input order, as cases finish."""
    rows: list[dict | None] = [None] * len(cases)
    work = []
    columns = _result_columns(allow_coarse, allow_missing_orientation)
    first = _first_rows(cases, columns, threshold, finished)
    for index, (item, (row, kept)) in enumerate(zip(cases, first)):
        if kept:
            rows[index] = row
        else:
            work.append((index, (item, row, str(out_dir), options, allow_coarse,
                                 allow_missing_orientation)))
    done = len(cases) - len(work)
    for position, result, error in executor.map_cases(
            _predict_task, [w for _, w in work], scheduler=scheduler, jobs=jobs, threads=threads,
            cluster_config=cluster_config, progress=True, desc="predict"):
        index, (item, row, *_) = work[position]
        if error is not None:  # the task itself failed (e.g. its worker was lost repeatedly)
            row.update(status="failed", error=error)
            result = row
        rows[index] = result
        done += 1
        _write_results([r for r in rows if r is not None], out_dir / "results.csv", columns)
        progress.line(done / max(len(cases), 1), f"{item.case}: {result['status']}")
    return [r for r in rows if r is not None]


def run(args: argparse.Namespace) -> int:
    """Run a batch prediction; exit 0 all ok, 1 some case failed, 2 bad usage/input (raised)."""
    from AmyloidKDLib.inference import Predictor

    cases = collect_inputs(args.input)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot use {out_dir} as the output folder ({exc.strerror or exc}); "
                         "give a folder you can write to with --out") from None
    progress = Progress(args.progress == "lines", len(cases))
    progress.line(0.0, f"loading checkpoint for {len(cases)} case(s)")
    distributed = not (args.scheduler == "local" and args.jobs == 1)
    if distributed:
        executor.check_scheduler(args.scheduler)
        executor.read_cluster_config(args.cluster_config)  # a bad file stops before any work
    deterministic = getattr(args, "deterministic", True)
    predictor = Predictor(args.checkpoint, device=args.device, skull_strip=args.skull_strip,
                          precision=args.precision, deterministic=deterministic)
    ready_for_cases()
    options = {"skull_strip": args.skull_strip, "allow_coarse": args.allow_coarse,
               "allow_missing_orientation": args.allow_missing_orientation,
               "precision": args.precision}
    record = run_record(args.checkpoint, **options)
    finished = finished_rows(out_dir, record)
    if finished:
        print(f"amyloidkd predict: {len(finished)} case(s) already done in {out_dir}, kept",
              file=sys.stderr)
    write_json_atomic(out_dir / RUN_RECORD, record)
    if distributed:  # the workers load the checkpoint themselves; this one gave the threshold
        options = {"checkpoint": str(Path(args.checkpoint).resolve()), "device": args.device,
                   "skull_strip": args.skull_strip, "precision": args.precision,
                   "deterministic": deterministic}
        rows = predict_on_workers(cases, options, out_dir, threshold=predictor.threshold,
                                  scheduler=args.scheduler, jobs=args.jobs, threads=args.threads,
                                  cluster_config=args.cluster_config, progress=progress,
                                  finished=finished, allow_coarse=args.allow_coarse,
                                  allow_missing_orientation=args.allow_missing_orientation)
    else:
        rows = predict_cases(cases, predictor, out_dir, progress=progress, finished=finished,
                             allow_coarse=args.allow_coarse,
                             allow_missing_orientation=args.allow_missing_orientation)
    failed = [row["case"] for row in rows if row["status"] != "ok"]
    progress.line(1.0, f"done: {len(rows) - len(failed)} ok, {len(failed)} failed")
    if failed:
        print(f"amyloidkd predict: {len(failed)} of {len(rows)} case(s) failed: "
              f"{', '.join(failed)} (see {out_dir / 'results.csv'})", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK
