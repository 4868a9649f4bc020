"""4dfp images (``.4dfp.img`` + ``.4dfp.ifh``): the format the PET Unified Pipeline writes.

OASIS-3's PUP outputs (e.g. ``<label>n_msum_SUVR.4dfp.img``) are 4dfp: raw float32 voxels in
one file and an Interfile-style text header (``key := value``) beside it. nibabel does not
read 4dfp, so this module does; it is small and documented (4dfp format notes of the
Washington University NIL, ``4dfp-docs/docs/format.rst``).

Orientation. 4dfp stores voxels in its own order and gives no affine; the world position of
voxel ``(i, j, k)`` (0-based, ``i`` fastest) follows from ``orientation``, ``mmppix`` and
``center`` the way ``nifti_4dfp -n`` converts it (``4dfp-format.c`` of nifti_4dfp, the tool
Chiumento et al. used on OASIS-3):

* ``orientation`` says which world axis each stored axis runs along: 2 (transverse) x, y, z;
  3 (coronal) x, z, y; 4 (sagittal) y, z, x.
* Along an axis, 4dfp's coordinate of 1-based index ``n`` is ``mmppix * n - center``, except
  that the stored order runs backwards along some axes (x and z for orientation 2, x for 3,
  the first and last stored axes for 4): there index ``n`` stands for ``N + 1 - n``.

With the usual signs (``mmppix`` = +, -, -) a transverse image is stored right-to-left,
anterior-to-posterior, inferior-to-superior: flipped along y relative to the LAS order of
FSL-style NIfTI files, which is the "4dfp and NIfTI are y-flipped" rule of the 4dfp docs,
and the flips of the docs' display table ("flip y; first voxel right occipital skull-base"
for orientation 2, "y z" for 3, "x y z" for 4) come out of the same rule. The test
``Testing/library/test_fourdfp.py`` checks this against a NIfTI of the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from AmyloidKDLib.atomic import atomic_path, write_text_atomic
from AmyloidKDLib.errors import InputError

IMAGE_SUFFIX = ".4dfp.img"
HEADER_SUFFIX = ".4dfp.ifh"
#: orientation -> world axis (0 x, 1 y, 2 z) of each stored axis, and the stored axes that run backwards.
_AXES = {2: ((0, 1, 2), (0, 2)), 3: ((0, 2, 1), (0,)), 4: ((1, 2, 0), (0, 2))}
_ORIENTATION_NAMES = {2: "transverse", 3: "coronal", 4: "sagittal"}


def is_fourdfp(path: str | os.PathLike) -> bool:
    """True for a ``.4dfp.img`` or ``.4dfp.ifh`` file name."""
    return Path(path).name.lower().endswith((IMAGE_SUFFIX, HEADER_SUFFIX))


def fourdfp_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(image, header)`` paths of a 4dfp image named by its ``.img``, its ``.ifh`` or its stem."""
    path = Path(path)
    name = path.name
    for suffix in (IMAGE_SUFFIX, HEADER_SUFFIX):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + IMAGE_SUFFIX), path.with_name(name + HEADER_SUFFIX)


@dataclass(frozen=True)
class FourdfpHeader:
    """What a ``.4dfp.ifh`` says about its image.

    Attributes:
        shape: matrix size [1..4] (stored axes, fastest first; the 4th is frames).
        mmppix: signed voxel size in mm along the three stored axes.
        center: the ``center`` key (mm), see the module docstring.
        orientation: 2 transverse, 3 coronal, 4 sagittal.
        big_endian: ``imagedata byte order`` is not ``littleendian``.
    """

    shape: tuple[int, int, int, int]
    mmppix: tuple[float, float, float]
    center: tuple[float, float, float]
    orientation: int
    big_endian: bool

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel (0-based, stored order) -> world (RAS mm) matrix, as nifti_4dfp computes it."""
        world_axes, backwards = _AXES[self.orientation]
        affine = np.eye(4)
        affine[:3, :3] = 0.0
        for axis, world in enumerate(world_axes):
            step, n, center = self.mmppix[axis], self.shape[axis], self.center[axis]
            if axis in backwards:       # stored index i is 4dfp index N - i (1-based)
                affine[world, axis], affine[world, 3] = -step, step * n - center
            else:                       # stored index i is 4dfp index i + 1
                affine[world, axis], affine[world, 3] = step, step - center
        return affine


def _ifh_fields(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise InputError(f"{path}: 4dfp header cannot be read ({exc.strerror or exc})") from None
    fields = {}
    for line in text.splitlines():
        if ":=" in line:
            key, value = line.split(":=", 1)
            fields[" ".join(key.split()).lower()] = value.strip()
    return fields


def read_fourdfp_header(path: str | os.PathLike) -> FourdfpHeader:
    """Parse the ``.4dfp.ifh`` of a 4dfp image.

    ``mmppix`` falls back to the scaling factors with 4dfp's usual signs (+, -, -) and
    ``center`` to the middle of the grid when the header lacks them.

    Raises:
        InputError: no header, a missing or unreadable key, an orientation other than 2/3/4, or
            a number format other than 4-byte float.
    """
    _, header = fourdfp_files(path)
    if not header.is_file():
        raise InputError(f"{header}: no such file; a 4dfp image needs its .4dfp.ifh header next "
                         "to the .4dfp.img")
    fields = _ifh_fields(header)

    def numbers(key: str, count: int, cast=float) -> list | None:
        if key not in fields:
            return None
        try:
            values = [cast(float(v)) for v in fields[key].split()[:count]]
        except ValueError:
            raise InputError(f"{header}: '{key}' is {fields[key]!r}, not {count} number(s)") from None
        if len(values) != count:
            raise InputError(f"{header}: '{key}' is {fields[key]!r}, not {count} number(s)")
        return values

    shape = []
    for axis in range(1, 5):
        size = numbers(f"matrix size [{axis}]", 1, int)
        if size is None and axis < 4:
            raise InputError(f"{header}: no 'matrix size [{axis}]'; not a 4dfp header")
        shape.append(size[0] if size else 1)
    orientation = numbers("orientation", 1, int)
    if orientation is None or orientation[0] not in _AXES:
        raise InputError(f"{header}: orientation {fields.get('orientation')!r} is not 2 (transverse), "
                         "3 (coronal) or 4 (sagittal)")
    number_format = fields.get("number format", "float").lower()
    width = numbers("number of bytes per pixel", 1, int)
    if "float" not in number_format or (width and width[0] != 4):
        raise InputError(f"{header}: number format {number_format!r} with {width and width[0]} bytes "
                         "per pixel; 4dfp images are 4-byte floats")
    scaling = [numbers(f"scaling factor (mm/pixel) [{axis}]", 1) for axis in (1, 2, 3)]
    mmppix = numbers("mmppix", 3)
    if mmppix is None:
        if any(s is None for s in scaling):
            raise InputError(f"{header}: neither 'mmppix' nor the 'scaling factor (mm/pixel)' keys")
        mmppix = [abs(scaling[0][0]), -abs(scaling[1][0]), -abs(scaling[2][0])]
    center = numbers("center", 3)
    if center is None:   # grid centred on the origin
        center = [m * (n + 1) / 2.0 for m, n in zip(mmppix, shape)]
    if any(abs(m) < 1e-9 for m in mmppix):
        raise InputError(f"{header}: voxel size {mmppix} has a zero edge")
    order = fields.get("imagedata byte order", "bigendian").lower()
    return FourdfpHeader(tuple(shape), tuple(mmppix), tuple(center), orientation[0],  # type: ignore[arg-type]
                         order != "littleendian")


def load_fourdfp(path: str | os.PathLike) -> nib.Nifti1Image:
    """A 4dfp image as an in-memory NIfTI image (float32 voxels in stored order + affine).

    The result is what ``nifti_4dfp -n`` would write, up to voxel order: the same world
    position for every voxel, so loading either through
    :func:`AmyloidKDLib.volume.load_volume` gives the same RAS array and affine.

    Raises:
        InputError: missing header or image, a bad header, or an image file shorter than the
            header says.
    """
    image, _ = fourdfp_files(path)
    header = read_fourdfp_header(path)
    if not image.is_file():
        raise InputError(f"{image}: no such file; the .4dfp.ifh header has no image beside it")
    count = int(np.prod(header.shape))
    dtype = np.dtype(">f4" if header.big_endian else "<f4")
    size = image.stat().st_size
    if size < count * 4:
        raise InputError(f"{image}: {size} bytes, but the header's matrix {header.shape} needs "
                         f"{count * 4}; the file is truncated - copy or download it again")
    data = np.fromfile(image, dtype=dtype, count=count).astype(np.float32)
    data = data.reshape(header.shape, order="F")
    if header.shape[3] == 1:
        data = data[..., 0]
    img = nib.Nifti1Image(data, header.affine)
    img.set_qform(header.affine, code=1)
    return img


def save_fourdfp(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a 3-D array on a RAS-aligned grid as a transverse (orientation 2) 4dfp image.

    The inverse of :func:`load_fourdfp` for axis-aligned grids (what PUP writes); used by the
    synthetic cohort generator. Both files are written atomically. Returns the ``.4dfp.img`` path.

    Raises:
        InputError: ``data`` is not 3-D or ``affine`` is not axis-aligned.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise InputError(f"a 4dfp image here is 3-D, got shape {data.shape}")
    ornt = nib.orientations.io_orientation(affine)
    canonical = nib.orientations.apply_orientation(data, ornt)
    ras = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    if not np.allclose(ras[:3, :3], np.diag(np.diag(ras[:3, :3])), atol=1e-6):
        raise InputError("save_fourdfp needs an axis-aligned grid (no rotation in the affine)")
    spacing = np.diag(ras[:3, :3])
    shape = canonical.shape
    # transverse 4dfp stores x and y backwards relative to RAS (right->left, anterior->posterior)
    stored = canonical[::-1, ::-1, :]
    mmppix = (float(spacing[0]), -float(spacing[1]), -float(spacing[2]))
    first = ras @ np.array([shape[0] - 1, shape[1] - 1, 0, 1.0])   # world position of stored voxel 0
    center = (mmppix[0] * shape[0] - first[0],        # x runs backwards: x0 = m*N - c
              mmppix[1] - first[1],                   # y forwards:        y0 = m - c
              mmppix[2] * shape[2] - first[2])        # z backwards:       z0 = m*N - c
    image, header = fourdfp_files(path)
    image.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(image) as tmp:
        np.asarray(stored, dtype="<f4").ravel(order="F").tofile(tmp)
    lines = ["INTERFILE\t:=", "version of keys\t:= 3.3", "number format\t\t:= float",
             f"name of data file\t:= {image.name}", "number of bytes per pixel\t:= 4",
             "imagedata byte order\t:= littleendian", "orientation\t\t:= 2",
             "number of dimensions\t:= 4"]
    lines += [f"matrix size [{a + 1}]\t:= {n}" for a, n in enumerate((*shape, 1))]
    lines += [f"scaling factor (mm/pixel) [{a + 1}]\t:= {abs(m):.6f}" for a, m in enumerate(mmppix)]
    lines += ["mmppix\t:= " + " ".join(f"{m:.6f}" for m in mmppix),
              "center\t:= " + " ".join(f"{c:.4f}" for c in center)]
    write_text_atomic(header, "\n".join(lines) + "\n")
    return image
