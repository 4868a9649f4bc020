"""Native-grid outputs are stored in the input's own voxel order (as nnU-Net / TotalSegmentator do).

An LPS-stored, oblique input: the saliency and label files written by ``predict`` have the
input's affine and shape, and their arrays line up voxel for voxel with the input's array, so
``input_array * saliency_array`` means what a user expects. Before, they were stored RAS: same
shape, mirrored arrays. (End to end through the CLI on LPS-stored scans:
test_predict_cli.py::test_each_case_gets_saliency_labels_and_an_overview_on_its_own_grid.)
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
from AmyloidKDLib.commands import predict
from AmyloidKDLib.volume import load_volume


def lps_oblique_affine(spacing=(2.0, 2.5, 3.0), degrees: float = 15.0) -> np.ndarray:
    """i runs right->left, j anterior->posterior, k inferior->superior; tilted about S."""
    angle = math.radians(degrees)
    tilt = np.eye(4)
    tilt[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    affine = tilt @ np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (30.0, 40.0, -20.0)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    return affine


def test_written_native_outputs_line_up_voxel_for_voxel_with_an_lps_oblique_input(tmp_path):
    shape = (14, 17, 11)
    stored = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)  # every voxel its own value
    stored[:3] = 0.0  # an asymmetric empty band: a mirrored array cannot match
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(stored, lps_oblique_affine()), path)

    mri = load_volume(path, "T1w")  # RAS inside the library
    assert mri.orientation == "RAS" and not np.array_equal(mri.data, stored)
    saliency = mri.with_data(mri.data / mri.data.max(), "saliency")
    labels = mri.with_data((mri.data > np.median(mri.data)).astype(np.float32), "label")
    result = SimpleNamespace(saliency=saliency, saliency_mni=saliency, top_regions=labels, saliency_target=1,
                             mri=mri, probability=0.7, label=1, threshold=0.5)
    assert predict.stored_axis_codes(path) == "LPS"
    predict.write_case_outputs(result, tmp_path / "out", "sub-01_T1w", storage_code=predict.stored_axis_codes(path))

    for name, expected in (("saliency", stored / stored.max()), ("top_regions", stored > np.median(stored))):
        written = nib.load(tmp_path / "out" / f"sub-01_T1w_{name}.nii.gz")
        assert written.shape == shape
        np.testing.assert_allclose(written.affine, lps_oblique_affine(), atol=1e-5)
        np.testing.assert_allclose(np.asanyarray(written.dataobj), expected.astype(np.float32), atol=1e-6,
                                   err_msg=f"{name} is not stored in the input's voxel order")
    mni = nib.load(tmp_path / "out" / "sub-01_T1w_saliency_mni.nii.gz")
    assert nib.aff2axcodes(mni.affine) == ("R", "A", "S")  # the template-space map stays RAS
