"""Read-outs of a written cohort through the real loader and the true geometry.

Serves the tests and the benchmarks only (``Testing/library/test_phantom.py``,
``test_executor.py``, ``Testing/benchmarks/bench_phantom.py``, ``bench_cluster.py``); nothing in
the library or in training calls it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from AmyloidKDLib.phantom.anatomy import (ATROPHY_REGIONS, TemplateMaps, _sphere_weight,
                                          build_template_maps, region_masks)
from AmyloidKDLib.phantom.geometry import SessionGeometry
from AmyloidKDLib.volume import Volume, load_volume


def _mni_points(maps: TemplateMaps, mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) @ maps.affine[:3, :3].T + maps.affine[:3, 3]


def _values_at(volume: Volume, geometry: SessionGeometry, mni_points: np.ndarray) -> np.ndarray:
    world = geometry.mni_to_world(mni_points)
    inv = np.linalg.inv(volume.affine)
    return ndimage.map_coordinates(volume.data, (world @ inv[:3, :3].T + inv[:3, 3]).T, order=1)


def measure_cohort(root: str | os.PathLike, maps: TemplateMaps | None = None
                   ) -> dict[str, np.ndarray]:
    """Simple read-outs of a written cohort, through the real loader and the true geometry.

    Per paired session: ``suvr`` (mean PET in the early-amyloid GM regions over cerebellar
    GM), ``gm`` (mean T1 in the atrophy regions' GM over nearby WM: a regional grey-matter
    measure that cancels the bias field), with ``centiloid``, ``tracer`` and ``age`` from the
    ground truth. Used to check (and report) how strongly each modality shows amyloid; it
    serves the tests and the benchmarks only.
    """
    root = Path(root)
    maps = maps or build_template_maps(2.0, 4.0)
    masks = region_masks(maps)
    cortical = _mni_points(maps, masks["cortical_amyloid"])
    cerebellum = _mni_points(maps, masks["cerebellum_gm"])
    coords = maps.mni_coordinates()
    regions = []
    for name, (centre, radius) in ATROPHY_REGIONS.items():
        inner = _sphere_weight(coords, {name: (centre, radius)}, sharp=True) > 0
        outer = _sphere_weight(coords, {name: (centre, radius + 12.0)}, sharp=True) > 0
        regions.append((_mni_points(maps, inner & (maps.gm > 0.5)),
                        _mni_points(maps, outer & (maps.wm > 0.9))))

    def geometry(label: str) -> tuple[SessionGeometry, dict]:
        record = json.loads((root / "ground_truth" / "geometry" / f"{label}.json").read_text())
        return SessionGeometry.from_dict(record), record

    with open(root / "ground_truth" / "sessions.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["mr_session_id"]]
    out: dict[str, list] = {"centiloid": [], "suvr": [], "gm": [], "tracer": [], "age": []}
    for row in rows:
        pet_geometry, record = geometry(row["session_id"])
        if not (root / record["files"]["PET"]).exists():
            continue
        pet = load_volume(root / record["files"]["PET"], "PET")
        out["suvr"].append(float(_values_at(pet, pet_geometry, cortical).mean()
                                 / _values_at(pet, pet_geometry, cerebellum).mean()))
        mri_geometry, record = geometry(row["mr_session_id"])
        t1 = load_volume(root / record["files"]["T1w"], "T1w")
        out["gm"].append(float(np.mean([
            _values_at(t1, mri_geometry, gm).mean() / _values_at(t1, mri_geometry, wm).mean()
            for gm, wm in regions])))
        out["centiloid"].append(float(row["centiloid"]))
        out["tracer"].append(row["tracer"])
        out["age"].append(float(row["age"]))
    return {k: np.asarray(v) for k, v in out.items()}


def t1_case_manifest(cohort: str | os.PathLike, n_cases: int, target: str | os.PathLike,
                     seed: int = 3, spacing_mm: float = 2.0) -> Path:
    """Generate a T1w-only phantom cohort under ``cohort`` and write ``target``: a manifest of
    its first ``n_cases`` sessions (columns ``case``, ``t1w``, absolute paths) for batch commands.

    A few spare subjects are generated because some sessions have no usable MRI row.
    """
    from AmyloidKDLib.atomic import write_text_atomic
    from AmyloidKDLib.phantom.config import PhantomConfig
    from AmyloidKDLib.phantom.writing import generate_cohort

    config = PhantomConfig(mri_spacing_mm=spacing_mm, contrasts=("T1w",), prevalence=0.5)
    source = Path(generate_cohort(cohort, n_cases + 4, seed=seed, layout="manifest",
                                  config=config, progress=False))
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))[:n_cases]
    if len(rows) < n_cases:
        raise ValueError(f"the phantom gave {len(rows)} usable sessions, fewer than {n_cases}")
    lines = ["case,t1w"] + [f"{row['session_id']},{source.parent / row['t1w']}" for row in rows]
    return write_text_atomic(target, "\n".join(lines) + "\n")

