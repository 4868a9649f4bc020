"""The training slice cache: a case is prepared once, and only reused while nothing that
shapes its slices has changed (inputs, settings, the library's pipeline version)."""

from __future__ import annotations

import pytest
import torch

from AmyloidKDLib import pipeline
from Training.config import load_config
from Training.data import prepare_case_slices, slice_cache_key

#: One 2 mm phantom case, 4 slices of 64 px, coarse registration: a few seconds on a CPU.
SMALL = ["data.n_slices=4", "data.image_size=64",
         "data.prep_overrides={n4: {iterations: [10, 5]}, registration: {shrink_factors: [4, 2], "
         "smoothing_sigmas: [2.0, 1.0], iterations: [60, 20]}}"]


@pytest.fixture(scope="module")
def one_case(tmp_path_factory):
    """The first record of a one-subject phantom cohort (2 mm T1w)."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
    from Training.cohort import read_manifest

    root = tmp_path_factory.mktemp("one")
    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), montage_subjects=0)
    return read_manifest(generate_cohort(root, 1, seed=3, config=config, progress=False))[0]


def test_a_new_pipeline_version_misses_the_slice_cache(one_case, tmp_path, monkeypatch):
    config = load_config("cpu", SMALL)
    prep, slices = config.prep_config(), config.slice_config()
    first = prepare_case_slices(one_case, "T1w", prep, slices, tmp_path, with_pet=False)
    stamp = first.stat().st_mtime_ns
    # Same inputs and settings: the file is reused as is.
    assert prepare_case_slices(one_case, "T1w", prep, slices, tmp_path, with_pet=False) == first
    assert first.stat().st_mtime_ns == stamp
    # A changed image path (announced by PIPELINE_VERSION) must not reuse the old stacks.
    old_key = slice_cache_key(one_case, "T1w", prep, slices, with_pet=False)
    monkeypatch.setattr(pipeline, "PIPELINE_VERSION", pipeline.PIPELINE_VERSION + "-next")
    assert slice_cache_key(one_case, "T1w", prep, slices, with_pet=False) != old_key
    second = prepare_case_slices(one_case, "T1w", prep, slices, tmp_path, with_pet=False)
    assert second != first and second.is_file()
    assert first.stat().st_mtime_ns == stamp  # the old file is left alone, not overwritten
    assert sorted(p.name for p in (tmp_path / "slices").iterdir()) == sorted([first.name, second.name])
    # Both hold real stacks of the configured shape (no temporary file left beside them).
    from safetensors.torch import load_file

    for path in (first, second):
        assert load_file(str(path))["mri"].shape == torch.Size([4, 3, 64, 64])
