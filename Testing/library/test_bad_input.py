"""Inputs whose orientation or values cannot be trusted, and coarse scans in batch prediction."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from AmyloidKDLib.cli import run as cli_run
from AmyloidKDLib.errors import InputError
from AmyloidKDLib.volume import load_volume


def _cli(*argv: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli_run(list(argv))
    return code, stdout.getvalue(), stderr.getvalue()


def write_without_orientation(path: Path, mni_img) -> Path:
    """The MNI T1 stored LPS (x flipped) with qform and sform codes both 0, as some converters do."""
    data = np.asarray(mni_img.get_fdata(), dtype=np.float32)[::-1]
    affine = mni_img.affine.copy()
    affine[0] *= -1
    img = nib.Nifti1Image(data, affine)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, path)
    assert (int(nib.load(path).header["qform_code"]), int(nib.load(path).header["sform_code"])) == (0, 0)
    return path


def write_thick_slices(path: Path, mni_img, slice_mm: int = 9) -> Path:
    """The MNI T1 with only every ``slice_mm``-th axial plane kept: 1 x 1 x 9 mm voxels."""
    data = np.asarray(mni_img.get_fdata(), dtype=np.float32)[:, :, ::slice_mm]
    affine = mni_img.affine.copy()
    affine[:3, 2] *= slice_mm
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def no_orientation_path(tmp_path_factory, mni_t1_img):
    return write_without_orientation(tmp_path_factory.mktemp("noorient") / "t1.nii.gz", mni_t1_img)


def test_a_header_without_orientation_is_refused_with_the_fix(no_orientation_path):
    with pytest.raises(InputError) as caught:
        load_volume(no_orientation_path)
    message = str(caught.value)
    assert "qform_code and sform_code are both 0" in message
    assert "left and right cannot be trusted" in message
    assert "dcm2niix" in message and "--allow-missing-orientation" in message


def test_a_header_without_orientation_loads_when_allowed_with_a_warning(no_orientation_path, mni_t1_img):
    with pytest.warns(UserWarning, match="no orientation"):
        volume = load_volume(no_orientation_path, allow_missing_orientation=True)
    assert any("left/right may be mirrored" in w for w in volume.warnings)
    # nibabel's fallback affine for such a header is LAS from the voxel sizes; once reoriented
    # the volume is RAS+ and its data is the (flipped) stored array, flipped back.
    assert volume.orientation == "RAS"
    np.testing.assert_array_equal(volume.data, np.asarray(mni_t1_img.get_fdata(), dtype=np.float32))


def test_info_refuses_a_header_without_orientation_in_one_line_and_accepts_it_on_request(no_orientation_path):
    code, _, stderr = _cli("info", str(no_orientation_path))
    assert code == 2
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "left and right cannot be trusted" in stderr
    code, stdout, _ = _cli("info", "--allow-missing-orientation", str(no_orientation_path))
    assert code == 0
    assert "warning      header has no orientation" in stdout


def test_preprocess_refuses_a_header_without_orientation(no_orientation_path, tmp_path):
    code, stdout, _ = _cli("preprocess", str(no_orientation_path), "--out", str(tmp_path / "out"),
                           "--preset", "fast")
    assert code == 1
    with open(tmp_path / "out" / "errors.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert "left and right cannot be trusted" in row["error"]
    assert not (tmp_path / "out" / "t1").exists()


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_a_complex_image_is_refused_asking_for_magnitude(tmp_path, mni_t1_img, dtype):
    magnitude = np.asarray(mni_t1_img.get_fdata(), dtype=np.float32)[::4, ::4, ::4]
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image((magnitude * np.exp(0.7j)).astype(dtype), mni_t1_img.affine * [4, 4, 4, 1]),
             path)
    with pytest.raises(InputError, match="complex") as caught:
        load_volume(path)
    assert "magnitude image" in str(caught.value)
    code, _, stderr = _cli("info", str(path))
    assert code == 2 and "magnitude image" in stderr and stderr.count("\n") == 1


@pytest.fixture(scope="module")
def doubtful_folder(tmp_path_factory, mni_t1_img):
    """A batch whose two inputs each get a validation problem: 9 mm slices, no orientation."""
    folder = tmp_path_factory.mktemp("doubtful")
    write_thick_slices(folder / "thick.nii.gz", mni_t1_img)
    write_without_orientation(folder / "noorient.nii.gz", mni_t1_img)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_inference import write_test_checkpoint

    return write_test_checkpoint(tmp_path_factory.mktemp("ckpt") / "student")


def _results(out: Path) -> tuple[list[str], dict[str, dict]]:
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    return list(reader.fieldnames or []), {row["case"]: row for row in rows}


def test_batch_prediction_fails_a_coarse_input_with_the_reason_by_default(doubtful_folder, checkpoint,
                                                                          tmp_path):
    out = tmp_path / "out"
    code, _, stderr = _cli("predict", str(doubtful_folder), "--checkpoint", str(checkpoint),
                           "--out", str(out), "--device", "cpu")
    assert code == 1
    columns, rows = _results(out)
    assert "warnings" not in columns
    thick = rows["thick"]
    assert thick["status"] == "failed" and thick["probability"] == ""
    assert "above 5.0 mm" in thick["error"] and "anisotropic" in thick["error"]
    assert "--allow-coarse" in thick["error"]
    assert rows["noorient"]["status"] == "failed"
    assert "left and right cannot be trusted" in rows["noorient"]["error"]
    assert not list(out.glob("thick_*")) and not list(out.glob("noorient_*"))
    assert "2 of 2 case(s) failed" in stderr


@pytest.mark.slow
def test_allow_coarse_runs_them_and_records_the_warnings(doubtful_folder, checkpoint, tmp_path):
    out = tmp_path / "out"
    code, _, _ = _cli("predict", str(doubtful_folder), "--checkpoint", str(checkpoint), "--out",
                      str(out), "--device", "cpu", "--allow-coarse", "--allow-missing-orientation")
    assert code == 0
    columns, rows = _results(out)
    assert columns[-1] == "warnings"
    assert rows["thick"]["status"] == "ok" and 0.0 < float(rows["thick"]["probability"]) < 1.0
    assert "above 5.0 mm" in rows["thick"]["warnings"] and "anisotropic" in rows["thick"]["warnings"]
    assert rows["noorient"]["status"] == "ok"
    assert "left/right may be mirrored" in rows["noorient"]["warnings"]
    assert "mm" not in rows["noorient"]["warnings"]
    assert (out / "thick_overview.png").is_file()


def _dangling_link(folder: Path) -> Path:
    link = folder / "moved.nii.gz"
    link.symlink_to(folder / "deleted.nii.gz")
    return link


def _singular_affine(folder: Path) -> Path:
    path = folder / "singular.nii.gz"
    img = nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), None)
    img.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # a zero column: singular
    nib.save(img, path)
    return path


def _huge_header(folder: Path) -> Path:
    # a 348-byte header that claims 4000^3 int16 voxels (a damaged or hostile file)
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    path = folder / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    return path


def _folder(folder: Path) -> Path:
    path = folder / "scan.nii.gz"
    path.mkdir()
    return path


@pytest.mark.parametrize("make, message", [
    (_dangling_link, "no such file"),
    (_singular_affine, "voxel-to-world matrix is invalid"),
    (_huge_header, "guard"),
    (_folder, "is a folder"),
], ids=["dangling-link", "singular-affine", "huge-header", "folder"])
def test_more_bad_files_are_refused_in_one_line(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message):
        load_volume(path)
    code, _, stderr = _cli("info", str(path))
    assert code == 2 and stderr.count("\n") == 1 and message in stderr
