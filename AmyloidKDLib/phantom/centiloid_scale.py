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

import json
from functools import lru_cache

import numpy as np
from scipy import ndimage

from AmyloidKDLib.centiloid import TracerEquation, VoiSet, _scaled
from AmyloidKDLib.phantom.anatomy import build_template_maps
from AmyloidKDLib.phantom.config import PhantomConfig, centiloid_to_suvr
from AmyloidKDLib.phantom.pet_uptake import pet_sigma_voxels, pet_tissue_suvr
from AmyloidKDLib.volume import Volume

#: The margin (mm) of the template crop the generator's PET maps use.
PET_MAPS_MARGIN_MM = 16.0


@lru_cache(maxsize=16)
def _blurred_parts(tracer: str, config_json: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The blurred template PET is base + (g - 1) * amyloid, g the early-amyloid GM level
    # (blurring is linear), so the VOI SUVR of any g follows from four VOI means.
    config = PhantomConfig.from_dict(json.loads(config_json))
    maps = build_template_maps(config.pet_spacing_mm, PET_MAPS_MARGIN_MM, config)
    sigma = pet_sigma_voxels(config, config.pet_spacing_mm)
    base = ndimage.gaussian_filter(pet_tissue_suvr(maps, maps.gm, maps.csf, 1.0, tracer, config),
                                   sigma, mode="constant")
    amyloid = ndimage.gaussian_filter((maps.gm * maps.amyloid_weight).astype(np.float32), sigma,
                                      mode="constant")
    return maps.affine, base, amyloid


def _voi_means(tracer: str, config: PhantomConfig, vois: VoiSet | None
               ) -> tuple[float, float, float, float]:
    from AmyloidKDLib.centiloid import approximate_voi_set

    affine, base, amyloid = _blurred_parts(tracer, json.dumps(config.to_dict(), sort_keys=True))
    on_maps = (vois or approximate_voi_set(2)).on_grid(Volume(base, affine, "PET"))
    ctx, reference = on_maps.ctx.data > 0.5, on_maps.reference.data > 0.5
    return tuple(float(part[mask].mean(dtype=np.float64))  # type: ignore[return-value]
                 for mask in (ctx, reference) for part in (base, amyloid))


def grey_matter_suvr_for(voi_suvr: float, tracer: str, config: PhantomConfig,
                         vois: VoiSet | None = None) -> float:
    """The early-amyloid grey-matter SUVR whose noise-free template PET has ``voi_suvr`` in
    the VOIs (default the built-in CTX/WhlCbl; used by ``pet_relation="centiloid"``)."""
    ctx_base, ctx_amyloid, ref_base, ref_amyloid = _voi_means(tracer, config, vois)
    return 1.0 + (voi_suvr * ref_base - ctx_base) / (ctx_amyloid - voi_suvr * ref_amyloid)


def phantom_voi_suvr(true_centiloid: float, tracer: str, vois: VoiSet,
                     config: PhantomConfig | None = None) -> float:
    """mean(CTX) / mean(WhlCbl) of the noise-free template-space phantom PET at a Centiloid.

    No deformation, pose, atrophy, jitter or noise; the PET's blur (``pet_fwhm_mm``) is
    applied, as it is in every scan.
    """
    config = config or PhantomConfig()
    grey = centiloid_to_suvr(true_centiloid, tracer, config)
    if config.pet_relation == "centiloid":
        grey = grey_matter_suvr_for(grey, tracer, config)
    ctx_base, ctx_amyloid, ref_base, ref_amyloid = _voi_means(tracer, config, vois)
    return (ctx_base + (grey - 1.0) * ctx_amyloid) / (ref_base + (grey - 1.0) * ref_amyloid)


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


__all__ = ["grey_matter_suvr_for", "phantom_equation", "phantom_voi_suvr"]
