"""The ADNI reader on trees laid out as IDA downloads are, not as the generator writes them.

Each tree holds tiny real images (NIfTI files or DICOM series written through SimpleITK) in
``ADNI/<PTID>/<description>/<date>_<time>/I<image id>/`` folders, named as IDA names them, and
the CSVs of one of two generations: the UC Berkeley tables (old per-tracer
``UCBERKELEYAV45/FBB_*.csv`` or the current ``UCBERKELEY_AMY_6MM_*.csv``) and the image
metadata lists (``MPRAGEMETA``/``PET_META_LIST`` before the October 2024 IDA change,
``*_All_Images_<date>.csv`` after).

The subjects:

* 002_S_0413 (ADNI2): processed "Scaled" T1 and the original MPRAGE at the m24 visit, another
  "Scaled" T1 8 days from the PET at an unscheduled visit; AV45, positive (SUVR 1.30).
* 011_S_6303 (ADNI3): original Accelerated Sagittal MPRAGE (DICOM) and its ``_ND`` copy, a
  localizer; FBB listed twice (a failed-QC reprocessing and the passing row).
* 033_S_1016: AV45 with its only T1 about 19 months away.
* 127_S_4240: on the PET day a 3-slice "MPRAGE" (a localizer by its header) and a thick-slice
  IR-SPGR; a usable MPRAGE 100 days later; AV45, negative.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.volume import Volume, load_volume, save_dicom_series
from Training.cohort import classify_adni_description, read_adni
from Training.data import pet_to_interim_suvr

#: (PTID, description folder, date, image id, kind, visit code in the metadata)
IMAGES = [
    ("002_S_0413", "MPR__GradWarp__B1_Correction__N3__Scaled", "2012-05-10", "1001", "processed", "m24"),
    ("002_S_0413", "MPRAGE", "2012-05-10", "1002", "t1", "m24"),
    ("002_S_0413", "MPR__GradWarp__B1_Correction__N3__Scaled", "2012-05-28", "1003", "processed", "uns1"),
    ("002_S_0413", "AV45_Co-registered,_Averaged", "2012-05-20", "2001", "pet", "m24"),
    ("011_S_6303", "Accelerated_Sagittal_MPRAGE", "2018-04-12", "985197", "dicom", "init"),
    ("011_S_6303", "Accelerated_Sagittal_MPRAGE_ND", "2018-04-12", "985198", "dicom", "init"),
    ("011_S_6303", "Localizer", "2018-04-12", "985190", "localizer", "init"),
    ("011_S_6303", "FBB_Co-registered,_Averaged", "2018-04-20", "986000", "pet", "init"),
    ("033_S_1016", "MPRAGE", "2013-06-01", "3000", "t1", "m36"),
    ("033_S_1016", "AV45_Co-registered,_Averaged", "2015-01-10", "3001", "pet", "m60"),
    ("127_S_4240", "MPRAGE", "2016-03-01", "4000", "localizer", "m48"),
    ("127_S_4240", "IR-SPGR", "2016-03-01", "4001", "thick", "m48"),
    ("127_S_4240", "MPRAGE", "2016-06-09", "4002", "t1", "m51"),
    ("127_S_4240", "AV45_Co-registered,_Averaged", "2016-03-01", "4003", "pet", "m48"),
]

NEW_BERKELEY = ("LONIUID,RID,PTID,VISCODE,VISCODE2,SCANDATE,PROCESSDATE,TRACER,qc_flag,AMYLOID_STATUS,"
                "CENTILOIDS,SUMMARY_SUVR,WHOLECEREBELLUM_SUVR,update_stamp\n"
                "I2001,413,002_S_0413,v21,m24,2012-05-20,2022-03-01,FBP,2,1,55.5,1.30,1.0,2024-07-31 10:00:00\n"
                "I986000,6303,011_S_6303,init,init,2018-04-20,2024-06-01,FBB,0,1,40.0,1.22,1.0,2024-07-31 10:00:00\n"
                "I986000,6303,011_S_6303,init,init,2018-04-20,2019-01-05,FBB,2,0,12.0,1.05,1.0,2024-07-31 10:00:00\n"
                "I3001,1016,033_S_1016,v51,m60,2015-01-10,2022-03-01,FBP,2,1,80.0,1.56,1.0,2024-07-31 10:00:00\n"
                "I4003,4240,127_S_4240,v41,m48,2016-03-01,2022-03-01,FBP,2,0,-4.7,0.98,1.0,2024-07-31 10:00:00\n"
                "I9999,5555,099_S_5555,bl,bl,2016-03-01,2022-03-01,FBP,2,0,1.0,1.0,1.0,2024-07-31 10:00:00\n")
OLD_AV45 = ("RID,VISCODE,VISCODE2,EXAMDATE,SUMMARYSUVR_WHOLECEREBNORM,SUMMARYSUVR_WHOLECEREBNORM_1.11CUTOFF,"
            "SUMMARYSUVR_COMPOSITE_REFNORM,update_stamp\n"
            "413,v21,m24,2012-05-20,1.30,1,0.90,2022-04-26 00:00:00.0\n"
            "1016,v51,m60,2015-01-10,1.56,1,1.01,2022-04-26 00:00:00.0\n"
            "4240,v41,m48,2016-03-01,0.98,0,0.71,2022-04-26 00:00:00.0\n")
OLD_FBB = ("RID,VISCODE,VISCODE2,EXAMDATE,SUMMARYSUVR_WHOLECEREBNORM,SUMMARYSUVR_WHOLECEREBNORM_1.08CUTOFF,"
           "update_stamp\n"
           "6303,init,init,2018-04-20,1.22,1,2019-06-01 00:00:00.0\n"      # superseded
           "6303,init,init,2018-04-20,1.02,0,2022-04-26 00:00:00.0\n")
ADNIMERGE = ("RID,PTID,VISCODE,EXAMDATE,DX,AGE\n413,002_S_0413,bl,2010-05-01,CN,70.0\n"
             "6303,011_S_6303,bl,2018-04-01,MCI,81.5\n")


def _metadata(generation: str) -> dict[str, str]:
    """The image lists: post-2024 ``All_Images`` (VISCODE2 per image) or the old lists (visit names)."""
    if generation == "new":
        rows = ["subject_id,image_date,VISCODE2,image_type,image_description,image_id,study_id"]
        rows += [f"{p},{d},{v},Original,{desc},{i},{i}0" for p, desc, d, i, _, v in IMAGES]
        return {"MRI_All_Images_14Nov2024.csv": "\n".join(rows) + "\n",
                "ADNIMERGE_14Nov2024.csv": ADNIMERGE}
    mri = ["SubjectID,Visit,ScanDate,Sequence,ImageUID,Orig/Proc,MagStrength"]
    pet = ["Subject,Visit,Scan Date,Sequence,Image ID,Orig/Proc"]
    for p, desc, d, i, kind, v in IMAGES:
        (pet if kind == "pet" else mri).append(f"{p},ADNI Visit {v.upper()},{d},{desc},{i},Original,3.0")
    return {"MPRAGEMETA.csv": "\n".join(mri) + "\n", "PET_META_LIST.csv": "\n".join(pet) + "\n",
            "ADNIMERGE.csv": ADNIMERGE}


def _volume(kind: str, image_id: str) -> Volume:
    rng = np.random.default_rng(int(image_id))
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 24, 20)), indexing="ij")
    brain = np.clip(1.2 - (x ** 2 + y ** 2 + z ** 2), 0, None)
    data = 800 * brain + rng.normal(0, 5, brain.shape) + 50
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10, -12, -10)
    if kind == "pet":
        return Volume(4000.0 * brain[::2, ::2, ::2] + 10, np.diag([2.0, 2.0, 2.0, 1.0]), "PET")
    if kind == "localizer":
        return Volume(data[:, :, 9:12], affine)
    if kind == "thick":           # 20 slices 6 mm apart
        return Volume(np.repeat(data, 6, axis=2)[:, :, ::6], affine @ np.diag([1.0, 1.0, 6.0, 1.0]))
    return Volume(data, affine)


def build_tree(root: Path, tables: str, metadata: str, original_format: str) -> Path:
    """An IDA download: ``ADNI/`` image folders and the CSVs in ``csv/`` (``tables``: ``new`` or
    ``old`` Berkeley tables; ``metadata``: ``new`` or ``old`` names; ``original_format``:
    ``dicom`` or ``nifti`` for the original T1 and PET images)."""
    for ptid, description, date, image_id, kind, _ in IMAGES:
        folder = root / "ADNI" / ptid / description / f"{date}_10_30_00.0" / f"I{image_id}"
        volume = _volume(kind, image_id)
        modality = "PT" if kind == "pet" else "MR"
        stem = f"ADNI_{ptid}_{modality}_{description}_br_raw_{date.replace('-', '')}_S{image_id}0_I{image_id}"
        if kind == "dicom" or (original_format == "dicom" and kind not in ("processed",)):
            save_dicom_series(volume, folder, description=description, patient_id=ptid,
                              study_date=date.replace("-", ""), modality=modality, prefix=stem)
        else:
            folder.mkdir(parents=True)
            nib.save(volume.to_nifti(), folder / f"{stem}.nii")
    csv = root / "csv"
    csv.mkdir()
    texts = _metadata(metadata)
    if tables == "new":
        texts["UCBERKELEY_AMY_6MM_31Jul2024.csv"] = NEW_BERKELEY
    else:
        texts["UCBERKELEYAV45_04_26_22.csv"] = OLD_AV45
        texts["UCBERKELEYFBB_04_26_22.csv"] = OLD_FBB
    for name, text in texts.items():
        (csv / name).write_text(text)
    return root


TREES = [("new", "new", "dicom"), ("old", "old", "nifti"), ("new", "old", "nifti"), ("old", "new", "dicom")]


@pytest.mark.parametrize("tables, metadata, original_format", TREES)
def test_each_download_generation_gives_the_expected_cases_pairs_and_labels(
        tmp_path, tables, metadata, original_format, caplog):
    root = build_tree(tmp_path / "download", tables, metadata, original_format)
    cases = read_adni(root)                                  # defaults: AMYLOID_STATUS, 365 days
    by_subject = {c.subject_id: c for c in cases}
    assert [(c.subject_id, c.session_id, c.tracer, c.label) for c in cases] == [
        ("002_S_0413", "002_S_0413_AV45_20120520", "AV45", 1),
        ("011_S_6303", "011_S_6303_FBB_20180420", "FBB", 0),         # the row that passed QC
        ("127_S_4240", "127_S_4240_AV45_20160301", "AV45", 0)]      # 033_S_1016: no T1 in 365 days
    adni2, adni3, refused = by_subject["002_S_0413"], by_subject["011_S_6303"], by_subject["127_S_4240"]
    # Centiloid: the table's CENTILOIDS, or (old tables) ADNI's equations on the summary SUVR
    if tables == "new":
        assert (adni2.centiloid, adni3.centiloid, refused.centiloid) == (55.5, 12.0, -4.7)
        assert "2 rows for this scan" in adni3.selection["table"] and "qc_flag 2" in adni3.selection["table"]
    else:
        assert (adni2.centiloid, adni3.centiloid, refused.centiloid) == (55.53, 8.42, -4.7)
        assert "2 rows for this scan" in adni3.selection["table"]
    # ADNI2: the processed "Scaled" T1; at the PET's own visit (m24) with the post-2024 list,
    # the nearest one (8 days, an unscheduled visit) when the old lists give no visit codes
    if metadata == "new":
        assert adni2.mri["T1w"].parent.name == "I1001"
        assert adni2.selection["pairing"] == "same visit (m24, 10 days)"
    else:
        assert adni2.mri["T1w"].parent.name == "I1003"
        assert adni2.selection["pairing"] == "nearest (8 days)"
    assert adni2.mri["T1w"].name.endswith("_I1001.nii" if metadata == "new" else "_I1003.nii")
    assert adni2.age == 72.1           # ADNIMERGE: 70.0 at 2010-05-01, + 750 days / 365.25
    # ADNI3: the original accelerated MPRAGE, a DICOM series folder; its _ND copy is never a candidate
    assert adni3.mri["T1w"].name == "I985197" and adni3.mri["T1w"].is_dir()
    assert "_ND" not in adni3.selection["T1w"]
    assert load_volume(adni3.mri["T1w"]).shape == (20, 24, 20)
    # the PET of the row, read (counts, not SUVR)
    assert adni3.pet_path.parent.name == "I986000" or adni3.pet_path.name == "I986000"
    assert all(c.pet_scale == "counts" for c in cases)
    # on the PET day only a localizer and a thick-slice scan: both refused, the next visit used
    assert refused.mri["T1w"].parent.name == "I4002" or refused.mri["T1w"].name == "I4002"
    assert refused.selection["pairing"] == "nearest (100 days)"
    assert "I4000 MPRAGE 2016-03-01: 2-D localizer" in refused.selection["T1w"]
    assert "I4001 IR-SPGR 2016-03-01: thick-slice" in refused.selection["T1w"]
    assert "skipped 1 amyloid scan(s) without a T1 within 365 days" in caplog.text


def test_window_and_label_source_options(tmp_path):
    root = build_tree(tmp_path / "download", "new", "new", "nifti")
    wide = read_adni(root, max_days=600)
    assert [c.subject_id for c in wide] == ["002_S_0413", "011_S_6303", "033_S_1016", "127_S_4240"]
    assert wide[2].selection["pairing"] == "nearest (588 days)"
    by_centiloid = read_adni(root, label="centiloid", label_threshold=10.0)
    assert [(c.centiloid, c.label) for c in by_centiloid] == [(55.5, 1), (12.0, 1), (-4.7, 0)]
    assert by_centiloid[1].selection["label"] == "Centiloid 12 > 10"
    with pytest.raises(InputError, match="label source 'suvr'"):
        read_adni(root, label="suvr")


def test_empty_or_wrong_root_gives_one_line_saying_what_each_step_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as error:
        read_adni(tmp_path / "empty")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert "0 T1 image folders, 0 amyloid PET image folders, 0 UC Berkeley amyloid rows" in message
    assert "none left at: T1 image folders" in message
    root = build_tree(tmp_path / "download", "new", "new", "nifti")
    with pytest.raises(InputError) as error:                 # images, but the tables elsewhere
        read_adni(root / "ADNI")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert "8 T1 image folders, 4 amyloid PET image folders, 0 UC Berkeley amyloid rows" in message
    assert "none left at: UC Berkeley amyloid rows" in message
    with pytest.raises(InputError) as error:                 # tables, but the images elsewhere
        read_adni(root / "csv")
    assert "6 UC Berkeley amyloid rows (UCBERKELEY_AMY_6MM_31Jul2024.csv), 5 scans after duplicates " \
           "and QC, 5 with a label (AMYLOID_STATUS), 0 with their PET image" in str(error.value)
    with pytest.raises(InputError, match="no such folder"):
        read_adni(tmp_path / "missing")


@pytest.mark.parametrize("description, expected", [
    ("MPR; GradWarp; B1 Correction; N3; Scaled", ("T1", 0, None)),
    ("MT1__GradWarp__N3m", ("T1", 1, None)),
    ("Accelerated_Sagittal_MPRAGE", ("T1", 2, None)),
    ("MPRAGE_SENSE2", ("T1", 3, None)),
    ("MP-RAGE", ("T1", 3, None)),
    ("MPRAGE_SAG_ISO_p2", ("T1", 3, None)),
    ("IR-SPGR", ("T1", 3, None)),
    ("Accelerated_Sagittal_MPRAGE_ND", ("excluded", 0, "localizer, calibration or not distortion-corrected (_ND) series")),
    ("3_Plane_Localizer", ("excluded", 0, "localizer, calibration or not distortion-corrected (_ND) series")),
    ("AV45 Co-registered, Averaged", ("PET", 0, "AV45")),
    ("FBB_Co-registered,_Averaged", ("PET", 0, "FBB")),
    ("AV45_Early", ("excluded", 0, "early, dynamic or raw PET frames")),
    ("FDG Co-registered, Averaged", ("excluded", 0, "not an amyloid tracer of the UC Berkeley tables")),
    ("Axial_T2_STAR", ("", 0, None)),
])
def test_descriptions_in_the_wild(description, expected):
    assert classify_adni_description(description) == expected


def test_interim_pet_scale_does_not_depend_on_the_scanner_units():
    pet = _volume("pet", "1")
    once, scaled = pet_to_interim_suvr(pet), pet_to_interim_suvr(pet.with_data(pet.data * 37.0))
    np.testing.assert_allclose(once.data, scaled.data, rtol=1e-5)
    head = pet.data > 0.25 * np.percentile(pet.data[pet.data > 0], 99)
    assert once.data[head].mean() == pytest.approx(1.0, abs=1e-5)


def test_the_phantoms_adni_layout_reads_back_as_its_ground_truth_from_either_generation(tmp_path):
    import csv

    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",))
    root = generate_cohort(tmp_path / "adni", 2, seed=3, layout="adni", config=config, progress=False)
    truth = [row for row in csv.DictReader((root / "ground_truth" / "sessions.csv").open())
             if row["mr_day"]]
    expected = [(f"{int(row['subject_id'][3:]):04d}", {"AV45": "AV45", "PIB": "FBB"}[row["tracer"]],
                 int(row["label"]), float(row["centiloid"]), float(row["age"])) for row in truth]
    new = read_adni(root)
    assert sorted((c.subject_id[-4:], c.tracer, c.label, c.centiloid, c.age) for c in new) == sorted(expected)
    assert {c.mri["T1w"].is_dir() for c in new} == {True, False}        # DICOM series and NIfTI
    assert all(c.selection["pairing"].startswith("same visit") for c in new)
    assert load_volume(new[0].pet_path, "PET").data.max() > 100           # counts, not SUVR
    for name in ("UCBERKELEY_AMY_6MM_31Jul2024.csv", "MRI_All_Images_14Nov2024.csv",
                 "PET_All_Images_14Nov2024.csv"):
        (root / "tables" / name).unlink()
    old = read_adni(root)                                     # the old tables: the same cases
    assert [(c.session_id, c.label, c.mri["T1w"]) for c in old] == [(c.session_id, c.label, c.mri["T1w"]) for c in new]
    assert [c.centiloid for c in old] == pytest.approx([c.centiloid for c in new], abs=0.02)


def test_the_command_line_reads_adni_and_says_in_one_line_why_nothing_was_found(tmp_path, capsys):
    from AmyloidKDLib.cli import run as cli
    from Training.cli import TRAINING_COMMANDS

    (tmp_path / "empty").mkdir()
    code = cli(["cv", "--adni", str(tmp_path / "empty"), "--out", str(tmp_path / "run"),
                "--progress", "none"], TRAINING_COMMANDS)
    stderr = capsys.readouterr().err.strip()
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.startswith("amyloidkd cv: error: ") and "no ADNI case found: 0 T1 image folders" in stderr
    code = cli(["train", "teacher", "--adni", str(tmp_path / "empty"), "--out", str(tmp_path / "run2"),
                "--contrast", "FLAIR", "--progress", "none"], TRAINING_COMMANDS)
    assert code == 2 and "pairs amyloid PET with T1 only" in capsys.readouterr().err
