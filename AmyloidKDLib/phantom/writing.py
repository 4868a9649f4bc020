"""Write a cohort: plan the scans, synthesise them, store images, ground truth and CSVs."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from AmyloidKDLib import layouts
from AmyloidKDLib.atomic import atomic_path, write_text_atomic
from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.phantom.anatomy import (ATROPHY_REGIONS, EARLY_AMYLOID_REGIONS, TemplateMaps,
                                          build_template_maps)
from AmyloidKDLib.phantom.config import PhantomConfig, mixture_weight
from AmyloidKDLib.phantom.geometry import SessionGeometry
from AmyloidKDLib.phantom.synthesis import (_brain_box_mm, _grid, _orientation, _pose,
                                            _ventricle_displacement, subject_displacement,
                                            synthesize_mri, synthesize_pet)
from AmyloidKDLib.phantom.tables import csv_text as _csv_text
from AmyloidKDLib.phantom.truth import (ATROPHY_REGION_NAMES, GENERATOR_VERSION, SessionTruth,
                                        SubjectTruth, _rng, sample_sessions, sample_subject)
from AmyloidKDLib.volume import Volume, reorient_for_storage, save_volume

LAYOUTS = ("manifest", "oasis3", "both", "adni")
#: Manifest columns, in order; MRI paths, ``pet_path`` are relative to the CSV's folder.
MANIFEST_COLUMNS = layouts.MANIFEST_COLUMNS
CONTRAST_COLUMNS = {c: layouts.CONTRAST_COLUMNS[c] for c in ("T1w", "T2w", "FLAIR")}
#: OASIS-3 file and column names the OASIS-3 layout uses (AmyloidKDLib.layouts).
OASIS_CENTILOID_CSV = layouts.OASIS3_CENTILOID_CSV
OASIS_DEMOGRAPHICS_CSV = layouts.OASIS3_DEMOGRAPHICS_CSV
OASIS_CLINICAL_CSV = layouts.OASIS3_CLINICAL_CSV
OASIS_PUP_CSV = layouts.OASIS3_PUP_CSV
OASIS_CENTILOID_COLUMNS = (layouts.CENTILOID_SUBJECT_COLUMN, layouts.CENTILOID_SESSION_COLUMN,
                           layouts.CENTILOID_TRACER_COLUMN,
                           "Centiloid_fBP_TOT_CORTMEAN", "Centiloid_fSUVR_TOT_CORTMEAN",
                           "Centiloid_fBP_rsf_TOT_CORTMEAN", "Centiloid_fSUVR_rsf_TOT_CORTMEAN")


def write_scan(volume: Volume, code: str, path: Path, dtype: type) -> Path:
    """Write ``volume`` stored in axis code ``code`` (as scanners do) as ``dtype``, atomically.

    MRI values are already integers, so the cast in :func:`save_volume` is exact.
    """
    return save_volume(reorient_for_storage(volume, code), path, dtype)


def mri_relpath(subject_id: str, day: int, contrast: str) -> str:
    """Path of an MR contrast inside the OASIS-3 style tree (BIDS-like)."""
    ses = f"ses-d{day:04d}"
    return f"sub-{subject_id}/{ses}/anat/sub-{subject_id}_{ses}_{contrast}.nii.gz"


def pup_id(pet_session_id: str) -> str:
    """The PUP run id of a PET session: ``SYN00001_PIB_d0270`` -> ``SYN00001_PIB_PUPTIMECOURSE_d0270``."""
    subject, tracer, day = pet_session_id.rsplit("_", 2)
    return f"{subject}_{tracer}_PUPTIMECOURSE_{day}"


def pet_relpath(pet_session_id: str) -> str:
    """Path of the SUVR image inside the OASIS-3 tree, where the PUP partial-match download
    script puts it (``<PET session>/<PUP id>/pet_proc/``) under ``PUP/``, named as PUP names
    the unsmoothed image (``<label>n_msum_SUVR``; NIfTI, as after ``nifti_4dfp``)."""
    return (f"PUP/{pet_session_id}/{pup_id(pet_session_id)}/pet_proc/"
            f"{pet_session_id}n_msum_SUVR.nii.gz")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@dataclass
class _Scan:
    """One MR session or PET image to synthesise."""

    truth: SessionTruth
    kind: str                   # "mri" or "pet"
    day: int
    label: str                  # session label used for its geometry file


def _plan(subjects: list[SubjectTruth], sessions: dict[str, list[SessionTruth]], seed: int,
          layout: str, config: PhantomConfig) -> list[_Scan]:
    scans = []
    for subject in subjects:
        own = sessions[subject.subject_id]
        for truth in own:
            if truth.mr_day is None and layout == "manifest":
                continue
            if truth.mr_day is not None:
                scans.append(_Scan(truth, "mri", truth.mr_day, truth.mr_session_id))
            scans.append(_Scan(truth, "pet", truth.pet_day, truth.session_id))
        if subject.extra_mr and layout != "manifest":
            last = own[-1]
            rng = _rng(seed, subject.index, 3)
            offset = int(rng.integers(200, 331) if last.mr_day is not None else rng.integers(400, 601))
            day = last.pet_day + offset
            scans.append(_Scan(last, "mri", day, f"{subject.subject_id}_MR_d{day:04d}"))
    return scans


def _montage(path: Path, shown: list[tuple[SessionTruth, Volume, Volume]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.4 * len(shown), 5.2), dpi=90)
    FigureCanvasAgg(fig)
    for col, (truth, t1, pet) in enumerate(shown):
        for row, (volume, cmap, window) in enumerate(((t1, "gray", None), (pet, "hot", (0.0, 3.0)))):
            inv = np.linalg.inv(volume.affine)
            k = int(round((inv @ np.array([0.0, -30.0, 35.0, 1.0]))[2]))
            k = min(max(k, 0), volume.shape[2] - 1)
            ax = fig.add_subplot(2, len(shown), row * len(shown) + col + 1)
            image = volume.data[:, :, k].T
            vmin, vmax = window or (0.0, float(np.percentile(volume.data, 99.5)) or 1.0)
            ax.imshow(image, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax)
            ax.set_axis_off()
            if row == 0:
                status = "A+" if truth.label else "A-"
                ax.set_title(f"{truth.subject_id}\n{status}  CL {truth.centiloid:.0f}  {truth.tracer}",
                             fontsize=8)
            elif col == 0:
                ax.set_title("PET SUVR 0-3", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, metadata={"Software": None})


#: Present while a cohort is being written: a folder holding it is an interrupted run (a full
#: disk, a kill) and is replaced by the next run without asking.
UNFINISHED_MARKER = ".phantom-unfinished"


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose a folder for the cohort")
    if (out_dir / UNFINISHED_MARKER).exists():
        shutil.rmtree(out_dir)
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        marker = out_dir / "ground_truth" / "cohort.json"
        if not overwrite or not marker.exists():
            raise InputError(
                f"{out_dir}: folder is not empty; choose an empty or new folder"
                + (" (or pass overwrite=True / --overwrite to replace the cohort in it)"
                   if marker.exists() else ""))
        shutil.rmtree(out_dir)


def _make_scan(scan: _Scan, subject: SubjectTruth, displacement: tuple[np.ndarray, np.ndarray],
               maps_by_kind: dict[str, TemplateMaps], box: tuple[np.ndarray, np.ndarray], seed: int,
               config: PhantomConfig, out_dir: Path) -> _Made:
    """Synthesise one scan and save its geometry; return its volumes and the files to write
    (``write_scan`` arguments). Depends only on its own seed: scans can be made in any order."""
    truth = scan.truth
    is_mri = scan.kind == "mri"
    rng = _rng(seed, subject.index, 10 + truth.session_index, 0 if is_mri else 1, scan.day)
    base, origin = displacement
    spacing = config.deformation_spacing_mm
    disp = np.round(base + _ventricle_displacement(truth.ventricle_expansion, origin, spacing,
                                                   base.shape[1:]), 3)
    rot, shift = _pose(rng, config)
    grid_spacing = config.mri_spacing_mm if is_mri else config.pet_spacing_mm
    pad = (26.0 if config.skull else 10.0) if is_mri else 18.0
    affine, shape = _grid(box, pad, grid_spacing, shift, rng)
    geometry = SessionGeometry(rot, shift, tuple(float(v) for v in origin), spacing, disp,
                               affine, shape, "RAS")
    if is_mri:
        volumes = synthesize_mri(maps_by_kind["mri"], truth, geometry, rng, config, subject)
        paths = {name: mri_relpath(truth.subject_id, scan.day, name) for name in volumes}
    else:
        volumes = {"PET": synthesize_pet(maps_by_kind["pet"], truth, geometry, rng, config, subject)}
        paths = {"PET": pet_relpath(truth.session_id)}
    codes, writes = {}, []
    for name, volume in volumes.items():
        codes[name] = _orientation(rng, config)
        writes.append((volume, codes[name], out_dir / paths[name],
                       np.float32 if name == "PET" else np.int16))
    record = geometry.to_dict()
    record.update(stored_orientation=codes, files=paths, kind=scan.kind)
    write_text_atomic(out_dir / "ground_truth" / "geometry" / f"{scan.label}.json",
                 json.dumps(record, sort_keys=True))
    return volumes, writes


#: Scans synthesised at once (threads: torch, numpy and zlib release the GIL), and how many
#: finished scans may wait for the writer before the next is started (bounds the memory).
SCAN_THREADS = 2
WRITES_IN_FLIGHT = 4
#: A synthesised scan: its volumes and the ``write_scan`` arguments of its files.
_Made = tuple[dict[str, Volume], list[tuple]]


def _made_scans(scans: list[_Scan], make: Callable[[_Scan], _Made]) -> Iterator[_Made]:
    """``make(scan)`` for every scan, ``SCAN_THREADS`` at a time, yielded in scan order.

    Each scan's random numbers come from its own seed, so the files are the same as one at a
    time. Torch runs one intra-op thread per scan meanwhile (restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(max_workers=SCAN_THREADS)
    started: deque[Future] = deque()
    try:
        for scan in scans:
            started.append(pool.submit(make, scan))
            if len(started) > SCAN_THREADS:
                yield started.popleft().result()
        while started:
            yield started.popleft().result()
    finally:
        for future in started:
            future.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(threads)


def generate_cohort(out_dir: str | os.PathLike, n_subjects: int, seed: int,
                    layout: str = "manifest", config: PhantomConfig | None = None, *,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Write a synthetic PET/MRI cohort to ``out_dir``; deterministic per ``seed``.

    Args:
        out_dir: a new or empty folder (a previous cohort is replaced with ``overwrite``).
        n_subjects: number of subjects (each with 1 to ``config.max_sessions`` PET sessions).
        seed: the same seed and config give byte-identical files.
        layout: ``manifest`` (``manifest.csv`` + images), ``oasis3`` (OASIS-3 style tree and
            CSVs, including PET sessions without an MR within 365 days and extra MR-only
            sessions), ``both``, or ``adni`` (the same scans re-laid as an IDA download with
            the ADNI CSVs of both generations: :mod:`AmyloidKDLib.phantom.adni`).
        config: every knob; the defaults are the demo's.

    Returns:
        ``out_dir/manifest.csv`` for ``manifest`` and ``both``; ``out_dir`` (the OASIS-3 or
        ADNI root) for ``oasis3`` and ``adni``. Ground truth goes to ``out_dir/ground_truth/``, a montage of a
        few subjects to ``out_dir/montage.png``.
    """
    from AmyloidKDLib.progress import progress_bar

    config = config or PhantomConfig()
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if int(n_subjects) < 1:
        raise ConfigError(f"n_subjects must be >= 1, got {n_subjects}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / UNFINISHED_MARKER).touch()

    subjects = [sample_subject(i, seed, config) for i in range(int(n_subjects))]
    sessions = {s.subject_id: sample_sessions(s, seed, config) for s in subjects}
    maps_by_kind = {"mri": build_template_maps(config.mri_spacing_mm,
                                               16.0 if config.skull else 4.0, config),
                    "pet": build_template_maps(config.pet_spacing_mm, 16.0, config)}
    box = _brain_box_mm(maps_by_kind["mri"])
    displacements = {s.subject_id: subject_displacement(s, seed, config, box) for s in subjects}

    scans = _plan(subjects, sessions, seed, layout, config)
    by_id = {s.subject_id: s for s in subjects}
    t1_by_session: dict[str, Volume] = {}
    shown: list[tuple[SessionTruth, Volume, Volume]] = []

    def make(scan: _Scan) -> _Made:
        subject_id = scan.truth.subject_id
        return _make_scan(scan, by_id[subject_id], displacements[subject_id], maps_by_kind, box,
                          seed, config, out_dir)

    # compression runs in its own thread (zlib releases the GIL) while the next scans are built
    writer = ThreadPoolExecutor(max_workers=1)
    pending: deque[Future] = deque()
    made = _made_scans(scans, make)
    try:
        for scan, (volumes, writes) in progress_bar(zip(scans, made), total=len(scans),
                                                    desc="phantom scans", unit="scan",
                                                    enabled=progress):
            truth = scan.truth
            pending.extend(writer.submit(write_scan, *arguments) for arguments in writes)
            while len(pending) > WRITES_IN_FLIGHT:
                pending.popleft().result()
            quota = math.ceil(config.montage_subjects / 2)  # as many A+ as A- where possible
            if (len(shown) >= config.montage_subjects or truth.session_index
                    or sum(t.label == truth.label for t, _, _ in shown) >= quota):
                continue
            if scan.kind == "mri" and scan.label == truth.mr_session_id:
                t1_by_session[truth.session_id] = volumes["T1w"]
            elif scan.kind == "pet" and truth.session_id in t1_by_session:
                shown.append((truth, t1_by_session.pop(truth.session_id), volumes["PET"]))
        t1_by_session.clear()
    finally:
        made.close()  # stops and joins the synthesis threads if the loop ended early
        for future in pending:
            future.result()
        writer.shutdown()

    all_sessions = [t for s in subjects for t in sessions[s.subject_id]]
    _write_truth(out_dir, all_sessions, subjects, seed, layout, config)
    if shown:
        _montage(out_dir / "montage.png", shown)
    manifest = out_dir / "manifest.csv"
    if layout in ("manifest", "both"):
        _write_manifest(manifest, all_sessions, config)
    if layout in ("oasis3", "both"):
        _write_oasis_csvs(out_dir, all_sessions, subjects)
    if layout == "adni":
        from AmyloidKDLib.phantom.adni import write_adni_layout

        write_adni_layout(out_dir, all_sessions, subjects)
    (out_dir / UNFINISHED_MARKER).unlink()
    return out_dir if layout in ("oasis3", "adni") else manifest


def _write_truth(out_dir: Path, sessions: list[SessionTruth], subjects: list[SubjectTruth],
                 seed: int, layout: str, config: PhantomConfig) -> None:
    region_columns = [f"gm_loss_{name}" for name in ATROPHY_REGION_NAMES]
    header = [f.name for f in fields(SessionTruth) if f.name != "region_gm_loss"] + region_columns
    rows = []
    for s in sessions:
        row = {k: ("" if v is None else v) for k, v in asdict(s).items()}
        row.update(zip(region_columns, row.pop("region_gm_loss")))
        rows.append(row)
    write_text_atomic(out_dir / "ground_truth" / "sessions.csv", _csv_text(header, rows))
    cohort = {"generator_version": GENERATOR_VERSION, "seed": seed,
              "n_subjects": len(subjects), "layout": layout,
              "config": config.to_dict(), "mixture_weight": mixture_weight(config),
              "early_amyloid_regions": EARLY_AMYLOID_REGIONS, "atrophy_regions": ATROPHY_REGIONS,
              "subjects": [asdict(s) for s in subjects]}
    write_text_atomic(out_dir / "ground_truth" / "cohort.json", json.dumps(cohort, indent=1))


def _write_manifest(path: Path, sessions: list[SessionTruth], config: PhantomConfig) -> None:
    rows = []
    for s in sessions:
        if s.mr_day is None:
            continue
        row = {"subject_id": s.subject_id, "session_id": s.session_id,
               "pet_path": pet_relpath(s.session_id), "tracer": s.tracer,
               "centiloid": _fmt(s.centiloid), "label": s.label, "age": _fmt(s.age, 1)}
        for contrast, column in CONTRAST_COLUMNS.items():
            row[column] = mri_relpath(s.subject_id, s.mr_day, contrast) if contrast in config.contrasts else ""
        rows.append(row)
    write_text_atomic(path, _csv_text(MANIFEST_COLUMNS, rows))


def _write_oasis_csvs(root: Path, sessions: list[SessionTruth], subjects: list[SubjectTruth]) -> None:
    rows = []
    for s in sessions:
        rows.append({"subject_id": s.subject_id, "oasis_session_id": s.session_id,
                     "tracer": s.tracer,
                     # the measured Centiloid (the truth's `centiloid`, which the label uses)
                     # goes to the column the reader labels with by default (the authors'
                     # partial-volume-corrected "rsf" one); the others derive from it
                     "Centiloid_fBP_TOT_CORTMEAN": _fmt(0.9 * s.centiloid) if s.tracer == "PIB" else "",
                     "Centiloid_fSUVR_TOT_CORTMEAN": _fmt(s.centiloid / 1.08),
                     "Centiloid_fBP_rsf_TOT_CORTMEAN": _fmt(0.97 * s.centiloid) if s.tracer == "PIB" else "",
                     "Centiloid_fSUVR_rsf_TOT_CORTMEAN": _fmt(s.centiloid)})
    write_text_atomic(root / OASIS_CENTILOID_CSV, _csv_text(OASIS_CENTILOID_COLUMNS, rows))
    # which MR session each PUP run used (PET sessions without an MR in the tree have none)
    pup = [{layouts.PUP_ID_COLUMN: pup_id(s.session_id), layouts.PUP_MR_COLUMN: s.mr_session_id or "",
            "tracer": s.tracer} for s in sessions]
    write_text_atomic(root / OASIS_PUP_CSV,
                      _csv_text((layouts.PUP_ID_COLUMN, layouts.PUP_MR_COLUMN, "tracer"), pup))
    demo = [{"OASISID": s.subject_id, "AgeatEntry": _fmt(s.age_at_entry)} for s in subjects]
    write_text_atomic(root / OASIS_DEMOGRAPHICS_CSV, _csv_text(("OASISID", "AgeatEntry"), demo))
    clinical = [{"OASISID": s.subject_id, "OASIS_session_label": f"{s.subject_id}_UDSb4_d{s.pet_day:04d}",
                 "days_to_visit": s.pet_day, "age at visit": _fmt(s.age, 1)} for s in sessions]
    write_text_atomic(root / OASIS_CLINICAL_CSV,
                 _csv_text(("OASISID", "OASIS_session_label", "days_to_visit", "age at visit"), clinical))

