"""Predictor: a student checkpoint turns a raw T1 into a probability and native-grid saliency."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from AmyloidKDLib.errors import CheckpointError, ConfigError

#: A known rigid pose of the "subject" relative to MNI: degrees about x, y, z and mm.
POSE_DEGREES = (6.0, -4.0, 10.0)
POSE_SHIFT_MM = (5.0, -7.0, 9.0)
#: Decision threshold stored in the test checkpoint (not 0.5, so a default cannot pass for it).
TEST_THRESHOLD = 0.37


def _rotation(degrees) -> np.ndarray:
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def write_moved_mni_t1(path: Path, mni_img, spacing: float = 2.0, scale: float = 800.0) -> Path:
    """The MNI152 T1 (skull-free) moved by the known pose, on a coarser LPS grid, as a scanner file.

    World mapping: subject point = R @ mni point + t. The file stores LPS voxel order, so loading
    it exercises the reorientation to RAS+.
    """
    mni = np.asarray(mni_img.get_fdata(), dtype=np.float32)
    world_to_subject = np.eye(4)
    world_to_subject[:3, :3] = _rotation(POSE_DEGREES)
    world_to_subject[:3, 3] = POSE_SHIFT_MM
    shape = tuple(int(np.ceil(s / spacing)) + 8 for s in mni.shape)
    # LPS storage: axis 0 runs right->left, axis 1 anterior->posterior.
    centre = world_to_subject @ mni_img.affine @ np.append((np.array(mni.shape) - 1) / 2, 1)
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    voxel_to_mni_voxel = np.linalg.inv(mni_img.affine) @ np.linalg.inv(world_to_subject) @ affine
    data = ndimage.affine_transform(mni, voxel_to_mni_voxel[:3, :3], voxel_to_mni_voxel[:3, 3],
                                    output_shape=shape, order=1)
    nib.save(nib.Nifti1Image((np.clip(data, 0, None) * scale).astype(np.int16), affine), path)
    return path


def write_test_checkpoint(folder: Path, kind: str = "student", seed: int = 0,
                          threshold: float = 0.5, prep_config: dict | None = None) -> Path:
    """An untrained CPU-preset student saved as a real checkpoint with the ``fast`` preparation
    (or ``prep_config``, a PrepConfig dict)."""
    from AmyloidKDLib.checkpoint import save_checkpoint
    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.slicing import SliceConfig

    config = ModelConfig.preset("cpu", kind)
    torch.manual_seed(seed)
    model = build_model(config)
    slices = SliceConfig(n_slices=config.n_slices, image_size=config.image_size)
    prep = prep_config if prep_config is not None else PrepConfig.preset("fast").to_dict()
    return save_checkpoint(folder, model, config, prep_config=prep,
                           slice_config=slices.to_dict(), threshold=threshold,
                           provenance={"note": "untrained weights, for tests"})


@pytest.fixture(scope="module")
def native_t1_path(tmp_path_factory, mni_t1_img):
    return write_moved_mni_t1(tmp_path_factory.mktemp("native") / "subject_T1w.nii.gz", mni_t1_img)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_test_checkpoint(tmp_path_factory.mktemp("ckpt") / "student",
                                 threshold=TEST_THRESHOLD)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from AmyloidKDLib.inference import Predictor

    return Predictor(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def first_prediction(predictor, native_t1_path):
    from AmyloidKDLib.volume import load_volume

    steps = []
    result = predictor.predict(load_volume(native_t1_path), on_step=steps.append)
    return result, steps


def test_prediction_lands_on_the_native_grid(first_prediction, native_t1_path):
    from AmyloidKDLib.template import load_template
    from AmyloidKDLib.volume import load_volume

    result, steps = first_prediction
    native = load_volume(native_t1_path)
    for volume in (result.saliency, result.top_regions):
        assert volume.shape == native.shape
        np.testing.assert_allclose(volume.affine, native.affine)
    assert result.saliency_mni.shape == load_template(2).shape  # the fast preset's 2 mm grid
    assert 0.0 <= result.saliency.data.min() and result.saliency.data.max() <= 1.0
    assert result.saliency.data.max() > 0.5                    # evidence somewhere, scaled to 1
    labels = result.top_regions.data
    np.testing.assert_array_equal(labels, np.round(labels))
    assert labels.max() >= 1
    # saliency and top regions lie in the head, not in the padding around it
    head = ndimage.binary_dilation(native.data > 0.05 * native.data.max(), iterations=3)
    assert result.saliency.data[~head].max() < 0.05
    assert not labels[~head].any()
    assert steps == ["prepare", "model", "saliency"]


def test_prediction_reports_probability_label_and_timings(first_prediction, predictor):
    result, _ = first_prediction
    assert 0.0 < result.probability < 1.0
    assert result.threshold == pytest.approx(TEST_THRESHOLD) == predictor.threshold
    assert result.label == int(result.probability >= result.threshold)
    assert result.saliency_target == result.label
    for step in ("prepare", "model", "saliency", "total"):
        assert result.timings[step] > 0.0
    assert result.timings["total"] >= result.timings["prepare"] + result.timings["model"]
    assert "prepare/register_mri_to_mni" in result.timings
    assert result.device == "cpu"


DETERMINISM_SCRIPT = """
import json, sys
import numpy as np
from AmyloidKDLib.inference import Predictor
checkpoint, t1 = sys.argv[1:3]
first = Predictor(checkpoint, device="cpu", deterministic=True).predict_file(t1)
second = Predictor(checkpoint, device="cpu", deterministic=True).predict_file(t1)
print(json.dumps({
    "probabilities": [first.probability, second.probability],
    "saliency_equal": bool(np.array_equal(first.saliency.data, second.saliency.data)),
    "labels_equal": bool(np.array_equal(first.top_regions.data, second.top_regions.data)),
    "saliency_max": float(first.saliency.data.max())}))
"""


@pytest.mark.slow
def test_repeated_prediction_on_cpu_is_identical(checkpoint, native_t1_path, tmp_path):
    # A fresh process, as the CLI and the Slicer module run it: ITK's thread count can only be
    # fixed before its first use in a process, and this test process may have used it already.
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(checkpoint),
                           str(native_t1_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    first, second = report["probabilities"]
    assert first == second
    assert report["saliency_equal"] and report["labels_equal"]
    assert report["saliency_max"] > 0.5


def test_threshold_and_skull_strip_override_come_through(checkpoint, predictor):
    from AmyloidKDLib.inference import Predictor
    from AmyloidKDLib.pipeline import PrepConfig

    assert predictor.threshold == pytest.approx(TEST_THRESHOLD)
    expected = PrepConfig.preset("fast").to_dict()
    expected["skull_strip"].update(device="cpu")     # an explicit device reaches HD-BET too
    assert predictor.prep_config.to_dict() == expected
    override = Predictor(checkpoint, device="cpu", skull_strip="hd-bet-v1", saliency=False)
    expected["skull_strip"].update(backend="hd-bet-v1")
    assert override.prep_config.to_dict() == expected


def test_unavailable_cuda_is_refused_with_advice():
    from AmyloidKDLib.capability import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.fixture()
def edited_checkpoint(checkpoint, tmp_path):
    """A copy of the test checkpoint whose checkpoint.json an edit function changes."""
    import json
    import shutil

    def edit(change) -> Path:
        folder = Path(shutil.copytree(checkpoint, tmp_path / "edited"))
        info_path = folder / "checkpoint.json"
        info = json.loads(info_path.read_text())
        change(info)
        info_path.write_text(json.dumps(info))
        return folder

    return edit


def test_a_teacher_checkpoint_is_refused(edited_checkpoint):
    from AmyloidKDLib.inference import Predictor

    folder = edited_checkpoint(lambda info: info["model_config"].update(kind="teacher"))
    with pytest.raises(CheckpointError, match="needs a student checkpoint"):
        Predictor(folder, device="cpu")


def test_a_checkpoint_whose_slices_do_not_fit_its_model_is_refused(edited_checkpoint):
    from AmyloidKDLib.inference import Predictor

    folder = edited_checkpoint(lambda info: info["slice_config"].update(n_slices=3))
    with pytest.raises(CheckpointError, match="inconsistent"):
        Predictor(folder, device="cpu")
