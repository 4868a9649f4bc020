"""4dfp images read with the orientation nifti_4dfp gives them, checked against NIfTI copies."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.fourdfp import read_fourdfp_header, save_fourdfp
from AmyloidKDLib.template import load_template
from AmyloidKDLib.volume import load_volume

# FSL's MNI152 grid convention (LAS storage, origin at the right-posterior-inferior corner).
FSL_2MM = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def las_volume() -> np.ndarray:
    """The 2 mm template, stored right-to-left (LAS) like an FSL file, with an asymmetric
    marker (a bright block off-centre on every axis) so that any flip or axis swap changes
    the array."""
    ras = np.array(load_template(2).t1.data, dtype=np.float32)[:91, :109, :91]
    ras[60:70, 75:85, 60:66] = 3.0          # right (+x), anterior, superior of the centre
    return np.ascontiguousarray(ras[::-1])  # RAS -> LAS storage


def _ifh(orientation: int, shape, mmppix, center) -> str:
    lines = ["INTERFILE\t:=", "version of keys\t:= 3.3", "number format\t\t:= float",
             "number of bytes per pixel\t:= 4", "imagedata byte order\t:= bigendian",
             f"orientation\t\t:= {orientation}", "number of dimensions\t:= 4"]
    lines += [f"matrix size [{a + 1}]\t:= {n}" for a, n in enumerate((*shape, 1))]
    lines += [f"scaling factor (mm/pixel) [{a + 1}]\t:= {abs(m)}" for a, m in enumerate(mmppix)]
    lines += ["mmppix\t:= " + " ".join(map(str, mmppix)), "center\t:= " + " ".join(map(str, center))]
    return "\n".join(lines) + "\n"


def _write_4dfp(stem: Path, stored: np.ndarray, orientation: int, mmppix, center) -> Path:
    """A 4dfp writer of the test's own, straight from the format notes: big-endian float32,
    first index fastest, an Interfile header."""
    stored.astype(">f4").ravel(order="F").tofile(stem.with_name(stem.name + ".4dfp.img"))
    stem.with_name(stem.name + ".4dfp.ifh").write_text(_ifh(orientation, stored.shape, mmppix, center))
    return stem.with_name(stem.name + ".4dfp.img")


def test_the_documented_header_lands_on_the_mni_grid_it_came_from(tmp_path):
    # The 4dfp notes list the header nifti_4dfp wrote for HCP's T1w_acpc_dc (0.7 mm, 260x311x260),
    # a NIfTI on FSL's 0.7 mm MNI grid: sform diag(-0.7, 0.7, 0.7), origin (90, -126, -72).
    # Reading that header must put the grid's corners where that sform puts them.
    (tmp_path / "T1w_acpc_dc.4dfp.ifh").write_text(
        _ifh(2, (260, 311, 260), (0.7, -0.7, -0.7), (92.0, -91.7, -110.0)))
    affine = read_fourdfp_header(tmp_path / "T1w_acpc_dc.4dfp.img").affine
    fsl = np.array([[-0.7, 0, 0, 90], [0, 0.7, 0, -126], [0, 0, 0.7, -72], [0, 0, 0, 1]])
    # the two files hold the same voxels y-flipped ("4dfp and NIfTI are y-flipped to each other")
    y_flip = np.array([[1, 0, 0, 0], [0, -1, 0, 310], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(affine, fsl @ y_flip, atol=1e-6)


def test_transverse_4dfp_loads_as_the_same_ras_volume_as_its_nifti(tmp_path, las_volume):
    nifti = tmp_path / "suvr.nii.gz"
    nib.save(nib.Nifti1Image(las_volume, FSL_2MM), nifti)
    # 4dfp holds the FSL file's voxels y-flipped; header as nifti_4dfp writes it for this grid
    # (the relation of the documented 0.7 mm example: center = (m*N - 90, m - y_front, m*N + 72)
    # with y_front the most anterior plane; 0.7 mm: 92, -0.7 - 91, -182 + 72).
    n = las_volume.shape
    y_front = -126 + 2.0 * (n[1] - 1)
    img = _write_4dfp(tmp_path / "suvr", las_volume[:, ::-1, :], 2, (2.0, -2.0, -2.0),
                      (2.0 * n[0] - 90, -2.0 - y_front, -2.0 * n[2] + 72))
    from_nifti, from_4dfp = load_volume(nifti, "PET"), load_volume(img, "PET")
    np.testing.assert_array_equal(from_4dfp.data, from_nifti.data)
    np.testing.assert_allclose(from_4dfp.affine, from_nifti.affine, atol=1e-6)
    # and a reader that forgot the flip would not pass: the marker is off-centre on every axis
    assert not np.array_equal(from_nifti.data, from_nifti.data[::-1])
    assert not np.array_equal(from_nifti.data, from_nifti.data[:, ::-1])
    assert not np.array_equal(from_nifti.data, from_nifti.data[:, :, ::-1])


@pytest.mark.parametrize("orientation, to_stored", [
    # the notes' display table: coronal images need y and z flipped, sagittal x, y and z, to show
    # right / skull-base / occipital first; stored order is therefore:
    (3, lambda ras: ras.transpose(0, 2, 1)[::-1, ::-1, ::-1]),   # R->L, S->I, A->P
    (4, lambda ras: ras.transpose(1, 2, 0)[::-1, ::-1, :]),      # A->P, S->I, L->R
])
def test_coronal_and_sagittal_4dfp_come_out_in_ras_order(tmp_path, las_volume, orientation, to_stored):
    ras = np.ascontiguousarray(las_volume[::-1])
    stored = np.ascontiguousarray(to_stored(ras))
    img = _write_4dfp(tmp_path / f"o{orientation}", stored, orientation, (2.0, -2.0, -2.0), (0.0, 0.0, 0.0))
    volume = load_volume(img, "PET")
    np.testing.assert_array_equal(volume.data, ras)
    assert volume.orientation == "RAS" and volume.spacing == pytest.approx((2.0, 2.0, 2.0))


def test_library_writer_round_trips_a_rotated_storage_order(tmp_path, las_volume):
    affine = np.array([[0, 0, -2.5, 40], [2.0, 0, 0, -100], [0, -3.0, 0, 60], [0, 0, 0, 1]])
    data = np.ascontiguousarray(las_volume[:, :60, :40].transpose(1, 2, 0))   # stored P-I-L-ish
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "ref.nii")
    img = save_fourdfp(data, affine, tmp_path / "copy.4dfp.img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.4dfp.ifh", "copy.4dfp.img", "ref.nii"]
    ref, copy = load_volume(tmp_path / "ref.nii", "PET"), load_volume(img, "PET")
    np.testing.assert_array_equal(copy.data, ref.data)
    np.testing.assert_allclose(copy.affine, ref.affine, atol=1e-4)


def test_bad_4dfp_files_raise_input_errors(tmp_path, las_volume):
    (tmp_path / "b.4dfp.img").write_bytes(b"\0" * 32)
    with pytest.raises(InputError, match="needs its .4dfp.ifh header"):
        load_volume(tmp_path / "b.4dfp.img")
    img = _write_4dfp(tmp_path / "c", las_volume, 2, (2, -2, -2), (0, 0, 0))
    img.write_bytes(img.read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated"):
        load_volume(img)
    (tmp_path / "d.4dfp.ifh").write_text(_ifh(7, (2, 2, 2), (1, -1, -1), (0, 0, 0)))
    with pytest.raises(InputError, match="orientation '7'"):
        read_fourdfp_header(tmp_path / "d.4dfp.ifh")
