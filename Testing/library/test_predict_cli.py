"""``amyloidkd predict``: batch prediction over a folder, results CSV, outputs, progress, exit codes."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from AmyloidKDLib.cli import run as cli_run
from AmyloidKDLib.commands.predict import CENTILOID_COLUMNS, RESULT_COLUMNS, collect_inputs
from AmyloidKDLib.errors import InputError
from test_inference import write_moved_mni_t1, write_test_checkpoint

CONTRACT_COLUMNS = ("case,input,probability,label,threshold,status,error,seconds_prepare,"
                    "seconds_model,seconds_saliency,seconds_total").split(",")


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory, mni_t1_img):
    """Two usable T1s (.nii.gz and .nii), one corrupt file, and a file that is not NIfTI."""
    folder = tmp_path_factory.mktemp("batch")
    good = write_moved_mni_t1(folder / "sub-01_T1w.nii.gz", mni_t1_img)
    nib.save(nib.load(good), folder / "sub-02_T1w.nii")
    raw = gzip.decompress(good.read_bytes())
    (folder / "sub-03_T1w.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))  # truncated
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_test_checkpoint(tmp_path_factory.mktemp("ckpt") / "student", threshold=0.4)


@pytest.fixture(scope="module")
def batch_run(batch_folder, checkpoint, tmp_path_factory):
    """One CLI run over the folder, with progress lines; returns (exit code, stdout, stderr, out)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli_run(["predict", str(batch_folder), "--checkpoint", str(checkpoint), "--out",
                        str(out), "--device", "cpu", "--progress", "lines"])
    return code, stdout.getvalue(), stderr.getvalue(), out


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert CONTRACT_COLUMNS == list(RESULT_COLUMNS)
        assert reader.fieldnames == CONTRACT_COLUMNS + ["centiloid_pred", "centiloid_lo", "centiloid_hi"]
        assert tuple(reader.fieldnames[-3:]) == CENTILOID_COLUMNS
        return list(reader)


@pytest.mark.slow
def test_a_corrupt_file_is_reported_and_the_others_complete(batch_run, batch_folder):
    code, _, stderr, out = batch_run
    assert code == 1
    rows = {row["case"]: row for row in _rows(out)}
    assert sorted(rows) == ["sub-01_T1w", "sub-02_T1w", "sub-03_T1w"]
    broken = rows["sub-03_T1w"]
    assert broken["status"] == "failed"
    assert "sub-03_T1w.nii.gz" in broken["error"]
    assert "damaged" in broken["error"] or "truncated" in broken["error"]
    assert broken["probability"] == broken["label"] == ""
    assert "sub-03_T1w" in stderr and "1 of 3 case(s) failed" in stderr
    assert not list(out.glob("sub-03_T1w_*"))
    for case in ("sub-01_T1w", "sub-02_T1w"):
        row = rows[case]
        assert row["status"] == "ok" and row["error"] == ""
        assert row["input"] == str(batch_folder / (case + (".nii.gz" if case == "sub-01_T1w" else ".nii")))
        probability, threshold = float(row["probability"]), float(row["threshold"])
        assert 0.0 < probability < 1.0 and threshold == pytest.approx(0.4)
        assert int(row["label"]) == int(probability >= threshold)
        # The checkpoint has no Centiloid read-out (as every one saved before it existed).
        assert [row[c] for c in CENTILOID_COLUMNS] == ["", "", ""]
        parts = [float(row[f"seconds_{step}"]) for step in ("prepare", "model", "saliency")]
        assert min(parts) > 0.0 and float(row["seconds_total"]) >= sum(parts)
    # The same image under two names gives the same answer (to registration noise: this test
    # process may have started ITK multi-threaded before the CLI could ask for one thread).
    assert float(rows["sub-01_T1w"]["probability"]) == pytest.approx(
        float(rows["sub-02_T1w"]["probability"]), abs=2e-3)


@pytest.mark.slow
def test_each_case_gets_saliency_labels_and_an_overview_on_its_own_grid(batch_run, batch_folder):
    from AmyloidKDLib.volume import load_volume

    _, _, _, out = batch_run
    for case, suffix in (("sub-01_T1w", ".nii.gz"), ("sub-02_T1w", ".nii")):
        native = load_volume(batch_folder / (case + suffix))
        saliency = load_volume(out / f"{case}_saliency.nii.gz", "saliency")
        assert saliency.shape == native.shape
        # stored like the input (LPS here, test_native_order.py checks the voxels), not RAS
        for name in ("saliency", "top_regions"):
            np.testing.assert_allclose(nib.load(out / f"{case}_{name}.nii.gz").affine,
                                       nib.load(batch_folder / (case + suffix)).affine, atol=1e-4)
        np.testing.assert_allclose(saliency.affine, native.affine, atol=1e-4)
        assert saliency.data.min() >= 0.0 and saliency.data.max() <= 1.0
        labels_img = nib.load(out / f"{case}_top_regions.nii.gz")
        assert labels_img.get_data_dtype() == np.uint8
        assert labels_img.shape == native.shape
        labels = np.asarray(labels_img.dataobj)
        assert labels.max() >= 1
        # top regions are where the saliency is high
        assert saliency.data[labels > 0].mean() > 2 * saliency.data[labels == 0].mean()
        with open(out / f"{case}_regions.csv", newline="") as handle:  # named regions by saliency share
            regions = list(csv.DictReader(handle))
        assert list(regions[0]) == ["rank", "region", "atlas", "saliency_share", "voxels"]
        assert [r["rank"] for r in regions] == [str(i) for i in range(1, len(regions) + 1)]
        named = nib.load(out / f"{case}_regions.nii.gz")  # label k = the region of rank k, on the input's grid
        assert named.shape == native.shape
        np.testing.assert_allclose(named.affine, nib.load(batch_folder / (case + suffix)).affine, atol=1e-4)
        assert set(np.unique(np.asarray(named.dataobj)).tolist()) - {0} <= {int(r["rank"]) for r in regions}
        assert len(np.unique(np.asarray(named.dataobj))) > len(regions) // 2  # most regions reach the MRI
        mni = nib.load(out / f"{case}_saliency_mni.nii.gz")
        assert mni.shape == (99, 117, 95)  # the fast preset's 2 mm MNI grid
        png = (out / f"{case}_overview.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


@pytest.mark.slow
def test_progress_lines_are_machine_readable_and_reach_one(batch_run):
    _, stdout, _, _ = batch_run
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert all(line.startswith("AMYLOIDKD_PROGRESS ") for line in lines)
    fractions = [float(line.split()[1]) for line in lines]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    # start + 5 steps for each readable case + 1 for the corrupt one + done
    assert len(lines) == 1 + 2 * 5 + 1 + 1
    assert any("sub-03_T1w: failed" in line for line in lines)
    assert "done: 2 ok, 1 failed" in lines[-1]


def test_manifest_paths_are_relative_to_the_manifest_and_repeated_names_are_refused(tmp_path):
    (tmp_path / "sub-01").mkdir()
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("subject_id,t1w\n01,sub-01/T1w.nii.gz\n02,/data/sub-02/T1w.nii.gz\n03,\n")
    with pytest.raises(InputError, match="same case name.*'case' column"):
        collect_inputs(manifest)
    manifest.write_text("case,t1w\n01,sub-01/T1w.nii.gz\n02,/data/sub-02/T1w.nii.gz\n03,\n")
    cases = collect_inputs(manifest)
    assert [c.case for c in cases] == ["01", "02", "03"]
    assert cases[0].path == tmp_path / "sub-01" / "T1w.nii.gz"
    assert cases[1].path == Path("/data/sub-02/T1w.nii.gz")
    assert cases[2].path is None and "empty t1w" in cases[2].problem
    (tmp_path / "other.csv").write_text("subject_id,mri_path\n01,a.nii\n")
    assert collect_inputs(tmp_path / "other.csv")[0].case == "a"


@pytest.mark.parametrize("make_input, message", [
    (lambda d: d / "missing.nii.gz", "no such file or folder"),
    (lambda d: d, "holds no .nii or .nii.gz file"),
    (lambda d: _write(d / "m.csv", "subject_id,path\n01,a.nii\n"), "needs a column t1w or mri_path"),
    (lambda d: _write(d / "scan.dcm", "x"), "not a NIfTI file"),
])
def test_bad_input_exits_with_code_2_and_one_line(make_input, message, tmp_path, capsys):
    code = cli_run(["predict", str(make_input(tmp_path)), "--checkpoint", str(tmp_path / "none"),
                    "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_a_missing_checkpoint_exits_with_code_2(tmp_path, capsys, mni_t1_path):
    code = cli_run(["predict", str(mni_t1_path), "--checkpoint", str(tmp_path / "nowhere"),
                    "--out", str(tmp_path / "out")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_output_path_that_is_a_file_exits_with_code_2(tmp_path, capsys, mni_t1_path):
    taken = _write(tmp_path / "out", "a file, not a folder")
    code = cli_run(["predict", str(mni_t1_path), "--checkpoint", str(tmp_path), "--out", str(taken)])
    assert code == 2
    assert "output folder" in capsys.readouterr().err


def test_bad_options_are_usage_errors(tmp_path, mni_t1_path):
    with pytest.raises(SystemExit) as stop:
        cli_run(["predict", str(mni_t1_path), "--checkpoint", str(tmp_path), "--out",
                 str(tmp_path), "--skull-strip", "bet"])
    assert stop.value.code == 2


@pytest.mark.parametrize("flag, expected", [([], True), (["--deterministic"], True),
                                            (["--no-deterministic"], False)])
def test_deterministic_flag_reaches_the_predictor(flag, expected, tmp_path, mni_t1_path,
                                                   monkeypatch):
    import AmyloidKDLib.inference as inference

    seen = {}

    class Stop(Exception):
        pass

    def fake_predictor(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(inference, "Predictor", fake_predictor)
    try:
        cli_run(["predict", str(mni_t1_path), "--checkpoint", str(tmp_path), "--out",
                 str(tmp_path / "out"), "--device", "cpu", *flag])
    except Stop:
        pass
    assert seen["deterministic"] is expected


def test_predict_help_documents_the_deterministic_flag(capsys):
    with pytest.raises(SystemExit):
        cli_run(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--deterministic, --no-deterministic" in text and "one thread" in text


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("failing", ["png", "nifti"])
def test_a_case_whose_outputs_fail_leaves_none_of_them(failing, tmp_path, monkeypatch):
    """The NIfTIs are written beside the PNG; when either fails, nothing of the case remains."""
    from types import SimpleNamespace

    from AmyloidKDLib import report_png
    from AmyloidKDLib.commands import predict
    from AmyloidKDLib.volume import Volume

    grid = np.zeros((12, 14, 10), np.float32)
    grid[4:8, 5:9, 3:7] = 0.8
    volume = Volume(grid, np.eye(4), "saliency")
    result = SimpleNamespace(saliency=volume, saliency_mni=volume, saliency_target=1,
                             top_regions=volume.with_data((grid > 0.5).astype(np.float32)),
                             mri=volume.with_data(grid * 100), probability=0.7, label=1,
                             threshold=0.5)
    written = predict.write_case_outputs(result, tmp_path / "ok", "c")
    assert [p.name for p in written] == ["c_saliency.nii.gz", "c_saliency_mni.nii.gz",
                                         "c_top_regions.nii.gz", "c_regions.csv", "c_overview.png"]
    assert all(p.is_file() for p in written)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if failing == "png":
        monkeypatch.setattr(report_png, "render_overview", broken)
    else:
        real_save = predict.save_volume
        monkeypatch.setattr(predict, "save_volume", lambda volume, path, dtype: (
            broken() if "mni" in path.name else real_save(volume, path, dtype=dtype)))
    out = tmp_path / "failed"
    out.mkdir()
    with pytest.raises(OSError, match="No space"):
        predict.write_case_outputs(result, out, "c")
    assert list(out.iterdir()) == []
