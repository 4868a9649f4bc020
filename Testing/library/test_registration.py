"""Registration on the real MNI152 template: a copy moved by a known rotation, translation,
scaling and smooth deformation, stored on another grid and orientation, must register back,
and the inverse transform must carry the template's mask onto the moved copy."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.pipeline import PrepConfig
from AmyloidKDLib.registration import RegistrationConfig, Transform, dice, register_to_mni
from AmyloidKDLib.template import load_template
from AmyloidKDLib.volume import Volume, load_volume

ROTATION_DEG = (10.0, -6.0, 8.0)
TRANSLATION_MM = (12.0, -10.0, 6.0)
SCALING = (1.06, 0.95, 1.02)
DEFORMATION_MM = 2.5


def known_motion(rotation_deg=ROTATION_DEG, translation_mm=TRANSLATION_MM, scaling=SCALING) -> np.ndarray:
    """4x4 world (RAS mm) matrix taking template points to the moved copy."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(scaling)
    motion[:3, 3] = translation_mm
    return motion


def move_volume(volume: Volume, motion: np.ndarray, grid_affine: np.ndarray, grid_shape,
                order: int = 1, deformation_mm: float = 0.0) -> np.ndarray:
    """``volume`` moved by ``motion`` (and a smooth sinusoidal deformation), sampled on a grid.

    Each output point y takes the value of the source at ``motion^-1 y + u(y)``, with
    ``u`` a displacement of amplitude ``deformation_mm`` and ~120 mm wavelength.
    """
    ijk = np.indices(grid_shape, dtype=np.float64).reshape(3, -1)
    world = grid_affine[:3, :3] @ ijk + grid_affine[:3, 3:]
    inverse = np.linalg.inv(motion)
    source = inverse[:3, :3] @ world + inverse[:3, 3:]
    if deformation_mm:
        phase = 2 * np.pi * world / 120.0
        source += deformation_mm * np.stack([np.sin(phase[1]), np.sin(phase[2]), np.sin(phase[0])])
    to_voxel = np.linalg.inv(volume.affine)
    voxels = to_voxel[:3, :3] @ source + to_voxel[:3, 3:]
    return map_coordinates(volume.data, voxels, order=order, cval=0.0).reshape(grid_shape).astype(np.float32)


def lia_grid(spacing: float = 1.5) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A FreeSurfer-like LIA grid (axes: left, inferior, anterior) covering a moved head."""
    affine = np.array([[-spacing, 0, 0, 105.0], [0, 0, spacing, -125.0],
                       [0, -spacing, 0, 95.0], [0, 0, 0, 1.0]])
    extent = np.array([210.0, 190.0, 230.0])
    return affine, tuple(int(e / spacing) for e in extent)


def write_moved_copy(folder: Path, deformation_mm: float = DEFORMATION_MM) -> tuple[Path, Path]:
    """Write the moved template T1 and its mask as LIA NIfTI files (as a user's files would be)."""
    template = load_template(1)
    affine, shape = lia_grid()
    motion = known_motion()
    t1 = move_volume(template.t1, motion, affine, shape, 1, deformation_mm)
    mask = move_volume(template.mask, motion, affine, shape, 0, deformation_mm)
    paths = folder / "moved_t1.nii.gz", folder / "moved_mask.nii.gz"
    nib.save(nib.Nifti1Image(t1, affine), paths[0])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), paths[1])
    return paths


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    t1_path, mask_path = write_moved_copy(tmp_path_factory.mktemp("moved"))
    return load_volume(t1_path, "T1w"), load_volume(mask_path, "mask")


@pytest.fixture(scope="module")
def registration(moved):
    t1, mask = moved
    config = PrepConfig.preset("fast").registration
    return register_to_mni(t1, config, mask=mask), config


def test_moved_copy_is_really_displaced(moved):
    t1, mask = moved
    assert t1.orientation == "RAS"  # LIA on disk, reoriented by the loader
    template = load_template(2)
    before = move_volume(mask, np.eye(4), template.affine, template.shape, order=0)
    assert dice(before, template.mask.data) < 0.85
    assert np.linalg.norm(TRANSLATION_MM) >= 10 and max(np.abs(ROTATION_DEG)) >= 8


def test_affine_registration_maps_moved_copy_onto_template(registration, moved):
    transform, config = registration
    _, mask = moved
    template = load_template(config.template_resolution)
    forward = transform.apply(mask, "forward", "nearest")
    assert forward.shape == template.shape
    assert dice(forward.data, template.mask.data) >= 0.95


def test_inverse_transform_puts_template_mask_on_moved_copy(registration, moved):
    transform, config = registration
    t1, mask = moved
    back = transform.apply(load_template(config.template_resolution).mask, "inverse", "nearest",
                           reference=t1)
    assert back.shape == t1.shape and np.allclose(back.affine, t1.affine)
    assert dice(back.data, mask.data) >= 0.95


def test_fast_affine_recovers_the_known_motion_at_brain_landmarks(registration):
    """Brain points of the template, mapped by the fitted affine, land where the known motion
    puts them (the 2.5 mm deformation is not affine, so a few mm remain).

    Measured (docs/benchmarks.md, 2026-11-30): the old fast schedule (shrink 4, 2, 1;
    500/250/50; sampling 0.2) mean 1.67 mm, max 3.17 mm; the new one (shrink 4, 2; 500/100;
    sampling 0.3) mean 1.58 mm, max 3.17 mm.
    """
    import ants

    transform, config = registration
    template = load_template(config.template_resolution)
    points = np.argwhere(template.mask.data > 0.5)[::50].T.astype(np.float64)
    ras = template.affine[:3, :3] @ points + template.affine[:3, 3:]
    lps = np.diag([-1.0, -1.0, 1.0])
    (matrix,) = [f for f in transform.forward_files if f.endswith(".mat")]
    affine = ants.read_transform(matrix)  # fixed (template) point -> moving (moved copy) point
    mapped = np.array([lps @ np.asarray(affine.apply_to_point(tuple(lps @ p))) for p in ras.T])
    motion = known_motion()
    expected = (motion[:3, :3] @ ras + motion[:3, 3:]).T
    errors = np.linalg.norm(mapped - expected, axis=1)
    assert errors.mean() <= 2.5 and errors.max() <= 5.0


def test_forward_then_inverse_reproduces_intensities(registration, moved):
    transform, _ = registration
    t1, mask = moved
    there = transform.apply(t1, "forward", "linear")
    back = transform.apply(there, "inverse", "linear")
    inside = mask.data > 0.5
    assert np.corrcoef(back.data[inside], t1.data[inside])[0, 1] > 0.95


def test_transform_saves_and_reloads(registration, moved, tmp_path):
    transform, _ = registration
    _, mask = moved
    transform.save(tmp_path / "saved")
    reloaded = Transform.load(tmp_path / "saved")
    assert reloaded.fixed == transform.fixed and reloaded.moving == transform.moving
    np.testing.assert_array_equal(reloaded.apply(mask, "forward", "nearest").data,
                                  transform.apply(mask, "forward", "nearest").data)
    os.remove(tmp_path / "saved" / reloaded.forward_files[0].split("/")[-1])
    with pytest.raises(InputError, match="missing"):
        Transform.load(tmp_path / "saved")
    with pytest.raises(InputError, match="transform.json"):
        Transform.load(tmp_path)


def test_ants_transform_files_live_in_an_owned_folder_that_is_removed(moved):
    t1, mask = moved
    config = RegistrationConfig(transform="rigid", template_resolution=2, shrink_factors=(4,),
                                smoothing_sigmas=(2.0,), iterations=(50,))
    transform = register_to_mni(t1, config, mask=mask)
    folder = transform._owners[0].path
    assert os.listdir(folder) and all(f.startswith(folder) for f in transform.forward_files)
    del transform
    gc.collect()
    assert not os.path.exists(folder)


def test_bad_registration_settings_name_the_choices(registration, moved):
    with pytest.raises(ConfigError, match="rigid, affine, syn"):
        RegistrationConfig(transform="bspline")
    with pytest.raises(ConfigError, match="one value per level"):
        RegistrationConfig(shrink_factors=(4, 2), smoothing_sigmas=(1.0,), iterations=(10, 10))
    with pytest.raises(ConfigError, match="direction"):
        registration[0].apply(moved[0], direction="backward")


def _ants_apply(transform: Transform, volume: Volume, direction: str, interpolation: str,
                reference) -> Volume:
    """The same resampling through ANTs' own ``apply_transforms`` (the reference result)."""
    import ants

    from AmyloidKDLib.preprocess import ants_to_volume, volume_to_ants
    from AmyloidKDLib.registration import INTERPOLATIONS, Grid

    files, flags = ((transform.forward_files, [False] * len(transform.forward_files))
                    if direction == "forward" else (transform.inverse_files, transform.inverse_flags))
    moved = ants.apply_transforms(fixed=volume_to_ants(Grid.of(reference).empty_volume()),
                                  moving=volume_to_ants(volume), transformlist=files,
                                  whichtoinvert=flags, interpolator=INTERPOLATIONS[interpolation])
    return ants_to_volume(moved, volume.modality)


def test_linear_transforms_resample_bit_identically_to_ants(registration, moved, tmp_path):
    """Rigid/affine transforms resample through SimpleITK; the voxels must be ANTs' own, both
    ways, for intensities and masks, and for a composition of two transform files."""
    import ants

    transform, _ = registration
    t1, mask = moved
    template = load_template(2)
    cases = [(t1, "forward", "linear", template.t1), (mask, "forward", "nearest", template.t1),
             (template.t1, "inverse", "linear", t1), (template.mask, "inverse", "nearest", t1)]
    # a second, hand-made rigid step composed after the registration (as PET -> MRI -> MNI)
    path = tmp_path / "shift.mat"
    ants.write_transform(ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=np.eye(3),
        translation=(3.5, -2.0, 1.25), center=(0.0, 0.0, 0.0)), str(path))
    shift = Transform([str(path)], [str(path)], [True], transform.moving, transform.moving, "rigid")
    composed = shift.then(transform)
    cases.append((t1, "forward", "linear", template.t1))
    for index, (volume, direction, interpolation, reference) in enumerate(cases):
        used = composed if index == len(cases) - 1 else transform
        ours = used.apply(volume, direction, interpolation, reference=reference)
        theirs = _ants_apply(used, volume, direction, interpolation, reference)
        assert ours.data.dtype == np.float32 and ours.shape == reference.shape
        np.testing.assert_array_equal(ours.affine, theirs.affine)
        np.testing.assert_array_equal(ours.data, theirs.data)
        assert ours.data.max() > 0
    assert not np.array_equal(composed.apply(t1, "forward", "linear", reference=template.t1).data,
                              transform.apply(t1, "forward", "linear", reference=template.t1).data)
    # the composed point map is the one ANTs pulls through: sample the input there by hand
    from AmyloidKDLib.registration import linear_point_map

    warped = _ants_apply(composed, t1, "forward", "linear", template.t1)
    points = np.argwhere(warped.data > 0.3)[::4000]
    world = template.t1.affine @ np.c_[points, np.ones(len(points))].T
    to_input = np.linalg.inv(t1.affine) @ linear_point_map(composed.forward_files, [False, False])
    expected = map_coordinates(t1.data, (to_input @ world)[:3], order=1)
    assert len(points) > 50
    np.testing.assert_allclose(warped.data[tuple(points.T)], expected, atol=1e-4)
