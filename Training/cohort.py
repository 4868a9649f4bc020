"""Cohort records: the list of PET/MRI cases a training run reads, from either data layout.

Two layouts are supported (documented in ``docs/data_layouts.md``), and both parse into the
same :class:`CaseRecord` list:

* a plain **manifest CSV** — one row per case, MRI and PET paths relative to the CSV;
* an **OASIS-3 style tree** — BIDS-like MR sessions (``sub-*/ses-d*/anat/*_T1w.nii.gz``),
  PUP-like SUVR images (``PUP/<PET session>/*SUVR*.nii.gz``) and the OASIS-3 Centiloid and
  demographics CSVs. Each PET session is paired, as the paper did, with the same subject's MR
  session nearest in time within ``max_days``.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from AmyloidKDLib.errors import InputError

log = logging.getLogger(__name__)

#: MRI contrasts: manifest column and the BIDS suffix of the file name.
CONTRASTS = {"T1w": ("t1w", "T1w"), "T2w": ("t2w", "T2w"), "FLAIR": ("flair", "FLAIR"),
             "T2star": ("t2star", "T2starw")}
TRACERS = ("AV45", "PIB")
DEFAULT_LABEL_THRESHOLD = 20.0
CENTILOID_CSV = "OASIS3_amyloid_centiloid.csv"
DEMOGRAPHICS_CSV = "OASIS3_demographics.csv"
DEFAULT_CENTILOID_COLUMN = "Centiloid_fSUVR_TOT_CORTMEAN"
_DAY = re.compile(r"_d(\d+)$")
_SES_DAY = re.compile(r"^ses-d(\d+)$")


@dataclass
class CaseRecord:
    """One PET/MRI case: who, which session, the image files and the amyloid read-out.

    Attributes:
        subject_id: the person (splits must keep all of a subject's cases together).
        session_id: the case's own label (the PET session in the OASIS-3 layout).
        mri: contrast name (``T1w``, ``T2w``, ``FLAIR``, ``T2star``) -> absolute file path.
        pet_path: the SUVR image, or None for an MRI-only case.
        tracer: ``AV45`` or ``PIB`` (None if unknown).
        centiloid: amyloid burden in Centiloid units (None if unknown).
        label: 1 amyloid-positive, 0 negative (None if unknown).
        age: age in years at the PET scan (None if unknown).
    """

    subject_id: str
    session_id: str
    mri: dict[str, Path] = field(default_factory=dict)
    pet_path: Path | None = None
    tracer: str | None = None
    centiloid: float | None = None
    label: int | None = None
    age: float | None = None


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


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise InputError(f"{path}: no such CSV file")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return header, rows


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
    path = Path(csv_path)
    header, rows = _read_rows(path)
    bad = [c for c in contrasts if c not in CONTRASTS]
    if bad:
        raise InputError(f"unknown MRI contrast(s) {bad}; choose from {', '.join(CONTRASTS)}")
    columns = {c: ("mri_path" if c == "T1w" and "t1w" not in header and "mri_path" in header
                   else CONTRASTS[c][0]) for c in CONTRASTS}
    missing = [n for n in ("subject_id", "session_id") if n not in header]
    missing += [columns[c] for c in contrasts if columns[c] not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; a manifest needs "
                         "subject_id, session_id and one path column per MRI contrast "
                         "(t1w, t2w, flair), see docs/data_layouts.md")
    base = path.resolve().parent
    records, seen = [], set()
    for number, row in enumerate(rows, start=2):
        where = f"{path} line {number}"
        subject, session = row.get("subject_id", ""), row.get("session_id", "")
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


def _find_one(root: Path, name: str) -> Path | None:
    direct = root / name
    if direct.is_file():
        return direct
    found = sorted(root.rglob(name))
    return found[0] if found else None


def _mr_sessions(root: Path, contrasts: tuple[str, ...]) -> dict[str, list[tuple[int, dict[str, Path]]]]:
    """subject -> [(day, {contrast: path})] for MR sessions holding every needed contrast."""
    sessions: dict[str, list[tuple[int, dict[str, Path]]]] = defaultdict(list)
    for anat in sorted(root.glob("sub-*/ses-*/anat")):
        match = _SES_DAY.match(anat.parent.name)
        if not match:
            continue
        subject = anat.parent.parent.name[len("sub-"):]
        files = {}
        for contrast, (_, suffix) in CONTRASTS.items():
            hits = sorted(anat.glob(f"*_{suffix}.nii.gz")) + sorted(anat.glob(f"*_{suffix}.nii"))
            if hits:
                files[contrast] = hits[0]  # e.g. run-01 before run-02
        if all(c in files for c in contrasts):
            sessions[subject].append((int(match.group(1)), files))
    return sessions


def read_oasis3(root: str | Path, max_days: int = 365, contrasts: tuple[str, ...] = ("T1w",),
                centiloid_column: str = DEFAULT_CENTILOID_COLUMN,
                label_threshold: float = DEFAULT_LABEL_THRESHOLD) -> list[CaseRecord]:
    """Cases from an OASIS-3 style tree: each PET session with its nearest MR session.

    Reads ``OASIS3_amyloid_centiloid.csv`` (columns ``subject_id, oasis_session_id, tracer``
    and ``centiloid_column``; the older ``Centil_*`` spelling is accepted), finds each PET
    session's SUVR image under ``PUP/<oasis_session_id>/`` and pairs it with the same
    subject's MR session (``sub-<id>/ses-d<day>/anat/``, holding every contrast in
    ``contrasts``) nearest in days, within ``max_days`` (ties: the earlier MR). Age comes
    from ``OASIS3_demographics.csv`` (``OASISID, AgeatEntry``) plus the PET day, if present.
    PET sessions without an image, a Centiloid value or an MR session in the window are
    skipped and counted in a log message.

    Raises:
        InputError: the Centiloid CSV or one of its columns is missing.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(f"{root}: no such folder (expected an OASIS-3 style root)")
    bad = [c for c in contrasts if c not in CONTRASTS]
    if bad:
        raise InputError(f"unknown MRI contrast(s) {bad}; choose from {', '.join(CONTRASTS)}")
    table = _find_one(root, CENTILOID_CSV)
    if table is None:
        raise InputError(f"{root}: no {CENTILOID_CSV} found; an OASIS-3 root holds that CSV, "
                         "sub-*/ses-d*/anat/ MR sessions and PUP/<PET session>/ SUVR images "
                         "(see docs/data_layouts.md)")
    header, rows = _read_rows(table)
    column = centiloid_column
    if column not in header and column.replace("Centiloid_", "Centil_") in header:
        column = column.replace("Centiloid_", "Centil_")
    missing = [c for c in ("subject_id", "oasis_session_id", "tracer", column) if c not in header]
    if missing:
        raise InputError(f"{table}: missing column(s) {', '.join(missing)}; expected the "
                         f"OASIS-3 Centiloid table (columns present: {', '.join(header)})")
    ages = _ages_at_entry(root)
    mr = _mr_sessions(root, tuple(contrasts))
    records, skipped = [], defaultdict(int)
    for number, row in enumerate(rows, start=2):
        where = f"{table} line {number}"
        subject, session = row["subject_id"], row["oasis_session_id"]
        match = _DAY.search(session)
        centiloid = _number(row.get(column), column, where)
        if not match or centiloid is None:
            skipped["no day in the session label or no Centiloid"] += 1
            continue
        day = int(match.group(1))
        pet = sorted((root / "PUP" / session).glob("*SUVR*.nii*"))
        if not pet:
            skipped["no SUVR image under PUP/<session>/"] += 1
            continue
        candidates = [(abs(mr_day - day), mr_day, files) for mr_day, files in mr.get(subject, [])
                      if abs(mr_day - day) <= max_days]
        if not candidates:
            skipped[f"no MR session within {max_days} days"] += 1
            continue
        _, _, files = min(candidates, key=lambda c: (c[0], c[1]))
        age = ages.get(subject)
        records.append(CaseRecord(
            subject_id=subject, session_id=session, mri=dict(files), pet_path=pet[0],
            tracer=_tracer(row.get("tracer"), where), centiloid=centiloid,
            label=int(centiloid > label_threshold),
            age=None if age is None else round(age + day / 365.25, 1)))
    for reason, count in skipped.items():
        log.warning("%s: skipped %d PET session(s): %s", root, count, reason)
    return sorted(records, key=lambda r: (r.subject_id, r.session_id))


def _ages_at_entry(root: Path) -> dict[str, float]:
    path = _find_one(root, DEMOGRAPHICS_CSV)
    if path is None:
        return {}
    header, rows = _read_rows(path)
    if "OASISID" not in header or "AgeatEntry" not in header:
        log.warning("%s: no OASISID/AgeatEntry columns; ages left empty", path)
        return {}
    ages = {}
    for number, row in enumerate(rows, start=2):
        age = _number(row.get("AgeatEntry"), "AgeatEntry", f"{path} line {number}")
        if age is not None:
            ages[row["OASISID"]] = age
    return ages
