"""Regional measures of the prepared MRI (and PET): the classic read-out any deep model must beat.

The prepared MNI volumes are reduced to one number per region of a fixed parcellation of the
MNI152 2009 template (the one nilearn ships; its licence allows use with its copyright
notice): grey-matter-weighted mean MRI intensity per parcel, plus the brain's GM- and
WM-weighted means. Atrophy darkens grey matter on T1, so these numbers carry what a
volumetric analysis would, without any model.

The parcellation is our own and built on the fly: k-means on the voxel coordinates of the
template's left hemisphere, mirrored to the right (so each parcel has a homologue), parcels
ordered by their centroids. It knows nothing of the generator's regions; it is the honest
stand-in for an anatomical atlas, none of which ships here with a licence that allows it.

Features are computed once per case and cached beside the slice stacks
(``<cache>/regions/<key>.npz``), keyed by the case's slice-cache key and the parcellation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from AmyloidKDLib.atomic import atomic_path

logger = logging.getLogger(__name__)

#: Bump when the features of a case change for the same parcellation settings.
REGIONAL_VERSION = 1
#: Parcels of the default parcellation (half per hemisphere).
DEFAULT_PARCELS = 100
#: Template GM probability above which a voxel counts as grey matter for the parcellation.
GM_THRESHOLD = 0.3


@dataclass(frozen=True)
class Parcellation:
    """Integer parcel labels (0 = outside) on one template grid, with the tissue weights."""

    labels: np.ndarray      # int32, template grid; 1..n_parcels
    gm: np.ndarray          # template GM probability, same grid
    wm: np.ndarray          # template WM probability
    affine: np.ndarray
    n_parcels: int
    centroids_mm: np.ndarray  # (n_parcels, 3)

    @property
    def signature(self) -> str:
        """Short content hash: cached features are keyed by it."""
        digest = hashlib.sha256(np.ascontiguousarray(self.labels).tobytes())
        digest.update(np.ascontiguousarray(self.affine, np.float64).tobytes())
        return digest.hexdigest()[:16]


@lru_cache(maxsize=4)
def build_parcellation(resolution: int = 2, n_parcels: int = DEFAULT_PARCELS) -> Parcellation:
    """The k-means parcellation of the template's grey matter at ``resolution`` mm.

    Only voxels with GM probability > :data:`GM_THRESHOLD` are parcelled. Deterministic: the
    k-means seed is fixed and the labels are renumbered by centroid position.
    """
    from sklearn.cluster import KMeans

    from AmyloidKDLib.errors import ConfigError
    from AmyloidKDLib.template import load_template

    if n_parcels < 2 or n_parcels % 2:
        raise ConfigError(f"n_parcels must be an even number >= 2 (one half per hemisphere), got {n_parcels}")
    template = load_template(resolution)
    gm = np.asarray(template.gm.data, dtype=np.float32)
    wm = np.asarray(template.wm.data, dtype=np.float32)
    inside = (gm > GM_THRESHOLD) & (np.asarray(template.mask.data) > 0.5)
    ijk = np.argwhere(inside)
    mm = ijk @ template.affine[:3, :3].T + template.affine[:3, 3]
    left = mm[:, 0] <= 0
    half = n_parcels // 2
    kmeans = KMeans(n_clusters=half, n_init=1, random_state=0, max_iter=100)
    kmeans.fit(np.round(mm[left], 3))
    centres = kmeans.cluster_centers_
    order = np.lexsort((centres[:, 2], centres[:, 1], centres[:, 0]))
    centres = centres[order]
    mirrored = centres * np.array([-1.0, 1.0, 1.0])
    both = np.concatenate([centres, mirrored])
    # each hemisphere's voxels go to the nearest centre of their own hemisphere
    distances = np.stack([np.sum((mm - c) ** 2, axis=1) for c in both], axis=1)
    distances[left, half:] = np.inf
    distances[~left, :half] = np.inf
    assigned = np.argmin(distances, axis=1)
    labels = np.zeros(gm.shape, dtype=np.int32)
    labels[tuple(ijk.T)] = assigned + 1
    return Parcellation(labels, gm, wm, np.asarray(template.affine, dtype=np.float64), n_parcels, both)


def feature_names(parcellation: Parcellation) -> list[str]:
    """Names of :func:`case_features`' columns."""
    return [f"parcel_{k:03d}" for k in range(1, parcellation.n_parcels + 1)] + ["gm_mean", "wm_mean"]


def case_features(image: np.ndarray, parcellation: Parcellation, weighted: bool = True) -> np.ndarray:
    """One case's regional vector: per parcel the GM-weighted mean of ``image`` (plain mean when
    ``weighted`` is False, e.g. for PET), then the whole brain's GM- and WM-weighted means."""
    image = np.asarray(image, dtype=np.float64)
    labels = parcellation.labels.ravel()
    weights = parcellation.gm.ravel().astype(np.float64) if weighted else np.ones(labels.size)
    weights = np.where(labels > 0, weights, 0.0)
    values = image.ravel()
    sums = np.bincount(labels, weights=weights * values, minlength=parcellation.n_parcels + 1)[1:]
    totals = np.bincount(labels, weights=weights, minlength=parcellation.n_parcels + 1)[1:]
    per_parcel = sums / np.maximum(totals, 1e-9)
    gm, wm = parcellation.gm.ravel(), parcellation.wm.ravel()
    return np.concatenate([per_parcel, [np.sum(gm * values) / np.sum(gm),
                                        np.sum(wm * values) / np.sum(wm)]])


@dataclass
class RegionalData:
    """Regional vectors of a cohort, in the order of its records."""

    mri: np.ndarray            # (n_cases, n_features)
    pet: np.ndarray | None     # (n_cases, n_features) or None when a case has no PET
    names: list[str]


def _template_resolution(prep_config: Any) -> int:
    """The MNI grid (mm) the preparation resamples to: the parcellation's grid."""
    return int(getattr(getattr(prep_config, "registration", None), "template_resolution", 2) or 2)


def _case_regional(record: Any, contrast: str, prep_config: Any, slice_config: Any,
                   cache_root: Path, n_parcels: int) -> tuple[np.ndarray, np.ndarray | None]:
    from AmyloidKDLib.errors import InputError
    from AmyloidKDLib.pipeline import prepare_case
    from AmyloidKDLib.volume import load_volume
    from Training.data import mri_path, slice_cache_key

    resolution = _template_resolution(prep_config)
    parcellation = build_parcellation(resolution, n_parcels)
    key = slice_cache_key(record, contrast, prep_config, slice_config, True)
    ident = hashlib.sha256(json.dumps([REGIONAL_VERSION, key, parcellation.signature]).encode()).hexdigest()[:24]
    target = cache_root / "regions" / f"{ident}.npz"
    if target.is_file():
        stored = np.load(target)
        return stored["mri"], (stored["pet"] if "pet" in stored.files else None)
    mri = load_volume(mri_path(record, contrast), contrast)
    pet = load_volume(record.pet_path, "PET") if record.pet_path else None
    prepared = prepare_case(mri, pet, config=prep_config, cache_dir=cache_root / "prepared")
    if prepared.mri.shape != parcellation.labels.shape:
        raise InputError(f"prepared MRI grid {prepared.mri.shape} is not the {resolution} mm template grid "
                         f"{parcellation.labels.shape}; regional read-outs need MNI-space preparation")
    mri_vector = case_features(prepared.mri.data, parcellation, weighted=True)
    pet_vector = (case_features(prepared.pet.data, parcellation, weighted=False)
                  if prepared.pet is not None else None)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            arrays = {"mri": mri_vector} if pet_vector is None else {"mri": mri_vector, "pet": pet_vector}
            np.savez(handle, **arrays)
    return mri_vector, pet_vector


def regional_data(records: Sequence[Any], config: Any, cache_root: str | Path,
                  n_parcels: int = DEFAULT_PARCELS, progress: bool = False) -> RegionalData:
    """Regional vectors of every record (prepared through the run's cache, so cases prepared
    for the slice models are read, not prepared again)."""
    from AmyloidKDLib.progress import progress_bar

    cache_root = Path(cache_root)
    mri, pet = [], []
    for record in progress_bar(records, desc="regional features", unit="case", enabled=progress):
        m, p = _case_regional(record, config.data.contrast, config.prep_config(), config.slice_config(),
                              cache_root, n_parcels)
        mri.append(m)
        pet.append(p)
    names = feature_names(build_parcellation(_template_resolution(config.prep_config()), n_parcels))
    has_pet = all(p is not None for p in pet)
    return RegionalData(np.stack(mri), np.stack(pet) if has_pet else None, names)
