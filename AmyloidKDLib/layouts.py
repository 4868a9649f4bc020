"""Data layouts in one place: case names, manifest CSVs and the column and file names of each layout.

Prediction, preprocessing, training and the Slicer batch all read the same kinds of input (one
image, a folder of images, a manifest CSV, an OASIS-3 download). This module is the single
owner of how those inputs are named and read, so that a case gets the same name everywhere
and a CSV saved by Excel reads the same in every command:

* :func:`case_name` - the name of a case made from its image file;
* :func:`read_csv_table` - any CSV we read (UTF-8 with or without BOM, UTF-16, Excel's
  Windows-1252; comma, semicolon or tab separated), with line numbers for error messages;
* :func:`read_image_manifest` / :func:`collect_image_cases` - the cases of a prediction or
  preprocessing run, with duplicate case names refused;
* the column names of the training manifest and the file and column names of OASIS-3.

Only the standard library is used here (no pandas, no yaml), so every command can import it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from AmyloidKDLib.errors import InputError

log = logging.getLogger(__name__)

#: Image file suffixes a case name is made without (longest first).
IMAGE_SUFFIXES = (".4dfp.img", ".4dfp.ifh", ".nii.gz", ".nii")
#: Suffixes of the NIfTI files that a folder input is scanned for.
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# -- manifest CSV (prediction, preprocessing, training) -------------------------------------
#: Column naming a case explicitly; without it a case is named after its MRI file.
CASE_COLUMN = "case"
SUBJECT_COLUMN = "subject_id"
SESSION_COLUMN = "session_id"
#: MRI contrast -> manifest column holding its path.
CONTRAST_COLUMNS = {"T1w": "t1w", "T2w": "t2w", "FLAIR": "flair", "T2star": "t2star"}
#: Accepted alias of the ``t1w`` column.
T1W_ALIAS_COLUMN = "mri_path"
#: Columns holding the T1w path of a prediction/preprocessing manifest, in order of preference.
MRI_COLUMNS = (CONTRAST_COLUMNS["T1w"], T1W_ALIAS_COLUMN)
#: Columns holding a PET path, in order of preference.
PET_COLUMNS = ("pet_path", "pet")
#: The full training manifest, in the order the synthetic generator writes it.
MANIFEST_COLUMNS = (SUBJECT_COLUMN, SESSION_COLUMN, "t1w", "t2w", "flair", "pet_path", "tracer",
                    "centiloid", "label", "age")

# -- OASIS-3 (file and column names of the release; see docs/data_layouts.md) ---------------
OASIS3_CENTILOID_CSV = "OASIS3_amyloid_centiloid.csv"
OASIS3_DEMOGRAPHICS_CSV = "OASIS3_demographics.csv"
OASIS3_PUP_CSV = "OASIS3_PUP.csv"
OASIS3_CLINICAL_CSV = "OASIS3_UDSb4_cdr.csv"
#: Centiloid table: subject, PET session (``OAS30001_AV45_d2430``) and tracer columns.
CENTILOID_SUBJECT_COLUMN = "subject_id"
CENTILOID_SESSION_COLUMN = "oasis_session_id"
CENTILOID_TRACER_COLUMN = "tracer"
#: The Centiloid column and cut-off Chiumento et al.'s code labels with (both tracers).
DEFAULT_CENTILOID_COLUMN = "Centiloid_fSUVR_rsf_TOT_CORTMEAN"
DEFAULT_LABEL_THRESHOLD = 20.6
#: PUP table: the PUP run id (``OAS30001_AV45_PUPTIMECOURSE_d2430``) and the MR session it used.
PUP_ID_COLUMN = "PUP_PUPTIMECOURSEDATA ID"
PUP_MR_COLUMN = "MRId"
#: Clinical (UDSb4) table: the visit label ``OAS30001_UDSb4_d0000``.
CLINICAL_SESSION_COLUMN = "OASIS_session_label"
#: Demographics table.
DEMOGRAPHICS_SUBJECT_COLUMN = "OASISID"
DEMOGRAPHICS_AGE_COLUMN = "AgeatEntry"


def case_name(path: str | os.PathLike) -> str:
    """The name of the case an image file holds: its file name without the image suffix.

    ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``; ``pet.4dfp.img`` -> ``pet``. Every command names
    its outputs with this, so one input gives the same case name everywhere.
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def is_nifti(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


# -- reading any CSV -------------------------------------------------------------------------

@dataclass(frozen=True)
class CsvTable:
    """A CSV file read into text cells.

    Attributes:
        path: the file.
        header: column names, stripped of spaces.
        rows: one dict per data row (column -> stripped cell text; missing cells are "").
        lines: the file line on which each row starts (for messages such as "line 7").
        encoding: the text encoding the file was read with.
    """

    path: Path
    header: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    lines: tuple[int, ...]
    encoding: str

    def column(self, *choices: str) -> str | None:
        """The first of ``choices`` that is a column of this table, or None."""
        return next((c for c in choices if c in self.header), None)

    def where(self, index: int) -> str:
        """``"<path> line <n>"`` for row ``index`` (for error messages)."""
        return f"{self.path} line {self.lines[index]}"


def _decode(raw: bytes, path: Path) -> tuple[str, str]:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "utf-16"
    try:
        return raw.decode("utf-8-sig"), ("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV in UTF-8 or Windows-1252; save it again as "
                         "'CSV UTF-8 (comma delimited)'") from None
    log.warning("%s: read as Windows-1252 (Excel's default), not UTF-8; save it as "
                "'CSV UTF-8' to be sure non-English characters in paths read right", path)
    return text, "cp1252"


def _delimiter(first_line: str) -> str:
    # Excel writes ';' in locales with a decimal comma and tabs for "Unicode text".
    if "," in first_line:
        return ","
    return max(("\t", ";"), key=first_line.count) if any(d in first_line for d in "\t;") else ","


def read_csv_table(path: str | os.PathLike, what: str = "CSV") -> CsvTable:
    """Read a CSV file whatever program wrote it.

    Accepts UTF-8 with or without a byte-order mark, UTF-16 (Excel's "Unicode text") and
    Excel's Windows-1252 (read with a warning); comma, semicolon or tab separators. Header
    names and cells are stripped of spaces; blank lines are skipped.

    Args:
        what: what the file is (e.g. ``"manifest"``), used in messages.

    Raises:
        InputError: no such file, not text, empty, or a column named twice.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    text, encoding = _decode(raw, path)
    first = next((line for line in text.splitlines() if line.strip()), "")
    if not first:
        raise InputError(f"{path}: the {what} is empty (no header line)")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first))
    header: list[str] | None = None
    rows, lines = [], []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                twice = sorted({c for c in header if c and header.count(c) > 1})
                if twice:
                    raise InputError(f"{path}: column(s) {', '.join(twice)} appear twice in the "
                                     f"header; keep one of each")
                continue
            cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
            rows.append({name: cells[i] for i, name in enumerate(header) if name})
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise InputError(f"{path} line {reader.line_num}: {what} cannot be parsed ({exc})") from None
    return CsvTable(path, tuple(h for h in header or [] if h), tuple(rows), tuple(lines), encoding)


# -- prediction / preprocessing cases --------------------------------------------------------

@dataclass(frozen=True)
class ImageCase:
    """One case of a prediction or preprocessing run.

    Attributes:
        case: its name (outputs are named after it); unique within a run.
        mri: the T1w image, or None when the manifest row has no path.
        pet: a PET image (manifest column ``pet_path``/``pet``), if any.
        where: where it came from (a file, or ``"<manifest> line <n>"``).
        problem: why the case cannot run (e.g. an empty cell), or None.
    """

    case: str
    mri: Path | None
    pet: Path | None = None
    where: str = ""
    problem: str | None = None


def check_unique_case_names(cases: Iterable[ImageCase], source: str | os.PathLike) -> None:
    """Refuse two cases with the same name: their outputs would overwrite each other.

    Raises:
        InputError: names the repeated case name(s) and where each came from.
    """
    seen: dict[str, list[str]] = {}
    for item in cases:
        seen.setdefault(item.case, []).append(item.where or str(item.mri))
    twice = {name: places for name, places in seen.items() if len(places) > 1}
    if twice:
        shown = "; ".join(f"{name!r} from {', '.join(places)}" for name, places in
                          sorted(twice.items())[:3])
        raise InputError(f"{source}: several inputs have the same case name ({shown}); give each "
                         f"row a unique name in a '{CASE_COLUMN}' column or rename the files")


def _resolve(base: Path, text: str) -> Path:
    candidate = Path(text).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


def read_image_manifest(path: str | os.PathLike) -> list[ImageCase]:
    """The cases of a manifest CSV: a T1w column (``t1w`` or ``mri_path``), optional
    ``pet_path`` (or ``pet``) and ``case`` columns. Relative paths are relative to the CSV.

    A row with an empty T1w cell becomes a case named ``row<line>`` with a ``problem``, so a
    batch can report it and go on. Cases are named by the ``case`` column, else by
    :func:`case_name` of the MRI file.

    Raises:
        InputError: unreadable CSV, no T1w column, no rows, or repeated case names.
    """
    table = read_csv_table(path, "manifest")
    mri_column = table.column(*MRI_COLUMNS)
    if mri_column is None:
        raise InputError(f"{table.path}: manifest needs a column {' or '.join(MRI_COLUMNS)} with "
                         f"the T1 file paths; found columns {', '.join(table.header) or 'none'}")
    if not table.rows:
        raise InputError(f"{table.path}: manifest has a header but no rows")
    pet_column = table.column(*PET_COLUMNS)
    base = table.path.resolve().parent
    cases = []
    for index, row in enumerate(table.rows):
        where = table.where(index)
        pet = _resolve(base, row[pet_column]) if pet_column and row.get(pet_column) else None
        if not row.get(mri_column):
            cases.append(ImageCase(row.get(CASE_COLUMN) or f"row{table.lines[index]}", None, pet,
                                   where, f"{where}: empty {mri_column}"))
            continue
        mri = _resolve(base, row[mri_column])
        cases.append(ImageCase(row.get(CASE_COLUMN) or case_name(mri), mri, pet, where))
    check_unique_case_names(cases, table.path)
    return cases


def collect_image_cases(input_path: str | os.PathLike) -> list[ImageCase]:
    """The cases named by a command's INPUT: one NIfTI file, the NIfTI files of a folder
    (sorted by name), or a manifest CSV (:func:`read_image_manifest`).

    Raises:
        InputError: INPUT missing, an empty folder, an unknown file type, a bad manifest, or
            repeated case names (e.g. ``a.nii`` and ``a.nii.gz`` in one folder).
    """
    path = Path(input_path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; give a NIfTI file, a folder of NIfTI "
                         "files or a manifest CSV")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        if not files:
            raise InputError(f"{path}: folder holds no .nii or .nii.gz file")
        cases = [ImageCase(case_name(p), p, where=str(p)) for p in files]
        check_unique_case_names(cases, path)
        return cases
    if path.name.lower().endswith(".csv"):
        return read_image_manifest(path)
    if is_nifti(path):
        return [ImageCase(case_name(path), path, where=str(path))]
    raise InputError(f"{path}: not a NIfTI file (.nii/.nii.gz), a folder or a manifest .csv")



# -- ADNI (folder, file and column names of an IDA download; see docs/data_layouts.md) -------
#: Subject folder / PTID: ``011_S_6303`` (site, ``S``, RID: the last four digits are the RID).
ADNI_PTID_PATTERN = r"^(\d{3})_S_(\d{4})$"
#: Acquisition folder below the description: ``2018-04-12_13_06_54.0``.
ADNI_DATE_FOLDER_PATTERN = r"^(\d{4}-\d{2}-\d{2})_\d{2}_\d{2}_\d{2}(?:\.\d+)?$"
#: Image folder below the acquisition folder: ``I985197`` (I + the LONI image id).
ADNI_IMAGE_FOLDER_PATTERN = r"^I(\d+)$"
#: Suffix IDA adds to a CSV's name since the October 2024 change: ``ADNIMERGE_14Nov2024.csv``
#: (also accepted: ``_04_26_22``, the older Berkeley tables' date).
ADNI_DATE_SUFFIX_PATTERN = r"(?:_\d{1,2}[A-Za-z]{3}\d{4}|_\d{2}_\d{2}_\d{2})?"

#: UC Berkeley amyloid tables. Old (one per tracer, until 2023): ``UCBERKELEYAV45_04_26_22.csv``,
#: ``UCBERKELEYFBB_8mm_02_17_23.csv``; new (both tracers): ``UCBERKELEY_AMY_6MM_31Jul2024.csv``,
#: optionally prefixed (``All_Subjects_UCBERKELEY_AMY_6MM_10Aug2025.csv``).
ADNI_BERKELEY_OLD_PATTERN = r"^UCBERKELEY(AV45|FBB)(?:_\dmm)?" + ADNI_DATE_SUFFIX_PATTERN + r"\.csv$"
ADNI_BERKELEY_NEW_PATTERN = r"^(?:.+_)?UCBERKELEY_AMY_6MM" + ADNI_DATE_SUFFIX_PATTERN + r"\.csv$"
#: Old tables: the tracer is the file's; the scan date is EXAMDATE; status from the cut-off column.
ADNI_OLD_DATE_COLUMN = "EXAMDATE"
ADNI_OLD_SUVR_COLUMN = "SUMMARYSUVR_WHOLECEREBNORM"
ADNI_OLD_STATUS_COLUMNS = {"AV45": "SUMMARYSUVR_WHOLECEREBNORM_1.11CUTOFF",
                           "FBB": "SUMMARYSUVR_WHOLECEREBNORM_1.08CUTOFF"}
#: New table columns.
ADNI_RID_COLUMN = "RID"
ADNI_PTID_COLUMN = "PTID"
ADNI_VISCODE_COLUMNS = ("VISCODE2", "VISCODE")
ADNI_NEW_DATE_COLUMN = "SCANDATE"
ADNI_TRACER_COLUMN = "TRACER"
ADNI_STATUS_COLUMN = "AMYLOID_STATUS"
ADNI_CENTILOID_COLUMN = "CENTILOIDS"
ADNI_QC_COLUMN = "qc_flag"
ADNI_PROCESS_DATE_COLUMN = "PROCESSDATE"
ADNI_UPDATE_COLUMN = "update_stamp"
ADNI_LONIUID_COLUMN = "LONIUID"
#: ``qc_flag`` 2 is a pass; duplicates keep the highest flag.
ADNI_QC_PASS = 2
#: The Berkeley table's tracer names -> ours (florbetapir is AV45 here, as in OASIS-3).
ADNI_TRACERS = {"FBP": "AV45", "AV45": "AV45", "FBB": "FBB"}
#: Centiloid from the whole-cerebellum summary SUVR (ADNI's "Instructions for converting ADNI
#: processing results to Centiloids"), for old tables without a CENTILOIDS column.
ADNI_CENTILOID_EQUATIONS = {"AV45": (188.22, -189.16), "FBB": (157.15, -151.87)}

#: Clinical table: ``ADNIMERGE.csv`` / ``ADNIMERGE_14Nov2024.csv`` (PTID, VISCODE, EXAMDATE, AGE).
ADNI_ADNIMERGE_PATTERN = r"^ADNIMERGE" + ADNI_DATE_SUFFIX_PATTERN + r"\.csv$"
ADNI_MERGE_COLUMNS = ("PTID", "VISCODE", "EXAMDATE", "AGE")
#: Image metadata before the 2024 change: ``MPRAGEMETA.csv`` (T1) and ``PET_META_LIST.csv``
#: (or with a date suffix): image id -> subject, date, description.
ADNI_OLD_META_PATTERN = r"^(MPRAGEMETA|PET_META_LIST)" + ADNI_DATE_SUFFIX_PATTERN + r"\.csv$"
ADNI_OLD_META_COLUMNS = {"image": ("ImageUID", "Image ID"), "subject": ("SubjectID", "Subject"),
                         "date": ("ScanDate", "Scan Date"), "description": ("Sequence",),
                         "type": ("Orig/Proc",), "visit": ("VISCODE2", "VISCODE", "Visit")}
#: After the change: ``<prefix>_All_Images_<date>.csv`` (e.g. ``MRI_All_Images_14Nov2024.csv``).
ADNI_NEW_META_PATTERN = r"^(?:.+_)?All_Images" + ADNI_DATE_SUFFIX_PATTERN + r"\.csv$"
ADNI_NEW_META_COLUMNS = {"image": ("image_id",), "subject": ("subject_id",),
                         "date": ("image_date",), "description": ("image_description",),
                         "type": ("image_type",), "visit": ("VISCODE2",)}

#: Amyloid PET descriptions, best first: the "Co-registered, Averaged" image clinica converts,
#: then the PET core's standardised ones. Early frames and dynamic series are never used.
ADNI_PET_DESCRIPTIONS = ("co registered averaged", "coreg avg standardized image and voxel size",
                         "coreg avg std img and vox siz", "coreg avg std img and vox siz uniform resolution")
ADNI_PET_EXCLUDED_WORDS = ("early", "dynamic", "raw")
#: Words naming an amyloid tracer in a description -> tracer.
ADNI_PET_TRACER_WORDS = {"av45": "AV45", "florbetapir": "AV45", "fbp": "AV45", "fbb": "FBB",
                         "florbetaben": "FBB"}
#: T1 descriptions (lower-cased, punctuation as spaces), by rank: processed "Scaled" (ADNI1/GO/2,
#: clinica's first choice), processed "N3m", the ADNI3 original accelerated MPRAGE, any other
#: MPRAGE / IR-SPGR. Names ending in ``_ND`` (not distortion-corrected) are never used.
ADNI_T1_RANKS = (("processed scaled", r"\bscaled(?: \d)?$"), ("processed n3m", r"\bn3m$"),
                 ("original accelerated mprage", r"\baccel\w*\b.*\bmp ?rage\b|\bmp ?rage\b.*\baccel"),
                 ("original mprage", r"\bmp ?rage\b|\bmpr\b|\bmt1\b|\bir ?f?spgr\b|\bspgr\b"))
ADNI_T1_EXCLUDED = r"(?:^|\s)nd$|\blocali[sz]er\b|\bscout\b|\bsurvey\b|\bcalibration\b|\b3 plane\b"
