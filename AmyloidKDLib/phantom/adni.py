"""The synthetic cohort laid out as an ADNI (IDA) download (``generate_cohort(layout="adni")``).

The scans are synthesised exactly as for the OASIS-3 layout (the same plan: PET sessions
without an MR within 365 days, MR-only sessions); this module only re-lays the written files
the way IDA unpacks a download and writes the CSVs of both generations:

* ``ADNI/<PTID>/<description>/<YYYY-MM-DD>_10_00_00.0/I<image id>/``: the T1 of even-numbered
  subjects as ADNI1/GO/2 processed NIfTI (``MPR; GradWarp; B1 Correction; N3; Scaled``), of
  odd-numbered ones as the ADNI3 original ``Accelerated Sagittal MPRAGE`` DICOM series; the
  PET as ``<tracer> Co-registered, Averaged`` NIfTI in scanner-like units (the SUVR times a
  per-scan factor: IDA's images are not SUVR maps).
* ``tables/``: the UC Berkeley amyloid tables, old (``UCBERKELEYAV45_04_26_22.csv``,
  ``UCBERKELEYFBB_04_26_22.csv``) and new (``UCBERKELEY_AMY_6MM_31Jul2024.csv``), the image
  lists before (``MPRAGEMETA.csv``, ``PET_META_LIST.csv``) and after the October 2024 change
  (``MRI_All_Images_14Nov2024.csv``, ``PET_All_Images_14Nov2024.csv``), and ``ADNIMERGE``.

The generator has no florbetaben synthesis: its PiB sessions stand in as FBB here (tracer
FBB in every table and folder name; the image is the PiB-like one).
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from AmyloidKDLib import layouts
from AmyloidKDLib.atomic import write_text_atomic
from AmyloidKDLib.phantom.truth import SessionTruth, SubjectTruth
from AmyloidKDLib.volume import load_volume, save_dicom_series

#: Day 0 of the generator's timeline as a calendar date.
ADNI_START = datetime.date(2010, 1, 1)
T1_PROCESSED = "MPR__GradWarp__B1_Correction__N3__Scaled"
T1_ORIGINAL = "Accelerated_Sagittal_MPRAGE"
PET_DESCRIPTION = "{tracer}_Co-registered,_Averaged"
#: The generator's tracers -> the Berkeley table's (TRACER column) and the folder's name.
TABLE_TRACER = {"AV45": "FBP", "PIB": "FBB"}
FOLDER_TRACER = {"AV45": "AV45", "PIB": "FBB"}
BERKELEY_NEW_COLUMNS = ("LONIUID", "RID", "PTID", "VISCODE", "VISCODE2", "SCANDATE", "PROCESSDATE",
                        "TRACER", "qc_flag", "AMYLOID_STATUS", "CENTILOIDS", "SUMMARY_SUVR",
                        "WHOLECEREBELLUM_SUVR", "update_stamp")


def adni_ptid(subject: SubjectTruth) -> str:
    """The subject's ADNI id: ``<site>_S_<RID>``, RID = index + 1."""
    return f"{941 + subject.index % 3:03d}_S_{subject.index + 1:04d}"


def _date(day: int) -> datetime.date:
    return ADNI_START + datetime.timedelta(days=int(day))


def write_adni_layout(out_dir: Path, sessions: list[SessionTruth], subjects: list[SubjectTruth]) -> None:
    """Move the written OASIS-3 style files of ``out_dir`` into the IDA tree and write the
    ADNI CSVs (see the module docstring). The OASIS-3 folders are removed."""
    by_subject = {s.subject_id: s for s in subjects}
    first_pet = {s.subject_id: min(t.pet_day for t in sessions if t.subject_id == s.subject_id)
                 for s in subjects}
    visit_of = {}
    for truth in sessions:
        months = round((truth.pet_day - first_pet[truth.subject_id]) / 30.44 / 6) * 6
        visit_of[truth.session_id] = "bl" if months == 0 else f"m{months:02d}"
    mr_visit = {(t.subject_id, t.mr_day): visit_of[t.session_id] for t in sessions if t.mr_day is not None}
    images: list[dict] = []
    image_id = 100000
    for t1 in sorted(out_dir.glob("sub-*/ses-d*/anat/*_T1w.nii.gz")):
        subject_id, day = t1.parts[-4][4:], int(t1.parts[-3][5:])
        subject = by_subject[subject_id]
        ptid, date = adni_ptid(subject), _date(day)
        image_id += 1
        original = subject.index % 2 == 1
        description = T1_ORIGINAL if original else T1_PROCESSED
        folder = out_dir / "ADNI" / ptid / description / f"{date}_10_00_00.0" / f"I{image_id}"
        stem = f"ADNI_{ptid}_MR_{description}_Br_{date:%Y%m%d}_S{image_id + 500000}_I{image_id}"
        if original:
            save_dicom_series(load_volume(t1), folder, description=description.replace("_", " "),
                              patient_id=ptid, study_date=f"{date:%Y%m%d}", prefix=stem)
        else:
            folder.mkdir(parents=True)
            shutil.move(str(t1), folder / f"{stem}.nii.gz")
        images.append({"ptid": ptid, "date": date, "id": image_id, "modality": "MRI",
                       "description": description.replace("__", "; ").replace("_", " "),
                       "type": "Original" if original else "Pre-processed",
                       "visit": mr_visit.get((subject_id, day), "uns1")})
    berkeley_new, berkeley_old = [], {"AV45": [], "FBB": []}
    for truth in sessions:
        subject = by_subject[truth.subject_id]
        ptid, date, tracer = adni_ptid(subject), _date(truth.pet_day), FOLDER_TRACER[truth.tracer]
        source = next((out_dir / "PUP" / truth.session_id).rglob("*_msum_SUVR.nii.gz"))
        image_id += 1
        description = PET_DESCRIPTION.format(tracer=tracer)
        folder = out_dir / "ADNI" / ptid / description / f"{date}_10_00_00.0" / f"I{image_id}"
        folder.mkdir(parents=True)
        stored = nib.load(str(source))
        factor = 800.0 + 40.0 * (image_id % 17)            # counts per SUVR unit, per scan
        counts = nib.Nifti1Image((np.asarray(stored.dataobj, dtype=np.float32) * factor).astype(np.float32),
                                 stored.affine, stored.header)
        nib.save(counts, folder / f"ADNI_{ptid}_PT_{description}_Br_{date:%Y%m%d}_S{image_id + 500000}_I{image_id}.nii.gz")
        visit = visit_of[truth.session_id]
        images.append({"ptid": ptid, "date": date, "id": image_id, "modality": "PET",
                       "description": description.replace(",_", ", ").replace("_", " "),
                       "type": "Pre-processed", "visit": visit})
        slope, intercept = layouts.ADNI_CENTILOID_EQUATIONS[tracer]
        suvr = (truth.centiloid - intercept) / slope
        rid = subject.index + 1
        berkeley_new.append({
            "LONIUID": f"I{image_id}", "RID": rid, "PTID": ptid, "VISCODE": visit, "VISCODE2": visit,
            "SCANDATE": f"{date}", "PROCESSDATE": f"{date + datetime.timedelta(days=90)}",
            "TRACER": TABLE_TRACER[truth.tracer], "qc_flag": layouts.ADNI_QC_PASS,
            "AMYLOID_STATUS": truth.label, "CENTILOIDS": f"{truth.centiloid:.2f}",
            "SUMMARY_SUVR": f"{suvr:.4f}", "WHOLECEREBELLUM_SUVR": "1.0000",
            "update_stamp": "2024-07-31 10:00:00.0"})
        berkeley_old[tracer].append({
            "RID": rid, "VISCODE": visit, "VISCODE2": visit, "EXAMDATE": f"{date}",
            layouts.ADNI_OLD_SUVR_COLUMN: f"{suvr:.4f}", layouts.ADNI_OLD_STATUS_COLUMNS[tracer]: truth.label,
            "update_stamp": "2022-04-26 00:00:00.0"})
    for name in ("PUP", *(p.name for p in out_dir.glob("sub-*"))):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    _write_tables(out_dir / "tables", images, berkeley_new, berkeley_old, sessions, by_subject, first_pet)


def _write_tables(folder: Path, images: list[dict], berkeley_new: list[dict],
                  berkeley_old: dict[str, list[dict]], sessions: list[SessionTruth],
                  by_subject: dict[str, SubjectTruth], first_pet: dict[str, int]) -> None:
    from AmyloidKDLib.phantom.tables import csv_text as _csv_text

    write_text_atomic(folder / "UCBERKELEY_AMY_6MM_31Jul2024.csv", _csv_text(BERKELEY_NEW_COLUMNS, berkeley_new))
    for tracer, rows in berkeley_old.items():
        columns = ("RID", "VISCODE", "VISCODE2", "EXAMDATE", layouts.ADNI_OLD_SUVR_COLUMN,
                   layouts.ADNI_OLD_STATUS_COLUMNS[tracer], "update_stamp")
        write_text_atomic(folder / f"UCBERKELEY{tracer}_04_26_22.csv", _csv_text(columns, rows))
    for modality in ("MRI", "PET"):
        rows = [{"subject_id": i["ptid"], "image_date": f"{i['date']}", "VISCODE2": i["visit"],
                 "image_type": i["type"], "image_description": i["description"], "image_id": i["id"],
                 "study_id": i["id"] + 700000} for i in images if i["modality"] == modality]
        write_text_atomic(folder / f"{modality}_All_Images_14Nov2024.csv",
                          _csv_text(("subject_id", "image_date", "VISCODE2", "image_type",
                                     "image_description", "image_id", "study_id"), rows))
    mprage = [{"SubjectID": i["ptid"], "Visit": f"ADNI Visit {i['visit']}", "ScanDate": f"{i['date']}",
               "Sequence": i["description"], "ImageUID": i["id"], "Orig/Proc": i["type"].replace("Pre-processed", "Processed"),
               "MagStrength": "3.0"} for i in images if i["modality"] == "MRI"]
    write_text_atomic(folder / "MPRAGEMETA.csv", _csv_text(tuple(mprage[0]) if mprage else ("SubjectID",), mprage))
    pet = [{"Subject": i["ptid"], "Visit": f"ADNI Visit {i['visit']}", "Scan Date": f"{i['date']}",
            "Sequence": i["description"], "Image ID": i["id"], "Orig/Proc": "Processed"}
           for i in images if i["modality"] == "PET"]
    write_text_atomic(folder / "PET_META_LIST.csv", _csv_text(tuple(pet[0]) if pet else ("Subject",), pet))
    merge = []
    for truth in sessions:
        if truth.session_index == 0:
            subject = by_subject[truth.subject_id]
            merge.append({"RID": subject.index + 1, "PTID": adni_ptid(subject), "VISCODE": "bl",
                          "EXAMDATE": f"{_date(first_pet[truth.subject_id])}", "DX": "",
                          "AGE": f"{truth.age:.1f}"})
    text = _csv_text(("RID", "PTID", "VISCODE", "EXAMDATE", "DX", "AGE"), merge)
    write_text_atomic(folder / "ADNIMERGE.csv", text)
    write_text_atomic(folder / "ADNIMERGE_14Nov2024.csv", text)
