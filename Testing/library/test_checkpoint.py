"""Checkpoints: save -> load gives identical outputs; damaged or foreign files give clear errors
and are never unpickled."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from importlib import metadata

import pytest
import torch

from AmyloidKDLib.checkpoint import INFO_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from AmyloidKDLib.errors import CheckpointError
from AmyloidKDLib.models import ModelConfig, TeacherModel, build_model

PREP = {"preset": "fast", "skull_strip": "none", "gamma": 0.9}
SLICES = {"n_slices": 4, "image_size": 64}  # the cpu preset with fewer, smaller slices


def stack(config: ModelConfig, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, config.n_slices, 3, config.image_size, config.image_size, generator=generator)


@pytest.fixture(scope="module")
def saved_student(tmp_path_factory):
    """A cpu-preset student whose heads were nudged away from their initial values, saved."""
    torch.manual_seed(0)
    config = ModelConfig.preset("cpu", "student", **SLICES)
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    model.eval()
    directory = tmp_path_factory.mktemp("ckpt") / "student"
    save_checkpoint(directory, model, config, prep_config=PREP, slice_config=SLICES, threshold=0.37,
                    metrics={"f1": 0.52, "auc": 0.71}, provenance={"run": "unit-test", "fold": 0})
    return model, config, directory


def copy_checkpoint(directory, destination):
    destination.mkdir()
    for name in (WEIGHTS_FILE, INFO_FILE):
        (destination / name).write_bytes((directory / name).read_bytes())
    return destination


def record_weights(directory):
    """Make checkpoint.json record the SHA-256 and size of the (replaced) weights file."""
    data = (directory / WEIGHTS_FILE).read_bytes()
    info = json.loads((directory / INFO_FILE).read_text())
    info["weights"].update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    (directory / INFO_FILE).write_text(json.dumps(info))


def test_student_save_then_load_gives_identical_outputs_and_metadata(saved_student):
    model, config, directory = saved_student
    loaded, info = load_checkpoint(directory)
    mri = stack(config, seed=5)
    with torch.no_grad():
        expected, actual = model(mri), loaded(mri)
    assert torch.equal(expected.logits, actual.logits)
    assert torch.equal(expected.embedding, actual.embedding)
    assert not loaded.training
    assert info.model_config == config and info.threshold == 0.37
    assert info.prep_config == PREP and info.slice_config == SLICES
    assert info.metrics == {"f1": 0.52, "auc": 0.71} and info.provenance["fold"] == 0
    assert info.versions["torch"] == metadata.version("torch")
    assert sorted(os.listdir(directory)) == [INFO_FILE, WEIGHTS_FILE]  # no temporary files left


def test_teacher_save_then_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    config = ModelConfig.preset("cpu", "teacher", **SLICES)
    teacher = build_model(config).eval()
    # The per-tracer PET reference travels with the weights.
    teacher.harmonization.fit([stack(config, 10 + k)[0] for k in range(6)], [0, 1, 0, 1, 0, 1], [0] * 6,
                              min_cases=2)
    save_checkpoint(tmp_path / "teacher", teacher, config, prep_config=PREP, slice_config=SLICES,
                    threshold=0.5, metrics={}, provenance={})
    loaded, info = load_checkpoint(tmp_path / "teacher" / INFO_FILE)
    assert loaded.harmonization.is_fitted
    assert torch.equal(loaded.harmonization.reference, teacher.harmonization.reference)
    mri, pet, tracer = stack(config, 1), stack(config, 2), torch.tensor([1, 0])
    with torch.no_grad():
        a, b = teacher(mri, pet, tracer), loaded(mri, pet, tracer)
    assert isinstance(loaded, TeacherModel)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("guided", "pet", "mri", "logits"))

    # A teacher saved before PET harmonisation existed loads with it off (the identity).
    from safetensors.torch import load_file, save_file

    legacy = copy_checkpoint(tmp_path / "teacher", tmp_path / "legacy")
    state = {k: v for k, v in load_file(str(legacy / WEIGHTS_FILE)).items() if not k.startswith("harmonization.")}
    save_file(state, str(legacy / WEIGHTS_FILE), metadata={"format": "pt"})
    record_weights(legacy)
    old, _ = load_checkpoint(legacy)
    assert not old.harmonization.is_fitted
    with torch.no_grad():
        assert torch.equal(old(mri, pet, tracer).logits, teacher(mri, pet, harmonized=True).logits)


def test_truncated_weights_are_refused(saved_student, tmp_path):
    directory = copy_checkpoint(saved_student[2], tmp_path / "truncated")
    data = (directory / WEIGHTS_FILE).read_bytes()
    (directory / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(directory)


def test_tampered_weights_are_refused(saved_student, tmp_path):
    directory = copy_checkpoint(saved_student[2], tmp_path / "tampered")
    data = bytearray((directory / WEIGHTS_FILE).read_bytes())
    data[len(data) - 100] ^= 0xFF  # same size, one byte of a tensor changed
    (directory / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(directory)


def test_weights_that_do_not_fit_the_described_model_are_refused(saved_student, tmp_path):
    directory = copy_checkpoint(saved_student[2], tmp_path / "mismatched")
    info = json.loads((directory / INFO_FILE).read_text())
    info["model_config"]["embed_dim"] = 64
    (directory / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="do not match the model .* another shape"):
        load_checkpoint(directory)
    info["model_config"]["kind"] = "teacher"
    info["model_config"]["embed_dim"] = 128
    (directory / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"\(teacher, encoder vit_tiny\).* missing \[cross_attention"):
        load_checkpoint(directory)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda info: info.update(format="some-other-tool"), "not an AmyloidKD checkpoint description"),
    (lambda info: info.update(format_version=99), "format version 99.*Upgrade AmyloidKD"),
    (lambda info: info["model_config"].update(depth=4), "not usable by this AmyloidKD version.*depth"),
    (lambda info: info.pop("threshold"), "lacks the entries threshold"),
])
def test_unknown_or_incomplete_descriptions_are_refused(saved_student, tmp_path, edit, message):
    directory = copy_checkpoint(saved_student[2], tmp_path / "edited")
    info = json.loads((directory / INFO_FILE).read_text())
    edit(info)
    (directory / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory)


def test_damaged_json_and_missing_files_are_refused(saved_student, tmp_path):
    directory = copy_checkpoint(saved_student[2], tmp_path / "damaged")
    (directory / INFO_FILE).write_text('{"format": "amyloidkd-checkpoint", ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(directory)
    (directory / INFO_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{INFO_FILE} is missing"):
        load_checkpoint(directory)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


class _Exploit:
    """Unpickling this object creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_files_are_never_unpickled(saved_student, tmp_path):
    marker = tmp_path / "pickle-was-executed"
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"state_dict": _Exploit(marker)}))
    with pytest.raises(CheckpointError, match="never loaded"):
        load_checkpoint(pickled)

    # A pickle disguised as model.safetensors, with a matching hash and size in the JSON.
    directory = copy_checkpoint(saved_student[2], tmp_path / "disguised")
    (directory / WEIGHTS_FILE).write_bytes(pickled.read_bytes())
    record_weights(directory)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(directory)
    assert not marker.exists()


def test_threshold_and_metadata_are_checked_before_writing(tmp_path):
    config = ModelConfig.preset("cpu", "light_student", **SLICES)
    model = build_model(config)
    with pytest.raises(CheckpointError, match="threshold"):
        save_checkpoint(tmp_path / "a", model, config, prep_config={}, slice_config={}, threshold=1.5)
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "b", model, config, prep_config={"path": tmp_path}, slice_config={},
                        threshold=0.5)
    assert not (tmp_path / "b").exists()


def test_logit_calibration_travels_with_the_weights(tmp_path):
    torch.manual_seed(1)
    config = ModelConfig.preset("cpu", "student", **SLICES)
    model = build_model(config).eval()
    mri = stack(config, seed=3)
    with torch.no_grad():
        raw = model(mri).logits
        model.calibration.set(40.0, -2.5)
        calibrated = model(mri).logits
    torch.testing.assert_close(calibrated, 40.0 * raw - 2.5)
    save_checkpoint(tmp_path / "calibrated", model, config, prep_config=PREP, slice_config=SLICES,
                    threshold=0.5)
    loaded, _ = load_checkpoint(tmp_path / "calibrated")
    with torch.no_grad():
        torch.testing.assert_close(loaded(mri).logits, calibrated)


def test_checkpoints_from_before_calibration_load_uncalibrated(saved_student, tmp_path):
    """Weights saved without the calibration (or feature standardisation) buffers load with
    the identity map."""
    from safetensors.torch import load_file, save_file

    model, config, directory = saved_student
    legacy = copy_checkpoint(directory, tmp_path / "legacy")
    state = {k: v for k, v in load_file(str(legacy / WEIGHTS_FILE)).items()
             if not k.startswith(("calibration.", "slices.standardization."))}
    save_file(state, str(legacy / WEIGHTS_FILE), metadata={"format": "pt"})
    record_weights(legacy)
    loaded, _ = load_checkpoint(legacy)
    assert float(loaded.calibration.scale) == 1.0 and float(loaded.calibration.offset) == 0.0
    assert not loaded.slices.standardization.is_fitted
    mri = stack(config, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(mri).logits, model(mri).logits)
