"""Image synthesis: pull the template's maps onto each session's grid, add contrast and noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from AmyloidKDLib.phantom.anatomy import TemplateMaps
from AmyloidKDLib.phantom.config import PhantomConfig
from AmyloidKDLib.phantom.geometry import SessionGeometry
from AmyloidKDLib.phantom.pet_uptake import pet_sigma_voxels, pet_tissue_suvr
from AmyloidKDLib.phantom.truth import SessionTruth, SubjectTruth, _rng
from AmyloidKDLib.volume import Volume

#: Centre of the lateral ventricles in MNI space (mm), where enlargement is centred.
VENTRICLE_CENTRE_MM = (0.0, -10.0, 15.0)
#: Template-typical partial-volume intensities used for contrasts (fractions of full scale).
T2_TISSUE = {"gm": 0.45, "wm": 0.32, "csf": 1.0}
FLAIR_TISSUE = {"gm": 0.62, "wm": 0.48, "csf": 0.08}
#: Intensity of WM-lesion tissue per contrast (T1: the template's GM level, as a fraction of
#: the way from WM to GM; T2 and FLAIR: bright, fractions of full scale).
LESION_T1_TOWARDS_GM = 1.0
LESION_TISSUE = {"T2w": 0.75, "FLAIR": 0.90}
#: Skull shell layers (mm outside the brain mask) and intensities per contrast.
SHELL_LAYERS_MM = (3.0, 8.0, 13.0)  # CSF up to 3, bone up to 8, scalp up to 13
SHELL_INTENSITY = {"T1w": (0.30, 0.05, 0.85), "T2w": (1.0, 0.05, 0.50),
                   "FLAIR": (0.08, 0.05, 0.60)}
MRI_FULL_SCALE = 1000.0
#: Spacing (mm) at which the exact scan->template mapping is evaluated before upsampling.
COARSE_MAPPING_MM = 8.0


def _brain_box_mm(maps: TemplateMaps) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(maps.brain > 0.5)
    corners = np.stack([idx.min(0), idx.max(0)]) @ maps.affine[:3, :3].T + maps.affine[:3, 3]
    return corners.min(0), corners.max(0)


def subject_displacement(subject: SubjectTruth, seed: int, config: PhantomConfig,
                         box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A subject's own smooth random displacement (3, nx, ny, nz) in mm and its grid origin."""
    spacing = config.deformation_spacing_mm
    origin = np.floor(box[0] - 2 * spacing)
    n = np.ceil((box[1] - origin) / spacing).astype(int) + 3
    rng = _rng(seed, subject.index, 2)
    field_ = rng.normal(size=(3, *n))
    field_ = np.stack([ndimage.gaussian_filter(c, 1.0, mode="nearest") for c in field_])
    field_ *= config.deformation_mm / max(float(field_.std()), 1e-6)
    return field_, origin


def _ventricle_displacement(expansion: float, origin: np.ndarray, spacing: float,
                            shape: Sequence[int]) -> np.ndarray:
    axes = [origin[a] + spacing * np.arange(shape[a]) - VENTRICLE_CENTRE_MM[a] for a in range(3)]
    d = np.stack(np.meshgrid(*axes, indexing="ij"))
    bump = np.exp(-(d ** 2).sum(0) / (2 * 25.0 ** 2))
    return -expansion * d * bump  # pulling towards the centre enlarges the ventricles


def _pose(rng: np.random.Generator, config: PhantomConfig) -> tuple[tuple, tuple]:
    rot = tuple(round(float(v), 3) for v in rng.uniform(-config.rotation_deg, config.rotation_deg, 3))
    shift = tuple(round(float(v), 3) for v in rng.uniform(-config.translation_mm,
                                                            config.translation_mm, 3))
    return rot, shift


def _grid(box: tuple[np.ndarray, np.ndarray], pad_mm: float, spacing: float,
          shift: Sequence[float], rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    fov = box[1] - box[0] + 2 * pad_mm
    shape = tuple(int(v) for v in np.ceil(fov / spacing))
    centre = (box[0] + box[1]) / 2 + np.asarray(shift) + rng.uniform(-3, 3, 3)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.round(centre - spacing * (np.asarray(shape) - 1) / 2, 3)
    return affine, shape


def _orientation(rng: np.random.Generator, config: PhantomConfig) -> str:
    if rng.random() < config.orientation_mix:
        return str(config.orientations[int(rng.integers(len(config.orientations)))])
    return "RAS"


def _sample(channels: np.ndarray, maps: TemplateMaps, geometry: SessionGeometry,
            coarse_mm: float = COARSE_MAPPING_MM, bias_coefficients: np.ndarray | None = None,
            support_channel: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pull template-space ``channels`` (C, X, Y, Z) onto the session grid (trilinear).

    The exact mapping is evaluated on a coarse grid (every ``coarse_mm``) and upsampled
    trilinearly, which is accurate because it is smooth; the smooth bias field rides along.
    torch's grid_sample is used rather than scipy's map_coordinates: it samples several
    channels per coordinate computation and uses every core. With ``support_channel``, only
    voxels near where that channel is non-zero are sampled (the rest stay 0).
    """
    import torch
    import torch.nn.functional as F

    shape = geometry.grid_shape
    step = max(1, int(round(coarse_mm / float(np.linalg.norm(geometry.grid_affine[:3, 0])))))
    coarse = [np.arange(0, s - 1 + step, step) for s in shape]  # may overshoot: exact anyway
    n_coarse = [len(c) for c in coarse]
    ijk = np.stack(np.meshgrid(*coarse, indexing="ij"), axis=-1).reshape(-1, 3)
    world = geometry.voxel_world(ijk)
    mni = geometry.world_to_mni(world)
    inv = np.linalg.inv(maps.affine)
    vox = mni @ inv[:3, :3].T + inv[:3, 3]
    # only the part of the grid that sees the template crop needs sampling; the rest is 0
    seen = np.all((vox > -1) & (vox < np.asarray(maps.shape)), axis=1).reshape(n_coarse)
    out_channels = np.zeros((len(channels), *shape), np.float32)
    bias = np.ones(shape, np.float32) if bias_coefficients is not None else None
    if not seen.any():
        return out_channels, bias
    where = np.argwhere(seen)
    lo = np.maximum(where.min(0) - 1, 0)
    hi = np.minimum(where.max(0) + 1, np.asarray(n_coarse) - 1)
    norm_ = 2.0 * vox / (np.asarray(maps.shape) - 1) - 1.0
    planes = [norm_[:, 2], norm_[:, 1], norm_[:, 0]]  # grid_sample wants (W, H, D) order
    if bias_coefficients is not None:
        p = (world - world.mean(0)) / 80.0
        linear, quad = bias_coefficients[:3], bias_coefficients[3:].reshape(3, 3)
        planes.append(np.exp(p @ linear + np.einsum("ni,ij,nj->n", p, quad, p)))
    block = np.stack(planes).astype(np.float32).reshape(len(planes), *n_coarse)
    block = block[:, lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
    start = lo * step
    stop = np.minimum(hi * step, np.asarray(shape) - 1)
    box = tuple(slice(a, b + 1) for a, b in zip(start, stop))
    sub_shape = tuple(int(v) for v in stop - start + 1)
    coarse_block = torch.from_numpy(np.ascontiguousarray(block))[None]
    source = torch.from_numpy(np.ascontiguousarray(channels, np.float32))[None]
    if support_channel is None:
        dense = F.interpolate(coarse_block, size=tuple(int(v) for v in (hi - lo) * step + 1),
                              mode="trilinear", align_corners=True)
        dense = dense[:, :, :sub_shape[0], :sub_shape[1], :sub_shape[2]]
        grid = dense[:, :3].permute(0, 2, 3, 4, 1).contiguous()
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        out_channels[(slice(None),) + box] = sampled[0].numpy()
        if bias is not None:
            bias[box] = dense[0, 3].numpy()
        return out_channels, bias
    # Only voxels near the support (the brain) are sampled: find them at half resolution
    # first, then sample the full-resolution voxels of that neighbourhood as a point list.
    half = np.stack(np.meshgrid(*[np.arange(0, n, 2) for n in sub_shape], indexing="ij"), -1)
    support = _sample_points(coarse_block, step, half.reshape(-1, 3),
                             source[:, support_channel:support_channel + 1])[0]
    near = ndimage.binary_dilation(support.reshape(half.shape[:3]) > 0.01)
    for axis in range(3):
        near = np.repeat(near, 2, axis=axis)
    near = near[:sub_shape[0], :sub_shape[1], :sub_shape[2]]
    points = np.argwhere(near)
    values, planes_at = _sample_points(coarse_block, step, points, source, with_planes=True)
    view = out_channels[(slice(None),) + box]
    view[:, near] = values
    if bias is not None:
        bias[box][near] = planes_at[3]
    return out_channels, bias


def _sample_points(coarse_block, step: int, points: np.ndarray, source, with_planes: bool = False):
    """Sample ``source`` at sub-box voxel ``points`` (N, 3), whose template coordinates (and
    bias) are trilinear in ``coarse_block`` (1, P, n0, n1, n2) with ``step`` voxels per cell."""
    import torch
    import torch.nn.functional as F

    n_block = np.asarray(coarse_block.shape[2:], np.float64)
    where = 2.0 * (points / step) / np.maximum(n_block - 1, 1) - 1.0
    grid = torch.from_numpy(where[:, ::-1].astype(np.float32).copy()).view(1, 1, 1, -1, 3)
    planes = F.grid_sample(coarse_block, grid, mode="bilinear", align_corners=True)
    template_grid = planes[:, :3].reshape(1, 3, -1).permute(0, 2, 1).reshape(1, 1, 1, -1, 3)
    values = F.grid_sample(source, template_grid.contiguous(), mode="bilinear",
                           padding_mode="zeros", align_corners=True)
    values = values.reshape(source.shape[1], -1).numpy()
    if with_planes:
        return values, planes.reshape(planes.shape[1], -1).numpy()
    return values


def _random_atrophy(maps: TemplateMaps, spheres) -> np.ndarray | None:
    """GM-loss fraction of a subject's random cortical spheres (Gaussian, within a box)."""
    if not spheres:
        return None
    out = np.zeros(maps.shape, np.float32)
    inv = np.linalg.inv(maps.affine)
    step = np.abs(np.diag(maps.affine)[:3])
    for x, y, z, radius, amount in spheres:
        centre = inv[:3, :3] @ np.array([x, y, z]) + inv[:3, 3]
        reach = 2.5 * radius / step
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, maps.shape)
        if np.any(hi <= lo):
            continue
        axes = [((np.arange(lo[a], hi[a]) - centre[a]) * step[a]) ** 2 for a in range(3)]
        d2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        out[box] += amount * np.exp(-d2 / (2 * radius ** 2)).astype(np.float32)
    return out


def _gm_loss(maps: TemplateMaps, truth: SessionTruth,
             subject: SubjectTruth | None = None) -> np.ndarray:
    """GM fraction turned into CSF: per-region loss (each region its own map), global loss
    and the subject's random cortical spheres."""
    if truth.region_gm_loss:
        local = np.tensordot(np.asarray(truth.region_gm_loss, np.float32), maps.region_weights, 1)
    else:
        local = truth.regional_gm_loss * maps.atrophy_weight
    local += truth.global_gm_loss
    spheres = _random_atrophy(maps, subject.random_atrophy) if subject is not None else None
    if spheres is not None:
        local += spheres
    loss = maps.gm * local
    return np.clip(loss, -maps.csf, maps.gm)


def _lesions(maps: TemplateMaps, truth: SessionTruth) -> np.ndarray | None:
    """Fraction of each voxel that is WM-lesion tissue (taken from its WM)."""
    if truth.wm_lesion_load <= 0:
        return None
    return np.minimum(truth.wm_lesion_load * maps.wm_lesion_weight, maps.wm)


def _shell(maps: TemplateMaps, contrast: str) -> np.ndarray:
    d = maps.outside_mm
    csf, bone, scalp = SHELL_INTENSITY[contrast]
    layers = np.select([d <= 0, d <= SHELL_LAYERS_MM[0], d <= SHELL_LAYERS_MM[1],
                        d <= SHELL_LAYERS_MM[2]], [0.0, csf, bone, scalp], 0.0)
    return layers.astype(np.float32)


def synthesize_mri(maps: TemplateMaps, truth: SessionTruth, geometry: SessionGeometry,
                   rng: np.random.Generator, config: PhantomConfig,
                   subject: SubjectTruth | None = None) -> dict[str, Volume]:
    """The session's MRI contrasts as RAS Volumes (scanner-like integer intensities).

    ``subject`` adds its random cortical GM loss (none without it)."""
    loss = _gm_loss(maps, truth, subject)
    lesion = _lesions(maps, truth)
    names = list(config.contrasts)
    channels = np.empty((len(names) + (0 if config.skull else 1), *maps.shape), np.float32)
    gm, csf = maps.gm - loss, maps.csf + loss
    for c, name in enumerate(names):
        out = channels[c]
        if name == "T1w":
            np.multiply(loss, -(maps.t1_gm - maps.t1_csf), out=out)
            out += maps.t1
            if lesion is not None:  # lesions darken WM towards GM
                out -= lesion * (LESION_T1_TOWARDS_GM * (maps.t1_wm - maps.t1_gm))
        else:
            weights = T2_TISSUE if name == "T2w" else FLAIR_TISSUE
            np.multiply(gm, weights["gm"], out=out)
            out += weights["wm"] * maps.wm
            out += weights["csf"] * csf
            if lesion is not None:  # and brighten T2 and FLAIR
                out += lesion * (LESION_TISSUE[name] - weights["wm"])
        if config.skull:
            out += _shell(maps, name)
    if not config.skull:
        channels[-1] = maps.brain
    bias_coefficients = rng.normal(0.0, config.bias_strength, 12)
    bias_coefficients[3:] *= 0.5
    sampled, bias = _sample(channels, maps, geometry, bias_coefficients=bias_coefficients,
                            support_channel=None if config.skull else len(channels) - 1)
    gain = float(rng.uniform(0.85, 1.15)) * MRI_FULL_SCALE
    sigma = config.mri_noise * MRI_FULL_SCALE
    n_voxels = int(np.prod(geometry.grid_shape))
    # skull-free scans are zero outside the brain, so only brain voxels need noise
    inside = (np.arange(n_voxels) if config.skull
              else np.flatnonzero(sampled[-1].reshape(-1) > 0.5))
    scale = bias.reshape(-1)[inside] * gain
    volumes = {}
    for c, name in enumerate(names):
        signal = sampled[c].reshape(-1)[inside] * scale
        noisy = np.hypot(signal + sigma * rng.standard_normal(signal.shape, np.float32),
                         sigma * rng.standard_normal(signal.shape, np.float32))
        data = np.zeros(n_voxels, np.float32)
        data[inside] = np.minimum(np.rint(noisy), 32767)
        volumes[name] = Volume(data.reshape(geometry.grid_shape), geometry.grid_affine, name,
                               truth.mr_session_id)
    return volumes


def synthesize_pet(maps: TemplateMaps, truth: SessionTruth, geometry: SessionGeometry,
                   rng: np.random.Generator, config: PhantomConfig,
                   subject: SubjectTruth | None = None) -> Volume:
    """The session's amyloid PET as an SUVR Volume (cerebellar grey matter = 1)."""
    loss = _gm_loss(maps, truth, subject)
    gm, csf = maps.gm - loss, maps.csf + loss
    jitter = float(rng.normal(1.0, 0.03))
    cortical = truth.cortical_suvr
    if config.pet_relation == "centiloid":  # the grey-matter level that gives this VOI SUVR
        from AmyloidKDLib.phantom.centiloid_scale import grey_matter_suvr_for
        cortical = grey_matter_suvr_for(truth.cortical_suvr, truth.tracer, config)
    suvr = pet_tissue_suvr(maps, gm, csf, cortical, truth.tracer, config, jitter)
    sampled, _ = _sample(suvr[None], maps, geometry)
    data = sampled[0]
    sigma = pet_sigma_voxels(config, config.pet_spacing_mm)
    amplitude = config.pet_noise * (2 * math.sqrt(math.pi) * sigma) ** 1.5
    data += amplitude * np.sqrt(np.maximum(data, 0.05)) * rng.standard_normal(
        data.shape, dtype=np.float32)
    data = ndimage.gaussian_filter(data, sigma, mode="constant")
    return Volume(np.maximum(data, 0.0), geometry.grid_affine, "PET", truth.session_id)
