"""Regional measures of a prepared MNI-space MRI: one number per grey-matter parcel.

The prepared MNI volume is reduced to one number per region of a fixed parcellation of the
MNI152 2009 template (the one nilearn ships; its licence allows use with its copyright
notice): grey-matter-weighted mean intensity per parcel, plus the brain's GM- and
WM-weighted means. Atrophy darkens grey matter on T1, so these numbers carry what a
volumetric analysis would, without any model. Training uses them for the regional read-outs
(``Training/regional.py``); ``predict`` uses them for the Centiloid read-out stored in a
checkpoint (:mod:`AmyloidKDLib.centiloid_readout`).

The parcellation is our own: k-means on the voxel coordinates of the template's left
hemisphere GM, mirrored to the right (so each parcel has a homologue), parcels ordered by
their centroids. Each GM voxel belongs to the nearest centroid of its own hemisphere. Only
the k-means step needs scikit-learn; given the centroids (which a checkpoint stores), the
labels follow by plain IEEE arithmetic (:func:`parcellation_from_centroids`), so prediction
does not depend on k-means giving bit-identical centres on another CPU.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

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
    centroids_mm: np.ndarray  # (n_parcels, 3): left hemisphere first, then their mirror images

    @property
    def signature(self) -> str:
        """Short content hash of the labels and grid: cached features and checkpoints carry it."""
        digest = hashlib.sha256(np.ascontiguousarray(self.labels).tobytes())
        digest.update(np.ascontiguousarray(self.affine, np.float64).tobytes())
        return digest.hexdigest()[:16]

    @property
    def resolution(self) -> int:
        """The template grid's voxel size in mm."""
        return int(round(abs(float(self.affine[0, 0]))))


def _gm_voxels(resolution: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """The template, the GM voxel indices and their mm coordinates (exact for an integer grid)."""
    from AmyloidKDLib.template import load_template

    template = load_template(resolution)
    gm = np.asarray(template.gm.data, dtype=np.float32)
    inside = (gm > GM_THRESHOLD) & (np.asarray(template.mask.data) > 0.5)
    ijk = np.argwhere(inside)
    mm = ijk @ template.affine[:3, :3].T + template.affine[:3, 3]
    return template, ijk, mm


def parcellation_from_centroids(centroids_mm: np.ndarray, resolution: int = 2) -> Parcellation:
    """The parcellation whose parcels are the GM voxels nearest to ``centroids_mm`` (first half
    left hemisphere, second half right), on the ``resolution`` mm template grid."""
    from AmyloidKDLib.errors import ConfigError

    centres = np.asarray(centroids_mm, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 3 or len(centres) < 2 or len(centres) % 2:
        raise ConfigError(f"parcel centroids must be an even number of (x, y, z) rows, got shape "
                          f"{centres.shape}")
    template, ijk, mm = _gm_voxels(resolution)
    half = len(centres) // 2
    left = mm[:, 0] <= 0
    # Nearest centre of the voxel's own hemisphere, one centre at a time (a voxel x centre
    # matrix would take over a gigabyte on the 1 mm grid). The squared distance is written out
    # term by term: elementwise IEEE operations give the same bits on every CPU, where a
    # reduction's order (and so its last bit) may not; strict "<" keeps the first of equals.
    best = np.full(len(mm), np.inf)
    nearest = np.zeros(len(mm), dtype=np.int32)
    for k, (cx, cy, cz) in enumerate(centres):
        dx, dy, dz = mm[:, 0] - cx, mm[:, 1] - cy, mm[:, 2] - cz
        distance = dx * dx + dy * dy + dz * dz
        closer = (distance < best) & (left if k < half else ~left)
        best[closer], nearest[closer] = distance[closer], k
    labels = np.zeros(template.gm.data.shape, dtype=np.int32)
    labels[tuple(ijk.T)] = nearest + 1
    return Parcellation(labels, np.asarray(template.gm.data, dtype=np.float32),
                        np.asarray(template.wm.data, dtype=np.float32),
                        np.asarray(template.affine, dtype=np.float64), len(centres), centres)


@lru_cache(maxsize=4)
def build_parcellation(resolution: int = 2, n_parcels: int = DEFAULT_PARCELS) -> Parcellation:
    """The k-means parcellation of the template's grey matter at ``resolution`` mm.

    Deterministic on one machine: the k-means seed is fixed and the centres are ordered by
    position. Needs scikit-learn (the ``train`` extra).
    """
    from sklearn.cluster import KMeans

    from AmyloidKDLib.errors import ConfigError

    if n_parcels < 2 or n_parcels % 2:
        raise ConfigError(f"n_parcels must be an even number >= 2 (one half per hemisphere), got {n_parcels}")
    _, _, mm = _gm_voxels(resolution)
    kmeans = KMeans(n_clusters=n_parcels // 2, n_init=1, random_state=0, max_iter=100)
    kmeans.fit(np.round(mm[mm[:, 0] <= 0], 3))
    centres = kmeans.cluster_centers_
    centres = centres[np.lexsort((centres[:, 2], centres[:, 1], centres[:, 0]))]
    return parcellation_from_centroids(np.concatenate([centres, centres * np.array([-1.0, 1.0, 1.0])]),
                                       resolution)


def template_resolution(prep_config: Any) -> int:
    """The MNI grid (mm) a preparation resamples to (a ``PrepConfig`` or its dict): the
    parcellation's grid."""
    registration = (prep_config.get("registration") if isinstance(prep_config, dict)
                    else getattr(prep_config, "registration", None))
    value = (registration.get("template_resolution") if isinstance(registration, dict)
             else getattr(registration, "template_resolution", None))
    return int(value or 2)


def parcellation_for(prep_config: Any, n_parcels: int = DEFAULT_PARCELS) -> Parcellation:
    """The k-means parcellation on the grid that ``prep_config`` prepares to."""
    return build_parcellation(template_resolution(prep_config), n_parcels)


def feature_names(parcellation: Parcellation) -> list[str]:
    """Names of :func:`case_features`' columns."""
    return [f"parcel_{k:03d}" for k in range(1, parcellation.n_parcels + 1)] + ["gm_mean", "wm_mean"]


def case_features(image: np.ndarray, parcellation: Parcellation, weighted: bool = True) -> np.ndarray:
    """One case's regional vector: per parcel the GM-weighted mean of ``image`` (plain mean when
    ``weighted`` is False, e.g. for PET), then the whole brain's GM- and WM-weighted means.

    Raises:
        InputError: ``image`` is not on the parcellation's template grid.
    """
    from AmyloidKDLib.errors import InputError

    image = np.asarray(image, dtype=np.float64)
    if image.shape != parcellation.labels.shape:
        raise InputError(f"prepared MRI grid {image.shape} is not the {parcellation.resolution} mm "
                         f"template grid {parcellation.labels.shape}; regional measures need "
                         "MNI-space preparation")
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
