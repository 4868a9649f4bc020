"""prepare_case end to end on the real MNI152 template: a moved MRI and a rigidly displaced
SUVR map come back into MNI space, absolute PET scale survives, the cache and the CLI work."""

from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from AmyloidKDLib import cli
from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.pipeline import PrepConfig, cache_key, prepare_case
from AmyloidKDLib.registration import dice
from AmyloidKDLib.slicing import SliceConfig, sagittal_slices
from AmyloidKDLib.template import load_template
from AmyloidKDLib.volume import load_volume
from test_registration import known_motion, move_volume, write_moved_copy

PET_MOTION = known_motion(rotation_deg=(-7.0, 5.0, 4.0), translation_mm=(-9.0, 6.0, 11.0), scaling=(1, 1, 1))


def true_suvr(template) -> np.ndarray:
    """A smooth SUVR map in MNI space: grey matter ~1.5, white matter ~1.0, PET-like blur."""
    suvr = (0.2 + 1.3 * template.gm.data + 0.8 * template.wm.data) * template.mask.data
    return ndimage.gaussian_filter(suvr, 2.5).astype(np.float32)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """A moved template MRI (LIA file on disk) and its SUVR PET, rigidly offset, on a 2 mm grid."""
    folder = tmp_path_factory.mktemp("subject")
    t1_path, mask_path = write_moved_copy(folder, deformation_mm=0.0)
    template = load_template(1)
    pet_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    pet_affine[:3, 3] = (-110.0, -140.0, -95.0)
    pet = move_volume(template.t1.with_data(true_suvr(template)), PET_MOTION @ known_motion(),
                      pet_affine, (110, 130, 105), order=1)
    pet_path = folder / "pet_suvr.nii.gz"
    nib.save(nib.Nifti1Image(pet, pet_affine), pet_path)
    return {"mri": load_volume(t1_path), "mask": load_volume(mask_path, "mask"),
            "pet": load_volume(pet_path, "PET"), "t1_path": t1_path, "folder": folder}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prep_cache")


@pytest.fixture(scope="module")
def prepared(subject, cache_dir):
    return prepare_case(subject["mri"], subject["pet"], PrepConfig.preset("fast"), cache_dir=cache_dir)


def test_presets_are_the_paper_and_the_fast_settings():
    paper, fast = PrepConfig.preset("paper"), PrepConfig.preset("fast")
    assert paper.skull_strip.backend == "hd-bet-v1" and paper.n4.enabled
    assert paper.registration.transform == "affine" and paper.registration.template_resolution == 1
    assert (paper.normalization.low_percentile, paper.normalization.high_percentile,
            paper.normalization.gamma) == (0.5, 99.5, 0.9)
    assert (paper.pet.window.low, paper.pet.window.high) == (0.0, 3.0)
    assert fast.skull_strip.backend == "none" and fast.registration.template_resolution == 2
    assert PrepConfig.from_dict(json.loads(json.dumps(fast.to_dict()))) == fast
    with pytest.raises(ConfigError, match="registration.*valid keys"):
        PrepConfig.from_dict({"registration": {"shrink": [2]}})
    with pytest.raises(ConfigError, match="fast, paper"):
        PrepConfig.preset("slow")


def test_prepared_mri_is_normalised_brain_on_the_mni_grid(prepared):
    template = load_template(2)
    assert prepared.mri.shape == prepared.mask.shape == template.shape
    assert np.allclose(prepared.mri.affine, template.affine)
    assert 0.0 <= prepared.mri.data.min() and prepared.mri.data.max() <= 1.0
    assert set(np.unique(prepared.mask.data)) <= {0.0, 1.0}
    assert np.all(prepared.mri.data[prepared.mask.data == 0] == 0)
    assert dice(prepared.mask.data, template.mask.data) >= 0.95
    assert [step["name"] for step in prepared.steps] == [
        "skull_strip", "n4", "normalize", "register_mri_to_mni", "resample_mri_to_mni",
        "register_pet_to_mri", "pet_to_mni_suvr_window"]
    assert all(step["seconds"] >= 0 and "parameters" in step for step in prepared.steps)


def test_mni_mask_maps_back_onto_the_native_mri(prepared, subject):
    native = prepared.mri_to_mni.apply(prepared.mask, "inverse", "nearest", reference=subject["mri"])
    assert native.shape == subject["mri"].shape
    assert dice(native.data, subject["mask"].data) >= 0.95


def test_pet_moved_by_a_known_rigid_transform_is_recovered_in_mni(prepared):
    template = load_template(2)
    truth_1mm = load_template(1).t1.with_data(true_suvr(load_template(1)))
    truth = move_volume(truth_1mm, np.eye(4), template.affine, template.shape, order=1)
    expected = np.clip(truth / 3.0, 0, 1)
    inside = (template.mask.data > 0.5) & (prepared.mask.data > 0.5)
    assert np.corrcoef(prepared.pet.data[inside], expected[inside])[0, 1] >= 0.95
    assert np.median(prepared.pet.data[inside]) == pytest.approx(np.median(expected[inside]), rel=0.1)


def test_doubling_suvr_doubles_slice_intensities_inside_the_window(prepared, subject, cache_dir):
    doubled = subject["pet"].with_data(2 * subject["pet"].data)
    twice = prepare_case(subject["mri"], doubled, PrepConfig.preset("fast"), cache_dir=cache_dir)
    config = SliceConfig()
    mri_slices = sagittal_slices(prepared.mri, prepared.mask, config)
    once_slices = sagittal_slices(prepared.pet, prepared.mask, config, positions=mri_slices.positions)
    twice_slices = sagittal_slices(twice.pet, twice.mask, config, positions=mri_slices.positions)
    std, mean = config.std[0], config.mean[0]
    once = once_slices.images[:, 0] * std + mean
    double = twice_slices.images[:, 0] * std + mean
    usable = (once > 0.1) & (once < 0.45)
    ratio = double[usable] / once[usable]
    assert usable.sum() > 10000
    assert np.median(ratio) == pytest.approx(2.0, abs=0.02)
    assert np.mean(np.abs(ratio - 2.0) < 0.1) > 0.95


def test_cache_returns_the_stored_case_for_the_same_inputs_and_config(prepared, subject, cache_dir):
    again = prepare_case(subject["mri"], subject["pet"], PrepConfig.preset("fast"), cache_dir=cache_dir)
    assert again.cache_key == prepared.cache_key
    assert again.mri_to_mni.forward_files[0].startswith(str(cache_dir))
    np.testing.assert_array_equal(again.mri.data, prepared.mri.data)
    np.testing.assert_array_equal(again.pet.data, prepared.pet.data)
    other = PrepConfig.preset("fast")
    other.pet.window.high = 2.5
    assert cache_key(subject["mri"], subject["pet"], other) != prepared.cache_key
    shifted = subject["mri"].with_data(subject["mri"].data + 1e-3)
    assert cache_key(shifted, subject["pet"], PrepConfig.preset("fast")) != prepared.cache_key


def test_prepare_case_refuses_pet_as_mri(subject):
    with pytest.raises(InputError, match="pass PET as `pet`"):
        prepare_case(subject["pet"], None, PrepConfig.preset("fast"))


def test_preprocess_command_runs_a_manifest_and_reports_failed_cases(prepared, subject, cache_dir, tmp_path):
    manifest = subject["folder"] / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "t1w", "pet_path"])
        writer.writerow(["good", subject["t1_path"].name, "pet_suvr.nii.gz"])
        writer.writerow(["missing", "nowhere.nii.gz", ""])
    out = tmp_path / "out"
    code = cli.run(["preprocess", str(manifest), "--out", str(out), "--preset", "fast",
                    "--cache-dir", str(cache_dir), "--jobs", "2"])
    assert code == 1
    errors = list(csv.DictReader((out / "errors.csv").open()))
    assert [row["case"] for row in errors] == ["missing"] and "no such file" in errors[0]["error"]
    good = out / "good"
    assert {"mri.nii.gz", "mask.nii.gz", "pet.nii.gz", "steps.json"} <= {p.name for p in good.iterdir()}
    np.testing.assert_array_equal(load_volume(good / "pet.nii.gz", "PET").data, prepared.pet.data)
    assert load_volume(good / "mri.nii.gz").shape == load_template(2).shape


def test_saving_a_case_removes_the_temporary_a_killed_writer_left_and_keeps_live_ones(prepared, tmp_path):
    """A worker SIGKILLed while writing a case leaves its hidden temporary folder (no cleanup
    can run). The next save of that case removes it when its writer (named in the folder) is a
    process of this host that is gone; a live writer's temporary and another host's are kept."""
    import socket
    import subprocess
    import sys

    from AmyloidKDLib.pipeline import load_prepared, save_prepared

    folder = tmp_path / "out" / "case01"
    folder.parent.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid = int(ended.stdout)
    host = socket.gethostname()
    dead = folder.parent / f".case01.{host}-{dead_pid}.abc123"
    live = folder.parent / f".case01.{host}-{os.getppid()}.def456"
    elsewhere = folder.parent / f".case01.other-host-{dead_pid}.ghi789"
    for path in (dead, live, elsewhere):
        path.mkdir()
        (path / "mri.nii.gz").write_bytes(b"half")
    save_prepared(prepared, folder)
    assert not dead.exists()
    assert live.exists() and elsewhere.exists()
    np.testing.assert_array_equal(load_prepared(folder).mri.data, prepared.mri.data)
    leftovers = sorted(p.name for p in folder.parent.iterdir())
    assert leftovers == sorted([folder.name, live.name, elsewhere.name])  # ours was renamed in
