"""Registration with ANTsPy: MRI -> MNI152 and PET -> its MRI, as invertible Transform objects.

A :class:`Transform` keeps the ANTs transform files it needs in a folder it owns (removed
when the object is garbage-collected), so nothing accumulates in /tmp, and it maps images
both ways: forward onto the fixed (template) grid, inverse back onto the moving (native)
grid - how a saliency map made in MNI space lands on the user's own MRI.

Repeatability: the metric's random sampling is seeded (``RegistrationConfig.random_seed``),
and with one ITK thread two registrations of the same images are bit-identical. With more
threads they are not, even with a fixed thread count: ITK sums the metric over threads in
a varying order (measured with Testing/benchmarks/bench_repeatability.py). ITK fixes its
thread count at its first use in a process; :func:`set_registration_threads` asks for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from AmyloidKDLib.atomic import atomic_path, write_text_atomic
from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.preprocess import ants_to_volume, import_ants, lps_geometry, volume_to_ants
from AmyloidKDLib.template import load_template
from AmyloidKDLib.volume import Volume

log = logging.getLogger(__name__)

TRANSFORM_TYPES = {"rigid": "Rigid", "affine": "Affine", "syn": "SyN"}
INTERPOLATIONS = {"linear": "linear", "nearest": "nearestNeighbor", "label": "genericLabel",
                  "bspline": "bSpline"}
DIRECTIONS = ("forward", "inverse")
#: Interpolations that :func:`resample_linear` (SimpleITK) performs for linear transforms,
#: bit-identical to ANTs' ``apply_transforms`` and about twice as fast; the others use ANTs.
SITK_INTERPOLATIONS = {"linear": "sitkLinear", "nearest": "sitkNearestNeighbor"}
#: RAS <-> LPS (ITK's physical space) for points: flip x and y.
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
TRANSFORM_FILE = "transform.json"
ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

#: ITK's thread count in this process once a registration has run (ITK reads it only then).
_threads_at_first_use: int | None = None


def _threads_from_environment() -> int:
    try:
        return max(1, int(os.environ[ITK_THREADS_ENV]))
    except (KeyError, ValueError):
        return os.cpu_count() or 1  # ITK's own default: one thread per CPU


def registration_threads() -> int:
    """The number of ITK threads ANTs uses in this process (fixed after the first registration)."""
    return _threads_at_first_use or _threads_from_environment()


def set_registration_threads(threads: int) -> int:
    """Ask for ``threads`` ITK threads in this process; return the number actually in force.

    One thread makes repeated registrations identical; more are faster on an idle machine but
    differ slightly from run to run. ITK reads the setting once per process, so after the
    first registration the request cannot take effect: a warning says so, and the count in
    force is returned (run the work in a new process, or set the environment variable
    ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` before starting Python).
    """
    if threads < 1:
        raise ConfigError(f"registration threads must be >= 1, got {threads}")
    if _threads_at_first_use is not None:
        if threads != _threads_at_first_use:
            log.warning("ITK already runs %d thread(s) in this process; %d cannot take effect "
                        "until a new process starts", _threads_at_first_use, threads)
        return _threads_at_first_use
    os.environ[ITK_THREADS_ENV] = str(threads)
    return threads


@dataclass
class RegistrationConfig:
    """ANTs registration settings; the multi-resolution schedule sets speed and accuracy.

    ``shrink_factors``, ``smoothing_sigmas`` (voxels) and ``iterations`` are per level of the
    linear stage, coarse to fine. Stopping before shrink factor 1 (both presets) skips the
    full-resolution level, which costs about half of the time and adds nothing measurable for
    an affine: on the moved-template check the paper schedule gave Dice 0.9665 without it and
    0.9660 with it (ANTs' own schedule is (2100, 1200, 1200, 10) down to shrink 1; times and
    Dice: Testing/benchmarks/bench_prep_variants.py, docs/benchmarks.md, issue 31).
    """

    transform: str = "affine"
    template_resolution: int = 1
    metric: str = "mattes"
    sampling_rate: float = 0.2
    shrink_factors: tuple[int, ...] = (8, 4, 2)
    smoothing_sigmas: tuple[float, ...] = (3.0, 2.0, 1.0)
    iterations: tuple[int, ...] = (1000, 500, 100)
    syn_iterations: tuple[int, ...] = (40, 20, 0)
    use_mask: bool = True
    random_seed: int | None = 1234

    def __post_init__(self) -> None:
        self.shrink_factors = tuple(int(s) for s in self.shrink_factors)
        self.smoothing_sigmas = tuple(float(s) for s in self.smoothing_sigmas)
        self.iterations = tuple(int(i) for i in self.iterations)
        self.syn_iterations = tuple(int(i) for i in self.syn_iterations)
        if self.transform not in TRANSFORM_TYPES:
            raise ConfigError(f"unknown registration transform {self.transform!r}; choose one of "
                              f"{', '.join(TRANSFORM_TYPES)}")
        if self.template_resolution not in (1, 2):
            raise ConfigError(f"template_resolution must be 1 or 2 (mm), got {self.template_resolution}")
        if not (len(self.shrink_factors) == len(self.smoothing_sigmas) == len(self.iterations) > 0):
            raise ConfigError("shrink_factors, smoothing_sigmas and iterations need one value per "
                              f"level; got {self.shrink_factors}, {self.smoothing_sigmas}, {self.iterations}")
        if not 0 < self.sampling_rate <= 1:
            raise ConfigError(f"sampling_rate must be in (0, 1], got {self.sampling_rate}")


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape and voxel-to-RAS affine (what a resampling needs from a reference)."""

    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, volume: "Volume | Grid") -> "Grid":
        """The grid of a Volume (or a Grid itself)."""
        if isinstance(volume, Grid):
            return volume
        return cls(volume.shape, tuple(tuple(float(x) for x in row) for row in volume.affine))

    def crop(self, box: tuple[slice, ...]) -> "Grid":
        """The sub-grid of the voxels in ``box`` (slices with explicit start and stop)."""
        affine = np.asarray(self.affine, np.float64).copy()
        affine[:3, 3] += affine[:3, :3] @ np.array([b.start for b in box], np.float64)
        return Grid(tuple(b.stop - b.start for b in box), tuple(map(tuple, affine)))

    def empty_volume(self, modality: str = "T1w") -> Volume:
        """A zero volume on this grid (the reference image ANTs resamples onto)."""
        return Volume(np.zeros(self.shape, np.float32), np.asarray(self.affine), modality)


class Transform:
    """A spatial mapping from a moving image's grid to a fixed image's grid, and back.

    ``forward`` maps images from the moving (e.g. native MRI) space onto the fixed (e.g.
    MNI) grid; ``inverse`` maps fixed-space images back onto the moving grid.
    """

    def __init__(self, forward: list[str], inverse: list[str], inverse_flags: list[bool],
                 fixed: Grid, moving: Grid, kind: str, owners: tuple = ()) -> None:
        self.forward_files = list(forward)
        self.inverse_files = list(inverse)
        self.inverse_flags = list(inverse_flags)
        self.fixed = fixed
        self.moving = moving
        self.kind = kind
        self._owners = owners  # keeps the folders holding the files alive

    def __repr__(self) -> str:
        return (f"Transform(kind={self.kind!r}, moving={self.moving.shape} -> fixed={self.fixed.shape}, "
                f"files={len(set(self.forward_files + self.inverse_files))})")

    def apply(self, volume: Volume, direction: str = "forward", interpolation: str = "linear",
              reference: "Volume | Grid | None" = None) -> Volume:
        """Resample ``volume`` through this transform onto ``reference`` (default: the other grid).

        Args:
            volume: image in the moving space (forward) or fixed space (inverse).
            direction: ``forward`` (moving -> fixed) or ``inverse`` (fixed -> moving).
            interpolation: ``linear`` for intensities, ``nearest`` or ``label`` (ANTs
                generic label) for masks and label maps, ``bspline``.
            reference: output grid; default the fixed grid (forward) or the moving grid
                (inverse), e.g. ``reference=native_mri`` to land on the user's MRI.
        """
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                              f"got {interpolation!r}")
        if reference is None:
            reference = self.fixed if direction == "forward" else self.moving
        if direction == "forward":
            files, flags = self.forward_files, [False] * len(self.forward_files)
        else:
            files, flags = self.inverse_files, self.inverse_flags
        if interpolation in SITK_INTERPOLATIONS and _all_linear(files):
            return resample_linear(volume, files, flags, Grid.of(reference), interpolation)
        ants = import_ants()
        fixed_image = volume_to_ants(Grid.of(reference).empty_volume())
        moved = ants.apply_transforms(fixed=fixed_image, moving=volume_to_ants(volume),
                                      transformlist=files, whichtoinvert=flags,
                                      interpolator=INTERPOLATIONS[interpolation])
        return ants_to_volume(moved, volume.modality, volume.source)

    def reach(self, support: np.ndarray, volume: Volume, direction: str,
              reference: "Volume | Grid") -> tuple[slice, ...] | None:
        """The box of ``reference``'s voxels that resampling ``volume`` can make non-zero.

        ``support`` marks where ``volume`` is non-zero (on its grid). Resampling outside the
        box gives 0 with any interpolation that reads at most one voxel beyond the point
        (linear, nearest), so it is enough to resample the box. Exact for transforms made of
        linear parts (rigid, affine: the box of the support maps to a parallelepiped); None
        when a part is not linear (SyN: resample everything) or ``support`` is empty (the
        result is all 0: an empty box).
        """
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        grid = Grid.of(reference)
        inside = np.argwhere(np.asarray(support, bool))
        if inside.size == 0:
            return tuple(slice(0, 0) for _ in grid.shape)
        files, flags = ((self.forward_files, [False] * len(self.forward_files))
                        if direction == "forward" else (self.inverse_files, self.inverse_flags))
        points = linear_point_map(files, flags)
        if points is None:
            return None
        # reference voxel -> volume voxel; the volume's non-zero reach is its support's box
        # widened by one voxel (the interpolation footprint), pulled back to reference voxels
        to_volume = np.linalg.inv(volume.affine) @ points @ np.asarray(grid.affine, np.float64)
        lo, hi = inside.min(0) - 1.0, inside.max(0) + 1.0
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        back = (np.linalg.inv(to_volume) @ corners.T)[:3].T
        start = np.maximum(np.floor(back.min(0)).astype(int) - 1, 0)
        stop = np.minimum(np.ceil(back.max(0)).astype(int) + 2, np.asarray(grid.shape))
        return tuple(slice(int(a), int(max(a, b))) for a, b in zip(start, stop))

    def then(self, other: "Transform") -> "Transform":
        """The composition ``other`` after ``self`` (e.g. PET->MRI then MRI->MNI = PET->MNI)."""
        return Transform(other.forward_files + self.forward_files,
                         self.inverse_files + other.inverse_files,
                         self.inverse_flags + other.inverse_flags,
                         other.fixed, self.moving, f"{self.kind}+{other.kind}",
                         self._owners + other._owners)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the transform files and a ``transform.json`` describing them into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names: dict[str, str] = {}
        for index, source in enumerate(dict.fromkeys(self.forward_files + self.inverse_files)):
            suffix = ".nii.gz" if source.endswith(".nii.gz") else Path(source).suffix
            names[source] = f"part{index}{suffix}"
            with atomic_path(folder / names[source]) as temporary:
                shutil.copyfile(source, temporary)
        record = {
            "kind": self.kind,
            "forward": [names[f] for f in self.forward_files],
            "inverse": [names[f] for f in self.inverse_files],
            "inverse_flags": self.inverse_flags,
            "fixed": asdict(self.fixed),
            "moving": asdict(self.moving),
        }
        write_text_atomic(folder / TRANSFORM_FILE, json.dumps(record, indent=1))  # last: marks it complete
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Transform":
        """Read a transform written by :meth:`save` (the files stay where they are)."""
        folder = Path(folder)
        try:
            record = json.loads((folder / TRANSFORM_FILE).read_text())
            files = record["forward"] + record["inverse"]
            grids = [Grid(tuple(record[k]["shape"]), tuple(tuple(r) for r in record[k]["affine"]))
                     for k in ("fixed", "moving")]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{folder}: not a saved transform ({type(exc).__name__}: {exc}); "
                             "it must hold transform.json written by Transform.save") from None
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise InputError(f"{folder}: transform files {missing} are missing; save it again")
        return cls([str(folder / f) for f in record["forward"]],
                   [str(folder / f) for f in record["inverse"]],
                   [bool(b) for b in record["inverse_flags"]], grids[0], grids[1], record["kind"])


class _OwnedFolder:
    """A temporary folder deleted when the last Transform using it is garbage-collected."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="amyloidkd-transform-")
        weakref.finalize(self, shutil.rmtree, self.path, True)


@contextlib.contextmanager
def _ants_seed(seed: int | None):
    # ANTsPy reads its seed from a module global; setting it via set_ants_deterministic would
    # also force one thread, so set and restore the global here.
    import ants.config as ants_config

    previous = ants_config._random_seed
    ants_config._random_seed = seed
    try:
        yield
    finally:
        ants_config._random_seed = previous


def register(fixed: Volume, moving: Volume, config: RegistrationConfig | None = None,
             fixed_mask: Volume | None = None, moving_mask: Volume | None = None) -> Transform:
    """Register ``moving`` onto ``fixed`` with ANTs and return the invertible Transform.

    ANTs' output files are written into a folder owned by the Transform (not loose in /tmp).
    """
    global _threads_at_first_use
    config = config or RegistrationConfig()
    ants = import_ants()
    if _threads_at_first_use is None:
        _threads_at_first_use = _threads_from_environment()
    owner = _OwnedFolder()
    kwargs = {}
    if config.use_mask and fixed_mask is not None:
        kwargs["mask"] = volume_to_ants(fixed_mask.with_data((fixed_mask.data > 0.5).astype(np.float32)))
    if config.use_mask and moving_mask is not None:
        kwargs["moving_mask"] = volume_to_ants(moving_mask.with_data((moving_mask.data > 0.5).astype(np.float32)))
    try:
        with _ants_seed(config.random_seed):
            result = ants.registration(
                fixed=volume_to_ants(fixed), moving=volume_to_ants(moving),
                type_of_transform=TRANSFORM_TYPES[config.transform],
                outprefix=os.path.join(owner.path, "reg_"),
                aff_metric=config.metric, aff_random_sampling_rate=config.sampling_rate,
                aff_iterations=config.iterations, aff_shrink_factors=config.shrink_factors,
                aff_smoothing_sigmas=config.smoothing_sigmas,
                reg_iterations=config.syn_iterations, **kwargs)
    except RuntimeError as exc:
        raise InputError(f"ANTs registration of {moving.source or 'the image'} failed ({exc}); check "
                         "that both images hold the same anatomy and are not empty") from None
    forward = list(result["fwdtransforms"])
    inverse = list(result["invtransforms"])
    flags = [name.endswith(".mat") for name in inverse]
    for name in forward + inverse:
        if not name.startswith(owner.path):
            raise RuntimeError(f"ANTs wrote {name} outside the transform folder")
    return Transform(forward, inverse, flags, Grid.of(fixed), Grid.of(moving),
                     config.transform, (owner,))


def linear_point_map(files: list[str], flags: list[bool]) -> np.ndarray | None:
    """The 4x4 RAS point map of an ANTs transform list, or None if a part is not linear.

    ANTsPy resamples by pulling: the value at output point ``p`` is read from the input image
    at ``Tn(...T2(T1(p)))`` for ``transformlist=[T1, ..., Tn]`` (each inverted where flagged;
    checked against ``apply_transforms`` in ``Testing/library/test_registration.py``). Linear
    parts are the ``.mat`` files of rigid and affine registrations; the matrix of each is
    recovered from the images of four points.
    """
    if not _all_linear(files):
        return None
    ants = import_ants()
    basis = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    combined = np.eye(4)
    for path, invert in zip(files, flags):
        part = ants.read_transform(str(path))
        if invert:
            part = part.invert()
        moved = np.array([part.apply_to_point(tuple(point)) for point in basis], np.float64)
        matrix = np.eye(4)
        matrix[:3, :3] = ((moved[1:] - moved[0]) / 100.0).T
        matrix[:3, 3] = moved[0]
        combined = matrix @ combined
    return _RAS_LPS @ combined @ _RAS_LPS


def _all_linear(files: list[str]) -> bool:
    """True when every transform file is a linear (rigid/affine) ITK ``.mat`` file."""
    return bool(files) and all(str(f).endswith(".mat") for f in files)


def _sitk_image(volume: Volume):
    """The volume as a float32 SimpleITK image in the same physical space."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume.data).transpose(2, 1, 0),
                                                        dtype=np.float32))
    spacing, direction, origin = lps_geometry(volume.affine)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin.tolist())
    return image


def resample_linear(volume: Volume, files: list[str], flags: list[bool], reference: Grid,
                    interpolation: str = "linear") -> Volume:
    """``volume`` resampled onto ``reference`` through linear ANTs transform files, with ITK's
    resampler through SimpleITK: the same points, interpolation and edge rules as ANTs'
    ``apply_transforms`` (bit-identical results, ``Testing/library/test_registration.py``)
    without ANTsPy's image copies, on one thread (each voxel is computed on its own, so the
    result does not depend on the thread count; a second thread did not help here).

    ``files`` in ANTsPy's order (:func:`linear_point_map`: the first is applied to a point
    first); ITK's composite transform applies the last one added first, so they are added in
    reverse.
    """
    import SimpleITK as sitk

    composite = sitk.CompositeTransform(3)
    for path, invert in reversed(list(zip(files, flags))):
        part = sitk.ReadTransform(str(path))
        composite.AddTransform(part.GetInverse() if invert else part)
    resampler = sitk.ResampleImageFilter()
    spacing, direction, origin = lps_geometry(reference.affine)
    resampler.SetSize([int(n) for n in reference.shape])
    resampler.SetOutputSpacing(spacing.tolist())
    resampler.SetOutputDirection(direction.ravel().tolist())
    resampler.SetOutputOrigin(origin.tolist())
    resampler.SetTransform(composite)
    resampler.SetInterpolator(getattr(sitk, SITK_INTERPOLATIONS[interpolation]))
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetNumberOfThreads(1)
    moved = sitk.GetArrayFromImage(resampler.Execute(_sitk_image(volume))).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(moved), np.asarray(reference.affine, np.float64),
                  volume.modality, volume.source)


def register_to_mni(mri: Volume, config: RegistrationConfig | None = None,
                    mask: Volume | None = None) -> Transform:
    """Register a brain-extracted MRI to the MNI152 2009 template (brain masks used when known)."""
    config = config or RegistrationConfig()
    template = load_template(config.template_resolution)
    return register(template.t1, mri, config, fixed_mask=template.mask, moving_mask=mask)


def rigid_pet_to_mri(pet: Volume, mri: Volume, config: RegistrationConfig | None = None,
                     mri_mask: Volume | None = None) -> Transform:
    """Rigidly register a PET (SUVR) volume to its subject's MRI (mutual information)."""
    config = config or RegistrationConfig(transform="rigid")
    if config.transform != "rigid":
        raise ConfigError(f"PET-to-MRI registration is rigid (same head); got {config.transform!r}")
    return register(mri, pet, config, fixed_mask=mri_mask)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)
