"""Per-case work on real Dask: a 2-worker LocalCluster agrees with the serial run voxel for
voxel, survives a killed worker, and dask-jobqueue writes the batch script we asked for."""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
N_CASES = 6
OUTPUTS = ("mri.nii.gz", "mask.nii.gz")

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def phantom_manifest(tmp_path_factory) -> Path:
    """Six 2 mm phantom T1w cases (no PET) in a manifest with a ``case`` column."""
    from AmyloidKDLib.phantom.measure import t1_case_manifest

    root = tmp_path_factory.mktemp("phantom")
    manifest = t1_case_manifest(root / "cohort", N_CASES, root / "cases.csv", seed=11)
    assert len(manifest.read_text().splitlines()) == N_CASES + 1
    return manifest


def _preprocess(manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "AmyloidKDLib", "preprocess", str(manifest),
                           "--out", str(out), "--preset", "fast", "--progress", "none", *extra],
                          env=env, capture_output=True, text=True, timeout=900)


def _images(out: Path) -> dict[str, np.ndarray]:
    # hidden ".<case>.<random>" folders are atomic writes in progress; a worker killed by
    # SIGKILL leaves its own behind (never a result), and another may be vanishing as we look
    cases = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {f"{case}/{name}": np.asarray(nib.load(out / case / name).dataobj)
            for case in cases for name in OUTPUTS}


@pytest.fixture(scope="module")
def serial_run(phantom_manifest, tmp_path_factory) -> dict[str, np.ndarray]:
    """The reference: every case prepared in one process (jobs 1, no Dask), one ITK thread."""
    out = tmp_path_factory.mktemp("serial")
    done = _preprocess(phantom_manifest, out)
    assert done.returncode == 0, done.stderr[-2000:]
    images = _images(out)
    assert len(images) == N_CASES * len(OUTPUTS)
    return images


@pytest.mark.slow
def test_a_two_worker_local_cluster_prepares_the_same_voxels_as_the_serial_run(
        phantom_manifest, serial_run, tmp_path):
    out = tmp_path / "cluster"
    done = _preprocess(phantom_manifest, out, "--jobs", "2", "--scheduler", "local")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert [r["status"] for r in rows] == ["ok"] * N_CASES
    assert len(list(csv.DictReader(open(out / "errors.csv")))) == 0
    images = _images(out)
    assert images.keys() == serial_run.keys()
    for name, reference in serial_run.items():
        assert reference.sum() > 0, name
        np.testing.assert_array_equal(images[name], reference, err_msg=name)


@pytest.mark.slow
def test_killing_a_worker_mid_run_still_completes_every_case_with_the_same_results(
        phantom_manifest, serial_run, tmp_path):
    """One of two LocalCluster workers is SIGKILLed (by its pid) once the first case is back,
    while the other cases are being prepared; Dask reschedules its task on a live worker (the
    nanny restarts the dead one) and every case ends ok, voxel-equal to the serial run."""
    from AmyloidKDLib.commands.preprocess import prepare_one, read_cases
    from AmyloidKDLib.executor import map_cases
    from AmyloidKDLib.pipeline import PrepConfig

    out = tmp_path / "fault"
    cases = read_cases(str(phantom_manifest))
    task = functools.partial(prepare_one, config_dict=PrepConfig.preset("fast").to_dict(),
                             out=str(out), cache_dir=str(tmp_path / "cache"))
    clients = []
    killed: list[int] = []
    rows: dict[int, dict] = {}
    for index, row, error in map_cases(task, cases, jobs=2, threads=1, progress=False,
                                       on_client=clients.append):
        assert error is None, error
        rows[index] = row
        if not killed:
            pids = clients[0].run(os.getpid)  # {worker address: pid}
            assert len(pids) == 2
            pid = sorted(pids.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    assert killed and len(rows) == N_CASES
    assert all(row["status"] == "ok" for row in rows.values()), rows
    images = _images(out)
    assert images.keys() == serial_run.keys()
    for name, reference in serial_run.items():
        np.testing.assert_array_equal(images[name], reference, err_msg=name)
    # No half-written file survived the kill: only finished outputs and no temporaries.
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []


def test_the_slurm_job_script_holds_the_requested_queue_cores_memory_and_walltime():
    """dask-jobqueue's SLURM script from the documented example config (no SLURM needed)."""
    pytest.importorskip("dask_jobqueue")
    from AmyloidKDLib.executor import jobqueue_cluster, read_cluster_config

    settings = read_cluster_config(ROOT / "docs" / "examples" / "slurm.yaml")
    assert settings["queue"] == "cpu" and settings["walltime"] == "02:00:00"
    cluster = jobqueue_cluster("slurm", settings, threads=2)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p cpu" in script
    assert "#SBATCH -n 1" in script and "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH --mem=30G" in script  # 32 GB as SLURM's GiB, rounded down
    assert "#SBATCH -t 02:00:00" in script
    assert "module load python" in script  # the prologue
    assert "export ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2" in script
    assert "--nworkers 4" in script and "--nthreads 2" in script  # 8 cores / 2 threads per case
    assert "--resources amyloidkd_case=1" in script


def test_bad_scheduler_and_cluster_config_are_one_line_usage_errors(phantom_manifest, tmp_path):
    from AmyloidKDLib.cli import EXIT_USAGE, run

    bad = tmp_path / "cluster.yaml"
    bad.write_text("queue: cpu\ncoers: 8\n")
    assert run(["preprocess", str(phantom_manifest), "--out", str(tmp_path / "a"),
                "--scheduler", "kubernetes"]) == EXIT_USAGE
    assert run(["preprocess", str(phantom_manifest), "--out", str(tmp_path / "b"),
                "--scheduler", "slurm", "--cluster-config", str(bad)]) == EXIT_USAGE
    json_config = tmp_path / "cluster.json"
    json_config.write_text(json.dumps({"cores": 4, "memory": "8GB", "jobs": 0}))
    from AmyloidKDLib.errors import ConfigError
    from AmyloidKDLib.executor import read_cluster_config

    with pytest.raises(ConfigError, match="jobs must be"):
        read_cluster_config(json_config)
    with pytest.raises(ConfigError, match="coers"):
        read_cluster_config(bad)


@pytest.mark.slow
def test_predict_on_two_local_workers_matches_the_serial_run_and_reports_a_broken_case(
        phantom_manifest, tmp_path):
    """``predict --jobs 2``: each worker loads the checkpoint once; probabilities equal the
    serial run's, the corrupt case is a failed row of results.csv (exit 1), and a re-run into the
    same folder keeps the finished cases."""
    import gzip

    from AmyloidKDLib.cli import EXIT_SOME_FAILED
    from AmyloidKDLib.cli import run as cli_run
    from test_inference import write_test_checkpoint

    checkpoint = write_test_checkpoint(tmp_path / "ckpt" / "student", threshold=0.4)
    folder = tmp_path / "mris"
    folder.mkdir()
    rows = list(csv.DictReader(open(phantom_manifest)))[:2]
    for row in rows:
        (folder / f"{row['case']}.nii.gz").write_bytes(Path(row["t1w"]).read_bytes())
    raw = gzip.decompress(Path(rows[0]["t1w"]).read_bytes())
    (folder / "broken.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))

    def predict(out: Path, *extra: str) -> dict[str, dict]:
        code = cli_run(["predict", str(folder), "--checkpoint", str(checkpoint), "--out", str(out),
                        "--device", "cpu", "--progress", "none", *extra])
        assert code == EXIT_SOME_FAILED
        return {r["case"]: r for r in csv.DictReader(open(out / "results.csv"))}

    serial = predict(tmp_path / "serial")
    parallel = predict(tmp_path / "parallel", "--jobs", "2")
    assert list(parallel) == list(serial) == sorted(serial)  # input order
    assert parallel["broken"]["status"] == "failed" and parallel["broken"]["error"]
    for row in rows:
        assert parallel[row["case"]]["status"] == "ok"
        assert float(parallel[row["case"]]["probability"]) == pytest.approx(
            float(serial[row["case"]]["probability"]), abs=1e-5)
        assert (tmp_path / "parallel" / f"{row['case']}_saliency.nii.gz").is_file()
    again = predict(tmp_path / "parallel", "--jobs", "2")
    for row in rows:  # kept from the first run, not recomputed
        assert again[row["case"]]["seconds_total"] == parallel[row["case"]]["seconds_total"]
