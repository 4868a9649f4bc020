"""Multi-process training through ``accelerate launch``: two CPU processes (gloo) train one
model together, one checkpoint is written, and validation covers every rank's cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_training import TINY

ROOT = Path(__file__).resolve().parents[2]
#: The command docs/training.md gives for multi-process training, as this test runs it.
#: (``--cpu --num_processes 2`` would start one process: Accelerate's CPU launcher needs mpirun;
#: ``--multi_gpu`` starts the processes and ``engine.device=cpu`` makes them a gloo group.)
LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "-m", "Training.cli",
          "train", "baseline"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    root = tmp_path_factory.mktemp("mp_cohort")
    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), prevalence=0.5,
                           orientation_mix=0.3)
    return generate_cohort(root, 10, seed=5, layout="manifest", config=config, progress=False)


def test_the_documented_multi_process_command_is_the_one_this_test_runs():
    text = (ROOT / "docs" / "training.md").read_text()
    assert " ".join(LAUNCH) in text
    assert " ".join(LAUNCH) in (ROOT / "docs" / "cluster.md").read_text()


@pytest.mark.slow
def test_two_processes_train_together_write_one_checkpoint_and_gather_validation(cohort, tmp_path):
    pytest.importorskip("accelerate")
    from AmyloidKDLib.checkpoint import load_checkpoint
    from Training.config import load_config
    from Training.phases import classification_metrics, predict_probabilities
    from Training.workflow import CohortSource, prepare_run

    run_dir = tmp_path / "run"
    # batch 2: the 5 training cases give each process a batch (TINY's 4 gives one, for one process)
    overrides = [*TINY, "student.epochs=2", "student.batch_size=2", "data.jobs=1"]
    sets = [x for item in overrides for x in ("--set", item)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    # `accelerate launch` is `python -m accelerate.commands.launch` (the same entry point)
    command = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH[2:],
               "--manifest", str(cohort), "--out", str(run_dir), "--config", "cpu", "-v", *sets]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both ranks entered the training loop of one 2-process group.
    assert "baseline: process 0 of 2" in done.stderr and "baseline: process 1 of 2" in done.stderr

    # Exactly one checkpoint, complete and loadable; no temporary left by a second writer.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["baseline"]
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    model, info = load_checkpoint(run_dir / "checkpoints" / "baseline")

    history = json.loads((run_dir / "baseline" / "history.json").read_text())
    assert history["processes"] == 2 and len(history["history"]) == 2
    assert all(row["train_loss"] > 0 for row in history["history"])  # both epochs trained
    split = json.loads((run_dir / "split.json").read_text())
    n_val = len(split["val"])
    assert n_val >= 3  # odd or even, the shards differ from the whole set
    assert all(row["val_cases"] == n_val for row in history["history"])

    # The best epoch's validation metrics are those of the whole validation set, recomputed here
    # in one process from the checkpoint's (best) weights, not those of rank 0's half.
    config = load_config("cpu", overrides)
    dataset, val_split = prepare_run(config, CohortSource(manifest=str(cohort)), run_dir)
    model.calibration.set()  # the raw logits validation saw
    probs = predict_probabilities(model, dataset, val_split.val)
    expected = classification_metrics(dataset.labels[list(val_split.val)], probs)
    best = history["history"][history["best_epoch"] - 1]
    assert best["val_bce"] == pytest.approx(expected["val_bce"], rel=1e-4)
    assert best["val_auc"] == pytest.approx(expected["val_auc"], abs=1e-9)
