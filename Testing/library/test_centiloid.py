"""PET quantification (AmyloidKDLib/centiloid.py, `amyloidkd centiloid`): equations at their
published anchors, exact SUVR from known VOI means, the VOI sets, frames, bad input, and one
phantom PET quantified end to end against its true Centiloid."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from AmyloidKDLib.centiloid import (APPROXIMATE_SET, GAAIN_SET, TRACER_EQUATIONS, VOI_DIR_ENV,
                                    VoiSet, approximate_voi_set, load_pet, load_voi_set,
                                    parse_frames, read_equations, read_gaain_vois, suvr_in_mni,
                                    tracer_equation)
from AmyloidKDLib.cli import run as cli_run
from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.volume import Volume

#: GAAIN's 2 mm grid (91 x 109 x 91, x flipped), as in the files they distribute.
GAAIN_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def _cli(*argv: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli_run(list(argv))
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.parametrize("tracer, anchors", [
    # PiB: Klunk 2015 defines 0 and 100 CL as the young-control and AD means 1.009 and 2.076
    ("PiB", [(1.009, 0.0), (2.076, 100.0)]),
    # NAV4694: Rowe 2016, 1.028 and 1.028 + 1.174
    ("NAV4694", [(1.028, 0.0), (2.202, 100.0)]),
    # florbetapir: Navitsky 2018, CL = 175.4 SUVR - 182.3 at two hand-computed points
    ("AV45", [(1.0, -6.9), (1.5, 80.8)]),
    # florbetaben: Rowe 2017 abstract, its PiB regression SUVR_FBB = 0.61 SUVR_PiB + 0.39 puts
    # the PiB anchors at -0.7 and 99.2 CL (the rounding of 0.61 and 0.39)
    ("FBB", [(0.61 * 1.009 + 0.39, -0.7), (0.61 * 2.076 + 0.39, 99.2)]),
    # flutemetamol: Battle 2018 abstract, SUVR_FMM = 0.77 SUVR_PiB + 0.22 -> -0.1 and 99.6 CL
    ("flutemetamol", [(0.77 * 1.009 + 0.22, -0.1), (0.77 * 2.076 + 0.22, 99.6)]),
])
def test_each_equation_gives_its_published_anchor_points(tracer, anchors):
    equation = tracer_equation(tracer)
    for suvr, centiloid in anchors:
        assert equation.centiloid(suvr) == pytest.approx(centiloid, abs=0.06)
        assert equation.suvr(equation.centiloid(suvr)) == pytest.approx(suvr, abs=1e-12)
    assert equation.source and equation.checked


def test_tracer_names_and_aliases_and_unknown_tracer():
    assert tracer_equation("pib") is TRACER_EQUATIONS["PiB"]
    assert tracer_equation("av45") is TRACER_EQUATIONS["florbetapir"]
    assert tracer_equation(" Vizamyl ") is TRACER_EQUATIONS["flutemetamol"]
    with pytest.raises(InputError, match="unknown tracer 'FDG'.*PiB, florbetapir"):
        tracer_equation("FDG")


def test_own_equations_file_adds_and_replaces(tmp_path):
    path = tmp_path / "eq.json"
    path.write_text(json.dumps({"site-AV45": {"slope": 200.0, "intercept": -200.0},
                                "PiB": {"slope": 50.0, "intercept": 0.0, "source": "mine"}}))
    table = read_equations(path)
    assert tracer_equation("site-av45", table).centiloid(1.25) == pytest.approx(50.0)
    assert tracer_equation("PIB", table).centiloid(2.0) == pytest.approx(100.0)
    assert table["florbetaben"] is TRACER_EQUATIONS["florbetaben"]
    path.write_text(json.dumps({"x": {"slope": "a lot"}}))
    with pytest.raises(ConfigError, match="'x' needs numeric"):
        read_equations(path)


def _known_pet(vois: VoiSet, ctx_value: float, reference_value: float) -> Volume:
    rng = np.random.default_rng(27)
    data = rng.uniform(0.3, 4.0, vois.ctx.shape).astype(np.float32)  # anything elsewhere
    data[vois.ctx.data > 0.5] = ctx_value
    data[vois.reference.data > 0.5] = reference_value
    return vois.ctx.with_data(data, "PET")


def test_known_voi_means_give_the_exact_centiloid_and_a_broken_reference_does_not():
    vois = approximate_voi_set(2)
    pet = _known_pet(vois, ctx_value=2.7, reference_value=1.5)  # SUVR exactly 1.8
    means = suvr_in_mni(pet, vois)
    assert means.ctx_mean == pytest.approx(2.7, rel=1e-6)
    assert means.reference_mean == pytest.approx(1.5, rel=1e-6)
    expected = 100.0 * (2.7 / 1.5 - 1.009) / 1.067        # Klunk's PiB equation: 74.13 CL
    assert tracer_equation("PiB").centiloid(means.suvr) == pytest.approx(expected, abs=1e-4)
    # the same PET measured with a reference moved 12 voxels (24 mm) up: no longer the truth
    broken = VoiSet("broken", vois.ctx, vois.reference.with_data(
        np.roll(vois.reference.data, 12, axis=2), "mask"), "test", True)
    wrong = tracer_equation("PiB").centiloid(suvr_in_mni(pet, broken).suvr)
    assert abs(wrong - expected) > 10.0


def test_a_reference_outside_the_pet_field_of_view_is_refused():
    vois = approximate_voi_set(2)
    pet = _known_pet(vois, 2.0, 1.0)
    coverage = pet.with_data((np.arange(pet.shape[2]) > pet.shape[2] // 2)[None, None, :]
                             * np.ones(pet.shape, np.float32), "mask")  # top half of the head
    with pytest.raises(InputError, match="does not overlap its MRI.*WhlCbl VOI"):
        suvr_in_mni(pet, vois, coverage=coverage)


def test_approximate_vois_sit_where_the_regions_are():
    vois = approximate_voi_set(2)
    assert vois.name == APPROXIMATE_SET and vois.approximate
    affine = vois.ctx.affine
    ctx_mm = np.argwhere(vois.ctx.data > 0.5) @ affine[:3, :3].T + affine[:3, 3]
    ref_mm = np.argwhere(vois.reference.data > 0.5) @ affine[:3, :3].T + affine[:3, 3]
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    assert 250 < len(ctx_mm) * voxel_ml < 600 and 80 < len(ref_mm) * voxel_ml < 220
    assert ref_mm[:, 1].max() <= -40 and ref_mm[:, 2].max() < -20   # infratentorial, posterior
    assert ctx_mm[:, 2].min() >= -30 and not np.any((vois.ctx.data > 0.5) & (vois.reference.data > 0.5))
    assert abs(np.mean(ctx_mm[:, 0])) < 2.0 and abs(np.mean(ref_mm[:, 0])) < 2.0  # symmetric


def test_gaain_vois_are_read_from_a_folder_and_keep_their_world_position(tmp_path, monkeypatch):
    ctx = np.zeros((91, 109, 91), np.int16)
    ctx[30:40, 80:90, 60:70] = 1       # a frontal box
    reference = np.zeros_like(ctx)
    reference[35:55, 20:40, 10:25] = 1  # a cerebellar box
    for name, data in (("voi_ctx_2mm.nii", ctx), ("voi_WhlCbl_2mm.nii", reference)):
        nib.save(nib.Nifti1Image(data, GAAIN_AFFINE), str(tmp_path / name))
    monkeypatch.setenv(VOI_DIR_ENV, str(tmp_path))
    vois = load_voi_set()
    assert vois.name == GAAIN_SET and not vois.approximate
    on_template = vois.on_grid(approximate_voi_set(2).ctx)
    for original, moved in ((ctx, on_template.ctx), (reference, on_template.reference)):
        want = np.argwhere(original) @ GAAIN_AFFINE[:3, :3].T + GAAIN_AFFINE[:3, 3]
        got = np.argwhere(moved.data > 0.5) @ moved.affine[:3, :3].T + moved.affine[:3, 3]
        assert len(got) == len(want)
        np.testing.assert_allclose(np.sort(got, 0), np.sort(want, 0), atol=1e-6)
    (tmp_path / "voi_WhlCbl_2mm.nii").unlink()
    with pytest.raises(InputError, match="no voi_WhlCbl_2mm.nii"):
        read_gaain_vois(tmp_path)


def test_dynamic_pet_needs_a_frame_choice(tmp_path):
    frames = np.stack([np.full((8, 9, 10), v, np.float32) for v in (1.0, 2.0, 6.0)], axis=-1)
    frames[0, 0, 0] = 0.5  # not constant
    path = tmp_path / "dynamic.nii.gz"
    nib.save(nib.Nifti1Image(frames, np.eye(4)), str(path))
    with pytest.raises(InputError, match="4-D dynamic PET with 3 frames.*--frame"):
        load_pet(path)
    assert load_pet(path, parse_frames("1")).data[4, 4, 4] == pytest.approx(2.0)
    assert load_pet(path, parse_frames("1:3")).data[4, 4, 4] == pytest.approx(4.0)
    assert load_pet(path, parse_frames("all")).data[4, 4, 4] == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="--frame 'late'"):
        parse_frames("late")
    code, stdout, stderr = _cli("centiloid", str(path), "--mri", str(path), "--tracer", "PiB",
                                "--out", str(tmp_path / "out"))
    assert code == 2 and stderr.count("\n") == 1 and "--frame" in stderr
    assert not (tmp_path / "out").exists()


def test_unknown_tracer_in_a_manifest_stops_before_any_work(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,pet_path,t1w,tracer\na,pet_a.nii.gz,t1_a.nii.gz,PiB\n"
                        "b,pet_b.nii.gz,t1_b.nii.gz,FDG\n")
    code, _, stderr = _cli("centiloid", str(manifest), "--out", str(tmp_path / "out"))
    assert code == 2 and stderr.count("\n") == 1 and "unknown tracer 'FDG'" in stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    """One phantom PET (PiB) with its T1 and true Centiloid, and the phantom's equations file."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
    from AmyloidKDLib.phantom.centiloid_scale import phantom_equation

    root = tmp_path_factory.mktemp("centiloid")
    config = PhantomConfig(montage_subjects=0, longitudinal_share=0.0, pib_share=1.0,
                           contrasts=("T1w",), orientation_mix=0.0, mri_spacing_mm=2.0)
    manifest = generate_cohort(root / "cohort", 1, 27301, config=config, progress=False)
    row = next(csv.DictReader(open(manifest)))
    truth = next(csv.DictReader(open(root / "cohort" / "ground_truth" / "sessions.csv")))
    equation = phantom_equation("PIB", approximate_voi_set(2), config)
    equations = root / "equations.json"
    equations.write_text(json.dumps({equation.name: {"slope": equation.slope,
                                                     "intercept": equation.intercept}}))
    return {"pet": manifest.parent / row["pet_path"], "mri": manifest.parent / row["t1w"],
            "true": float(truth["true_centiloid"]), "equations": equations, "root": root}


def test_phantom_pet_recovers_its_true_centiloid_with_csv_and_qc(phantom_case, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = _cli("centiloid", str(phantom_case["pet"]), "--mri", str(phantom_case["mri"]),
                           "--tracer", "phantom-PIB", "--equations", str(phantom_case["equations"]),
                           "--suvr-input", "--out", str(out), "--progress", "none")
    assert code == 0, stdout
    rows = list(csv.DictReader(open(out / "centiloid.csv")))
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert {"case", "tracer", "suvr", "centiloid", "reference", "status", "error",
            "voi_set"} <= set(rows[0])
    assert rows[0]["reference"] == "WhlCbl" and rows[0]["voi_set"] == APPROXIMATE_SET
    assert abs(float(rows[0]["centiloid"]) - phantom_case["true"]) < 12.0
    assert (out / f"{rows[0]['case']}_centiloid_qc.png").stat().st_size > 10_000
    assert "approximate VOIs" in stdout


def test_pet_that_misses_the_cerebellum_is_refused_and_nothing_written(phantom_case, tmp_path):
    image = nib.load(str(phantom_case["pet"]))
    data = np.asarray(image.get_fdata(), np.float32)
    axis = int(np.argmax(np.abs(nib.orientations.io_orientation(image.affine)[:, 0] == 2)))
    keep = [slice(None)] * 3
    low_is_inferior = nib.aff2axcodes(image.affine)[axis] == "S"
    half = data.shape[axis] // 2 + 4
    keep[axis] = slice(half, None) if low_is_inferior else slice(None, data.shape[axis] - half)
    cropped = tmp_path / "top_only.nii.gz"
    offset = np.eye(4)
    offset[axis, 3] = keep[axis].start or 0
    nib.save(nib.Nifti1Image(data[tuple(keep)], image.affine @ offset), str(cropped))
    out = tmp_path / "out"
    code, _, stderr = _cli("centiloid", str(cropped), "--mri", str(phantom_case["mri"]),
                           "--tracer", "PiB", "--suvr-input", "--out", str(out), "--progress", "none")
    assert code == 2 and stderr.strip().count("\n") == 0, stderr
    assert "does not overlap its MRI" in stderr and "WhlCbl" in stderr
    assert not (out / "centiloid.csv").exists() and not list(out.glob("*.png")) if out.exists() else True


def test_default_phantom_has_its_own_linear_scale_in_the_built_in_vois():
    from AmyloidKDLib.phantom import PhantomConfig
    from AmyloidKDLib.phantom.centiloid_scale import phantom_equation, phantom_voi_suvr

    vois, config = approximate_voi_set(2), PhantomConfig()
    equation = phantom_equation("AV45", vois, config)
    assert equation.name == "phantom-AV45"
    assert equation.centiloid(phantom_voi_suvr(0.0, "AV45", vois, config)) == pytest.approx(0, abs=1e-9)
    assert equation.centiloid(phantom_voi_suvr(100.0, "AV45", vois, config)) == pytest.approx(100, abs=1e-9)
    for centiloid in (-30.0, 50.0, 180.0):   # linear to within ~1 CL over the phantom's range
        assert equation.centiloid(phantom_voi_suvr(centiloid, "AV45", vois, config)) == \
            pytest.approx(centiloid, abs=1.5)


def test_centiloid_relation_phantom_follows_the_published_equations():
    from AmyloidKDLib.phantom import PhantomConfig
    from AmyloidKDLib.phantom.centiloid_scale import phantom_voi_suvr

    config = PhantomConfig(pet_relation="centiloid", tracer_mix={"FMM": 1.0, "AV45": 1.0})
    for tracer in ("FMM", "AV45"):
        published = tracer_equation(tracer)
        for centiloid in (0.0, 37.0, 120.0):
            suvr = phantom_voi_suvr(centiloid, tracer, approximate_voi_set(2), config)
            assert suvr == pytest.approx(published.suvr(centiloid), abs=1e-6)


def test_tracer_mix_keeps_every_other_draw_and_needs_the_centiloid_relation():
    from AmyloidKDLib.phantom import PhantomConfig, sample_cohort

    default = sample_cohort(12, 27401, PhantomConfig())
    mixed = sample_cohort(12, 27401, PhantomConfig(pet_relation="centiloid",
                                                   tracer_mix={"FBB": 1.0, "NAV4694": 1.0}))
    assert {s.tracer for s in mixed} == {"FBB", "NAV4694"}
    assert [s.true_centiloid for s in mixed] == [s.true_centiloid for s in default]
    assert [s.age for s in mixed] == [s.age for s in default]
    # FBB's SUVR at a true Centiloid is its published equation's
    first = next(s for s in mixed if s.tracer == "FBB")
    assert first.cortical_suvr == pytest.approx(tracer_equation("FBB").suvr(first.true_centiloid),
                                                abs=1e-4)
    with pytest.raises(ConfigError, match="need pet_relation 'centiloid'"):
        PhantomConfig(tracer_mix={"FBB": 1.0})


def test_a_batch_reports_each_failed_case_in_the_csv_and_exits_1(tmp_path):
    t1 = tmp_path / "t1.nii.gz"
    data = np.zeros((12, 12, 12), np.float32)
    data[3:9, 3:9, 3:9] = 1.0
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(t1))
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,pet_path,t1w,tracer\na,missing_a.nii.gz,t1.nii.gz,PiB\n"
                        "b,missing_b.nii.gz,t1.nii.gz,FBB\n")
    out = tmp_path / "out"
    code, stdout, stderr = _cli("centiloid", str(manifest), "--out", str(out), "--progress", "lines")
    assert code == 1, stderr
    rows = list(csv.DictReader(open(out / "centiloid.csv")))
    assert [(r["case"], r["tracer"], r["status"]) for r in rows] == [
        ("a", "PiB", "failed"), ("b", "FBB", "failed")]
    assert "missing_a.nii.gz: no such file" in rows[0]["error"]
    assert stderr.count("failed:") == 2   # one progress line per case
