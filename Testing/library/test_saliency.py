"""Saliency geometry: per-slice maps -> MNI slabs -> [0, 1] in the brain -> native grid."""

from __future__ import annotations

import numpy as np
import pytest

from AmyloidKDLib.errors import ConfigError
from AmyloidKDLib.saliency import SaliencyConfig, scale_in_brain, top_region_labels


def test_scaling_divides_by_the_brain_maximum_and_zeroes_outside_the_brain():
    data = np.array([[[0.0, 2.0, 4.0, 8.0, 100.0]]], dtype=np.float32)
    mask = np.array([[[1, 1, 1, 1, 0]]], dtype=np.float32)
    scaled = scale_in_brain(data, mask)
    np.testing.assert_allclose(scaled, [[[0.0, 0.25, 0.5, 1.0, 0.0]]])


def test_scaling_keeps_a_map_without_evidence_at_zero():
    data = np.full((3, 3, 3), -1.0, dtype=np.float32)
    assert not scale_in_brain(data, np.ones_like(data)).any()


def test_top_regions_are_the_voxels_above_the_percentile_ranked_by_strength():
    saliency = np.zeros((20, 20, 20), dtype=np.float32)
    saliency[2:6, 2:6, 2:6] = 0.5          # 64 voxels, summed 32
    saliency[10:13, 10:13, 10:13] = 1.0    # 27 voxels, summed 27
    saliency[15:20] = 0.01                 # 2000 weak voxels hold the 90th percentile
    mask = np.ones_like(saliency)
    labels, threshold = top_region_labels(saliency, mask, percentile=90.0)
    assert labels.dtype == np.uint8
    assert threshold == pytest.approx(0.01)
    np.testing.assert_array_equal(labels > 0, saliency > threshold)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.all(labels[2:6, 2:6, 2:6] == 1)      # larger summed saliency ranks first
    assert np.all(labels[10:13, 10:13, 10:13] == 2)
    assert not labels[15:20].any()


def test_top_regions_ignore_voxels_outside_the_brain():
    saliency = np.zeros((10, 10, 10), dtype=np.float32)
    saliency[0:2] = 1.0
    saliency[5, 5, 5:7] = 0.8
    mask = np.zeros_like(saliency)
    mask[3:] = 1
    labels, _ = top_region_labels(saliency, mask, percentile=90.0)
    assert not labels[0:2].any()
    assert np.all(labels[5, 5, 5:7] == 1) and (labels > 0).sum() == 2


def test_top_regions_merge_beyond_the_label_budget():
    saliency = np.zeros((1, 1, 40), dtype=np.float32)
    saliency[0, 0, ::2] = np.linspace(1.0, 2.0, 20)  # 20 isolated voxels
    labels, _ = top_region_labels(saliency, np.ones_like(saliency), percentile=0.0, max_regions=5)
    assert labels.max() == 5
    assert labels[0, 0, 38] == 1                     # the strongest voxel
    assert (labels == 5).sum() == 16                 # the 16 weakest share the last label


@pytest.mark.parametrize("values, message", [
    ({"target": "negative"}, "saliency target"),
    ({"top_percentile": 100.0}, "top_percentile"),
    ({"max_regions": 300}, "max_regions"),
])
def test_bad_saliency_settings_name_the_setting(values, message):
    with pytest.raises(ConfigError, match=message):
        SaliencyConfig(**values)


def test_saliency_config_round_trips_and_names_unknown_keys():
    config = SaliencyConfig(target="positive", top_percentile=95.0)
    assert SaliencyConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="percentil"):
        SaliencyConfig.from_dict({"percentil": 90})


# --- geometry with a known transform, and a model whose evidence sits in one slab -------------

SLICE_CONFIG = dict(n_slices=8, image_size=112)


@pytest.fixture(scope="module")
def template():
    from AmyloidKDLib.template import load_template

    return load_template(2)


def _ras_to_lps() -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def known_transform(template, tmp_path_factory):
    """An MNI->native Transform from a hand-written ANTs affine, and the native grid/brain.

    ANTs maps fixed (MNI) physical points to moving (native) points in LPS: p_n = R p_m + t.
    The native grid is RAS with anisotropic voxels, covering the moved brain.
    """
    import ants

    from AmyloidKDLib.registration import Grid, Transform
    from AmyloidKDLib.volume import Volume

    def rot(axis: int, degrees: float) -> np.ndarray:
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    rotation_lps = rot(2, 12.0) @ rot(0, -7.0)
    translation_lps = np.array([6.0, -4.0, 9.0])
    path = tmp_path_factory.mktemp("known_affine") / "mni_to_native.mat"
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=rotation_lps, translation=translation_lps,
                                    center=(0.0, 0.0, 0.0))
    ants.write_transform(tx, str(path))

    flip = _ras_to_lps()
    mni_to_native_ras = np.eye(4)
    mni_to_native_ras[:3, :3] = flip @ rotation_lps @ flip
    mni_to_native_ras[:3, 3] = flip @ translation_lps
    corners = np.array([[i, j, k, 1.0] for i in (0, template.shape[0] - 1)
                        for j in (0, template.shape[1] - 1) for k in (0, template.shape[2] - 1)])
    moved = (mni_to_native_ras @ template.affine @ corners.T).T[:, :3]
    spacing = np.array([2.2, 2.5, 2.4])
    origin = moved.min(axis=0) - 6.0
    shape = tuple(int(s) for s in np.ceil((moved.max(axis=0) + 6.0 - origin) / spacing))
    native_affine = np.eye(4)
    native_affine[:3, :3] = np.diag(spacing)
    native_affine[:3, 3] = origin
    native_grid = Volume(np.zeros(shape, np.float32), native_affine, "T1w")
    transform = Transform([str(path)], [str(path)], [True], Grid.of(template.t1),
                          Grid.of(native_grid), "affine")
    native_t1 = transform.apply(template.t1, "inverse", "linear", reference=native_grid)
    native_brain = transform.apply(template.mask, "inverse", "nearest", reference=native_grid)
    return transform, native_t1, native_brain.data > 0.5, mni_to_native_ras


def _mni_voxel_of_native_voxels(native, template, mni_to_native_ras) -> np.ndarray:
    """Continuous MNI voxel coordinates (3, X, Y, Z) of every native voxel centre."""
    ijk = np.indices(native.shape).reshape(3, -1)
    world = native.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    mni_world = np.linalg.inv(mni_to_native_ras) @ world
    return (np.linalg.inv(template.affine) @ mni_world)[:3].reshape(3, *native.shape)


def test_saliency_maps_back_to_native_grid(template, known_transform):
    from scipy import ndimage

    from AmyloidKDLib.saliency import saliency_volumes
    from AmyloidKDLib.slicing import SliceConfig, sagittal_slices

    transform, native, native_brain, mni_to_native_ras = known_transform
    stack = sagittal_slices(template.t1, template.mask, SliceConfig(**SLICE_CONFIG))
    size = SLICE_CONFIG["image_size"]
    rows, cols = np.mgrid[0:size, 0:size] / size
    maps = np.stack([(n + 1) * np.exp(-((rows - 0.4) ** 2 + (cols - 0.3 - 0.05 * n) ** 2) / 0.02)
                     for n in range(SLICE_CONFIG["n_slices"])]).astype(np.float32)

    result = saliency_volumes(maps, stack.place_back, template.t1, template.mask, transform,
                              native, SaliencyConfig())

    assert result.native.shape == native.shape
    np.testing.assert_allclose(result.native.affine, native.affine)
    assert result.top_regions.shape == native.shape
    np.testing.assert_allclose(result.top_regions.affine, native.affine)
    assert result.mni.shape == template.shape
    assert 0.0 <= result.native.data.min() and result.native.data.max() <= 1.0
    assert result.mni.data.max() == pytest.approx(1.0)
    assert not result.mni.data[template.mask.data < 0.5].any()
    labels = np.unique(result.top_regions.data)
    np.testing.assert_array_equal(labels, np.round(labels))

    # Independent check: sample the MNI saliency at each native voxel's MNI position.
    coords = _mni_voxel_of_native_voxels(native, template, mni_to_native_ras)
    expected = ndimage.map_coordinates(result.mni.data, coords, order=1, mode="constant")
    inside = np.all([(c > 1) & (c < s - 2) for c, s in zip(coords, template.shape)], axis=0)
    assert inside.sum() > 0.3 * inside.size
    assert np.abs(result.native.data - expected)[inside].max() < 1e-3
    # The evidence's centre of mass lands where the known transform says it must.
    def centroid_mm(volume):
        ijk = np.indices(volume.shape).reshape(3, -1)
        weights = volume.data.reshape(-1)
        centre = (ijk * weights).sum(axis=1) / weights.sum()
        return (volume.affine @ np.append(centre, 1.0))[:3]

    native_centre_in_mni = np.linalg.inv(mni_to_native_ras) @ np.append(centroid_mm(result.native), 1)
    assert np.linalg.norm(native_centre_in_mni[:3] - centroid_mm(result.mni)) < 2.0


def _confine_evidence_to_slice(model, slice_index: int, channel: int = 0) -> None:
    """Set the student's head weights so its logit depends on one slice only.

    Slices stop mixing (attention output zeroed); one embedding channel carries nothing but the
    slice position (+3 for ``slice_index``, -3 elsewhere); attention pooling reads that channel
    with a saturating gain, so pooling weights are one-hot on ``slice_index``.
    """
    import torch

    with torch.no_grad():
        out_proj = model.attention.attention.out_proj
        out_proj.weight.zero_()
        out_proj.bias.zero_()
        last = model.slices.projection.layers[-1]
        last.weight[channel].zero_()
        last.bias[channel] = 0.0
        position = model.slices.position.embedding
        position[:, channel] = -3.0
        position[slice_index, channel] = 3.0
        hidden, scorer = model.pool.score[0], model.pool.score[2]
        hidden.weight.zero_()
        hidden.bias.zero_()
        hidden.weight[:, channel] = 10.0
        scorer.weight.fill_(1.0)
        scorer.bias.zero_()


@pytest.mark.parametrize("kind", ["student", "light_student"])
def test_saliency_is_confined_to_the_slab_the_model_uses(kind, template, known_transform):
    import torch

    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.saliency import saliency_volumes, slice_gradcam
    from AmyloidKDLib.slicing import SliceConfig, sagittal_slices

    transform, native, native_brain, mni_to_native_ras = known_transform
    stack = sagittal_slices(template.t1, template.mask, SliceConfig(**SLICE_CONFIG))
    torch.manual_seed(3)
    model = build_model(ModelConfig.preset("cpu", kind, **SLICE_CONFIG)).eval()
    used = 5
    _confine_evidence_to_slice(model, used)
    slices = torch.from_numpy(stack.images)
    with torch.no_grad():
        weights = model(slices[None]).slice_weights[0]
    assert weights[used] > 0.999  # the construction works: one slice decides

    cam = slice_gradcam(model, slices, target_label=1)
    with torch.no_grad():
        assert cam.logit == pytest.approx(float(model(slices[None]).logits[0]), abs=1e-5)
    result = saliency_volumes(cam.maps, stack.place_back, template.t1, template.mask, transform,
                              native, SaliencyConfig())

    start, stop = stack.slabs[used]
    brain = template.mask.data > 0.5
    in_slab = np.zeros(template.shape, bool)
    in_slab[start:stop] = True
    inside, outside = result.mni.data[in_slab & brain], result.mni.data[~in_slab & brain]
    assert inside.mean() > 0.05
    assert outside.max() < 1e-4 * inside.max()
    assert result.top_regions_mni.data[~in_slab].max() == 0

    # The same on the native grid, keeping one MNI plane away from the slab's faces.
    mni_i = _mni_voxel_of_native_voxels(native, template, mni_to_native_ras)[0]
    native_inside = native_brain & (mni_i > start + 1) & (mni_i < stop - 2)
    native_outside = native_brain & ((mni_i < start - 2) | (mni_i > stop + 1))
    assert native_inside.sum() > 100
    assert result.native.data[native_inside].mean() > 0.05
    assert result.native.data[native_outside].max() < 1e-3
    assert result.native.data[native_inside].mean() > 50 * result.native.data[native_outside].mean()


def test_linear_point_map_is_the_hand_written_affine(known_transform):
    from AmyloidKDLib.registration import linear_point_map

    transform, _, _, mni_to_native_ras = known_transform
    # the inverse direction pulls MNI values to native points: native point -> MNI point
    native_to_mni = linear_point_map(transform.inverse_files, transform.inverse_flags)
    np.testing.assert_allclose(native_to_mni, np.linalg.inv(mni_to_native_ras), atol=1e-9)
    np.testing.assert_allclose(linear_point_map(transform.forward_files, [False]),
                               mni_to_native_ras, atol=1e-9)
    assert linear_point_map(["warp.nii.gz", "affine.mat"], [False, False]) is None


def test_reach_box_holds_every_voxel_the_warp_can_make_nonzero(template, known_transform):
    from AmyloidKDLib.registration import Grid, Transform

    transform, native, _, _ = known_transform
    # a blob in one corner of the brain: its reach is a small part of the native grid
    blob = np.zeros(template.shape, np.float32)
    blob[20:35, 60:80, 40:55] = 1.0
    blob *= template.mask.data > 0.5
    source = template.t1.with_data(blob, modality="saliency")
    box = transform.reach(blob > 0, source, "inverse", native)
    full = transform.apply(source, "inverse", "linear", reference=native).data
    outside = full.copy()
    outside[box] = 0.0
    assert full.max() > 0.5 and not outside.any()
    assert np.prod([b.stop - b.start for b in box]) < 0.25 * np.prod(native.shape)
    # warping only the box gives the same voxels as warping everything
    part = Grid.of(native).crop(box)
    np.testing.assert_allclose(np.asarray(part.affine)[:3, 3],
                               (native.affine @ [*(b.start for b in box), 1.0])[:3])
    cropped = transform.apply(source, "inverse", "linear", reference=part).data
    np.testing.assert_allclose(cropped, full[box], atol=1e-6)
    # nothing to warp: an empty box; a non-linear part: no box (warp everything)
    empty = transform.reach(np.zeros(template.shape, bool), source, "inverse", native)
    assert all(b.stop == b.start for b in empty)
    syn = Transform(["warp.nii.gz"], ["warp.nii.gz"], [False], transform.fixed, transform.moving,
                    "syn")
    assert syn.reach(blob > 0, source, "inverse", native) is None


def test_saliency_volumes_equal_warping_the_whole_grid(template, known_transform):
    from AmyloidKDLib.saliency import saliency_volumes
    from AmyloidKDLib.slicing import SliceConfig, sagittal_slices

    transform, native, _, _ = known_transform
    stack = sagittal_slices(template.t1, template.mask, SliceConfig(**SLICE_CONFIG))
    size = SLICE_CONFIG["image_size"]
    rows, cols = np.mgrid[0:size, 0:size] / size
    maps = np.stack([np.exp(-((rows - 0.6) ** 2 + (cols - 0.5) ** 2) / 0.01)] *
                    SLICE_CONFIG["n_slices"]).astype(np.float32)
    result = saliency_volumes(maps, stack.place_back, template.t1, template.mask, transform,
                              native, SaliencyConfig())
    whole = transform.apply(result.mni, "inverse", "linear", reference=native).data
    labels = transform.apply(result.top_regions_mni, "inverse", "nearest", reference=native).data
    np.testing.assert_allclose(result.native.data, np.clip(whole, 0.0, 1.0), atol=1e-6)
    np.testing.assert_array_equal(result.top_regions.data, np.rint(labels))
    assert result.top_regions.data.max() >= 1


def test_gradient_x_input_maps_the_pixels_the_logit_reads_at_full_resolution():
    """A model whose logit is 0.5 x the sum of channel 0 over a 12x12 square of slice 2: gradient x input
    is 0.5 x pixel there and 0 elsewhere (at the square's centre the 1.5 px smoothing changes nothing)."""
    from types import SimpleNamespace

    import torch

    from AmyloidKDLib.saliency import SaliencyConfig, slice_saliency

    class SquareReader(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, cases):
            return SimpleNamespace(logits=self.weight * cases[:, 2, 0, 20:32, 40:52].sum(dim=(-2, -1)))

    slices = torch.full((4, 3, 64, 64), 2.0)
    maps = slice_saliency(SquareReader(), slices, target_label=1, method="gradient-x-input")
    assert maps.maps.shape == (4, 64, 64) and maps.target_label == 1
    assert maps.logit == pytest.approx(0.5 * 2.0 * 144)
    assert maps.maps[2, 26, 46] == pytest.approx(1.0, abs=1e-3)  # 0.5 * 2.0 inside, away from the edges
    assert maps.maps[2, 0:10].max() < 1e-6 and maps.maps[[0, 1, 3]].max() == 0.0
    bright = maps.maps[2] > 0.5
    assert bright[20:32, 40:52].mean() > 0.7 and not bright[:16].any() and not bright[:, :36].any()
    negative = slice_saliency(SquareReader(), slices, target_label=0, method="gradient-x-input")
    assert negative.maps.max() == 0.0  # evidence against the negative class only: nothing to show
    with pytest.raises(ConfigError, match="saliency method must be one of gradcam, gradient-x-input"):
        SaliencyConfig(method="occlusion")
