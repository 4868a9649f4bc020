"""The phantom's own Centiloid scale: which SUVR in a VOI set its PET has at a true Centiloid.

The generator makes PET from a *cortical SUVR* (``PhantomConfig.suvr_intercept/suvr_slope``,
cerebellar grey matter = 1) placed in its early-amyloid grey matter. A standard quantification
samples other regions (the CTX and WhlCbl VOIs, which mix grey and white matter and take the
PET's blur), so its SUVR differs from that cortical SUVR. Here that relation is defined the
way the Centiloid Project defines one for every tracer and pipeline (Klunk et al. 2015): by
two anchors, the VOI SUVR of the noise-free, undeformed template PET at true Centiloid 0 and
100. :func:`phantom_equation` returns it as a :class:`~AmyloidKDLib.centiloid.TracerEquation`,
so ``amyloidkd centiloid --equations`` can quantify phantom PET against its truth
(``docs/centiloid.md``, "The phantom's scale"). Nothing here changes the images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from AmyloidKDLib.centiloid import TracerEquation, VoiSet, _scaled
from AmyloidKDLib.phantom.anatomy import build_template_maps
from AmyloidKDLib.phantom.config import PhantomConfig, centiloid_to_suvr
from AmyloidKDLib.phantom.synthesis import pet_sigma_voxels, pet_tissue_suvr
from AmyloidKDLib.volume import Volume

#: The margin (mm) of the template crop the generator's PET maps use.
PET_MAPS_MARGIN_MM = 16.0


def phantom_voi_suvr(true_centiloid: float, tracer: str, vois: VoiSet,
                     config: PhantomConfig | None = None) -> float:
    """mean(CTX) / mean(WhlCbl) of the noise-free template-space phantom PET at a Centiloid.

    No deformation, pose, atrophy, jitter or noise; the PET's blur (``pet_fwhm_mm``) is
    applied, as it is in every scan.
    """
    config = config or PhantomConfig()
    maps = build_template_maps(config.pet_spacing_mm, PET_MAPS_MARGIN_MM, config)
    cortical = centiloid_to_suvr(true_centiloid, tracer, config)
    suvr = pet_tissue_suvr(maps, maps.gm, maps.csf, cortical, tracer, config)
    blurred = ndimage.gaussian_filter(suvr, pet_sigma_voxels(config, config.pet_spacing_mm),
                                      mode="constant")
    on_maps = vois.on_grid(Volume(blurred, maps.affine, "PET"))
    ctx, reference = on_maps.ctx.data > 0.5, on_maps.reference.data > 0.5
    return float(blurred[ctx].mean(dtype=np.float64) / blurred[reference].mean(dtype=np.float64))


def phantom_equation(tracer: str, vois: VoiSet, config: PhantomConfig | None = None
                     ) -> TracerEquation:
    """The phantom tracer's Centiloid equation in a VOI set (anchors at true CL 0 and 100).

    Named ``phantom-<tracer>`` (e.g. ``phantom-AV45``) so it never passes for the real tracer.
    """
    config = config or PhantomConfig()
    suvr_0 = phantom_voi_suvr(0.0, tracer, vois, config)
    suvr_100 = phantom_voi_suvr(100.0, tracer, vois, config)
    return _scaled(f"phantom-{tracer}", suvr_0, suvr_100,
                   source=f"the phantom's {tracer} PET in VOI set {vois.name!r}: noise-free "
                          f"template SUVR {suvr_0:.4f} at 0 CL and {suvr_100:.4f} at 100 CL",
                   checked="computed from the generator (AmyloidKDLib.phantom.centiloid_scale)")


__all__ = ["phantom_equation", "phantom_voi_suvr"]
