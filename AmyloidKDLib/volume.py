"""One image type for every step: a float32 array in RAS+ voxel order with its affine.

Orientation is resolved once, on load: data *and* affine are reoriented together to the
closest canonical (RAS+) orientation, so nothing downstream guesses axes. (Reorienting the
header without the data silently mirrors a brain; never do that.)
"""

from __future__ import annotations

import contextlib
import locale
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from AmyloidKDLib.atomic import atomic_path
from AmyloidKDLib.errors import InputError
from AmyloidKDLib.fourdfp import is_fourdfp, load_fourdfp

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MRI_MODALITIES = ("T1w", "T2w", "FLAIR", "T2star")
MODALITIES = MRI_MODALITIES + ("PET", "mask", "label", "saliency")

#: Largest in-memory float32 volume accepted by default, in MiB (override per call or with
#: the environment variable AMYLOIDKD_MAX_VOLUME_MB).
DEFAULT_MAX_VOLUME_MB = 2048.0
#: Voxel sizes above this (mm) are implausible for the structural analysis we do.
MAX_PLAUSIBLE_SPACING_MM = 5.0
#: Largest/smallest voxel edge ratio above which an MRI is too anisotropic for sagittal slicing.
MAX_MRI_ANISOTROPY = 4.0


class VolumeWarning(UserWarning):
    """A volume loaded but looks implausible for this analysis (reported, not fatal)."""


@dataclass
class Volume:
    """A 3-D image: ``data[i, j, k]`` in RAS+ voxel order and the 4x4 ``affine`` (ijk -> RAS mm).

    Attributes:
        data: float32 array of shape (X, Y, Z); axis 0 runs left->right, 1 posterior->anterior,
            2 inferior->superior once loaded through :func:`load_volume`.
        affine: 4x4 voxel-to-world (RAS, millimetres) matrix.
        modality: what the intensities are: one of ``MODALITIES``.
        source: the file it came from, if any.
        warnings: plausibility warnings found when it was validated.
    """

    data: np.ndarray
    affine: np.ndarray
    modality: str = "T1w"
    source: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = np.ascontiguousarray(self.data, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.data.ndim != 3:
            raise InputError(f"a Volume must be 3-D, got an array of shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise InputError(f"a Volume's affine must be 4x4, got shape {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid size (X, Y, Z)."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm, derived from the affine."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis code such as ``RAS`` or ``LPS``, derived from the affine."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """The voxel-to-world matrix (alias of ``affine``, named as Slicer names it)."""
        return self.affine

    def with_data(self, data: np.ndarray, modality: str | None = None) -> "Volume":
        """A new Volume on the same grid with other intensities (e.g. after a filter)."""
        return Volume(data, self.affine.copy(), modality or self.modality, self.source)

    def to_nifti(self, dtype: np.dtype | type = np.float32) -> nib.Nifti1Image:
        """This volume as a nibabel image (sform and qform set to the affine)."""
        img = nib.Nifti1Image(np.asarray(self.data, dtype=dtype), self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        img.header.set_xyzt_units("mm")
        return img

    def __repr__(self) -> str:
        sp = "x".join(f"{s:.2f}" for s in self.spacing)
        return (f"Volume(modality={self.modality!r}, shape={self.shape}, spacing={sp} mm, "
                f"orientation={self.orientation}, source={self.source!r})")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _orientation_codes(img) -> tuple[int, int] | None:
    # (qform_code, sform_code) of a NIfTI header; None for formats without them.
    header = img.header
    try:
        return int(header["qform_code"]), int(header["sform_code"])
    except (KeyError, TypeError, ValueError):
        return None


def _max_bytes(max_megabytes: float | None) -> float:
    if max_megabytes is None:
        max_megabytes = float(os.environ.get("AMYLOIDKD_MAX_VOLUME_MB", DEFAULT_MAX_VOLUME_MB))
    return max_megabytes * 1024 * 1024


def _squeeze_to_3d(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) < 3:
        raise InputError(f"{path}: image is {len(shape)}-D (shape {shape}); a 3-D volume is needed")
    if len(shape) > 3:
        extra = shape[3:]
        if any(s != 1 for s in extra):
            raise InputError(
                f"{path}: image is {len(shape)}-D with {int(np.prod(extra))} frames (shape {shape}); "
                "give a single 3-D volume (e.g. the mean or the 50-70 min SUVR frame)")
    if min(shape[:3]) < 2:
        raise InputError(f"{path}: image of shape {shape} is a single plane, not a 3-D volume")
    return tuple(int(s) for s in shape[:3])  # type: ignore[return-value]


def reorient_to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip ``data`` to the closest canonical RAS+ order and update ``affine`` to match."""
    ornt = orientations.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, affine
    new_data = orientations.apply_orientation(data, ornt)
    new_affine = affine @ orientations.inv_ornt_aff(ornt, data.shape)
    return np.ascontiguousarray(new_data), new_affine


def reorient_for_storage(volume: Volume, code: str) -> Volume:
    """The same image with data and affine permuted/flipped to axis code ``code`` (e.g. LPS).

    The inverse of :func:`reorient_to_ras` for writing a RAS volume the way a scanner stores it.
    """
    if code == "RAS":
        return volume
    transform = orientations.ornt_transform(orientations.axcodes2ornt("RAS"),
                                            orientations.axcodes2ornt(tuple(code)))
    data = orientations.apply_orientation(volume.data, transform)
    affine = volume.affine @ orientations.inv_ornt_aff(transform, volume.shape)
    return Volume(data, affine, volume.modality, volume.source)


def check_volume(volume: Volume) -> list[str]:
    """Plausibility warnings for a loaded volume (voxel size, anisotropy). Empty when fine."""
    found = []
    spacing = np.asarray(volume.spacing)
    shown = " x ".join(f"{s:.3g}" for s in spacing)
    if spacing.max() > MAX_PLAUSIBLE_SPACING_MM:
        found.append(f"voxel size {shown} mm has an edge above "
                     f"{MAX_PLAUSIBLE_SPACING_MM} mm: too coarse for reliable registration")
    if volume.modality in MRI_MODALITIES and spacing.max() / spacing.min() > MAX_MRI_ANISOTROPY:
        found.append(f"voxel size {shown} mm is anisotropic beyond "
                     f"{MAX_MRI_ANISOTROPY}:1; sagittal slices will be blurred along the thick axis")
    return found


@contextlib.contextmanager
def _locale_kept():
    """GDCM (SimpleITK's DICOM I/O) sets the C library's locale to "C" and leaves it there,
    which would turn Python's default text encoding into ASCII for the rest of the process;
    restore what was set before."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order (SimpleITK / GDCM).

    Raises:
        InputError: no DICOM series in the folder, or several (name the one to use).
    """
    import SimpleITK as sitk

    folder = Path(folder)
    with _locale_kept():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: is a folder without a DICOM series; give a NIfTI file or a "
                         "folder holding the DICOM files of one series")
    if len(series) > 1:
        raise InputError(f"{folder}: holds {len(series)} DICOM series; put each series in its own "
                         "folder (as an IDA download does) and give that folder")
    with _locale_kept():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def read_dicom_series(folder: str | os.PathLike) -> nib.Nifti1Image:
    """A DICOM series folder as an in-memory NIfTI image (RAS affine, sform set), read with
    SimpleITK so that slice order, spacing and orientation come from the DICOM headers.

    Raises:
        InputError: no single series in the folder, or it cannot be read.
    """
    import SimpleITK as sitk

    files = dicom_series_files(folder)
    try:
        with _locale_kept():
            image = sitk.ReadImage(files)
    except RuntimeError as exc:
        raise InputError(f"{folder}: DICOM series cannot be read ({_one_line(exc)})") from None
    data = sitk.GetArrayFromImage(image)            # (z, y, x [, components])
    if data.ndim != 3:
        raise InputError(f"{folder}: DICOM series is not one grey-level volume (array {data.shape})")
    data = np.transpose(data, (2, 1, 0))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin(), dtype=np.float64)
    nifti = nib.Nifti1Image(data, affine)
    nifti.set_sform(affine, code=1)
    nifti.set_qform(affine, code=1)
    return nifti


def load_volume(
    path: str | os.PathLike,
    modality: str = "T1w",
    *,
    replace_nonfinite: bool = False,
    max_megabytes: float | None = None,
    allow_missing_orientation: bool = False,
) -> Volume:
    """Read a NIfTI file (or a DICOM series folder), validate it and return it reoriented to RAS+.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file, a 4dfp image (``.4dfp.img`` with its ``.ifh``),
            or a folder holding one DICOM series.
        modality: what the image is (``T1w``, ``T2w``, ``FLAIR``, ``T2star``, ``PET``, ...).
        replace_nonfinite: replace NaN/Inf voxels with 0 (reported as a warning) instead of
            refusing the file.
        max_megabytes: memory guard for the float32 array; default 2048 MiB or the
            environment variable ``AMYLOIDKD_MAX_VOLUME_MB``.
        allow_missing_orientation: accept a header whose qform and sform codes are both 0
            (no orientation; left/right then rests on the NIfTI default and may be mirrored),
            reported as a warning, instead of refusing the file.

    Raises:
        InputError: missing, unreadable, truncated or non-image file; not 3-D; complex
            values; no orientation in the header (unless ``allow_missing_orientation``);
            empty or constant; NaN/Inf voxels (unless ``replace_nonfinite``); too large.
    """
    path = Path(path)
    if modality not in MODALITIES:
        raise InputError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():  # a DICOM series, as an ADNI/IDA download holds it
        img = read_dicom_series(path)
    elif is_fourdfp(path):  # PUP's 4dfp SUVR images (OASIS-3), see AmyloidKDLib/fourdfp.py
        img = load_fourdfp(path)
    elif not _is_nifti(path):
        raise InputError(f"{path}: not a NIfTI file (expected .nii or .nii.gz, or a 4dfp "
                         ".4dfp.img); convert DICOM with dcm2niix first")
    else:
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises several types for garbage input
            raise InputError(f"{path}: cannot be read as NIfTI ({_one_line(exc)}); "
                             "the file is damaged or not an image") from None

    shape = _squeeze_to_3d(tuple(img.shape), path)
    found: list[str] = []
    if np.dtype(img.get_data_dtype()).kind == "c":
        raise InputError(f"{path}: voxels are complex numbers ({img.get_data_dtype()}); give a "
                         "magnitude image (e.g. the scanner's magnitude reconstruction, or "
                         "numpy.abs of the data saved as float32)")
    if _orientation_codes(img) == (0, 0):
        if not allow_missing_orientation:
            raise InputError(
                f"{path}: the header has no orientation (qform_code and sform_code are both 0), "
                "so left and right cannot be trusted; convert the scan again with the scanner's "
                "converter (e.g. dcm2niix) or set the sform/qform (e.g. nibabel set_sform(affine, "
                "code=1)); to accept it anyway use allow_missing_orientation=True / "
                "--allow-missing-orientation")
        found.append("header has no orientation (qform/sform codes 0): loaded with the NIfTI "
                     "default axes, left/right may be mirrored")
    needed = float(np.prod(shape)) * 4
    if needed > _max_bytes(max_megabytes):
        raise InputError(
            f"{path}: volume {shape} needs {needed / 2**20:.0f} MiB as float32, above the "
            f"{_max_bytes(max_megabytes) / 2**20:.0f} MiB guard; resample it or raise "
            "AMYLOIDKD_MAX_VOLUME_MB")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:
        raise InputError(f"{path}: image data cannot be read ({_one_line(exc)}); "
                         "the file is probably truncated - copy or export it again") from None

    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the header's voxel-to-world matrix is invalid (singular or "
                         "non-finite); fix the NIfTI header (sform/qform)")

    bad = ~np.isfinite(data)
    if bad.any():
        n_bad = int(bad.sum())
        if not replace_nonfinite:
            raise InputError(f"{path}: {n_bad} voxels are NaN or Inf; fix the image or allow "
                             "replacing them with 0 (replace_nonfinite=True / --replace-nonfinite)")
        data[bad] = 0.0
        found.append(f"{n_bad} NaN/Inf voxels replaced with 0")
    if not np.any(data):
        raise InputError(f"{path}: image is empty (every voxel is 0)")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path}: image is constant (every voxel is {float(data.min()):g}); "
                         "it holds no anatomy")

    data, affine = reorient_to_ras(data, affine)
    volume = Volume(data, affine, modality, str(path))
    volume.warnings = found + check_volume(volume)
    for message in volume.warnings:
        warnings.warn(f"{path}: {message}", VolumeWarning, stacklevel=2)
    return volume


def save_volume(volume: Volume, path: str | os.PathLike, dtype: np.dtype | type = np.float32) -> Path:
    """Write ``volume`` as NIfTI atomically (temporary file in the same folder, then rename).

    A crash or a full disk never leaves a half-written file under ``path``.
    """
    path = Path(path)
    if not _is_nifti(path):
        raise InputError(f"{path}: output must end in .nii or .nii.gz")
    with atomic_path(path) as temporary:
        nib.save(volume.to_nifti(dtype), temporary)
    return path


def save_dicom_series(volume: Volume, folder: str | os.PathLike, *, description: str = "",
                      patient_id: str = "", study_date: str = "", modality: str = "MR",
                      prefix: str = "slice") -> Path:
    """Write ``volume`` as a DICOM series (one int16 file per axial plane) into ``folder``.

    Used by the synthetic ADNI layout and the tests, so DICOM input is read through the same
    path as a scanner's (SimpleITK/GDCM, the inverse of :func:`read_dicom_series`). The
    files are written to a temporary folder that is renamed when complete.

    Args:
        description: SeriesDescription (0008,103E); study_date: ``YYYYMMDD`` (0008,0020).
    """
    import hashlib
    import shutil
    import tempfile

    import SimpleITK as sitk

    folder = Path(folder)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    linear = ras_to_lps @ volume.affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    image = sitk.GetImageFromArray(np.rint(np.transpose(volume.data, (2, 1, 0))).astype(np.int16))
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin((ras_to_lps @ volume.affine[:3, 3]).tolist())
    digest = hashlib.sha256(f"{folder.name}|{patient_id}|{description}|{study_date}".encode()).hexdigest()
    uid = f"1.2.826.0.1.3680043.8.498.{int(digest[:12], 16)}"
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent)
    try:
        for k in range(image.GetSize()[2]):
            plane = image[:, :, k]
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            for tag, value in (("0008|0060", modality), ("0008|103e", description),
                               ("0008|0020", study_date), ("0010|0020", patient_id),
                               ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                               ("0008|0018", f"{uid}.3.{k + 1}"), ("0020|0013", str(k + 1)),
                               ("0020|0037", orientation),
                               ("0020|0032", "\\".join(f"{v:.6f}" for v in position)),
                               ("0018|0050", f"{spacing[2]:.6f}")):
                plane.SetMetaData(tag, value)
            writer.SetFileName(str(Path(temporary) / f"{prefix}_{k + 1:04d}.dcm"))
            with _locale_kept():
                writer.Execute(plane)
        os.replace(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder
