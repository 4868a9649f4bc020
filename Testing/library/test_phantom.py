"""The synthetic cohort generator, checked against its own ground truth through the real loader.

One small 2 mm cohort (layout "both") serves most tests; the correlations they measure are
printed (run pytest with -s to see them).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from AmyloidKDLib.cli import run as cli_run
from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.phantom import (
    FLAIR_TISSUE,
    T2_TISSUE,
    PhantomConfig,
    SessionGeometry,
    build_template_maps,
    generate_cohort,
    measure_cohort,
    sample_cohort,
    sample_subject,
)
from AmyloidKDLib.volume import load_volume

SEED = 7
N_SUBJECTS = 14


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A 14-subject cohort at 2 mm in both layouts; returns its folder."""
    config = PhantomConfig(mri_spacing_mm=2.0, montage_subjects=3)
    manifest = generate_cohort(tmp_path_factory.mktemp("phantom") / "cohort", N_SUBJECTS, SEED,
                               layout="both", config=config, progress=False)
    return manifest.parent


@pytest.fixture(scope="module")
def maps():
    """Template maps on the 2 mm grid used to measure the cohort."""
    return build_template_maps(2.0, 4.0)


def _truth_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "ground_truth" / "sessions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _geometry(root: Path, label: str) -> tuple[SessionGeometry, dict]:
    record = json.loads((root / "ground_truth" / "geometry" / f"{label}.json").read_text())
    return SessionGeometry.from_dict(record), record


def _points(maps, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)
    return ijk @ maps.affine[:3, :3].T + maps.affine[:3, 3]


def _sample(volume, geometry: SessionGeometry, mni_points: np.ndarray) -> np.ndarray:
    """Image values at MNI points, through the scan's true geometry and the loaded affine."""
    world = geometry.mni_to_world(mni_points)
    inv = np.linalg.inv(volume.affine)
    return ndimage.map_coordinates(volume.data, (world @ inv[:3, :3].T + inv[:3, 3]).T, order=1)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    config = {"mri_spacing_mm": 2.0, "contrasts": ["T1w"], "montage_subjects": 1}
    config_path = tmp_path / "phantom.json"
    config_path.write_text(json.dumps(config))
    first = generate_cohort(tmp_path / "a", 1, 3, layout="both",
                            config=PhantomConfig.from_dict(config), progress=False).parent
    # the second copy goes through the command line, which must give the same cohort
    assert cli_run(["phantom", "--out", str(tmp_path / "b"), "--subjects", "1", "--seed", "3",
                    "--layout", "both", "--config", str(config_path)]) == 0
    second = tmp_path / "b"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert any(str(f).endswith(".nii.gz") for f in files) and Path("montage.png") in files
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = sample_cohort(2, 4, PhantomConfig.from_dict(config))
    assert [s.centiloid for s in other] != [s.centiloid for s in sample_cohort(2, 3)]


def test_scans_made_in_parallel_give_the_files_of_one_at_a_time(tmp_path, monkeypatch):
    from AmyloidKDLib.phantom import writing

    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w", "FLAIR"), montage_subjects=2)
    folders = {}
    for threads in (1, 3):
        monkeypatch.setattr(writing, "SCAN_THREADS", threads)
        folders[threads] = generate_cohort(tmp_path / str(threads), 4, 8, config=config,
                                           progress=False).parent
    files = sorted(p.relative_to(folders[1]) for p in folders[1].rglob("*") if p.is_file())
    assert len([f for f in files if str(f).endswith(".nii.gz")]) >= 12
    assert files == sorted(p.relative_to(folders[3]) for p in folders[3].rglob("*") if p.is_file())
    for name in files:
        assert (folders[1] / name).read_bytes() == (folders[3] / name).read_bytes(), name


@pytest.mark.parametrize("prevalence", [0.32, 0.5])
def test_label_prevalence_matches_the_config(prevalence):
    config = PhantomConfig(prevalence=prevalence)
    baseline = [s for s in sample_cohort(2000, 11, config) if s.session_index == 0]
    labels = np.array([s.label for s in baseline])
    assert abs(labels.mean() - prevalence) < 0.03
    assert all(s.label == int(s.centiloid > config.label_threshold) for s in baseline)


def test_cohort_prevalence_is_near_the_default(cohort):
    rows = [r for r in _truth_rows(cohort) if r["session_index"] == "0"]
    assert len(rows) == N_SUBJECTS
    assert abs(np.mean([int(r["label"]) for r in rows]) - 0.32) < 0.2


@pytest.fixture(scope="module")
def features(cohort, maps):
    """Cortical PET SUVR and regional MRI GM feature of every paired session."""
    return measure_cohort(cohort, maps)


def test_cortical_pet_suvr_tracks_centiloid(features):
    for tracer in ("AV45", "PIB"):
        chosen = features["tracer"] == tracer
        assert chosen.sum() >= 8
        r = stats.pearsonr(features["suvr"][chosen], features["centiloid"][chosen])[0]
        print(f"PET cortical SUVR vs Centiloid ({tracer}, n={chosen.sum()}): r = {r:.3f}")
        assert r >= 0.9
    pooled = stats.pearsonr(features["suvr"], features["centiloid"])[0]
    print(f"PET cortical SUVR vs Centiloid (both tracers): r = {pooled:.3f}")
    assert pooled >= 0.9
    # plausible SUVR scale for a fixed 0-3 window
    assert 0.8 < features["suvr"].min() and features["suvr"].max() < 2.8


def test_mri_gm_feature_tracks_centiloid_weakly_but_significantly(features):
    r, p = stats.pearsonr(features["gm"], features["centiloid"])
    r_pet = stats.pearsonr(features["suvr"], features["centiloid"])[0]
    print(f"MRI regional GM/WM ratio vs Centiloid (n={len(features['gm'])}): r = {r:.3f}, p = {p:.2g}")
    assert r < 0 and p < 0.05          # atrophy: less GM with more amyloid
    assert abs(r) < 0.8 and abs(r) < r_pet - 0.2   # clearly weaker than PET


def test_sessions_of_a_subject_share_its_subject_id(cohort):
    rows = _truth_rows(cohort)
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject_id"], []).append(row)
    assert len(by_subject) == N_SUBJECTS
    assert any(len(v) > 1 for v in by_subject.values()), "no longitudinal subject"
    for subject, sessions in by_subject.items():
        assert len(sessions) == int(sessions[0]["n_sessions"])
        days = [int(s["pet_day"]) for s in sessions]
        assert days == sorted(days) and len(set(days)) == len(days)
        for session in sessions:
            assert session["session_id"].startswith(f"{subject}_")
    with open(cohort / "manifest.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            assert row["session_id"].startswith(row["subject_id"] + "_")
            assert f"sub-{row['subject_id']}/" in row["t1w"]


def _expected_contrast(maps, name: str) -> np.ndarray:
    if name == "T1w":
        return maps.t1
    weights = T2_TISSUE if name == "T2w" else FLAIR_TISSUE
    return weights["gm"] * maps.gm + weights["wm"] * maps.wm + weights["csf"] * maps.csf


def test_every_file_loads_in_ras_with_the_true_geometry(cohort, maps):
    inside = maps.brain > 0.5
    points = _points(maps, inside)[::7]
    orientations = set()
    n_files = n_compared = 0
    for path in sorted((cohort / "ground_truth" / "geometry").glob("*.json")):
        geometry, record = _geometry(cohort, path.stem)
        for name, relative in record["files"].items():
            file = cohort / relative
            stored = "".join(nib.aff2axcodes(nib.load(file).affine))
            assert stored == record["stored_orientation"][name]
            orientations.add(stored)
            volume = load_volume(file, name)
            assert volume.orientation == "RAS"
            assert volume.shape == tuple(record["grid_shape"])
            np.testing.assert_allclose(volume.affine, geometry.grid_affine, atol=1e-4)
            n_files += 1
            if name == "PET" or n_compared >= 8:
                continue
            n_compared += 1
            expected = ndimage.map_coordinates(
                _expected_contrast(maps, name),
                ((points - maps.affine[:3, 3]) / np.diag(maps.affine)[:3]).T, order=1)
            r = stats.pearsonr(_sample(volume, geometry, points), expected)[0]
            assert r > 0.6, f"{relative}: image does not match the template where the truth says ({r:.2f})"
    assert n_files > 3 * N_SUBJECTS
    assert "RAS" in orientations and len(orientations) >= 3


def test_montage_and_ground_truth_are_written(cohort):
    png = (cohort / "montage.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    info = json.loads((cohort / "ground_truth" / "cohort.json").read_text())
    assert info["seed"] == SEED and info["n_subjects"] == N_SUBJECTS
    assert PhantomConfig.from_dict(info["config"]) == PhantomConfig(mri_spacing_mm=2.0,
                                                                    montage_subjects=3)


def test_skull_shell_surrounds_the_brain(tmp_path, maps):
    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), skull=True, montage_subjects=0)
    root = generate_cohort(tmp_path / "skull", 1, 5, config=config, progress=False).parent
    row = _truth_rows(root)[0]
    geometry, record = _geometry(root, row["mr_session_id"])
    t1 = load_volume(root / record["files"]["T1w"], "T1w")
    outside = maps.outside_mm
    scalp = _sample(t1, geometry, _points(maps, (outside > 9.5) & (outside < 12.5)))
    bone = _sample(t1, geometry, _points(maps, (outside > 4.5) & (outside < 7.5)))
    white = _sample(t1, geometry, _points(maps, maps.wm > 0.95))
    assert np.median(scalp) > 0.6 * np.median(white)   # bright scalp fat
    assert np.median(bone) < 0.25 * np.median(white)   # dark skull


@pytest.mark.parametrize("make, message", [
    (lambda: PhantomConfig.from_dict({"prevalance": 0.3}), "unknown PhantomConfig key.*prevalance"),
    (lambda: PhantomConfig(prevalence=0.99), "unreachable"),
    (lambda: PhantomConfig(mri_spacing_mm=3.0), "1.0 or 2.0"),
    (lambda: PhantomConfig(contrasts=("T2w",)), "must include T1w"),
    (lambda: PhantomConfig(orientations=("RAS",)), "not a non-RAS axis code"),
    (lambda: PhantomConfig.from_dict({"session_gap_days": [100, "x"]}), r"session_gap_days\[1\] must be a number"),
], ids=["unknown key", "prevalence", "spacing", "contrasts", "orientation", "typed value"])
def test_bad_settings_raise_config_errors_that_name_the_fix(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_bad_layout_or_a_used_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="layout"):
        generate_cohort(tmp_path / "x", 1, 0, layout="bids")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        generate_cohort(tmp_path / "full", 1, 0)
    assert cli_run(["phantom", "--out", str(tmp_path / "full"), "--subjects", "1"]) == 2


def _identity_geometry(maps) -> SessionGeometry:
    """A scan on the template grid itself (no pose, no deformation): voxel = template voxel."""
    origin = tuple(float(v) for v in maps.affine[:3, 3] - 50.0)
    return SessionGeometry((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), origin, 400.0,
                           np.zeros((3, 2, 2, 2)), maps.affine.copy(), maps.shape, "RAS")


def _t1(maps, truth, subject=None) -> np.ndarray:
    from AmyloidKDLib.phantom import synthesize_mri

    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w", "FLAIR"), mri_noise=0.0,
                           bias_strength=0.0)
    volumes = synthesize_mri(maps, truth, _identity_geometry(maps), np.random.default_rng(0),
                             config, subject)
    return volumes["T1w"].data, volumes["FLAIR"].data


def test_images_carry_the_wm_lesions(maps):
    from dataclasses import replace

    truth = replace(sample_cohort(1, 3)[0], wm_lesion_load=0.0)
    clean_t1, clean_flair = _t1(maps, truth)
    lesion_t1, lesion_flair = _t1(maps, replace(truth, wm_lesion_load=0.6))
    where = maps.wm_lesion_weight > 0.5
    elsewhere = (maps.wm > 0.9) & (maps.wm_lesion_weight < 0.01)
    assert where.sum() > 500 and elsewhere.sum() > 500
    t1_drop = 1 - lesion_t1[where].mean() / clean_t1[where].mean()
    print(f"T1 WM intensity where lesions form: -{100 * t1_drop:.1f} %")
    assert t1_drop > 0.05                                        # darker in T1
    assert lesion_flair[where].mean() > 1.2 * clean_flair[where].mean()   # brighter in FLAIR
    np.testing.assert_allclose(lesion_t1[elsewhere], clean_t1[elsewhere], atol=3.0)  # 0.3 %


def test_images_carry_the_per_region_loss_and_random_spheres(maps):
    from dataclasses import replace

    from AmyloidKDLib.phantom import ATROPHY_REGIONS
    from AmyloidKDLib.phantom.anatomy import _sphere_weight

    truth = replace(sample_cohort(1, 3)[0], wm_lesion_load=0.0, global_gm_loss=0.0)
    names = list(ATROPHY_REGIONS)
    coords = maps.mni_coordinates()
    cores = {n: (_sphere_weight(coords, {n: (c, r * 0.6)}, sharp=True) > 0) & (maps.gm > 0.5)
             for n, (c, r) in ATROPHY_REGIONS.items()}
    base = _t1(maps, replace(truth, region_gm_loss=(0.0,) * 4))[0]
    hippo = _t1(maps, replace(truth, region_gm_loss=(0.4, 0.0, 0.0, 0.0)))[0]
    drops = {n: 1 - hippo[m].mean() / base[m].mean() for n, m in cores.items()}
    print("T1 drop per region with hippocampal loss only:", {k: round(v, 3) for k, v in drops.items()})
    assert drops["hippocampus"] > 0.05
    assert drops["hippocampus"] > 5 * max(drops[n] for n in names[1:])
    # a subject's random cortical sphere darkens its own neighbourhood
    subject = replace(sample_subject(0, 3, PhantomConfig()), random_atrophy=((40.0, 20.0, 45.0, 12.0, 0.5),))
    spotted = _t1(maps, replace(truth, region_gm_loss=(0.0,) * 4), subject)[0]
    x, y, z = coords   # (_sphere_weight mirrors to both hemispheres: not here)
    distance = np.sqrt((np.abs(x) - 40.0) ** 2 + (y - 20.0) ** 2 + (z - 45.0) ** 2) < 8.0
    near = distance & (x > 0) & (maps.gm > 0.5)
    far = distance & (x < 0) & (maps.gm > 0.5)
    assert spotted[near].mean() < 0.95 * base[near].mean()
    assert spotted[far].mean() == pytest.approx(base[far].mean(), rel=1e-3)


def test_ground_truth_records_version_true_centiloid_and_region_losses(cohort):
    from AmyloidKDLib.phantom import GENERATOR_VERSION

    info = json.loads((cohort / "ground_truth" / "cohort.json").read_text())
    assert info["generator_version"] == GENERATOR_VERSION == 2
    rows = _truth_rows(cohort)
    for column in ("true_centiloid", "wm_lesion_load", "gm_loss_hippocampus", "gm_loss_precuneus"):
        assert column in rows[0]
    assert any(r["true_centiloid"] != r["centiloid"] for r in rows)
    with open(cohort / "manifest.csv", newline="") as handle:
        manifest = {r["session_id"]: r for r in csv.DictReader(handle)}
    for row in rows:
        if row["session_id"] in manifest:   # the manifest carries the measured Centiloid
            assert float(manifest[row["session_id"]]["centiloid"]) == pytest.approx(float(row["centiloid"]))
            assert int(manifest[row["session_id"]]["label"]) == int(float(row["centiloid"]) > 20.0)
