"""The phantom's PET uptake model: tissue SUVRs on the template grid and the PET resolution.

Shared by the PET synthesis (:mod:`AmyloidKDLib.phantom.synthesis`) and the phantom's own
Centiloid calibration (:mod:`AmyloidKDLib.phantom.centiloid_scale`), which must see the same
uptake the images are made with.
"""

from __future__ import annotations

import math

import numpy as np

from AmyloidKDLib.phantom.anatomy import TemplateMaps
from AmyloidKDLib.phantom.config import PhantomConfig


def pet_tissue_suvr(maps: TemplateMaps, gm: np.ndarray, csf: np.ndarray, cortical_suvr: float,
                    tracer: str, config: PhantomConfig, jitter: float = 1.0) -> np.ndarray:
    """Noise-free PET SUVR on the template grid (cerebellar grey matter = 1), before smoothing.

    Grey matter takes ``1 + amyloid_weight * (cortical_suvr - 1) * jitter``, white matter the
    tracer's ``white_matter_suvr``, CSF 0.2, and a thin extracerebral rim 0.3.
    """
    uptake = 1.0 + maps.amyloid_weight * (cortical_suvr - 1.0) * jitter
    d = maps.outside_mm
    extracerebral = np.where(d > 0, 0.3 * np.clip((12.0 - d) / 4.0, 0.0, 1.0), 0.0)
    return (gm * uptake + maps.wm * config.white_matter_suvr[tracer] + 0.2 * csf
            + extracerebral).astype(np.float32)


def pet_sigma_voxels(config: PhantomConfig, spacing_mm: float) -> float:
    """The Gaussian sigma (voxels of ``spacing_mm``) of the phantom's PET resolution."""
    return config.pet_fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / spacing_mm
