"""Cohort records: the list of PET/MRI cases a training run reads, from any of the data layouts.

Three layouts are supported (documented in ``docs/data_layouts.md``), and all parse into the
same :class:`CaseRecord` list:

* a plain **manifest CSV** - one row per case, MRI and PET paths relative to the CSV;
* an **OASIS-3 download** - MR sessions as the BIDS or the native download script writes
  them, PET Unified Pipeline (PUP) folders as the PUP download scripts write them (4dfp or
  NIfTI SUVR images), and the OASIS-3 CSVs. Each PET session is paired with the MR session
  its PUP run used (``OASIS3_PUP.csv``, column ``MRId``), or with the nearest MR session in
  time; see :func:`read_oasis3`;
* an **ADNI download** - IDA image folders (DICOM series or NIfTI) and the UC Berkeley amyloid
  table (old per-tracer or current combined), each amyloid scan paired with a T1 of the same
  visit or the nearest within a window; see :func:`read_adni`.

File and column names come from :mod:`AmyloidKDLib.layouts`.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from AmyloidKDLib import layouts
from AmyloidKDLib.errors import InputError
from AmyloidKDLib.volume import MAX_MRI_ANISOTROPY, MAX_PLAUSIBLE_SPACING_MM

log = logging.getLogger(__name__)

#: MRI contrasts: manifest column and the BIDS suffixes of the file name.
CONTRASTS = {"T1w": (layouts.CONTRAST_COLUMNS["T1w"], ("T1w",)),
             "T2w": (layouts.CONTRAST_COLUMNS["T2w"], ("T2w",)),
             "FLAIR": (layouts.CONTRAST_COLUMNS["FLAIR"], ("FLAIR",)),
             "T2star": (layouts.CONTRAST_COLUMNS["T2star"], ("T2starw", "T2star"))}
TRACERS = ("AV45", "PIB", "FBB")
DEFAULT_LABEL_THRESHOLD = layouts.DEFAULT_LABEL_THRESHOLD
DEFAULT_CENTILOID_COLUMN = layouts.DEFAULT_CENTILOID_COLUMN
PAIRINGS = ("auto", "pup-mrid", "nearest")
#: Scans whose largest voxel edge is at most this (mm) are preferred (the authors' T1w rule).
PREFERRED_SPACING_MM = 1.5
#: Fewer voxels than this along an axis: a localizer / single-slab scan, not a 3-D volume.
MIN_SCAN_MATRIX = 16


@dataclass
class CaseRecord:
    """One PET/MRI case: who, which session, the image files and the amyloid read-out.

    Attributes:
        subject_id: the person (splits must keep all of a subject's cases together).
        session_id: the case's own label (the PET session in the OASIS-3 layout).
        mri: contrast name (``T1w``, ``T2w``, ``FLAIR``, ``T2star``) -> absolute file path.
        pet_path: the SUVR image, or None for an MRI-only case.
        tracer: ``AV45``, ``PIB`` or ``FBB`` (None if unknown).
        centiloid: amyloid burden in Centiloid units (None if unknown).
        label: 1 amyloid-positive, 0 negative (None if unknown).
        age: age in years at the PET scan (None if unknown).
        selection: how the OASIS-3 or ADNI reader chose the files (PET image, pairing, the scan
            per contrast and the scans it passed over); not part of equality.
        pet_scale: ``suvr`` (the PET is an SUVR map, as the manifest and OASIS-3 give it) or
            ``counts`` (not reference-normalised, as ADNI's IDA images are; training scales it
            first, see ``Training.data.pet_to_interim_suvr``).
    """

    subject_id: str
    session_id: str
    mri: dict[str, Path] = field(default_factory=dict)
    pet_path: Path | None = None
    tracer: str | None = None
    centiloid: float | None = None
    label: int | None = None
    age: float | None = None
    selection: dict[str, str] = field(default_factory=dict, compare=False)
    pet_scale: str = "suvr"


def _number(value: str | None, what: str, where: str) -> float | None:
    if value is None or str(value).strip() in ("", "nan", "NaN", "NA"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{where}: {what} {value!r} is not a number") from None
    return None if math.isnan(number) else number


def _label(value: str | None, centiloid: float | None, threshold: float, where: str) -> int | None:
    text = "" if value is None else str(value).strip().lower()
    if text in ("1", "true", "yes", "positive", "1.0"):
        return 1
    if text in ("0", "false", "no", "negative", "0.0"):
        return 0
    if text:
        raise InputError(f"{where}: label {value!r} is not 0/1 (or true/false); fix the "
                         "column or leave it empty to derive it from centiloid")
    return None if centiloid is None else int(centiloid > threshold)


def _tracer(value: str | None, where: str) -> str | None:
    text = (value or "").strip().upper()
    if not text:
        return None
    if text not in TRACERS:
        raise InputError(f"{where}: tracer {value!r} is not one of {', '.join(TRACERS)}")
    return text


def read_manifest(csv_path: str | Path, contrasts: tuple[str, ...] = ("T1w",),
                  label_threshold: float = DEFAULT_LABEL_THRESHOLD,
                  check_files: bool = True) -> list[CaseRecord]:
    """Cases listed in a manifest CSV, sorted by subject and session.

    Columns: ``subject_id, session_id`` (required), ``t1w, t2w, flair, t2star`` (MRI paths;
    ``mri_path`` is accepted for ``t1w``), ``pet_path, tracer, centiloid, label, age``
    (optional; an empty ``label`` is derived as ``centiloid > label_threshold``). Relative
    paths are resolved against the CSV's folder.

    Args:
        contrasts: MRI contrasts every case must have (a missing column or cell is an error).
        check_files: verify that every referenced file exists.

    Raises:
        InputError: missing column, duplicate case, bad value or missing file; the message
            names the row.
    """
    table = layouts.read_csv_table(csv_path, "manifest")
    path, header = table.path, table.header
    bad = [c for c in contrasts if c not in CONTRASTS]
    if bad:
        raise InputError(f"unknown MRI contrast(s) {bad}; choose from {', '.join(CONTRASTS)}")
    t1w, alias = layouts.CONTRAST_COLUMNS["T1w"], layouts.T1W_ALIAS_COLUMN
    columns = {c: (alias if c == "T1w" and t1w not in header and alias in header
                   else CONTRASTS[c][0]) for c in CONTRASTS}
    missing = [n for n in (layouts.SUBJECT_COLUMN, layouts.SESSION_COLUMN) if n not in header]
    missing += [columns[c] for c in contrasts if columns[c] not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; a manifest needs "
                         "subject_id, session_id and one path column per MRI contrast "
                         "(t1w, t2w, flair), see docs/data_layouts.md")
    base = path.resolve().parent
    records, seen = [], set()
    for index, row in enumerate(table.rows):
        where = table.where(index)
        subject, session = row.get(layouts.SUBJECT_COLUMN, ""), row.get(layouts.SESSION_COLUMN, "")
        if not subject or not session:
            raise InputError(f"{where}: subject_id and session_id must not be empty")
        if (subject, session) in seen:
            raise InputError(f"{where}: case {subject}/{session} is listed twice")
        seen.add((subject, session))
        mri = {}
        for contrast, column in columns.items():
            if row.get(column):
                mri[contrast] = _resolve(base, row[column], where, check_files)
            elif contrast in contrasts:
                raise InputError(f"{where}: no {contrast} path in column {column!r}")
        pet = _resolve(base, row["pet_path"], where, check_files) if row.get("pet_path") else None
        centiloid = _number(row.get("centiloid"), "centiloid", where)
        records.append(CaseRecord(
            subject_id=subject, session_id=session, mri=mri, pet_path=pet,
            tracer=_tracer(row.get("tracer"), where), centiloid=centiloid,
            label=_label(row.get("label"), centiloid, label_threshold, where),
            age=_number(row.get("age"), "age", where)))
    return sorted(records, key=lambda r: (r.subject_id, r.session_id))


def _resolve(base: Path, text: str, where: str, check: bool) -> Path:
    candidate = Path(text).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    if check and not candidate.is_file():
        raise InputError(f"{where}: file {text!r} not found (looked for {candidate}); paths "
                         "are relative to the manifest's folder")
    return candidate


# -- OASIS-3 ---------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".4dfp.img")
#: ``OAS30001_AV45_PUPTIMECOURSE_d2430`` (PUP id) or ``OAS30001_AV45_d2430`` (PET session).
_PET_LABEL = re.compile(r"^([A-Za-z0-9]+)_(AV45|PIB)(?:_PUPTIMECOURSE)?_d(\d+)", re.IGNORECASE)
_MR_LABEL = re.compile(r"^([A-Za-z0-9]+)_MR_d(\d+)$")
_CLINICAL_LABEL = re.compile(r"^([A-Za-z0-9]+)_UDSb4_d(\d+)$")
_SMOOTHED = re.compile(r"_g\d+$", re.IGNORECASE)
_SUFFIX_TO_CONTRAST = {suffix: contrast for contrast, (_, suffixes) in CONTRASTS.items()
                       for suffix in suffixes}


def _image_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


@dataclass(frozen=True)
class MRScan:
    """One MR image file of an OASIS-3 download, as its name and folders describe it."""

    path: Path
    subject: str
    day: int
    contrast: str
    run: int | None       # BIDS ``run-`` entity
    acquisition: str      # BIDS ``acq-`` entity ("" if none)


def parse_mr_file(path: Path) -> MRScan | None:
    """Subject, day and contrast of an MR image file, from BIDS entities in its name
    (``sub-OAS30001_ses-d0129_acq-TSE_run-01_T2w.nii.gz``) or, failing those, from the folders
    above it (``sub-*/ses-d*/`` of the BIDS download, ``OAS30001_MR_d0129/anat1/`` of the native
    one). None for a file that is not an MR image of a known contrast."""
    stem = _image_stem(path.name)
    if stem is None or stem.lower().endswith(".4dfp"):
        return None
    parts = stem.split("_")
    contrast = _SUFFIX_TO_CONTRAST.get(parts[-1])
    if contrast is None:
        return None
    entities = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    subject, day = entities.get("sub"), entities.get("ses")
    day = int(day[1:]) if day and day[:1] == "d" and day[1:].isdigit() else None
    for folder in path.parents:
        name = folder.name
        native = _MR_LABEL.match(name)
        if native:
            subject, day = subject or native.group(1), day if day is not None else int(native.group(2))
        elif name.startswith("sub-") and subject is None:
            subject = name[4:]
        elif name.startswith("ses-d") and name[5:].isdigit() and day is None:
            day = int(name[5:])
        if subject and day is not None:
            break
    if not subject or day is None:
        return None
    run = entities.get("run")
    return MRScan(path, subject, day, contrast, int(run) if run and run.isdigit() else None,
                  entities.get("acq", ""))


def _pet_key(text: str) -> tuple[str, str, int] | None:
    match = _PET_LABEL.match(text)
    return (match.group(1), match.group(2).upper(), int(match.group(3))) if match else None


@dataclass
class _PetImages:
    """The SUVR-named files found for one PET session."""

    unsmoothed: list[Path] = field(default_factory=list)   # *_msum_SUVR images
    other: list[Path] = field(default_factory=list)        # other unsmoothed *_SUVR images
    ignored: list[str] = field(default_factory=list)       # smoothed copies, tables

    def choice(self) -> Path | None:
        """The unsmoothed ``*_msum_SUVR`` image (NIfTI before 4dfp), else another ``*_SUVR`` one."""
        for group in (self.unsmoothed, self.other):
            if group:
                return sorted(group, key=lambda p: (p.name.lower().endswith(".4dfp.img"), str(p)))[0]
        return None


def _pet_session_of(path: Path, root: Path) -> tuple[str, str, int] | None:
    """The PET session of a PUP output file: from the nearest folder named after a PUP id or
    a PET session label (at or below ``root``), else from the file name."""
    for folder in path.parents:
        if folder == root.parent:
            break
        key = _pet_key(folder.name)
        if key:
            return key
    return _pet_key(path.name)


@dataclass
class _Download:
    """Everything the walk over an OASIS-3 root found."""

    tables: dict[str, Path] = field(default_factory=dict)
    mr: dict[tuple[str, int], dict[str, list[MRScan]]] = field(default_factory=dict)
    pet: dict[tuple[str, str, int], _PetImages] = field(default_factory=dict)


def _walk(root: Path) -> _Download:
    wanted = {layouts.OASIS3_CENTILOID_CSV, layouts.OASIS3_DEMOGRAPHICS_CSV,
              layouts.OASIS3_PUP_CSV, layouts.OASIS3_CLINICAL_CSV}
    found = _Download()
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        here = Path(folder)
        for name in sorted(files):
            path = here / name
            if name in wanted:
                best = found.tables.get(name)         # the shallowest copy wins
                if best is None or len(path.parts) < len(best.parts):
                    found.tables[name] = path
                continue
            if "suvr" in name.lower():
                owner = _pet_session_of(path, root)
                if owner is None:
                    continue
                images = found.pet.setdefault(owner, _PetImages())
                stem = _image_stem(name)
                if stem is None:                                   # *.suvr, *.txt tables
                    images.ignored.append(name)
                elif stem.lower().endswith("_msum_suvr"):
                    images.unsmoothed.append(path)
                elif stem.lower().endswith("_suvr"):
                    images.other.append(path)
                else:                                              # *_msum_SUVR_g8: smoothed
                    images.ignored.append(name)
                continue
            scan = parse_mr_file(path)
            if scan is not None:
                session = found.mr.setdefault((scan.subject, scan.day), {})
                scans = session.setdefault(scan.contrast, [])
                if all(s.path.name != name for s in scans):        # same file in two layouts
                    scans.append(scan)
    return found


def _scan_problem(scan: MRScan) -> tuple[str | None, float]:
    """Why a scan is unusable (None if usable) and its largest voxel edge, from its header."""
    return image_problem(scan.path)


def image_problem(path: Path) -> tuple[str | None, float]:
    """Why an MR image (a NIfTI file or a DICOM series folder) is unusable as a 3-D structural
    scan (None if usable), and its largest voxel edge, from its header: 2-D localizers and
    slabs, multi-frame series and thick-slice scans are refused."""
    import nibabel as nib

    try:
        if path.name.lower().endswith(".4dfp.img"):
            return "4dfp MR images are not read (convert with nifti_4dfp)", 0.0
        if path.is_dir():
            from AmyloidKDLib.volume import read_dicom_series

            header = read_dicom_series(path).header
        else:
            header = nib.load(str(path)).header
        shape, zooms = header.get_data_shape(), header.get_zooms()
    except InputError as exc:
        return f"unreadable ({exc})", 0.0
    except Exception as exc:  # nibabel raises several types for damaged files
        return f"unreadable ({type(exc).__name__})", 0.0
    if len(shape) < 3 or min(shape[:3]) < MIN_SCAN_MATRIX:
        return f"2-D localizer or slab (matrix {tuple(shape)})", 0.0
    if len(shape) > 3 and any(s > 1 for s in shape[3:]):
        return f"{int(max(shape[3:]))} frames, not one volume", 0.0
    spacing = [abs(float(z)) for z in zooms[:3]]
    largest = max(spacing)
    if largest > MAX_PLAUSIBLE_SPACING_MM or largest / max(min(spacing), 1e-6) > MAX_MRI_ANISOTROPY:
        shown = "x".join(f"{s:.2g}" for s in spacing)
        return (f"thick-slice ({shown} mm; at most {MAX_PLAUSIBLE_SPACING_MM:g} mm and "
                f"{MAX_MRI_ANISOTROPY:g}:1)"), largest
    return None, largest


def choose_scan(scans: list[MRScan]) -> tuple[MRScan | None, list[str]]:
    """The scan of one contrast to use from an MR session, as Chiumento et al. choose a T1w:
    a 3-D scan with voxels of at most 1.5 mm first, and among those one without ``run-``,
    then the run with the finest voxels, then run-01. 2-D localizers, multi-frame and
    thick-slice scans (by their header; the limits of :func:`AmyloidKDLib.volume.check_volume`)
    are passed over. (The authors drop a session whose T1w are all coarser than 1.5 mm; here
    the finest of them is used, so 2 mm synthetic cohorts still read.)

    Returns:
        the chosen scan (None if none is usable) and one note per scan passed over.
    """
    usable, notes = [], []
    for scan in sorted(scans, key=lambda s: s.path.name):
        problem, largest = _scan_problem(scan)
        if problem:
            notes.append(f"{scan.path.name}: {problem}")
        else:
            coarse = largest > PREFERRED_SPACING_MM
            usable.append((coarse, scan.run is not None and not coarse,
                           round(largest, 2) if scan.run is not None or coarse else 0.0,
                           scan.run not in (None, 1), scan.path.name, scan))
    if not usable:
        return None, notes
    best = min(usable, key=lambda u: u[:5])[-1]
    notes += [f"{u[-1].path.name}: not preferred" for u in usable if u[-1] is not best]
    return best, notes


def step_account(steps: list[tuple[str, int]], skipped: dict[str, int]) -> str:
    """One line for a reader's summary: each step's count in order, the first step that left
    none, and the counts left out for other reasons."""
    counts = ", ".join(f"{n} {what}" for what, n in steps)
    empty = next((what for what, n in steps if n == 0), None)
    reasons = "; ".join(f"{n} {why}" for why, n in skipped.items())
    return (counts + (f"; none left at: {empty}" if empty else "")
            + (f" (skipped: {reasons})" if reasons else ""))


@dataclass
class Oasis3Summary:
    """What an OASIS-3 root held at each step, for messages when cases go missing."""

    mr_sessions: int = 0
    pup_folders: int = 0
    suvr_images: int = 0
    csv_rows: int = 0
    rows_with_centiloid: int = 0
    rows_with_image: int = 0
    pairs: int = 0
    cases: int = 0
    pairing: str = ""
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def describe(self, contrasts: tuple[str, ...], column: str) -> str:
        """One line: the counts in order and the first step that left none."""
        steps = [(f"MR sessions with {'+'.join(contrasts)}", self.mr_sessions),
                 ("PUP folders", self.pup_folders),
                 ("unsmoothed *_msum_SUVR images", self.suvr_images),
                 (f"{layouts.OASIS3_CENTILOID_CSV} rows", self.csv_rows),
                 (f"rows with {column}", self.rows_with_centiloid),
                 ("of those with an SUVR image", self.rows_with_image),
                 (f"PET/MR pairs ({self.pairing})", self.pairs),
                 ("cases", self.cases)]
        return step_account(steps, self.skipped)


def _day_of(label: str, pattern: re.Pattern) -> tuple[str, int] | None:
    match = pattern.match(label.strip())
    return (match.group(1), int(match.group(2))) if match else None


def _mr_ids(path: Path | None) -> dict[tuple[str, str, int], tuple[str, int]]:
    """PET session -> (subject, day) of the MR session its PUP run used, from ``OASIS3_PUP.csv``."""
    if path is None:
        return {}
    table = layouts.read_csv_table(path, "PUP table")
    missing = [c for c in (layouts.PUP_ID_COLUMN, layouts.PUP_MR_COLUMN) if c not in table.header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (columns present: "
                         f"{', '.join(table.header)}); use pairing 'nearest' to pair without it")
    pairs = {}
    for row in table.rows:
        key, mr = _pet_key(row[layouts.PUP_ID_COLUMN]), _day_of(row[layouts.PUP_MR_COLUMN], _MR_LABEL)
        if key and mr:
            pairs[key] = mr
    return pairs


def _clinical_days(path: Path | None) -> dict[str, list[int]]:
    if path is None:
        return {}
    table = layouts.read_csv_table(path, "clinical table")
    if layouts.CLINICAL_SESSION_COLUMN not in table.header:
        raise InputError(f"{path}: no column {layouts.CLINICAL_SESSION_COLUMN} (visit labels "
                         "such as OAS30001_UDSb4_d0000)")
    days: dict[str, list[int]] = defaultdict(list)
    for row in table.rows:
        visit = _day_of(row[layouts.CLINICAL_SESSION_COLUMN], _CLINICAL_LABEL)
        if visit:
            days[visit[0]].append(visit[1])
    return days


def read_oasis3(root: str | Path, max_days: int = 365, contrasts: tuple[str, ...] = ("T1w",),
                centiloid_column: str = DEFAULT_CENTILOID_COLUMN,
                label_threshold: float = DEFAULT_LABEL_THRESHOLD, pairing: str = "auto",
                clinical_window_days: int = 0) -> list[CaseRecord]:
    """Cases from an OASIS-3 download: each PET session with an SUVR image, paired with an MR session.

    Everything is searched for below ``root`` (see ``docs/data_layouts.md``):

    * ``OASIS3_amyloid_centiloid.csv`` (required; ``subject_id, oasis_session_id, tracer`` and
      ``centiloid_column``, the older ``Centil_*`` spelling accepted), and if present
      ``OASIS3_PUP.csv``, ``OASIS3_UDSb4_cdr.csv`` and ``OASIS3_demographics.csv`` (ages);
    * PUP outputs in folders named after the PUP id (``OAS30001_AV45_PUPTIMECOURSE_d2430``) or the
      PET session (``OAS30001_AV45_d2430``), at any depth (``pet_proc/`` or not); the image used is
      the unsmoothed ``*_msum_SUVR`` (NIfTI or 4dfp), never the smoothed ``*_msum_SUVR_g8``
      copy or the ``.suvr``/``.txt`` tables;
    * MR images named by BIDS entities (``sub-*_ses-d*_[acq-*_][run-*_]<contrast>``), in the BIDS
      (``sub-*/ses-d*/anat/``) or native (``OAS30001_MR_d0129/anat1/``) download layout; per
      contrast one scan is chosen with :func:`choose_scan`.

    Args:
        pairing: ``pup-mrid`` - the MR session named by ``MRId`` in ``OASIS3_PUP.csv`` (what
            Chiumento et al.'s code does; the SUVR image is computed in that MR's space);
            ``nearest`` - the same subject's MR session nearest in days within ``max_days``
            (ties: the earlier MR; what the paper's text describes); ``auto`` - ``pup-mrid``
            when ``OASIS3_PUP.csv`` is found, else ``nearest``.
        clinical_window_days: if > 0, keep only PET sessions with a clinical (UDSb4) visit
            within this many days (the authors' cohort used 365); needs ``OASIS3_UDSb4_cdr.csv``.
        centiloid_column, label_threshold: label = ``centiloid > label_threshold``; default the
            authors' ``Centiloid_fSUVR_rsf_TOT_CORTMEAN`` and 20.6.

    PET sessions left out (no image, no Centiloid, no MR session, no usable scan, outside
    the clinical window) are counted in a log message. ``CaseRecord.selection`` records the
    image, the pairing and the scan chosen per contrast.

    Raises:
        InputError: no Centiloid CSV, a missing column, a needed table missing, or no case at
            all (the message lists what was found at each step).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (expected the root of an OASIS-3 download)")
    bad = [c for c in contrasts if c not in CONTRASTS]
    if bad:
        raise InputError(f"unknown MRI contrast(s) {bad}; choose from {', '.join(CONTRASTS)}")
    if pairing not in PAIRINGS:
        raise InputError(f"pairing {pairing!r} is not one of {', '.join(PAIRINGS)}")
    found = _walk(root)
    table_path = found.tables.get(layouts.OASIS3_CENTILOID_CSV)
    if table_path is None:
        raise InputError(f"{root}: no {layouts.OASIS3_CENTILOID_CSV} found below it; an OASIS-3 root "
                         "holds that CSV, the MR sessions and the PUP folders (see docs/data_layouts.md)")
    table = layouts.read_csv_table(table_path, "Centiloid table")
    column = centiloid_column
    if column not in table.header and column.replace("Centiloid_", "Centil_") in table.header:
        column = column.replace("Centiloid_", "Centil_")
    needed = (layouts.CENTILOID_SUBJECT_COLUMN, layouts.CENTILOID_SESSION_COLUMN,
              layouts.CENTILOID_TRACER_COLUMN, column)
    missing = [c for c in needed if c not in table.header]
    if missing:
        raise InputError(f"{table_path}: missing column(s) {', '.join(missing)}; expected the "
                         f"OASIS-3 Centiloid table (columns present: {', '.join(table.header)})")
    if pairing == "auto":
        pairing = "pup-mrid" if layouts.OASIS3_PUP_CSV in found.tables else "nearest"
    if pairing == "pup-mrid" and layouts.OASIS3_PUP_CSV not in found.tables:
        raise InputError(f"{root}: pairing 'pup-mrid' needs {layouts.OASIS3_PUP_CSV} (columns "
                         f"'{layouts.PUP_ID_COLUMN}', {layouts.PUP_MR_COLUMN}); put it below the root "
                         "or use pairing 'nearest'")
    mr_ids = _mr_ids(found.tables.get(layouts.OASIS3_PUP_CSV)) if pairing == "pup-mrid" else {}
    clinical = {}
    if clinical_window_days > 0:
        if layouts.OASIS3_CLINICAL_CSV not in found.tables:
            raise InputError(f"{root}: clinical_window_days needs {layouts.OASIS3_CLINICAL_CSV} "
                             "below the root (or set it to 0)")
        clinical = _clinical_days(found.tables[layouts.OASIS3_CLINICAL_CSV])
    ages = _ages_at_entry(found.tables.get(layouts.OASIS3_DEMOGRAPHICS_CSV))
    sessions = {key: scans for key, scans in found.mr.items() if all(c in scans for c in contrasts)}
    by_subject: dict[str, list[int]] = defaultdict(list)
    for subject, day in sorted(sessions):
        by_subject[subject].append(day)

    summary = Oasis3Summary(mr_sessions=len(sessions), pup_folders=len(found.pet),
                            suvr_images=sum(p.choice() is not None for p in found.pet.values()),
                            csv_rows=len(table.rows), pairing=pairing)
    skipped = summary.skipped
    records = []
    for index, row in enumerate(table.rows):
        where = table.where(index)
        subject, session = row[layouts.CENTILOID_SUBJECT_COLUMN], row[layouts.CENTILOID_SESSION_COLUMN]
        key = _pet_key(session)
        centiloid = _number(row.get(column), column, where)
        if key is None or centiloid is None:
            skipped["without a <subject>_<tracer>_d<day> label or a Centiloid value"] += 1
            continue
        summary.rows_with_centiloid += 1
        images = found.pet.get(key)
        pet = images.choice() if images else None
        if pet is None:
            skipped["without an unsmoothed SUVR image" if images else "without a PUP folder"] += 1
            continue
        summary.rows_with_image += 1
        day = key[2]
        if clinical_window_days > 0 and not any(abs(v - day) <= clinical_window_days
                                                for v in clinical.get(subject, [])):
            skipped[f"without a clinical visit within {clinical_window_days} days"] += 1
            continue
        if pairing == "pup-mrid":
            mr = mr_ids.get(key)
            if mr is None:
                skipped[f"without an {layouts.PUP_MR_COLUMN} in {layouts.OASIS3_PUP_CSV}"] += 1
                continue
            if mr not in sessions:
                skipped[f"whose {layouts.PUP_MR_COLUMN} session is not in the download"] += 1
                continue
            how = f"pup-mrid ({mr[0]}_MR_d{mr[1]:04d})"
        else:
            near = [(abs(d - day), d) for d in by_subject.get(subject, []) if abs(d - day) <= max_days]
            if not near:
                skipped[f"without an MR session within {max_days} days"] += 1
                continue
            gap, mr_day = min(near)
            mr = (subject, mr_day)
            how = f"nearest ({subject}_MR_d{mr_day:04d}, {gap} days)"
        summary.pairs += 1
        files, selection = {}, {"pet": str(pet), "pairing": how}
        for contrast in CONTRASTS:
            if contrast not in sessions[mr]:
                continue
            scan, notes = choose_scan(sessions[mr][contrast])
            if scan is not None:
                files[contrast] = scan.path
                selection[contrast] = scan.path.name + (f" (passed over: {'; '.join(notes)})" if notes else "")
            elif contrast in contrasts:
                selection[contrast] = "none usable: " + "; ".join(notes)
        if not all(c in files for c in contrasts):
            skipped["whose MR session has no usable scan of a needed contrast"] += 1
            log.info("%s: %s", session, selection)
            continue
        age = ages.get(subject)
        records.append(CaseRecord(
            subject_id=subject, session_id=session, mri=files, pet_path=pet,
            tracer=_tracer(row.get(layouts.CENTILOID_TRACER_COLUMN), where), centiloid=centiloid,
            label=int(centiloid > label_threshold),
            age=None if age is None else round(age + day / 365.25, 1), selection=selection))
    summary.cases = len(records)
    if not records:
        raise InputError(f"{root}: no OASIS-3 case found: {summary.describe(tuple(contrasts), column)}; "
                         "see docs/data_layouts.md for the layouts read")
    for reason, count in skipped.items():
        log.warning("%s: skipped %d PET session(s) %s", root, count, reason)
    log.info("%s: %s", root, summary.describe(tuple(contrasts), column))
    return sorted(records, key=lambda r: (r.subject_id, r.session_id))


def _ages_at_entry(path: Path | None) -> dict[str, float]:
    if path is None:
        return {}
    table = layouts.read_csv_table(path, "demographics table")
    subject_column, age_column = layouts.DEMOGRAPHICS_SUBJECT_COLUMN, layouts.DEMOGRAPHICS_AGE_COLUMN
    if subject_column not in table.header or age_column not in table.header:
        log.warning("%s: no %s/%s columns; ages left empty", path, subject_column, age_column)
        return {}
    ages = {}
    for index, row in enumerate(table.rows):
        age = _number(row.get(age_column), age_column, table.where(index))
        if age is not None:
            ages[row[subject_column]] = age
    return ages


# -- ADNI ------------------------------------------------------------------------------------

#: Where an ADNI case's label comes from: the table's own status, or Centiloid > threshold.
ADNI_LABEL_SOURCES = ("status", "centiloid")
_ADNI_PTID = re.compile(layouts.ADNI_PTID_PATTERN)
_ADNI_DATE_FOLDER = re.compile(layouts.ADNI_DATE_FOLDER_PATTERN)
_ADNI_IMAGE_FOLDER = re.compile(layouts.ADNI_IMAGE_FOLDER_PATTERN)
_ADNI_TABLES = {"berkeley_new": re.compile(layouts.ADNI_BERKELEY_NEW_PATTERN, re.IGNORECASE),
                "berkeley_old": re.compile(layouts.ADNI_BERKELEY_OLD_PATTERN, re.IGNORECASE),
                "adnimerge": re.compile(layouts.ADNI_ADNIMERGE_PATTERN, re.IGNORECASE),
                "meta_new": re.compile(layouts.ADNI_NEW_META_PATTERN, re.IGNORECASE),
                "meta_old": re.compile(layouts.ADNI_OLD_META_PATTERN, re.IGNORECASE)}
_NON_TRACER_PET = re.compile(r"\b(?:fdg|fluorodeoxyglucose|av1451|flortaucipir|tau|pi2620|mk6240|pib)\b")


def adni_description_words(description: str) -> str:
    """An IDA series description in one spelling: lower case, every run of punctuation,
    underscores and spaces one space (IDA writes ``MPR; GradWarp; N3; Scaled`` as the folder
    ``MPR__GradWarp__N3__Scaled``; both give ``mpr gradwarp n3 scaled``)."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", description.lower()).split())


def classify_adni_description(description: str) -> tuple[str, int, str | None]:
    """What an IDA series description names: ``("T1", rank, None)`` (rank 0 best, see
    ``layouts.ADNI_T1_RANKS``), ``("PET", rank, tracer or None)`` for an amyloid PET image
    (``layouts.ADNI_PET_DESCRIPTIONS``), ``("excluded", 0, reason)`` for a T1-like name that is
    never used (``_ND``, localizer, scout, calibration) or an early/dynamic/raw or non-amyloid
    PET, and ``("", 0, None)`` for anything else."""
    words = adni_description_words(description)
    tracer = next((t for w, t in layouts.ADNI_PET_TRACER_WORDS.items() if re.search(rf"\b{w}\b", words)),
                  None)
    # the most specific phrase that matches ("... Uniform Resolution" also holds "... Vox Siz")
    pet_rank = max((i for i, phrase in enumerate(layouts.ADNI_PET_DESCRIPTIONS) if phrase in words),
                   default=None)
    if tracer or pet_rank is not None:
        if _NON_TRACER_PET.search(words):
            return "excluded", 0, "not an amyloid tracer of the UC Berkeley tables"
        if any(re.search(rf"\b{w}\b", words) for w in layouts.ADNI_PET_EXCLUDED_WORDS):
            return "excluded", 0, "early, dynamic or raw PET frames"
        rank = len(layouts.ADNI_PET_DESCRIPTIONS) if pet_rank is None else pet_rank
        return "PET", rank if tracer else rank + len(layouts.ADNI_PET_DESCRIPTIONS) + 1, tracer
    if re.search(layouts.ADNI_T1_EXCLUDED, words):
        return "excluded", 0, "localizer, calibration or not distortion-corrected (_ND) series"
    for rank, (_, pattern) in enumerate(layouts.ADNI_T1_RANKS):
        if re.search(pattern, words):
            return "T1", rank, None
    return "", 0, None


@dataclass(frozen=True)
class AdniImage:
    """One image of an IDA download: ``<PTID>/<description>/<date>_<time>/I<image id>/``.

    ``path`` is the NIfTI file in the image folder, or the folder itself for a DICOM series.
    """

    path: Path
    subject: str
    description: str
    date: datetime.date
    image_id: str
    kind: str                 # "T1", "PET", "excluded" or ""
    rank: int
    tracer: str | None

    def describe(self) -> str:
        """``I985197 Accelerated_Sagittal_MPRAGE 2018-04-12`` (for cohort.json)."""
        return f"I{self.image_id} {self.description} {self.date.isoformat()}"


def _adni_image_file(folder: Path, image_id: str) -> Path | None:
    """The NIfTI in an image folder (``*_I<id>.nii`` first), the folder for DICOM, else None."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    niftis = [p for p in files if layouts.is_nifti(p)]
    if niftis:
        named = [p for p in niftis if _ends_with_image_id(p.name, image_id)]
        return (named or niftis)[0]
    return folder if files else None


def _ends_with_image_id(name: str, image_id: str) -> bool:
    """Whether a file name ends in ``_I<image id>`` before its suffix (how IDA names files)."""
    return re.search(rf"_I{image_id}\.(?:nii|nii\.gz|dcm)$", name, re.IGNORECASE) is not None


@dataclass
class _AdniDownload:
    images: list[AdniImage] = field(default_factory=list)
    tables: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))


def _walk_adni(root: Path) -> _AdniDownload:
    found = _AdniDownload()
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        here = Path(folder)
        for name in sorted(files):
            for kind, pattern in _ADNI_TABLES.items():
                if pattern.match(name):
                    found.tables[kind].append(here / name)
                    break
        image = _ADNI_IMAGE_FOLDER.match(here.name)
        date = _ADNI_DATE_FOLDER.match(here.parent.name)
        if not (image and date and _ADNI_PTID.match(here.parent.parent.parent.name)):
            continue
        subfolders.clear()
        path = _adni_image_file(here, image.group(1))
        if path is None:
            continue
        description = here.parent.parent.name
        kind, rank, tracer = classify_adni_description(description)
        found.images.append(AdniImage(path, here.parent.parent.parent.name, description,
                                      datetime.date.fromisoformat(date.group(1)), image.group(1),
                                      kind, rank, tracer))
    for paths in found.tables.values():
        paths.sort(key=lambda p: (len(p.parts), str(p)))
    return found


def _adni_date(text: str | None) -> datetime.date | None:
    text = (text or "").strip()
    for pattern in ("%Y-%m-%d", "%m/%d/%Y", "%Y/%m/%d", "%d-%b-%Y", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(text.split(" ")[0].split("T")[0], pattern).date()
        except ValueError:
            continue
    return None


@dataclass
class _AmyloidScan:
    """One row of a UC Berkeley table (after duplicates are resolved)."""

    rid: int
    ptid: str
    date: datetime.date
    tracer: str
    visit: str
    status: int | None
    centiloid: float | None
    qc: int | None
    loniuid: str
    where: str
    note: str = ""


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(float(text)) if text not in (None, "") else None
    except ValueError:
        return None


def _berkeley_rows(tables: dict[str, list[Path]]) -> tuple[list[_AmyloidScan], str]:
    """Every row of the UC Berkeley table(s): the new combined table when present, else the
    old per-tracer ones. Returns the rows and which files were read."""
    rows: list[_AmyloidScan] = []
    if tables.get("berkeley_new"):
        path = tables["berkeley_new"][0]
        table = layouts.read_csv_table(path, "UC Berkeley amyloid table")
        needed = (layouts.ADNI_RID_COLUMN, layouts.ADNI_NEW_DATE_COLUMN, layouts.ADNI_TRACER_COLUMN)
        missing = [c for c in needed if c not in table.header]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} of the UC Berkeley "
                             f"amyloid table (columns present: {', '.join(table.header[:12])}, ...)")
        for index, row in enumerate(table.rows):
            where = table.where(index)
            tracer = layouts.ADNI_TRACERS.get(row[layouts.ADNI_TRACER_COLUMN].upper())
            date = _adni_date(row[layouts.ADNI_NEW_DATE_COLUMN])
            rid = _int_or_none(row[layouts.ADNI_RID_COLUMN])
            if tracer is None or date is None or rid is None:
                continue
            visit = next((row[c] for c in layouts.ADNI_VISCODE_COLUMNS if row.get(c)), "")
            rows.append(_AmyloidScan(
                rid, row.get(layouts.ADNI_PTID_COLUMN, ""), date, tracer, visit,
                _int_or_none(row.get(layouts.ADNI_STATUS_COLUMN)),
                _number(row.get(layouts.ADNI_CENTILOID_COLUMN), layouts.ADNI_CENTILOID_COLUMN, where),
                _int_or_none(row.get(layouts.ADNI_QC_COLUMN)), row.get(layouts.ADNI_LONIUID_COLUMN, ""),
                where, f"{row.get(layouts.ADNI_PROCESS_DATE_COLUMN, '')}|{row.get(layouts.ADNI_UPDATE_COLUMN, '')}"))
        return rows, path.name
    used = []
    for path in tables.get("berkeley_old", []):
        tracer = layouts.ADNI_TRACERS[re.match(layouts.ADNI_BERKELEY_OLD_PATTERN, path.name,
                                               re.IGNORECASE).group(1).upper()]
        if any(name.startswith(f"UCBERKELEY{'AV45' if tracer == 'AV45' else 'FBB'}") for name in used):
            continue                                       # one table per tracer: the shallowest
        table = layouts.read_csv_table(path, "UC Berkeley amyloid table")
        status_column = layouts.ADNI_OLD_STATUS_COLUMNS[tracer]
        needed = (layouts.ADNI_RID_COLUMN, layouts.ADNI_OLD_DATE_COLUMN)
        missing = [c for c in needed if c not in table.header]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)} of a UC Berkeley "
                             f"{tracer} table (columns present: {', '.join(table.header[:12])}, ...)")
        used.append(path.name)
        slope, intercept = layouts.ADNI_CENTILOID_EQUATIONS[tracer]
        for index, row in enumerate(table.rows):
            where = table.where(index)
            date, rid = _adni_date(row[layouts.ADNI_OLD_DATE_COLUMN]), _int_or_none(row[layouts.ADNI_RID_COLUMN])
            if date is None or rid is None:
                continue
            centiloid = _number(row.get(layouts.ADNI_CENTILOID_COLUMN), layouts.ADNI_CENTILOID_COLUMN, where)
            suvr = _number(row.get(layouts.ADNI_OLD_SUVR_COLUMN), layouts.ADNI_OLD_SUVR_COLUMN, where)
            if centiloid is None and suvr is not None:
                centiloid = round(slope * suvr + intercept, 2)
            visit = next((row[c] for c in layouts.ADNI_VISCODE_COLUMNS if row.get(c)), "")
            rows.append(_AmyloidScan(
                rid, row.get(layouts.ADNI_PTID_COLUMN, ""), date, tracer, visit,
                _int_or_none(row.get(status_column)), centiloid, _int_or_none(row.get(layouts.ADNI_QC_COLUMN)),
                row.get(layouts.ADNI_LONIUID_COLUMN, ""), where,
                f"{row.get(layouts.ADNI_PROCESS_DATE_COLUMN, '')}|{row.get(layouts.ADNI_UPDATE_COLUMN, '')}"))
    return rows, " + ".join(used)


def _resolve_duplicates(rows: list[_AmyloidScan]) -> tuple[list[_AmyloidScan], int]:
    """One row per (RID, scan date, tracer): the best ``qc_flag``, then the latest
    ``PROCESSDATE``, then the latest ``update_stamp``. Returns the rows kept and how many
    were dropped."""
    groups: dict[tuple, list[_AmyloidScan]] = defaultdict(list)
    for row in rows:
        groups[(row.rid, row.date, row.tracer)].append(row)
    kept = []
    for group in groups.values():
        def order(r: _AmyloidScan) -> tuple:
            processed, stamp = r.note.split("|", 1)
            return (-1 if r.qc is None else r.qc, _adni_date(processed) or _adni_date("1900-01-01"), stamp)
        best = max(group, key=order)
        if len(group) > 1:
            best.note = (f"{len(group)} rows for this scan; kept {best.where} (qc_flag "
                         f"{best.qc}, processed {best.note.split('|')[0] or '?'})")
        else:
            best.note = ""
        kept.append(best)
    return sorted(kept, key=lambda r: (r.rid, r.date, r.tracer)), len(rows) - len(kept)


def _adni_metadata(tables: dict[str, list[Path]]) -> tuple[dict[str, str], str]:
    """Image id -> visit code from the image metadata lists (the post-2024 ``*_All_Images_*``
    when present, else ``MPRAGEMETA``/``PET_META_LIST``); and which files were read."""
    generation = "meta_new" if tables.get("meta_new") else "meta_old"
    columns = layouts.ADNI_NEW_META_COLUMNS if generation == "meta_new" else layouts.ADNI_OLD_META_COLUMNS
    visits, used = {}, []
    for path in tables.get(generation, []):
        table = layouts.read_csv_table(path, "image metadata list")
        image_column, visit_column = table.column(*columns["image"]), table.column(*columns["visit"])
        if image_column is None:
            log.warning("%s: no image id column (%s); not used", path, "/".join(columns["image"]))
            continue
        used.append(path.name)
        for row in table.rows:
            image_id = row[image_column].lstrip("Ii").split(".")[0]
            visit = row.get(visit_column, "") if visit_column else ""
            if image_id and _is_viscode(visit):
                visits[image_id] = visit.lower()
    return visits, " + ".join(used)


def _is_viscode(text: str) -> bool:
    """An ADNI visit code (``bl``, ``sc``, ``m12``, ``y1``, ``init``, ``uns1``), not a visit
    name such as ``ADNI3 Initial Visit-Cont Pt`` (the old lists' ``Visit``)."""
    return re.fullmatch(r"(?:bl|sc|scmri|init|m\d+|y\d+|uns\d*|v\d+|4_\w+)", text.strip().lower()) is not None


def _adni_ages(paths: list[Path]) -> dict[str, tuple[datetime.date, float]]:
    """PTID -> (baseline exam date, age at baseline) from ADNIMERGE."""
    if not paths:
        return {}
    table = layouts.read_csv_table(paths[0], "ADNIMERGE")
    if any(c not in table.header for c in layouts.ADNI_MERGE_COLUMNS):
        log.warning("%s: no %s columns; ages left empty", paths[0], "/".join(layouts.ADNI_MERGE_COLUMNS))
        return {}
    ptid, viscode, examdate, age = layouts.ADNI_MERGE_COLUMNS
    ages = {}
    for index, row in enumerate(table.rows):
        date = _adni_date(row[examdate])
        value = _number(row.get(age), age, table.where(index))
        if row[viscode].lower() == "bl" and date and value is not None:
            ages[row[ptid]] = (date, value)
    return ages


@dataclass
class AdniSummary:
    """What an ADNI root held at each step, for the one-line account when no case is left."""

    t1_images: int = 0
    pet_images: int = 0
    tables: str = ""
    rows: int = 0
    scans: int = 0
    labelled: int = 0
    with_pet: int = 0
    with_t1: int = 0
    cases: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def describe(self, label: str, max_days: int) -> str:
        """One line: the counts in order and the first step that left none."""
        steps = [("T1 image folders", self.t1_images), ("amyloid PET image folders", self.pet_images),
                 (f"UC Berkeley amyloid rows ({self.tables or 'no UCBERKELEYAV45/FBB_*.csv or UCBERKELEY_AMY_6MM_*.csv'})",
                  self.rows),
                 ("scans after duplicates and QC", self.scans), (f"with a label ({label})", self.labelled),
                 ("with their PET image", self.with_pet), (f"with a T1 within {max_days} days", self.with_t1),
                 ("cases", self.cases)]
        return step_account(steps, self.skipped)


def _choose_adni_pet(candidates: list[AdniImage], scan: _AmyloidScan) -> tuple[AdniImage | None, str]:
    """The PET image of a Berkeley row: same subject and date, a compatible tracer; the row's
    LONIUID first, then the best description (``layouts.ADNI_PET_DESCRIPTIONS``)."""
    fitting = [i for i in candidates if i.date == scan.date and i.tracer in (None, scan.tracer)]
    if not fitting:
        return None, ""
    uid = scan.loniuid.lstrip("Ii")
    best = min(fitting, key=lambda i: (i.image_id != uid, i.rank, i.image_id))
    others = [i.describe() for i in fitting if i is not best]
    return best, ("" if not others else f" (passed over: {'; '.join(others)})")


def _choose_adni_t1(candidates: list[AdniImage], scan: _AmyloidScan, visits: dict[str, str],
                    max_days: int) -> tuple[AdniImage | None, str, list[str]]:
    """The T1 of a PET: the same visit first (same visit code in the metadata, else the same
    day), then the nearest acquisition day within ``max_days`` (ties: the earlier); on that
    day, the best description (``layouts.ADNI_T1_RANKS``) that passes the header checks."""
    def same_visit(image: AdniImage) -> bool:
        code = visits.get(image.image_id)
        return image.date == scan.date or bool(code and scan.visit and code == scan.visit.lower())

    days = sorted({(not same_visit(i), abs((i.date - scan.date).days), i.date) for i in candidates
                   if abs((i.date - scan.date).days) <= max_days or same_visit(i)})
    notes: list[str] = []
    for other_visit, gap, day in days:
        on_day = sorted((i for i in candidates if i.date == day), key=lambda i: (i.rank, i.image_id))
        for image in on_day:
            problem, _ = image_problem(image.path)
            if problem:
                notes.append(f"{image.describe()}: {problem}")
                continue
            notes += [f"{i.describe()}: not preferred" for i in on_day if i is not image]
            code = visits.get(image.image_id, "")
            how = (f"same visit ({code or 'same day'}, {gap} days)" if not other_visit
                   else f"nearest ({gap} days)")
            return image, how, notes
    return None, "", notes


def read_adni(root: str | Path, max_days: int = 365, label: str = "status",
              label_threshold: float = DEFAULT_LABEL_THRESHOLD) -> list[CaseRecord]:
    """Cases from an ADNI (IDA) download: each UC Berkeley amyloid scan with its PET image and a T1.

    Everything is searched for below ``root`` (see ``docs/data_layouts.md``):

    * image folders as IDA unpacks them, ``<PTID>/<description>/<date>_<time>/I<image id>/``,
      holding a DICOM series or a NIfTI (``*_I<image id>.nii``); the description says what the
      image is (:func:`classify_adni_description`);
    * the UC Berkeley amyloid table: the current ``UCBERKELEY_AMY_6MM_<date>.csv`` when present,
      else the older ``UCBERKELEYAV45_*.csv`` / ``UCBERKELEYFBB_*.csv``; duplicate rows of one
      scan (RID, date, tracer) are resolved by ``qc_flag``, then ``PROCESSDATE``, then
      ``update_stamp``, and rows whose ``qc_flag`` is present but not 2 (pass) are left out;
    * optionally the image metadata lists (post-2024 ``*_All_Images_<date>.csv``, or
      ``MPRAGEMETA``/``PET_META_LIST``) for visit codes, and ``ADNIMERGE`` for ages.

    Each scan's PET image is the subject's amyloid image of that date (the row's ``LONIUID``
    first, then "Co-registered, Averaged" before the standardised ones); its T1 is chosen by
    :func:`_choose_adni_t1` (same visit, else nearest within ``max_days``; on that day processed
    "Scaled", then "N3m", then the ADNI3 original accelerated MPRAGE, then any MPRAGE/IR-SPGR;
    ``_ND`` never; localizers, scouts and thick-slice scans refused by their header).

    Args:
        label: ``status`` - the table's own positivity (``AMYLOID_STATUS``; in the old tables
            ``SUMMARYSUVR_WHOLECEREBNORM_1.11CUTOFF`` for AV45, ``_1.08CUTOFF`` for FBB);
            ``centiloid`` - ``CENTILOIDS > label_threshold`` (old tables without that column:
            the Centiloid of ``SUMMARYSUVR_WHOLECEREBNORM`` by ADNI's published equations).

    The PET images IDA serves are not SUVR maps: each record has ``pet_scale="counts"``.
    ``CaseRecord.selection`` records the table row, the PET, the pairing, the T1 and the label.

    Raises:
        InputError: no such folder, a table without its columns, or no case at all (one line
            that lists what was found at each step).
    """
    root = Path(root).expanduser().resolve()
    if label not in ADNI_LABEL_SOURCES:
        raise InputError(f"ADNI label source {label!r} is not one of {', '.join(ADNI_LABEL_SOURCES)}")
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (expected the root of an ADNI download: the "
                         "IDA image folders <PTID>/<description>/<date>/I<id>/ and the UC Berkeley CSVs)")
    found = _walk_adni(root)
    t1_by_subject: dict[str, list[AdniImage]] = defaultdict(list)
    pet_by_subject: dict[str, list[AdniImage]] = defaultdict(list)
    for image in found.images:
        {"T1": t1_by_subject, "PET": pet_by_subject}.get(image.kind, {}).setdefault(image.subject, []).append(image)
    summary = AdniSummary(t1_images=sum(map(len, t1_by_subject.values())),
                          pet_images=sum(map(len, pet_by_subject.values())))
    rows, summary.tables = _berkeley_rows(found.tables)
    summary.rows = len(rows)
    scans, duplicates = _resolve_duplicates(rows)
    skipped = summary.skipped
    if duplicates:
        skipped["duplicate table rows (one kept per scan)"] += duplicates
    visits, meta_used = _adni_metadata(found.tables)
    ages = _adni_ages(found.tables.get("adnimerge", []))
    ptids = {int(s[-4:]): s for s in {i.subject for i in found.images}}
    records = []
    how_label = "AMYLOID_STATUS" if label == "status" else f"Centiloid > {label_threshold:g}"
    for scan in scans:
        if scan.qc is not None and scan.qc != layouts.ADNI_QC_PASS:
            skipped[f"with a {layouts.ADNI_QC_COLUMN} other than {layouts.ADNI_QC_PASS} (pass)"] += 1
            continue
        summary.scans += 1
        value = scan.status if label == "status" else (
            None if scan.centiloid is None else int(scan.centiloid > label_threshold))
        if value not in (0, 1):
            skipped[f"without a label ({how_label})"] += 1
            continue
        summary.labelled += 1
        subject = scan.ptid or ptids.get(scan.rid, "")
        pet, pet_note = _choose_adni_pet(pet_by_subject.get(subject, []), scan)
        if pet is None:
            skipped["without their amyloid PET image in the download"] += 1
            continue
        summary.with_pet += 1
        t1_candidates = t1_by_subject.get(subject, [])
        t1, how, notes = _choose_adni_t1(t1_candidates, scan, visits, max_days)
        if t1 is None:
            near = any(abs((i.date - scan.date).days) <= max_days for i in t1_candidates)
            if near:
                summary.with_t1 += 1
            skipped["whose T1 images within the window are all refused by their header" if near
                    else f"without a T1 within {max_days} days"] += 1
            log.info("%s %s %s: no T1 (%s)", subject, scan.tracer, scan.date, "; ".join(notes))
            continue
        summary.with_t1 += 1
        selection = {"table": scan.where + (f" ({scan.note})" if scan.note else ""),
                     "pet": f"{pet.describe()}: {pet.path}{pet_note}",
                     "pet_scale": "counts: IDA image, not SUVR (scaled to an interim SUVR in training)",
                     "pairing": how,
                     "T1w": f"{t1.describe()}: {t1.path}" + (f" (passed over: {'; '.join(notes)})" if notes else ""),
                     "label": (f"AMYLOID_STATUS {value}" if label == "status" else
                               f"Centiloid {scan.centiloid:g} {'>' if value else '<='} {label_threshold:g}"),
                     "metadata": meta_used or "none (same visit = same day)"}
        baseline = ages.get(subject)
        age = None if baseline is None else round(baseline[1] + (scan.date - baseline[0]).days / 365.25, 1)
        records.append(CaseRecord(
            subject_id=subject, session_id=f"{subject}_{scan.tracer}_{scan.date:%Y%m%d}", mri={"T1w": t1.path},
            pet_path=pet.path, tracer=scan.tracer, centiloid=scan.centiloid, label=value, age=age,
            selection=selection, pet_scale="counts"))
    summary.cases = len(records)
    if not records:
        raise InputError(f"{root}: no ADNI case found: {summary.describe(how_label, max_days)}; "
                         "see docs/data_layouts.md for the layout read")
    for reason, count in skipped.items():
        log.warning("%s: skipped %d amyloid scan(s) %s", root, count, reason)
    log.info("%s: %s", root, summary.describe(how_label, max_days))
    return sorted(records, key=lambda r: (r.subject_id, r.session_id))
