"""The MNI152 2009 template that nilearn ships inside its package (no download, works offline).

Registration targets, brain masks and tissue maps all come from here, at 1 mm (the paper's
grid) or 2 mm (the ``fast`` preset's grid: 8x fewer voxels for the same anatomy).

The files are read with nibabel straight from nilearn's package folder: importing nilearn
costs many seconds, and its 2 mm resampling (cubic spline) leaves a haze outside the brain.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from AmyloidKDLib.errors import ConfigError, DependencyError
from AmyloidKDLib.volume import Volume, reorient_to_ras

TEMPLATE_RESOLUTIONS = (1, 2)
TEMPLATE_NAME = "ICBM152 2009 symmetric (nilearn package data)"
TEMPLATE_FILES = {kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
                  for kind in ("t1", "gm", "wm")}
#: nilearn's definition of the template brain mask: T1 (scaled to [0, 1]) above 0.2.
BRAIN_MASK_THRESHOLD = 0.2


@dataclass(frozen=True)
class MNITemplate:
    """The template's T1 (brain only, [0, 1]), brain mask (0/1) and GM/WM probability maps.

    The arrays are read-only (they are shared by every caller in the process): copy before
    changing them.
    """

    resolution: int
    t1: Volume
    mask: Volume
    gm: Volume
    wm: Volume

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size of the template at this resolution."""
        return self.t1.shape

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS matrix of the template grid."""
        return self.t1.affine


def template_folder() -> Path:
    """nilearn's package data folder holding the MNI152 2009 files."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError("the MNI152 template ships inside nilearn; install it with "
                              "`pip install nilearn`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DependencyError(f"nilearn's MNI152 files {missing} are missing from {folder}; "
                              "reinstall nilearn (`pip install --force-reinstall nilearn`)")
    return folder


def _read(name: str, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(template_folder() / name))
    data, affine = reorient_to_ras(np.asarray(image.get_fdata(), dtype=np.float32), image.affine)
    data = data / data.max()
    if resolution == 2:
        # the 2 mm grid is every second 1 mm voxel (same origin); smooth first against aliasing
        data = ndimage.gaussian_filter(data, sigma=0.7)[::2, ::2, ::2]
        affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    return np.clip(data, 0.0, 1.0), affine


@lru_cache(maxsize=len(TEMPLATE_RESOLUTIONS))
def load_template(resolution: int = 1) -> MNITemplate:
    """The MNI152 2009 template at ``resolution`` mm (1 or 2), read once per process."""
    if resolution not in TEMPLATE_RESOLUTIONS:
        raise ConfigError(f"template resolution must be one of {TEMPLATE_RESOLUTIONS} (mm), "
                          f"got {resolution!r}")
    volumes = {}
    for kind, name in TEMPLATE_FILES.items():
        data, affine = _read(name, resolution)
        volumes[kind] = Volume(data, affine, "T1w" if kind == "t1" else "label",
                               source=f"{TEMPLATE_NAME}, {resolution} mm")
    t1 = volumes["t1"]
    mask = t1.with_data((t1.data > BRAIN_MASK_THRESHOLD).astype(np.float32), "mask")
    t1.data *= mask.data
    for volume in (t1, mask, volumes["gm"], volumes["wm"]):
        volume.data.flags.writeable = False
    return MNITemplate(resolution, t1, mask, volumes["gm"], volumes["wm"])
