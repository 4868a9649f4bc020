"""The MNI152 2009 template that nilearn ships inside its package (no download, works offline).

Registration targets, brain masks and tissue maps all come from here, at 1 mm (the paper's
grid) or 2 mm (the ``fast`` preset's grid: 8x fewer voxels for the same anatomy).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from AmyloidKDLib.errors import ConfigError, DependencyError
from AmyloidKDLib.volume import Volume, reorient_to_ras

TEMPLATE_RESOLUTIONS = (1, 2)
TEMPLATE_NAME = "MNI152NLin2009cSym (nilearn)"


@dataclass(frozen=True)
class MNITemplate:
    """The template's T1 (brain only, [0, 1]), brain mask (0/1) and GM/WM probability maps."""

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


def _to_volume(img, modality: str) -> Volume:
    data, affine = reorient_to_ras(np.asarray(img.get_fdata(), dtype=np.float32), img.affine)
    return Volume(data, affine, modality, source=f"nilearn:{TEMPLATE_NAME}")


@lru_cache(maxsize=len(TEMPLATE_RESOLUTIONS))
def load_template(resolution: int = 1) -> MNITemplate:
    """The MNI152 2009 template at ``resolution`` mm (1 or 2), read once per process.

    The T1 is set to 0 outside the brain mask: nilearn's 2 mm copy has interpolation haze
    there, which would otherwise pull registrations and slice selection outwards.
    """
    if resolution not in TEMPLATE_RESOLUTIONS:
        raise ConfigError(f"template resolution must be one of {TEMPLATE_RESOLUTIONS} (mm), "
                          f"got {resolution!r}")
    try:
        from nilearn import datasets
    except ImportError:
        raise DependencyError("the MNI152 template comes from nilearn; install it with "
                              "`pip install nilearn`") from None
    mask = _to_volume(datasets.load_mni152_brain_mask(resolution=resolution), "mask")
    mask.data[:] = (mask.data > 0.5).astype(np.float32)
    t1 = _to_volume(datasets.load_mni152_template(resolution=resolution), "T1w")
    t1.data *= mask.data
    gm = _to_volume(datasets.load_mni152_gm_template(resolution=resolution), "label")
    wm = _to_volume(datasets.load_mni152_wm_template(resolution=resolution), "label")
    for volume in (t1, mask, gm, wm):
        volume.data.flags.writeable = False
    return MNITemplate(resolution, t1, mask, gm, wm)
