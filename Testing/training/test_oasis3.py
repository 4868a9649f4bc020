"""The OASIS-3 reader on trees laid out as the real download scripts and PUP write them.

Each tree holds real small images (the 2 mm MNI template, stored as NIfTI or 4dfp): MR sessions
in the BIDS or the native download layout with several runs (a 2-D localizer, a thick-slice
run), PUP outputs in the PUP-id or the partial-match layout (with or without a ``PUP/``
parent) holding the unsmoothed ``*_msum_SUVR`` image, its smoothed ``_g8`` copy and the
``.suvr`` table, and the OASIS-3 CSVs with the release's column names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.fourdfp import save_fourdfp
from AmyloidKDLib.template import load_template
from AmyloidKDLib.volume import load_volume
from Training.cohort import choose_scan, parse_mr_file, read_oasis3

CENTILOID = ("subject_id,oasis_session_id,tracer,Centiloid_fSUVR_TOT_CORTMEAN,"
             "Centiloid_fSUVR_rsf_TOT_CORTMEAN\n"
             "OAS30001,OAS30001_AV45_d2430,AV45,30.0,35.0\n"
             "OAS30002,OAS30002_PIB_d0050,PIB,20.2,20.3\n"
             "OAS30003,OAS30003_AV45_d0300,AV45,50.0,55.0\n")        # no PUP output downloaded
PUP_TABLE = ("PUP_PUPTIMECOURSEDATA ID,MRId,tracer\n"
             "OAS30001_AV45_PUPTIMECOURSE_d2430,OAS30001_MR_d0100,AV45\n"   # not the nearest MR
             "OAS30002_PIB_PUPTIMECOURSE_d0050,OAS30002_MR_d0000,PIB\n")
CLINICAL = "OASISID,OASIS_session_label,CDRTOT\nOAS30001,OAS30001_UDSb4_d2000,0\nOAS30002,OAS30002_UDSb4_d0010,0.5\n"
DEMOGRAPHICS = "OASISID,AgeatEntry\nOAS30001,65.0\nOAS30002,70.0\n"

# (subject, day, file name, kind): kind picks the image written, see _mr_image
MR_FILES = [
    ("OAS30001", 100, "sub-OAS30001_ses-d0100_run-01_T1w", "t1_2mm"),
    ("OAS30001", 100, "sub-OAS30001_ses-d0100_run-02_T1w", "localizer"),
    ("OAS30001", 100, "sub-OAS30001_ses-d0100_acq-TSE_T2w", "t1_2mm"),
    ("OAS30001", 2400, "sub-OAS30001_ses-d2400_T1w", "t1_1mm"),
    ("OAS30002", 0, "sub-OAS30002_ses-d0000_run-01_T1w", "thick"),
    ("OAS30002", 0, "sub-OAS30002_ses-d0000_run-02_T1w", "t1_1mm"),
]
PET = {"OAS30001_AV45_d2430": 1.4, "OAS30002_PIB_d0050": 1.1}   # cortical SUVR level


@pytest.fixture(scope="module")
def template():
    t1 = load_template(2).t1
    return np.array(t1.data), t1.affine


def _mr_image(kind: str, template) -> nib.Nifti1Image:
    data, affine = template
    scaled = (data * 1000).astype(np.int16)
    if kind == "localizer":       # three slices: a 2-D scout
        return nib.Nifti1Image(scaled[:, :, 40:43], affine)
    if kind == "thick":           # every third plane: 6 mm slices
        return nib.Nifti1Image(scaled[:, :, ::3], affine @ np.diag([1.0, 1.0, 3.0, 1.0]))
    if kind == "t1_1mm":          # the same voxels with a 1 mm header (a finer scan)
        return nib.Nifti1Image(scaled, affine @ np.diag([0.5, 0.5, 0.5, 1.0]))
    return nib.Nifti1Image(scaled, affine)


def _pet_volume(level: float, template) -> tuple[np.ndarray, np.ndarray]:
    data, affine = template
    suvr = (0.3 + level * data).astype(np.float32)
    suvr[60:70, 60:70, 50:56] += 0.5     # off-centre on every axis: a flip would move it
    return suvr, affine


def build_tree(root: Path, mr_layout: str, pup_layout: str, image_format: str, template,
               pup_parent: bool = False) -> Path:
    """An OASIS-3 download as the scripts write it; returns ``root``.

    mr_layout: ``bids`` (download_oasis_scans_bids.sh) or ``native`` (download_oasis_scans.sh).
    pup_layout: ``pup-id`` (download_oasis_pup.sh: ``<PUP id>/<files>``) or ``partial``
    (the partial-match script: ``<PET label>/<PUP id>/pet_proc/<files>``).
    image_format: ``4dfp`` (as PUP writes) or ``nifti`` (after ``nifti_4dfp -n``).
    """
    for name, text in (("OASIS3_amyloid_centiloid.csv", CENTILOID), ("OASIS3_PUP.csv", PUP_TABLE),
                       ("OASIS3_UDSb4_cdr.csv", CLINICAL), ("OASIS3_demographics.csv", DEMOGRAPHICS)):
        (root / "csv").mkdir(parents=True, exist_ok=True)
        (root / "csv" / name).write_text(text)
    for number, (subject, day, stem, kind) in enumerate(MR_FILES, start=1):
        if mr_layout == "bids":
            folder = root / "MR" / f"sub-{subject}" / f"ses-d{day:04d}" / "anat"
        else:
            folder = root / "MR" / f"{subject}_MR_d{day:04d}" / f"anat{number}"
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(_mr_image(kind, template), folder / f"{stem}.nii.gz")
        (folder / f"{stem}.json").write_text("{}")
    for label, level in PET.items():
        subject, tracer, day = label.split("_")
        pup_id = f"{subject}_{tracer}_PUPTIMECOURSE_{day}"
        base = root / "PUP" if pup_parent else root / "PET"
        folder = base / pup_id if pup_layout == "pup-id" else base / label / pup_id / "pet_proc"
        folder.mkdir(parents=True, exist_ok=True)
        suvr, affine = _pet_volume(level, template)
        for stem, data in ((f"{label}n_msum_SUVR", suvr), (f"{label}n_msum_SUVR_g8", suvr * 0.5)):
            if image_format == "4dfp":
                save_fourdfp(data, affine, folder / f"{stem}.4dfp.img")
            else:
                nib.save(nib.Nifti1Image(data, affine), folder / f"{stem}.nii")
        (folder / f"{label}n_msum_SUVR.suvr").write_text("roi suvr\nPREC 1.5\n")
        (folder / f"{label}_SUVR.txt").write_text("table\n")
    return root


LAYOUTS = [("bids", "pup-id", "4dfp", True), ("native", "partial", "nifti", False),
           ("bids", "partial", "nifti", False), ("native", "pup-id", "4dfp", False)]


@pytest.mark.parametrize("mr_layout, pup_layout, image_format, pup_parent", LAYOUTS)
def test_each_download_layout_yields_the_expected_cases_pairs_and_labels(
        tmp_path, template, mr_layout, pup_layout, image_format, pup_parent):
    root = build_tree(tmp_path / "oasis3", mr_layout, pup_layout, image_format, template, pup_parent)
    cases = read_oasis3(root)                                # defaults: pup-mrid, rsf, 20.6
    assert [(c.subject_id, c.session_id, c.tracer) for c in cases] == [
        ("OAS30001", "OAS30001_AV45_d2430", "AV45"), ("OAS30002", "OAS30002_PIB_d0050", "PIB")]
    first, second = cases
    assert (first.centiloid, first.label, second.centiloid, second.label) == (35.0, 1, 20.3, 0)
    assert (first.age, second.age) == (round(65 + 2430 / 365.25, 1), round(70 + 50 / 365.25, 1))
    # pairing by MRId: d0100, although d2400 is nearer to the PET at d2430
    assert first.mri["T1w"].name == "sub-OAS30001_ses-d0100_run-01_T1w.nii.gz"
    assert "localizer" in first.selection["T1w"] and first.selection["pairing"].startswith("pup-mrid")
    assert first.mri["T2w"].name == "sub-OAS30001_ses-d0100_acq-TSE_T2w.nii.gz"
    assert second.mri["T1w"].name == "sub-OAS30002_ses-d0000_run-02_T1w.nii.gz"
    assert "thick-slice" in second.selection["T1w"]
    for case in cases:                # the unsmoothed image, read in the right orientation
        suffix = ".4dfp.img" if image_format == "4dfp" else ".nii"
        assert case.pet_path.name == f"{case.session_id}n_msum_SUVR{suffix}"
        expected, affine = _pet_volume(PET[case.session_id], template)
        pet = load_volume(case.pet_path, "PET")
        np.testing.assert_allclose(pet.data, expected, rtol=1e-6)
        np.testing.assert_allclose(pet.affine, affine, atol=1e-4)


def test_pairing_nearest_window_and_label_options(tmp_path, template):
    root = build_tree(tmp_path / "oasis3", "bids", "pup-id", "nifti", template)
    stale = root / "A_old" / "copy" / "OASIS3_amyloid_centiloid.csv"      # deeper copy, walked first
    stale.parent.mkdir(parents=True)
    stale.write_text(CENTILOID.replace("35.0", "1.0"))
    nearest = read_oasis3(root, pairing="nearest")
    assert nearest[0].centiloid == 35.0                                    # the shallowest copy wins
    assert nearest[0].mri["T1w"].name == "sub-OAS30001_ses-d2400_T1w.nii.gz"   # 30 days away
    assert nearest[0].selection["pairing"] == "nearest (OAS30001_MR_d2400, 30 days)"
    # the authors' clinical filter: OAS30001's only UDSb4 visit is 430 days from its PET
    assert [c.subject_id for c in read_oasis3(root, clinical_window_days=365)] == ["OAS30002"]
    assert len(read_oasis3(root, clinical_window_days=500)) == 2
    other = read_oasis3(root, centiloid_column="Centiloid_fSUVR_TOT_CORTMEAN", label_threshold=20.0)
    assert [(c.centiloid, c.label) for c in other] == [(30.0, 1), (20.2, 1)]
    (root / "csv" / "OASIS3_PUP.csv").unlink()                  # auto falls back to nearest
    assert read_oasis3(root)[0].selection["pairing"].startswith("nearest")
    with pytest.raises(InputError, match="pup-mrid' needs OASIS3_PUP.csv"):
        read_oasis3(root, pairing="pup-mrid")


def test_nothing_found_reports_each_step_and_where_it_emptied(tmp_path, template):
    root = build_tree(tmp_path / "oasis3", "native", "partial", "nifti", template)
    for image in root.glob("PET/**/*n_msum_SUVR.nii"):
        image.unlink()                                          # only smoothed copies left
    with pytest.raises(InputError) as error:
        read_oasis3(root)
    message = str(error.value)
    assert "3 MR sessions with T1w, 2 PUP folders, 0 unsmoothed *_msum_SUVR images" in message
    assert "3 OASIS3_amyloid_centiloid.csv rows" in message
    assert "none left at: unsmoothed *_msum_SUVR images" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(InputError, match="no OASIS3_amyloid_centiloid.csv found"):
        read_oasis3(root / "MR")


@pytest.mark.parametrize("path, expected", [
    ("sub-OAS30001/ses-d0129/anat/sub-OAS30001_ses-d0129_run-01_T1w.nii.gz", ("OAS30001", 129, "T1w", 1, "")),
    ("OAS30001_MR_d0757/anat3/sub-OAS30001_ses-d0757_acq-TSE_T2w.nii.gz", ("OAS30001", 757, "T2w", None, "TSE")),
    ("OAS30001_MR_d0757/anat4/sub-OAS30001_ses-d0757_FLAIR.json", None),
    ("OAS30001_MR_d0757/anat5/scan_T2star.nii", ("OAS30001", 757, "T2star", None, "")),
    ("sub-OAS30001/ses-d0129/func/sub-OAS30001_ses-d0129_task-rest_run-01_bold.nii.gz", None),
])
def test_mr_file_names_give_subject_day_and_contrast(path, expected):
    scan = parse_mr_file(Path("/data") / path)
    got = None if scan is None else (scan.subject, scan.day, scan.contrast, scan.run, scan.acquisition)
    assert got == expected


def test_scan_choice_follows_the_authors_order(tmp_path, template):
    def scans(*specs):
        out = []
        for stem, kind in specs:
            path = tmp_path / f"sub-S1_ses-d0001_{stem}.nii.gz"
            nib.save(_mr_image(kind, template), path)
            out.append(parse_mr_file(path))
        return out

    best, notes = choose_scan(scans(("run-01_T1w", "t1_1mm"), ("T1w", "t1_1mm")))
    assert best.run is None                                    # no run- entity first
    best, _ = choose_scan(scans(("run-01_T1w", "t1_2mm"), ("run-02_T1w", "t1_1mm")))
    assert best.run == 2                                       # then the finest voxels
    best, _ = choose_scan(scans(("run-03_T1w", "t1_1mm"), ("run-01_T1w", "t1_1mm")))
    assert best.run == 1                                       # then run-01
    best, notes = choose_scan(scans(("run-04_T1w", "localizer"), ("run-05_T1w", "thick")))
    assert best is None and len(notes) == 2


def test_log_counts_the_sessions_left_out(tmp_path, template, caplog):
    root = build_tree(tmp_path / "oasis3", "bids", "pup-id", "nifti", template)
    with caplog.at_level(logging.WARNING, logger="Training.cohort"):
        read_oasis3(root)
    assert "skipped 1 PET session(s) without a PUP folder" in caplog.text
