"""Cohort readers: the manifest and the OASIS-3 style layout describe the same cases."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
from Training.cohort import CaseRecord, read_manifest, read_oasis3

CONTRASTS = ("T1w", "FLAIR")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """8 subjects, both layouts, with many follow-ups, unpaired PET and extra MR sessions."""
    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=CONTRASTS, longitudinal_share=0.6,
                           unpaired_pet_share=0.2, extra_mr_share=0.5, montage_subjects=0)
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "c", 8, 21, layout="both",
                           config=config, progress=False).parent


def _truth(root: Path) -> list[dict[str, str]]:
    with open(root / "ground_truth" / "sessions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# The generator labels its ground truth at 20 CL (the reader's default is the authors' 20.6).
TRUTH = {"label_threshold": 20.0}


def test_both_layouts_parse_into_the_same_cases(cohort):
    from_manifest = read_manifest(cohort / "manifest.csv", contrasts=CONTRASTS)
    from_oasis = read_oasis3(cohort, contrasts=CONTRASTS, **TRUTH)
    assert from_manifest == from_oasis
    assert all(c.selection["pairing"].startswith("pup-mrid") for c in from_oasis)   # OASIS3_PUP.csv
    assert all(c.pet_path.name.endswith("n_msum_SUVR.nii.gz") and c.pet_path.parent.name == "pet_proc"
               for c in from_oasis)
    paired = [r for r in _truth(cohort) if r["mr_session_id"]]
    assert [(c.subject_id, c.session_id) for c in from_oasis] == sorted(
        (r["subject_id"], r["session_id"]) for r in paired)
    for case, row in zip(from_oasis, sorted(paired, key=lambda r: (r["subject_id"], r["session_id"]))):
        day = int(row["mr_session_id"].rsplit("_d", 1)[1])
        assert case.mri["T1w"].parent.parent.name == f"ses-d{day:04d}"   # its own MR session
        assert set(case.mri) == set(CONTRASTS) and case.pet_path.is_file()
        assert case.centiloid == pytest.approx(float(row["centiloid"]))
        assert case.label == int(row["label"]) and case.tracer == row["tracer"]
        assert case.age == pytest.approx(float(row["age"]))


def test_pet_sessions_pair_with_the_nearest_mr_within_the_window(cohort, caplog):
    truth = _truth(cohort)
    unpaired = {r["session_id"] for r in truth if not r["mr_session_id"]}
    assert unpaired, "the fixture should hold PET sessions without an MR session"
    # some PET session has two MR sessions within 365 days: the nearest must win
    crowded = 0
    for row in truth:
        days = [int(p.name[len("ses-d"):]) for p in (cohort / f"sub-{row['subject_id']}").glob("ses-d*")
                if (p / "anat").is_dir()]
        crowded += sum(abs(d - int(row["pet_day"])) <= 365 for d in days) > 1
    assert crowded >= 1
    with caplog.at_level(logging.WARNING, logger="Training.cohort"):
        cases = read_oasis3(cohort, max_days=365, pairing="nearest", **TRUTH)
    assert not unpaired & {c.session_id for c in cases}
    assert "without an MR session within 365 days" in caplog.text
    assert all(c.selection["pairing"].startswith("nearest") for c in cases)
    wide = {c.session_id for c in read_oasis3(cohort, max_days=5000, pairing="nearest", **TRUTH)}
    has_mr = {p.parent.parent.name[len("sub-"):] for p in cohort.glob("sub-*/ses-*/anat")}
    reachable = {s for s in unpaired if s.split("_")[0] in has_mr}
    assert reachable and reachable <= wide


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_manifest_paths_are_relative_and_labels_come_from_centiloid(tmp_path):
    for name in ("a_T1w.nii.gz", "b_T1w.nii.gz", "pet.nii.gz"):
        _write(tmp_path / "img" / name, "x")
    manifest = _write(tmp_path / "m.csv",
                      "subject_id,session_id,mri_path,pet_path,tracer,centiloid,label,age\n"
                      "S2,S2_a,img/b_T1w.nii.gz,,,,,\n"
                      "S1,S1_a,img/a_T1w.nii.gz,img/pet.nii.gz,pib,35.5,,70.1\n"
                      "S1,S1_b,img/a_T1w.nii.gz,img/pet.nii.gz,AV45,12,1,71\n")
    cases = read_manifest(manifest)
    assert [c.session_id for c in cases] == ["S1_a", "S1_b", "S2_a"]
    assert cases[0] == CaseRecord("S1", "S1_a", {"T1w": tmp_path / "img" / "a_T1w.nii.gz"},
                                  tmp_path / "img" / "pet.nii.gz", "PIB", 35.5, 1, 70.1)
    assert cases[1].label == 1          # an explicit label wins over the threshold
    assert cases[2].label is None and cases[2].pet_path is None


@pytest.mark.parametrize("text, message", [
    ("subject_id,t1w\nS1,a.nii.gz\n", "missing column.*session_id"),
    ("subject_id,session_id,t1w\nS1,x,missing.nii.gz\n", "line 2.*missing.nii.gz.*relative"),
    ("subject_id,session_id,t1w\nS1,x,a.nii.gz\nS1,x,a.nii.gz\n", "line 3.*listed twice"),
    ("subject_id,session_id,t1w,label\nS1,x,a.nii.gz,maybe\n", "label 'maybe' is not 0/1"),
    ("subject_id,session_id,t1w,tracer\nS1,x,a.nii.gz,FDG\n", "tracer 'FDG'"),
    ("subject_id,session_id,t1w,centiloid\nS1,x,a.nii.gz,high\n", "centiloid 'high' is not a number"),
    ("subject_id,session_id,t1w,flair\nS1,x,a.nii.gz,\n", "no FLAIR path"),
])
def test_bad_manifests_raise_input_errors_naming_the_problem(tmp_path, text, message):
    _write(tmp_path / "a.nii.gz", "x")
    with pytest.raises(InputError, match=message):
        read_manifest(_write(tmp_path / "m.csv", text), contrasts=("T1w", "FLAIR")
                      if "flair" in text else ("T1w",))


def test_oasis_reader_explains_a_missing_or_wrong_centiloid_table(tmp_path):
    with pytest.raises(InputError, match="no OASIS3_amyloid_centiloid.csv.*data_layouts"):
        read_oasis3(tmp_path)
    _write(tmp_path / "OASIS3_amyloid_centiloid.csv", "subject_id,oasis_session_id,tracer\n")
    with pytest.raises(InputError, match="missing column.*Centiloid_fSUVR_rsf_TOT_CORTMEAN"):
        read_oasis3(tmp_path)
