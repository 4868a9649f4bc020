"""Volume I/O: reorientation to RAS+, atomic saving, and every bad input the loader refuses."""

from __future__ import annotations

import gzip
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations

from AmyloidKDLib import InputError, Volume, load_volume, save_volume
from AmyloidKDLib.volume import VolumeWarning, reorient_for_storage

# A landmark voxel inside the brain, off every axis of symmetry.
LANDMARK_RAS_IJK = (60, 140, 100)


def write_reoriented(src: nib.Nifti1Image, codes: str, path: Path) -> Path:
    """Write ``src`` (RAS) with data permuted/flipped to ``codes`` and the affine changed to match."""
    target = orientations.axcodes2ornt(tuple(codes))
    transform = orientations.ornt_transform(orientations.io_orientation(src.affine), target)
    data = orientations.apply_orientation(np.asarray(src.dataobj), transform)
    affine = src.affine @ orientations.inv_ornt_aff(transform, src.shape)
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    assert "".join(nib.aff2axcodes(img.affine)) == codes
    nib.save(img, path)
    return path


@pytest.mark.parametrize("codes", ["LPS", "LPI", "PSR"])
def test_reoriented_copies_load_identically(tmp_path, mni_t1_img, mni_t1_path, codes):
    reference = load_volume(mni_t1_path)
    assert reference.orientation == "RAS"
    moved_path = write_reoriented(mni_t1_img, codes, tmp_path / f"mni_{codes}.nii.gz")
    # The file on disk really is stored differently.
    assert not np.array_equal(np.asarray(nib.load(moved_path).dataobj).shape, reference.shape) \
        or not np.array_equal(np.asarray(nib.load(moved_path).dataobj), reference.data)

    loaded = load_volume(moved_path)
    assert loaded.orientation == "RAS"
    np.testing.assert_array_equal(loaded.data, reference.data)
    np.testing.assert_allclose(loaded.affine, reference.affine, atol=1e-5)
    ijk = np.array([*LANDMARK_RAS_IJK, 1.0])
    np.testing.assert_allclose(loaded.affine @ ijk, reference.affine @ ijk, atol=1e-5)
    # The same world point, looked up in the file as stored, holds the same intensity.
    stored = nib.load(moved_path)
    world = reference.affine @ ijk
    stored_ijk = np.rint(np.linalg.inv(stored.affine) @ world)[:3].astype(int)
    assert np.asarray(stored.dataobj)[tuple(stored_ijk)] == reference.data[LANDMARK_RAS_IJK]
    assert reference.data[LANDMARK_RAS_IJK] > 0


@pytest.mark.parametrize("codes", ["LPS", "PIR", "ASL"])
def test_storage_orientation_is_undone_on_load(tmp_path, mni_t1_path, codes):
    """reorient_for_storage (how the phantom writes scanner-like files) inverts the loader's step."""
    reference = load_volume(mni_t1_path)
    stored = reorient_for_storage(reference, codes)
    assert stored.orientation == codes
    world = reference.affine @ np.array([*LANDMARK_RAS_IJK, 1.0])
    stored_ijk = tuple(np.rint(np.linalg.inv(stored.affine) @ world)[:3].astype(int))
    assert stored.data[stored_ijk] == reference.data[LANDMARK_RAS_IJK] > 0
    loaded = load_volume(save_volume(stored, tmp_path / f"stored_{codes}.nii.gz"))
    np.testing.assert_array_equal(loaded.data, reference.data)
    np.testing.assert_allclose(loaded.affine, reference.affine, atol=1e-5)


def test_header_only_reorientation_would_be_caught(tmp_path, mni_t1_img, mni_t1_path):
    """Guard the guard: relabelling the axes without moving data must NOT match the reference."""
    img = nib.Nifti1Image(np.asarray(mni_t1_img.dataobj, dtype=np.float32),
                          np.diag([-1.0, -1.0, 1.0, 1.0]) @ mni_t1_img.affine)
    nib.save(img, tmp_path / "flipped_header.nii.gz")
    loaded = load_volume(tmp_path / "flipped_header.nii.gz")
    assert not np.array_equal(loaded.data, load_volume(mni_t1_path).data)


def test_save_is_atomic_and_round_trips(tmp_path, mni_t1_path):
    volume = load_volume(mni_t1_path)
    out = save_volume(volume, tmp_path / "sub" / "copy.nii.gz")
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.nii.gz"]
    again = load_volume(out)
    np.testing.assert_array_equal(again.data, volume.data)
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-6)


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    volume = Volume(np.random.rand(8, 8, 8), np.eye(4))

    def broken_save(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError):
        save_volume(volume, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_single_frame_4d_is_squeezed(tmp_path):
    data = np.random.default_rng(0).random((10, 11, 12, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "one_frame.nii.gz")
    volume = load_volume(tmp_path / "one_frame.nii.gz")
    assert volume.shape == (10, 11, 12)
    np.testing.assert_array_equal(volume.data, data[..., 0])


def test_nonfinite_replaced_on_request(tmp_path):
    data = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.warns(VolumeWarning, match="2 NaN/Inf voxels replaced"):
        volume = load_volume(tmp_path / "nan.nii.gz", replace_nonfinite=True)
    assert volume.data[1, 2, 3] == 0 and volume.data[4, 5, 6] == 0
    assert np.isfinite(volume.data).all()


@pytest.mark.parametrize("spacing, message", [
    ((6.0, 1.0, 1.0), "above 5.0 mm"),
    ((1.0, 1.0, 4.5), "anisotropic beyond 4.0:1"),
])
def test_implausible_voxel_sizes_warn(tmp_path, spacing, message):
    data = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), tmp_path / "coarse.nii.gz")
    with pytest.warns(VolumeWarning, match=message):
        volume = load_volume(tmp_path / "coarse.nii.gz")
    assert any(message in w for w in volume.warnings)


def test_plausible_volume_has_no_warnings(mni_t1_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(mni_t1_path).warnings == []


# --- every bad input: the error type, a message a person understands, and the CLI's answer ---

def _bad_inputs(tmp_path: Path, mni_t1_path: Path) -> dict[str, tuple[Path, str, dict]]:
    rng = np.random.default_rng(0)
    cases: dict[str, tuple[Path, str, dict]] = {}
    cases["missing"] = (tmp_path / "nope.nii.gz", "no such file", {})
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image")
    cases["non-image"] = (text, "cannot be read as NIfTI", {})
    wrong_ext = tmp_path / "scan.dcm"
    wrong_ext.write_bytes(b"\0" * 200)
    cases["not-nifti-extension"] = (wrong_ext, "not a NIfTI file", {})
    raw = gzip.decompress(mni_t1_path.read_bytes())
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(raw[: len(raw) // 3])
    cases["truncated"] = (truncated, "truncated", {})
    truncated_gz = tmp_path / "truncated.nii.gz"
    truncated_gz.write_bytes(mni_t1_path.read_bytes()[:50_000])
    cases["truncated-gz"] = (truncated_gz, "truncated", {})
    for name, shape in {"2d": (20, 20), "4d": (10, 10, 10, 3)}.items():
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), np.eye(4)), path)
        cases[name] = (path, "3-D volume" if name == "2d" else "3 frames", {})
    for name, value in {"empty": 0.0, "constant": 7.0}.items():
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((10, 10, 10), value, np.float32), np.eye(4)), path)
        cases[name] = (path, name, {})
    nan = tmp_path / "nan.nii.gz"
    data = rng.random((10, 10, 10)).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    cases["nan"] = (nan, "NaN or Inf", {})
    cases["too-large"] = (mni_t1_path, "guard", {"AMYLOIDKD_MAX_VOLUME_MB": "5"})
    return cases


BAD_INPUT_NAMES = ["missing", "non-image", "not-nifti-extension", "truncated", "truncated-gz",
                   "2d", "4d", "empty", "constant", "nan", "too-large"]


@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
def test_bad_input_raises_clear_error(tmp_path, mni_t1_path, monkeypatch, name):
    path, message, env = _bad_inputs(tmp_path, mni_t1_path)[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InputError, match=message) as info:
        load_volume(path)
    assert str(path) in str(info.value)


def test_info_cli_reports_each_bad_input_in_one_line(tmp_path, mni_t1_path):
    import os

    for name in BAD_INPUT_NAMES:
        path, message, env = _bad_inputs(tmp_path, mni_t1_path)[name]
        result = subprocess.run([sys.executable, "-m", "AmyloidKDLib", "info", str(path)],
                                capture_output=True, text=True, env={**os.environ, **env})
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, (name, result.stderr)
        assert message in lines[0] and lines[0].startswith("amyloidkd info: error:")


def test_info_cli_describes_a_good_file(tmp_path, mni_t1_img):
    path = write_reoriented(mni_t1_img, "LPS", tmp_path / "lps.nii.gz")
    result = subprocess.run([sys.executable, "-m", "AmyloidKDLib", "info", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "LPS on disk -> RAS after loading" in result.stdout
    assert "197 x 233 x 189" in result.stdout
    assert "spacing      1 x 1 x 1 mm" in result.stdout


def test_dicom_io_leaves_the_process_locale_and_text_encoding_alone(tmp_path):
    """GDCM sets the C locale to "C"; left so, every later open() without an encoding reads
    ASCII (it broke reading UTF-8 reports later in the same process)."""
    import locale

    from AmyloidKDLib.volume import Volume, load_volume, save_dicom_series

    before = (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False))
    volume = Volume(np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4), np.eye(4))
    save_dicom_series(volume, tmp_path / "series")
    loaded = load_volume(tmp_path / "series", "T1w")
    assert loaded.shape == (6, 5, 4)
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before
