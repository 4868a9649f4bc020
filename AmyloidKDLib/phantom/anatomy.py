"""Template-derived maps (tissue, amyloid and atrophy weights) on the phantom's grids."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from AmyloidKDLib.phantom.config import PhantomConfig

#: Regions where amyloid accumulates first: MNI centre (mm, right hemisphere; mirrored to the
#: left) and sphere radius (mm). Intersected with the template's GM map.
EARLY_AMYLOID_REGIONS: dict[str, tuple[tuple[float, float, float], float]] = {
    "precuneus": ((8.0, -60.0, 40.0), 14.0),
    "posterior_cingulate": ((5.0, -40.0, 30.0), 12.0),
    "medial_frontal": ((8.0, 50.0, 20.0), 14.0),
    "lateral_temporal": ((58.0, -20.0, -10.0), 14.0),
    "lateral_parietal": ((45.0, -60.0, 40.0), 14.0),
}
#: Regions of amyloid-linked grey-matter loss (temporo-parietal cortex and hippocampus).
ATROPHY_REGIONS: dict[str, tuple[tuple[float, float, float], float]] = {
    "hippocampus": ((28.0, -22.0, -14.0), 10.0),
    "lateral_temporal": ((58.0, -20.0, -10.0), 16.0),
    "lateral_parietal": ((45.0, -60.0, 40.0), 16.0),
    "precuneus": ((8.0, -60.0, 40.0), 14.0),
}

from AmyloidKDLib.phantom.truth import ATROPHY_REGION_NAMES  # noqa: E402  (truth needs no maps)

if tuple(ATROPHY_REGIONS) != ATROPHY_REGION_NAMES:
    raise RuntimeError("truth.ATROPHY_REGION_NAMES must list ATROPHY_REGIONS' keys in order")


@dataclass
class TemplateMaps:
    """Template-derived maps on one grid, built once per cohort (not per subject)."""

    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    amyloid_weight: np.ndarray    # 1 in early-amyloid cortex, background elsewhere, 0 cerebellum
    atrophy_weight: np.ndarray
    region_weights: np.ndarray    # (n ATROPHY_REGIONS, X, Y, Z): atrophy_weight split by region
    wm_lesion_weight: np.ndarray  # where WM lesions form: periventricular and deep WM
    outside_mm: np.ndarray        # distance outside the brain mask (0 inside)
    t1_gm: float
    t1_csf: float
    t1_wm: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size."""
        return self.t1.shape  # type: ignore[return-value]

    def mni_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable MNI x, y, z (mm) of the grid (axis-aligned template grid)."""
        axes = [self.affine[a, a] * np.arange(n) + self.affine[a, 3]
                for a, n in enumerate(self.shape)]
        return (axes[0][:, None, None].astype(np.float32), axes[1][None, :, None].astype(np.float32),
                axes[2][None, None, :].astype(np.float32))


def _sphere_weight(coords, regions, sharp: bool, fwhm_scale: float = 1.0) -> np.ndarray:
    x, y, z = coords
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    for (cx, cy, cz), radius in regions.values():
        for side in (1.0, -1.0):
            d2 = (x - side * cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
            if sharp:
                np.maximum(out, (d2 <= radius ** 2).astype(np.float32), out=out)
            else:
                np.maximum(out, np.exp(-d2 / (2 * (radius * fwhm_scale) ** 2)), out=out)
    return out


def build_template_maps(spacing_mm: float = 1.0, margin_mm: float = 16.0,
                        config: PhantomConfig | None = None) -> TemplateMaps:
    """The MNI152 maps cropped to the brain plus ``margin_mm`` at ``spacing_mm`` (1 or 2).

    Cached per process (the arrays are read-only): cohorts and tests share them.
    """
    config = config or PhantomConfig()
    return _template_maps(float(spacing_mm), float(margin_mm), config.cortical_background_weight)


@lru_cache(maxsize=4)
def _template_maps(spacing_mm: float, margin_mm: float, cortex: float) -> TemplateMaps:
    from AmyloidKDLib.template import load_template

    template = load_template(1)
    brain = template.mask.data > 0
    idx = np.argwhere(brain)
    margin = int(round(margin_mm))
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, brain.shape)
    factor = int(spacing_mm)
    hi = lo + (hi - lo) // factor * factor
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))

    def take(array: np.ndarray) -> np.ndarray:
        a = np.asarray(array[crop], np.float32)
        if factor > 1:
            s = a.shape
            a = a.reshape(s[0] // factor, factor, s[1] // factor, factor, s[2] // factor,
                          factor).mean(axis=(1, 3, 5))
        return np.ascontiguousarray(a, np.float32)

    affine = template.affine.copy()
    affine[:3, 3] = template.affine[:3, :3] @ (lo + (factor - 1) / 2.0) + template.affine[:3, 3]
    affine[:3, :3] = template.affine[:3, :3] * factor
    t1, gm, wm = take(template.t1.data), take(template.gm.data), take(template.wm.data)
    brain_f = take(brain.astype(np.float32))
    gm = np.minimum(gm, brain_f)
    wm = np.minimum(wm, brain_f - gm)
    csf = np.clip(brain_f - gm - wm, 0.0, 1.0)
    outside = ndimage.distance_transform_edt(brain_f < 0.5).astype(np.float32) * factor
    maps = TemplateMaps(affine, t1, gm, wm, csf, brain_f, t1, t1, t1[None], t1, outside,
                        float(np.median(t1[gm > 0.8])), float(np.median(t1[(csf > 0.8)])),
                        float(np.median(t1[wm > 0.9])))
    coords = maps.mni_coordinates()
    early = _sphere_weight(coords, EARLY_AMYLOID_REGIONS, sharp=False)
    weight = cortex + (1.0 - cortex) * early
    x, y, z = coords
    cerebellum = (y < -40) & (z < -20)
    maps.amyloid_weight = np.where(cerebellum, 0.0, weight).astype(np.float32)
    maps.atrophy_weight = _sphere_weight(coords, ATROPHY_REGIONS, sharp=False)
    # per-region maps that add up to atrophy_weight: equal losses give the v1 image
    parts = np.stack([_sphere_weight(coords, {name: region}, sharp=False)
                      for name, region in ATROPHY_REGIONS.items()])
    parts *= maps.atrophy_weight / np.maximum(parts.sum(0), 1e-6)
    maps.region_weights = parts.astype(np.float32)
    maps.wm_lesion_weight = _wm_lesion_weight(maps, coords)
    for name in ("t1", "gm", "wm", "csf", "brain", "amyloid_weight", "atrophy_weight",
                 "region_weights", "wm_lesion_weight", "outside_mm"):
        getattr(maps, name).flags.writeable = False
    return maps


#: Centre (MNI mm) and radii of the lateral ventricles' neighbourhood (periventricular caps)
#: and of the deep white matter of the centrum semiovale, where WM lesions form.
_PERIVENTRICULAR = ((0.0, -10.0, 18.0), (26.0, 40.0, 16.0))
_DEEP_WM = ((26.0, -15.0, 32.0), 14.0)


def _wm_lesion_weight(maps: TemplateMaps, coords) -> np.ndarray:
    """Where WM lesions form (0..1, white matter only): periventricular plus deep WM."""
    x, y, z = coords
    (cx, cy, cz), (ax, ay, az) = _PERIVENTRICULAR
    peri = np.exp(-(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2))
    deep = _sphere_weight(coords, {"deep": _DEEP_WM}, sharp=False)
    weight = np.clip(np.maximum(peri, 0.8 * deep), 0.0, 1.0) * (maps.wm > 0.5) * maps.wm
    return weight.astype(np.float32)


def region_masks(maps: TemplateMaps, gm_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Boolean masks on the maps' grid: ``cortical_amyloid`` (early-amyloid regions in GM),
    ``atrophy`` (atrophy regions in GM), ``cerebellum_gm`` (the SUVR reference)."""
    coords = maps.mni_coordinates()
    gm = maps.gm > gm_threshold
    x, y, z = coords
    return {
        "cortical_amyloid": gm & (_sphere_weight(coords, EARLY_AMYLOID_REGIONS, sharp=True) > 0),
        "atrophy": gm & (_sphere_weight(coords, ATROPHY_REGIONS, sharp=True) > 0),
        "cerebellum_gm": gm & np.broadcast_to((y < -50) & (z < -25), gm.shape),
    }

