"""Sagittal slicing: informative range, anatomical order, aspect ratio, the encoder's normalisation,
and putting 2-D maps back on the right planes."""

from __future__ import annotations

import numpy as np
import pytest

from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.models.encoders import CLIP_MEAN, CLIP_STD, list_encoders
from AmyloidKDLib.slicing import SliceConfig, informative_range, sagittal_slices
from AmyloidKDLib.template import load_template
from AmyloidKDLib.volume import Volume


@pytest.fixture(scope="module")
def template():
    return load_template(2)


def unnormalise(images: np.ndarray, config: SliceConfig) -> np.ndarray:
    mean = np.asarray(config.mean).reshape(1, 3, 1, 1)
    std = np.asarray(config.std).reshape(1, 3, 1, 1)
    return images * std + mean


def test_clip_normalisation_constants_are_openai_clip():
    config = SliceConfig()
    assert config.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert config.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert (config.n_slices, config.image_size) == (15, 224)


@pytest.mark.parametrize("encoder", list_encoders())
def test_normalisation_is_the_encoders_pretrained_one(encoder):
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    config = SliceConfig(encoder=encoder)
    assert config.mean == tuple(OPENAI_DATASET_MEAN) and config.std == tuple(OPENAI_DATASET_STD)
    assert "mean" not in config.to_dict()


@pytest.mark.parametrize("stored, error", [
    ({"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}, None),  # checkpoints before the encoder field
    ({"mean": [0.5, 0.5, 0.5]}, "normalisation mean"),
    ({"std": "wide"}, "normalisation std"),
    ({"encoder": "biomedclp"}, "Did you mean 'biomedclip'"),
])
def test_stored_slice_configs_load_or_say_why_not(stored, error):
    values = {"n_slices": 8, "image_size": 112, "min_brain_fraction": 0.2, **stored}
    if error is None:
        assert SliceConfig.from_dict(values) == SliceConfig(n_slices=8, image_size=112)
    else:
        with pytest.raises(ConfigError, match=error):
            SliceConfig.from_dict(values)


def test_slices_follow_anatomical_order_left_to_right(template):
    ramp = np.broadcast_to(np.linspace(0.05, 1.0, template.shape[0])[:, None, None], template.shape)
    volume = template.t1.with_data(ramp * template.mask.data)
    stack = sagittal_slices(volume, template.mask, SliceConfig())
    assert stack.images.shape == (15, 3, 224, 224) and stack.images.dtype == np.float32
    assert np.all(np.diff(stack.positions) > 0)
    first, last = informative_range(template.mask, 0.2)
    assert (stack.positions[0], stack.positions[-1]) == (first, last)
    raw = unnormalise(stack.images, stack.config)[:, 0]
    peaks = raw.reshape(15, -1).max(axis=1)
    np.testing.assert_allclose(peaks, ramp[stack.positions, 0, 0], atol=0.02)


def test_informative_range_drops_planes_with_little_brain(template):
    counts = template.mask.data.sum(axis=(1, 2))
    first, last = informative_range(template.mask, 0.3)
    assert counts[first] >= 0.3 * counts.max() and counts[first - 1] < 0.3 * counts.max()
    assert counts[last] >= 0.3 * counts.max() and counts[last + 1] < 0.3 * counts.max()


def test_superior_is_up_and_anterior_is_right_without_aspect_distortion():
    shape = (20, 60, 40)  # a non-square sagittal plane (Y=60 > Z=40)
    data = np.zeros(shape, np.float32)
    data[:, 10:30, 5:25] = 1.0       # a 20 x 20 mm square block, posterior-inferior
    data[:, 40:50, 30:38] = 0.5      # a small anterior-superior marker
    mask = (data > 0).astype(np.float32)
    volume = Volume(data, np.eye(4))
    stack = sagittal_slices(volume, Volume(mask, np.eye(4), "mask"), SliceConfig(n_slices=3, image_size=120))
    image = unnormalise(stack.images, stack.config)[1, 0]
    block = image > 0.75
    rows, cols = np.flatnonzero(block.any(axis=1)), np.flatnonzero(block.any(axis=0))
    assert abs(len(rows) - len(cols)) <= 1  # square stays square after pad + resize
    marker = (image > 0.3) & (image < 0.7)
    marker_rows, marker_cols = np.nonzero(marker)
    assert marker_rows.mean() < rows.mean()  # superior marker above the inferior block
    assert marker_cols.mean() > cols.mean()  # anterior marker to the right
    background = stack.images[1, :, 0, 0]
    np.testing.assert_allclose(background, -np.asarray(CLIP_MEAN) / np.asarray(CLIP_STD), rtol=1e-5)


def test_second_volume_is_sliced_at_the_same_planes(template):
    config = SliceConfig(n_slices=9)
    mri = sagittal_slices(template.t1, template.mask, config)
    pet = sagittal_slices(template.gm, template.mask, config, positions=mri.positions)
    np.testing.assert_array_equal(mri.positions, pet.positions)
    raw = unnormalise(pet.images, config)[:, 0]
    expected = unnormalise(sagittal_slices(template.gm, template.mask, config).images, config)[:, 0]
    np.testing.assert_allclose(raw, expected, atol=1e-6)
    with pytest.raises(InputError, match="increasing plane indices"):
        sagittal_slices(template.gm, template.mask, config, positions=mri.positions[::-1])


def test_maps_placed_back_land_on_their_planes(template):
    config = SliceConfig(n_slices=15)
    stack = sagittal_slices(template.t1, template.mask, config)
    labels = np.arange(1, 16, dtype=np.float32)[:, None, None] * np.ones((15, 224, 224), np.float32)
    placed = stack.place_back(labels, template.t1)
    assert placed.shape == template.shape
    for index, plane in enumerate(stack.positions):
        np.testing.assert_allclose(placed[plane], index + 1, atol=1e-5)
    (start, stop) = stack.slabs[7]
    assert start <= stack.positions[7] < stop and np.all(placed[start:stop] == 8)
    assert np.all(placed[: stack.slabs[0][0]] == 0) and np.all(placed[stack.slabs[-1][1]:] == 0)
    # each slice's own image placed back reproduces the volume on its plane
    own = unnormalise(stack.images, config)[:, 0]
    recovered = stack.place_back(own, template.t1)
    inside = template.mask.data > 0.5
    for plane in stack.positions[3:12]:
        r = np.corrcoef(recovered[plane][inside[plane]], template.t1.data[plane][inside[plane]])[0, 1]
        assert r > 0.97


def test_bad_inputs_raise_clear_errors(template):
    with pytest.raises(ConfigError, match="n_slices"):
        SliceConfig(n_slices=0)
    flipped = Volume(template.t1.data[::-1], template.t1.affine @ np.diag([-1, 1, 1, 1]))
    with pytest.raises(InputError, match="RAS"):
        sagittal_slices(flipped, template.mask)
    stack = sagittal_slices(template.t1, template.mask, SliceConfig(n_slices=4))
    with pytest.raises(InputError, match="maps of shape"):
        stack.place_back(np.zeros((3, 224, 224)), template.t1)
    with pytest.raises(InputError, match="only"):
        sagittal_slices(template.t1, template.mask, SliceConfig(n_slices=500))
    assert SliceConfig.from_dict(SliceConfig(n_slices=7).to_dict()) == SliceConfig(n_slices=7)
    with pytest.raises(ConfigError, match="unknown SliceConfig key"):
        SliceConfig.from_dict({"slices": 3})
