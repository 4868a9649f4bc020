"""A full disk: each writer fails with one line, leaves nothing half-written, and a re-run completes.

The disk is "filled" with a file-size limit (RLIMIT_FSIZE) in a subprocess: a write past the
limit then fails with EFBIG exactly as a write to a full disk fails with ENOSPC (SIGXFSZ is
ignored, so the write returns an error instead of killing the process).
"""

from __future__ import annotations

import csv
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_inference import write_moved_mni_t1, write_test_checkpoint

ROOT = Path(__file__).resolve().parents[2]
#: Room for CSV and JSON files, not for a NIfTI volume or model weights.
LIMIT_BYTES = 48 * 1024


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_cli(*argv: str, limit: int | None = None) -> subprocess.CompletedProcess:
    """``python -m AmyloidKDLib ARGV`` in a subprocess, optionally under a file-size limit."""
    # (a third-party FutureWarning at import is not ours to count as a line)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    return subprocess.run([sys.executable, "-m", "AmyloidKDLib", *argv], env=env, text=True,
                          capture_output=True, preexec_fn=_limit_file_size(limit) if limit else None)


def assert_one_line_disk_error(done: subprocess.CompletedProcess) -> None:
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines()
             if line.strip() and "%|" not in line  # tqdm's bar is not a message,
             and not line.startswith("[progress] ")]  # nor a progress line (stderr is a pipe)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, lines
    assert "no room to write" in lines[0] and "run the same command again" in lines[0]


def assert_nothing_half_written(folder: Path) -> None:
    """Every NIfTI and CSV under ``folder`` reads completely; no temporary files remain."""
    for path in folder.rglob("*"):
        assert ".tmp" not in path.name, path
        if path.name.endswith((".nii", ".nii.gz")):
            assert np.isfinite(np.asarray(nib.load(path).dataobj, dtype=np.float32)).all(), path
        elif path.suffix == ".csv":
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
            assert rows and all(len(row) == len(rows[0]) for row in rows), path


@pytest.fixture(scope="module")
def t1_folder(tmp_path_factory, mni_t1_img) -> Path:
    folder = tmp_path_factory.mktemp("t1")
    write_moved_mni_t1(folder / "sub-01_T1w.nii.gz", mni_t1_img)
    return folder


@pytest.mark.slow
def test_predict_on_a_full_disk_fails_in_one_line_and_a_rerun_completes(t1_folder, tmp_path):
    checkpoint = write_test_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    argv = ("predict", str(t1_folder), "--checkpoint", str(checkpoint), "--out", str(out),
            "--device", "cpu")
    assert_one_line_disk_error(run_cli(*argv, limit=LIMIT_BYTES))
    assert "sub-01_T1w_saliency.nii.gz" not in {p.name for p in out.iterdir()}
    assert_nothing_half_written(out)
    done = run_cli(*argv)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "results.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok" and 0 < float(row["probability"]) < 1
    assert_nothing_half_written(out)


@pytest.mark.slow
def test_preprocess_on_a_full_disk_fails_in_one_line_and_a_rerun_completes(t1_folder, tmp_path):
    t1 = str(t1_folder / "sub-01_T1w.nii.gz")
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ("preprocess", t1, "--out", str(out), "--preset", "fast", "--cache-dir", str(cache))
    assert_one_line_disk_error(run_cli(*argv, limit=LIMIT_BYTES))
    assert not (out / "sub-01_T1w").exists()
    assert not list(cache.iterdir())  # no partial cache entry either
    assert_nothing_half_written(tmp_path)
    done = run_cli(*argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.asarray(nib.load(out / "sub-01_T1w" / "mri.nii.gz").dataobj).max() > 0.5
    assert len(list(cache.iterdir())) == 1
    assert_nothing_half_written(tmp_path)


def test_phantom_on_a_full_disk_fails_in_one_line_and_a_rerun_completes(tmp_path):
    out = tmp_path / "cohort"
    argv = ("phantom", "--out", str(out), "--subjects", "2", "--seed", "3", "--mri-spacing", "2")
    assert_one_line_disk_error(run_cli(*argv, limit=LIMIT_BYTES))
    assert_nothing_half_written(tmp_path)
    done = run_cli(*argv)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len({row["subject_id"] for row in rows}) == 2
    for row in rows:
        assert Path(row["t1w"] if os.path.isabs(row["t1w"]) else out / row["t1w"]).is_file()
    assert_nothing_half_written(out)


CHECKPOINT_SCRIPT = """
import sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from AmyloidKDLib.atomic import is_disk_full
from test_inference import write_test_checkpoint
try:
    write_test_checkpoint(__import__("pathlib").Path(sys.argv[1]))
except Exception as exc:
    # what the CLIs (amyloidkd train ...) test before printing their one-line disk message
    print("disk full:", is_disk_full(exc), type(exc).__name__, exc)
    sys.exit(2)
"""


@pytest.mark.slow
def test_checkpoint_saving_on_a_full_disk_leaves_no_partial_checkpoint(tmp_path):
    from AmyloidKDLib.checkpoint import load_checkpoint

    folder = tmp_path / "student"
    argv = [sys.executable, "-c", CHECKPOINT_SCRIPT, str(folder), str(ROOT), str(Path(__file__).parent)]
    done = subprocess.run(argv, capture_output=True, text=True,
                          preexec_fn=_limit_file_size(LIMIT_BYTES))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout.startswith("disk full: True"), done.stdout
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert "model.safetensors" not in left and "checkpoint.json" not in left
    assert not [name for name in left if "tmp" in name], left
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    model, info = load_checkpoint(folder)
    assert info.threshold == 0.5
