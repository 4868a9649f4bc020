"""Shared fixtures: the real MNI152 2009 template that nilearn ships (no download)."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def mni_t1_img():
    """nilearn's MNI152 2009 T1 at 1 mm as a nibabel image (brain only, 197x233x189)."""
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=1)


@pytest.fixture(scope="session")
def mni_t1_path(tmp_path_factory, mni_t1_img):
    """The MNI152 T1 written to a .nii.gz file (float32), as a user's file would be."""
    import nibabel as nib

    path = tmp_path_factory.mktemp("mni") / "mni_t1.nii.gz"
    img = nib.Nifti1Image(np.asarray(mni_t1_img.get_fdata(), dtype=np.float32), mni_t1_img.affine)
    nib.save(img, path)
    return path
