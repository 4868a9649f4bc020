"""Frozen-encoder training: per-case encoder features computed once, cached, and the phases
that train heads on them (the ``protocol`` preset with the ``frozen`` model preset)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from AmyloidKDLib.errors import ConfigError
from AmyloidKDLib.models import build_model
from AmyloidKDLib.models.encoders import SliceEncoder
from Training import features as feature_cache
from Training.config import load_config
from Training.data import SliceDataset
from Training.splits import Split

#: The protocol preset at 4 slices of 64 px and a couple of epochs: the same code path, fast.
SMALL = ["data.n_slices=4", "data.image_size=64", "engine.progress=false", "engine.device=cpu",
         "teacher.epochs=2", "student.epochs=2", "light.epochs=2", "evaluation.n_bootstrap=50"]
N_CASES = 16


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """16 cases of random float16 MRI and PET slice stacks, half amyloid-positive."""
    folder = tmp_path_factory.mktemp("slices")
    generator = torch.Generator().manual_seed(0)
    records, files = [], []
    for i in range(N_CASES):
        label = i % 2
        tensors = {"mri": torch.randn(4, 3, 64, 64, generator=generator).half(),
                   "pet": (torch.randn(4, 3, 64, 64, generator=generator) + label).half()}
        files.append(folder / f"case{i:02d}.safetensors")
        save_file(tensors, str(files[-1]))
        records.append(SimpleNamespace(subject_id=f"S{i:02d}", session_id="", label=label,
                                       centiloid=60.0 * label + i, tracer="AV45" if i % 3 else "PIB"))
    return SliceDataset(records, files)


def split(fold: int) -> Split:
    order = np.roll(np.arange(N_CASES), 4 * fold)
    return Split(fold, tuple(sorted(order[:8].tolist())), tuple(sorted(order[8:12].tolist())),
                 tuple(sorted(order[12:].tolist())))


@pytest.fixture
def encoder_calls(monkeypatch):
    """How many slices went through any encoder since the test began."""
    calls = []
    original = SliceEncoder.forward

    def counted(self, images):
        calls.append(int(images.shape[0]))
        return original(self, images)

    monkeypatch.setattr(SliceEncoder, "forward", counted)
    return calls


def test_features_are_encoded_once_then_read_from_memory_and_disk(cohort, tmp_path, encoder_calls):
    feature_cache.clear_memory()
    config = load_config("protocol", SMALL)
    encoder = build_model(config.model_config("student")).slices.encoder
    first, info = feature_cache.feature_dataset(cohort, encoder, tmp_path)
    assert info["source"] == "encoded" and info["encoded"] == N_CASES and info["encode_seconds"] >= 0
    assert sum(encoder_calls) == 2 * N_CASES * 4  # every MRI and PET slice, once
    assert first.mri[0].shape == (4, encoder.num_features) and first.pet[0].dtype == torch.float32
    assert first[3]["mri"].shape == (4, encoder.num_features) and first[3]["label"] == cohort[3]["label"]
    np.testing.assert_array_equal(first.tracer_rows, cohort.tracer_rows)
    assert cohort.mri[0].ndim == 4  # the image dataset is left as it was
    # The same encoder built again (another phase or fold) hits the cache: no encoder call.
    again = build_model(config.model_config("teacher")).slices.encoder
    second, info = feature_cache.feature_dataset(cohort, again, tmp_path)
    assert info["source"] == "memory" and second is first and sum(encoder_calls) == 2 * N_CASES * 4
    feature_cache.clear_memory()  # a new process: the disk cache answers
    third, info = feature_cache.feature_dataset(cohort, again, tmp_path)
    assert info["source"] == "disk" and info["read"] == N_CASES and sum(encoder_calls) == 2 * N_CASES * 4
    assert all(torch.equal(a, b) for a, b in zip(first.pet, third.pet))
    # With the encoder's inputs, the features are what the model computes on the images.
    with torch.no_grad():
        direct = encoder.eval()(cohort.mri[5].float())
    torch.testing.assert_close(third.mri[5], direct, atol=1e-5, rtol=1e-5)
    # Another encoder (the light student's CNN) gets features of its own.
    light = build_model(config.model_config("light_student")).slices.encoder
    cnn, info = feature_cache.feature_dataset(cohort, light, tmp_path)
    assert info["source"] == "encoded" and cnn.mri[0].shape == (4, light.num_features)
    assert feature_cache.encoder_hash(light) != feature_cache.encoder_hash(encoder)
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_phases_train_on_cached_features_and_a_second_fold_encodes_nothing(cohort, tmp_path, encoder_calls):
    from Training.phases import predict_probabilities, train_light, train_student, train_teacher

    feature_cache.clear_memory()
    config = load_config("protocol", SMALL + [f"data.cache_dir={tmp_path / 'cache'}"])
    teacher = train_teacher(config, cohort, split(0), tmp_path / "fold0")
    assert teacher.extra["features"]["source"] == "encoded" and teacher.extra["encode_seconds"] > 0
    assert teacher.extra["fit_seconds"] == teacher.fit.seconds
    encoded = sum(encoder_calls)
    assert encoded == 2 * N_CASES * 4
    student = train_student(config, cohort, split(0), tmp_path / "fold0", teacher=teacher.model)
    baseline = train_student(config, cohort, split(1), tmp_path / "fold1", teacher=None)
    assert student.extra["features"]["source"] == baseline.extra["features"]["source"] == "memory"
    assert student.extra["initialised_from_teacher"] == []
    assert sum(encoder_calls) == encoded  # the student, its teacher targets, another fold: no encoding
    # Trained on features, predicting on images (evaluation, checkpoints) gives the same answer.
    test = list(split(0).test)
    via_features = predict_probabilities(student.model, cohort, test)
    assert sum(encoder_calls) == encoded  # the image dataset's features were found in memory
    feature_cache.clear_memory()
    via_images = predict_probabilities(student.model, cohort, test)
    assert sum(encoder_calls) > encoded
    np.testing.assert_allclose(via_features, via_images, atol=1e-5)
    # The light student's frozen CNN is encoded once, separately; with init_from_teacher false
    # nothing of the teacher is copied.
    light = train_light(config, cohort, split(0), tmp_path / "fold0", teacher=teacher.model)
    assert light.extra["features"]["source"] == "encoded" and light.extra["initialised_from_teacher"] == []
    assert not torch.equal(light.model.classifier.layers[0].weight, teacher.model.classifier.layers[0].weight)
    assert not torch.equal(light.model.attention.attention.in_proj_weight,
                           teacher.model.cross_attention.attention.in_proj_weight)


def test_light_init_from_teacher_copies_the_teacher_heads(cohort, tmp_path):
    from Training.phases import train_light, train_teacher

    config = load_config("protocol", SMALL + ["light.init_from_teacher=true", "light.epochs=1"])
    teacher = train_teacher(config, cohort, split(0), tmp_path)
    light = train_light(config, cohort, split(0), tmp_path, teacher=teacher.model)
    assert set(light.extra["initialised_from_teacher"]) == {"attention", "pool", "classifier", "slices.position"}


@pytest.mark.parametrize("overrides, message", [
    (["teacher.pet_harmonization=tracer"], "teacher.pet_harmonization"),
    (["teacher.augment=true", "augment.enabled=true"], "teacher.augment"),
])
def test_frozen_teacher_refuses_pixel_space_settings(cohort, tmp_path, overrides, message):
    from Training.phases import train_teacher

    with pytest.raises(ConfigError, match=message):
        train_teacher(load_config("protocol", SMALL + overrides), cohort, split(0), tmp_path)


@pytest.mark.parametrize("phase, section", [("student", "student"), ("light", "light")])
def test_frozen_students_refuse_augmentation(cohort, tmp_path, phase, section):
    from Training.phases import train_light, train_student

    config = load_config("protocol", SMALL + [f"{section}.augment=true", "augment.enabled=true"])
    with pytest.raises(ConfigError, match=f"{section}.augment"):
        if phase == "student":
            train_student(config, cohort, split(0), tmp_path)
        else:
            train_light(config, cohort, split(0), tmp_path, teacher=build_model(config.model_config("teacher")))


def test_cpu_features_are_the_float64_encoder_output_rounded_once_to_float32():
    """Issue 26: the cached features are the float64 forward rounded to float32 (bit-equal), not
    the float32 forward, whose last digits depend on the CPU's kernels."""
    model = build_model(load_config("protocol", SMALL).model_config("student"))
    encoder = model.encoder.eval()
    stack = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    (features,) = feature_cache.encode_stacks(encoder, [stack])
    with torch.inference_mode():
        in_float64 = copy.deepcopy(encoder).double()(stack.double()).float()
        in_float32 = encoder(stack)
    assert features.dtype == torch.float32
    assert torch.equal(features, in_float64)
    assert not torch.equal(features, in_float32)  # the float32 path rounds differently somewhere
    torch.testing.assert_close(features, in_float32, atol=1e-4, rtol=1e-4)
    assert next(encoder.parameters()).dtype == torch.float32  # the model's own encoder untouched
