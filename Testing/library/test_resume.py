"""A batch prediction killed with SIGKILL is finished by a re-run into the same --out."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_inference import write_moved_mni_t1, write_test_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CASES = ("sub-01_T1w", "sub-02_T1w", "sub-03_T1w")


def _command(folder: Path, checkpoint: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "AmyloidKDLib", "predict", str(folder), "--checkpoint",
            str(checkpoint), "--out", str(out), "--device", "cpu"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _rows(out: Path) -> list[dict]:
    try:
        with open(out / "results.csv", newline="") as handle:
            return list(csv.DictReader(handle))
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_a_rerun_after_kill_finishes_the_missing_cases_without_redoing_the_others(tmp_path, mni_t1_img):
    folder = tmp_path / "in"
    folder.mkdir()
    write_moved_mni_t1(folder / f"{CASES[0]}.nii.gz", mni_t1_img)
    for case in CASES[1:]:
        shutil.copyfile(folder / f"{CASES[0]}.nii.gz", folder / f"{case}.nii.gz")
    checkpoint = write_test_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"

    batch = subprocess.Popen(_command(folder, checkpoint, out), env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not _rows(out) and batch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(batch.pid, signal.SIGKILL)  # in the middle: after the first case, before the last
    batch.wait()
    finished = _rows(out)
    assert [row["case"] for row in finished] == [CASES[0]], "kill came too late to test resuming"
    assert finished[0]["status"] == "ok"
    first_outputs = {p.name: p.stat().st_mtime_ns for p in out.glob(f"{CASES[0]}_*")}
    # overview, saliency (native and MNI), top regions and the region table
    assert sorted(first_outputs) == sorted(f"{CASES[0]}_{name}" for name in (
        "overview.png", "saliency.nii.gz", "saliency_mni.nii.gz", "top_regions.nii.gz", "regions.csv",
        "regions.nii.gz"))

    done = subprocess.run(_command(folder, checkpoint, out), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 case(s) already done" in done.stderr
    rows = _rows(out)
    assert [row["case"] for row in rows] == list(CASES)
    assert all(row["status"] == "ok" for row in rows)
    assert rows[0] == finished[0]  # kept as it was, timings included
    assert {p.name: p.stat().st_mtime_ns for p in out.glob(f"{CASES[0]}_*")} == first_outputs
    for case in CASES[1:]:
        assert (out / f"{case}_overview.png").is_file()
    # the same image under three names: the same probability (one ITK thread in predict)
    assert len({row["probability"] for row in rows}) == 1

    # a different checkpoint, or other options, into the same folder would redo everything
    import json

    from AmyloidKDLib.commands.predict import RUN_RECORD, finished_rows, run_record

    options = json.loads((out / RUN_RECORD).read_text())["options"]
    assert len(finished_rows(out, run_record(checkpoint, **options))) == 3
    other = write_test_checkpoint(tmp_path / "ckpt2", seed=1)
    assert finished_rows(out, run_record(other, **options)) == {}
    assert finished_rows(out, run_record(checkpoint, **{**options, "allow_coarse": True})) == {}
