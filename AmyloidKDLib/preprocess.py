"""Intensity steps of the image path: N4 bias correction, MRI normalisation, PET SUVR window.

Every step takes and returns a :class:`~AmyloidKDLib.volume.Volume`. The MRI is normalised
per image (percentiles inside its brain mask, as in the paper); PET is never normalised per
image: a fixed SUVR window keeps absolute uptake comparable across subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from AmyloidKDLib.errors import ConfigError, DependencyError, InputError
from AmyloidKDLib.volume import Volume

#: ANTs stores physical points in LPS; our Volume affines are RAS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def import_ants():
    """ANTsPy, imported on first use; its absence is a DependencyError naming the package."""
    try:
        import ants
    except ImportError:
        raise DependencyError("this step needs ANTsPy; install it with `pip install antspyx`") from None
    return ants


def lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing (3,), direction (3, 3) and origin (3,) of a RAS voxel-to-world affine, in the
    LPS physical space of ITK (ANTs, SimpleITK)."""
    affine = np.asarray(affine, np.float64)
    linear = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return spacing, linear / spacing, _RAS_TO_LPS @ affine[:3, 3]


def volume_to_ants(volume: Volume):
    """The volume as an ``ants.ANTsImage`` in the same physical space (RAS affine -> LPS header)."""
    ants = import_ants()
    spacing, direction, origin = lps_geometry(volume.affine)
    return ants.from_numpy(np.asarray(volume.data, dtype=np.float32), origin=tuple(origin.tolist()),
                           spacing=tuple(spacing.tolist()), direction=direction)


def ants_to_volume(image, modality: str = "T1w", source: str | None = None) -> Volume:
    """An ``ants.ANTsImage`` back as a Volume (LPS header -> RAS affine)."""
    direction = np.asarray(image.direction, dtype=np.float64)
    spacing = np.asarray(image.spacing, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ (direction * spacing)
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.origin, dtype=np.float64)
    return Volume(image.numpy().astype(np.float32), affine, modality, source)


def _binary(mask: Volume, like: Volume, what: str) -> np.ndarray:
    if mask.shape != like.shape or not np.allclose(mask.affine, like.affine, atol=1e-3):
        raise InputError(f"the {what} mask (shape {mask.shape}) is not on the image's grid "
                         f"(shape {like.shape}); resample it to the image first")
    inside = mask.data > 0.5
    if not inside.any():
        raise InputError(f"the {what} mask is empty; check the skull-stripping result")
    return inside


@dataclass
class N4Config:
    """ANTs N4 bias-field correction settings (shrink factor and iterations set its speed).

    ANTs' own defaults (``antsBrainExtraction.sh``, ANTsPy's ``n4_bias_field_correction``) are
    shrink 4, 4 fitting levels of 50 iterations, tolerance 1e-7, a 200 mm B-spline distance.
    Each level halves the control-point spacing (200 -> 100 -> 50 -> 25 mm). Here the default
    stops at 3 levels (50 mm): on the bias-corrupted MNI template the 4th level raised the
    white-matter CV from 0.023 to 0.033 (it starts fitting anatomy as bias) and cost about
    half of the CPU time (docs/benchmarks.md, "N4").

    ``fit_spacing_mm`` (both presets: 2 mm) fits the field on the image resampled to
    that voxel size and applies the fitted field, linearly interpolated, at full resolution:
    the field is smooth (200 mm B-spline), so a coarser fitting grid loses nothing, and N4
    no longer shrinks and reconstructs the field on every native voxel. ``shrink_factor``
    then applies on top of that grid (2 mm x shrink 4 = an 8 mm fitting grid). ``None``
    fits at the native resolution (the ``paper`` preset before issue 31: about 10x the CPU
    time, docs/benchmarks.md).
    """

    enabled: bool = True
    shrink_factor: int = 4
    iterations: tuple[int, ...] = (50, 50, 50)
    tolerance: float = 1e-7
    spline_distance_mm: float = 200.0
    fit_spacing_mm: float | None = 2.0

    def __post_init__(self) -> None:
        self.iterations = tuple(int(i) for i in self.iterations)
        if self.shrink_factor < 1:
            raise ConfigError(f"N4 shrink_factor must be >= 1, got {self.shrink_factor}")
        if not self.iterations or min(self.iterations) < 1:
            raise ConfigError(f"N4 iterations must be positive per level, got {self.iterations}")
        if self.fit_spacing_mm is not None:
            self.fit_spacing_mm = float(self.fit_spacing_mm)
            if self.fit_spacing_mm <= 0:
                raise ConfigError(f"N4 fit_spacing_mm must be > 0 (or null), got {self.fit_spacing_mm}")


def n4_bias_correction(volume: Volume, mask: Volume | None = None,
                       config: N4Config | None = None) -> Volume:
    """Remove a smooth multiplicative bias field with ANTs N4.

    When ``mask`` is given the field is estimated inside it only (4x faster on a head, and
    the scalp does not distort the estimate), on the mask's bounding box plus a margin of two
    shrunk voxels: N4 costs in proportion to the image it fits, and the background around a
    brain is most of it. The returned image is corrected inside that box and unchanged
    outside it (only background lies there). Without a mask the whole image is corrected.
    """
    config = config or N4Config()
    ants = import_ants()
    data = volume.data
    if float(data.min()) < 0:
        raise InputError("N4 needs non-negative intensities; this MRI has negative values - "
                         "pass the scanner's magnitude image")
    if mask is None:
        box, inside = tuple(slice(0, n) for n in volume.shape), None
    else:
        inside = _binary(mask, volume, "N4")
        box = _bounding_box(inside, margin=2 * config.shrink_factor)
    cropped = _crop(volume, box)
    ants_mask = None
    if inside is not None:
        ants_mask = volume_to_ants(cropped.with_data(inside[box].astype(np.float32), "mask"))
    image = volume_to_ants(cropped)
    # bspline fitting distance in mm, per ANTs' recommendation; 200 mm suits a whole brain
    settings = dict(shrink_factor=config.shrink_factor,
                    convergence={"iters": list(config.iterations), "tol": config.tolerance},
                    spline_param=config.spline_distance_mm)
    spacing = config.fit_spacing_mm
    if spacing is not None and min(image.spacing) < spacing:
        corrected = _n4_on_coarse_grid(ants, image, ants_mask, spacing, settings)
    else:
        corrected = ants.n4_bias_field_correction(image, mask=ants_mask, **settings).numpy()
    result = np.array(data, dtype=np.float32, copy=True)
    result[box] = corrected
    return volume.with_data(result)


def _n4_on_coarse_grid(ants, image, mask, spacing: float, settings: dict) -> np.ndarray:
    """N4 fitted on ``image`` resampled to ``spacing`` mm; the field applied at full resolution.

    The multiplicative field N4 returns is interpolated (linearly, in log space) onto the
    native grid and divided out there.
    """
    factors = np.asarray(spacing) / np.asarray(image.spacing)
    if np.allclose(factors, np.round(factors), atol=1e-3) and (np.round(factors) >= 1).all():
        # whole multiples (1 mm -> 2 mm): average blocks of voxels, far cheaper than resampling
        coarse, coarse_mask = _block_average(ants, image, np.round(factors).astype(int)), None
        if mask is not None:
            coarse_mask = _block_average(ants, mask, np.round(factors).astype(int))
            coarse_mask = coarse_mask.new_image_like((coarse_mask.numpy() >= 0.5).astype(np.float32))
    else:
        coarse = ants.resample_image(image, (spacing,) * 3, False, 0)  # linear
        coarse_mask = None if mask is None else ants.resample_image(mask, (spacing,) * 3, False, 1)
    if coarse_mask is not None and not coarse_mask.numpy().any():
        coarse_mask = None  # a brain smaller than one coarse voxel: fit on the whole box
    field = ants.n4_bias_field_correction(coarse, mask=coarse_mask, return_bias_field=True, **settings)
    # The log field, padded by one coarse voxel (edge values) so that every native voxel lies
    # inside the grid it is interpolated from (the coarse grid stops short of the box's edge).
    log_field = np.pad(np.log(np.maximum(field.numpy(), 1e-6)), 1, mode="edge").astype(np.float32)
    direction = np.asarray(field.direction, dtype=np.float64)
    origin = np.asarray(field.origin) - direction @ np.asarray(field.spacing, dtype=np.float64)
    log_field = ants.from_numpy(log_field, origin=tuple(origin.tolist()), spacing=field.spacing,
                                direction=direction)
    fine = ants.resample_image_to_target(log_field, image, interp_type="linear").numpy()
    return (image.numpy() * np.exp(-fine)).astype(np.float32)


def _block_average(ants, image, factors: np.ndarray):
    """``image`` averaged over blocks of ``factors`` voxels (the last partial block dropped),
    on the grid whose voxel centres are the blocks' centres."""
    data = image.numpy()
    counts = np.array(data.shape) // factors
    data = data[:counts[0] * factors[0], :counts[1] * factors[1], :counts[2] * factors[2]]
    blocks = data.reshape(counts[0], factors[0], counts[1], factors[1], counts[2], factors[2])
    direction = np.asarray(image.direction, dtype=np.float64)
    spacing = np.asarray(image.spacing, dtype=np.float64)
    origin = np.asarray(image.origin) + direction @ (spacing * (factors - 1) / 2.0)
    return ants.from_numpy(blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32),
                           origin=tuple(origin.tolist()), spacing=tuple((spacing * factors).tolist()),
                           direction=direction)


def _bounding_box(inside: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Index box of the True voxels, widened by ``margin`` voxels and clipped to the array."""
    corners = np.argwhere(inside)
    low = np.maximum(corners.min(axis=0) - margin, 0)
    high = np.minimum(corners.max(axis=0) + 1 + margin, inside.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _crop(volume: Volume, box: tuple[slice, ...]) -> Volume:
    """The sub-volume ``box`` with its affine moved so that it stays in the same place."""
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array([b.start for b in box]) + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.data[box], dtype=np.float32), affine,
                  volume.modality, volume.source)


@dataclass
class NormalizationConfig:
    """The paper's MRI intensity normalisation: percentile clip inside the brain, [0, 1], gamma."""

    low_percentile: float = 0.5
    high_percentile: float = 99.5
    gamma: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ConfigError("normalisation percentiles must satisfy 0 <= low < high <= 100, got "
                              f"{self.low_percentile}, {self.high_percentile}")
        if self.gamma <= 0:
            raise ConfigError(f"normalisation gamma must be > 0, got {self.gamma}")


def normalize_intensity(volume: Volume, mask: Volume, config: NormalizationConfig | None = None) -> Volume:
    """Clip to percentiles computed inside ``mask``, scale to [0, 1], apply gamma; 0 outside.

    Percentiles come from brain voxels only, so the amount of background in the field of
    view does not change the result.
    """
    config = config or NormalizationConfig()
    inside = _binary(mask, volume, "brain")
    low, high = np.percentile(volume.data[inside], [config.low_percentile, config.high_percentile])
    if high <= low:
        raise InputError(f"{volume.source or 'the MRI'}: intensities inside the brain mask are "
                         f"constant ({low:g}); the image holds no contrast to normalise")
    scaled = np.clip((volume.data - low) / (high - low), 0.0, 1.0) ** config.gamma
    scaled[~inside] = 0.0
    return volume.with_data(scaled.astype(np.float32))


@dataclass
class SUVRWindow:
    """Fixed SUVR range mapped to [0, 1]: the same for every subject, so uptake stays absolute."""

    low: float = 0.0
    high: float = 3.0

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ConfigError(f"SUVR window needs high > low, got [{self.low}, {self.high}]")


def suvr_window(volume: Volume, window: SUVRWindow | None = None) -> Volume:
    """Map SUVR linearly from ``[window.low, window.high]`` to [0, 1] (clipped outside).

    Never rescaled per image: a brain with twice the uptake gives twice the value (inside
    the window), which is the signal the teacher learns from.
    """
    window = window or SUVRWindow()
    scaled = np.clip((volume.data - window.low) / (window.high - window.low), 0.0, 1.0)
    return volume.with_data(scaled.astype(np.float32), "PET")


__all__ = [
    "N4Config", "NormalizationConfig", "SUVRWindow", "ants_to_volume", "import_ants",
    "n4_bias_correction", "normalize_intensity", "suvr_window", "volume_to_ants",
]
