"""One preparation cache, several processes; and repeated preparations of one input."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_inference import write_moved_mni_t1

ROOT = Path(__file__).resolve().parents[2]
N_PROCESSES = 3


def _prepare_all(paths: list[str], cache_dir: str) -> list[tuple[str, float, float]] | str:
    """Worker: prepare every path into the shared cache; (key, MRI sum, mask sum) per case."""
    try:
        from AmyloidKDLib.pipeline import PrepConfig, prepare_case
        from AmyloidKDLib.volume import load_volume

        results = []
        for path in paths:
            case = prepare_case(load_volume(path), None, PrepConfig.preset("fast"), cache_dir=cache_dir)
            results.append((case.cache_key, float(case.mri.data.sum(dtype=np.float64)),
                            float(case.mask.data.sum(dtype=np.float64))))
        return results
    except Exception as exc:  # returned, so the parent can show which process failed and why
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="module")
def two_cases(tmp_path_factory, mni_t1_img) -> list[str]:
    folder = tmp_path_factory.mktemp("cases")
    return [str(write_moved_mni_t1(folder / "a.nii.gz", mni_t1_img, scale=800.0)),
            str(write_moved_mni_t1(folder / "b.nii.gz", mni_t1_img, scale=600.0))]


@pytest.mark.slow
def test_processes_preparing_the_same_cases_into_one_cache_all_succeed_and_agree(two_cases, tmp_path):
    cache = tmp_path / "cache"
    # spawn: fresh interpreters, each with its own multi-threaded ITK, as separate jobs would be
    context = multiprocessing.get_context("spawn")
    with context.Pool(N_PROCESSES) as pool:
        outcomes = pool.starmap(_prepare_all, [(two_cases, str(cache))] * N_PROCESSES)
    failures = [o for o in outcomes if isinstance(o, str)]
    assert not failures, failures
    for case_index in range(len(two_cases)):
        per_process = {outcome[case_index] for outcome in outcomes}
        assert len(per_process) == 1, per_process  # same key, same MRI, same mask everywhere
    keys = sorted(outcome[0] for outcome in outcomes[0])
    assert sorted(p.name for p in cache.iterdir()) == keys  # no partial or temporary folders
    # the stored entries are what every process returned
    from AmyloidKDLib.pipeline import load_prepared

    for key, mri_sum, _ in outcomes[0]:
        stored = load_prepared(cache / key)
        assert float(stored.mri.data.sum(dtype=np.float64)) == mri_sum

    # A damaged entry is not deleted (another process may be reading it): the case is prepared
    # again, returned, and the entry left as it was.
    from AmyloidKDLib.pipeline import PrepConfig, prepare_case
    from AmyloidKDLib.volume import load_volume

    damaged = cache / outcomes[0][0][0]
    (damaged / "mask.nii.gz").write_bytes(b"not a volume")
    case = prepare_case(load_volume(two_cases[0]), None, PrepConfig.preset("fast"), cache_dir=cache)
    assert float(case.mask.data.sum()) > 1000
    assert (damaged / "mask.nii.gz").read_bytes() == b"not a volume"


def _preprocess(t1: str, out: Path, *extra: str) -> np.ndarray:
    env = {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "AmyloidKDLib", "preprocess", t1, "--out", str(out),
                           "--preset", "fast", *extra], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.asarray(nib.load(out / "a" / "mri.nii.gz").dataobj)


@pytest.mark.slow
def test_preparing_one_input_twice_gives_identical_images(two_cases, tmp_path):
    """Seeded sampling and one ITK thread (preprocess's default): bit-identical, run after run."""
    first = _preprocess(two_cases[0], tmp_path / "run1")
    second = _preprocess(two_cases[0], tmp_path / "run2")
    assert first.sum() > 1000
    np.testing.assert_array_equal(first, second)
