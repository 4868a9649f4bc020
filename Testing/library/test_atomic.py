"""The one atomic writer: complete file or none, nothing left behind on failure."""

from __future__ import annotations

import json

import pytest

from AmyloidKDLib.atomic import atomic_open, atomic_path, write_json_atomic, write_text_atomic


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "results.csv"
    write_text_atomic(target, "a,b\n1,2\n")
    write_text_atomic(target, "a,b\n3,4\n")
    assert target.read_text() == "a,b\n3,4\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.csv"]


def test_failure_keeps_the_old_target_and_removes_the_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"auc": 0.7})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write('{"auc": 0.')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"auc": 0.7}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize("name, suffix", [("x.nii.gz", ".nii.gz"), ("x.png", ".png"), ("x", "")])
def test_temporary_keeps_the_real_extension(tmp_path, name, suffix):
    with atomic_path(tmp_path / name) as temporary:
        assert temporary.parent == tmp_path
        assert temporary.name.endswith(".tmp" + suffix)
        temporary.write_bytes(b"1")
    assert (tmp_path / name).read_bytes() == b"1"


def _small_volume():
    import numpy as np

    from AmyloidKDLib.volume import Volume

    data = np.zeros((12, 12, 12), np.float32)
    data[3:9, 3:9, 3:9] = np.arange(216, dtype=np.float32).reshape(6, 6, 6)
    return Volume(data, np.diag([2.0, 2.0, 2.0, 1.0]))


def _write_volume(folder):
    from AmyloidKDLib.volume import save_volume

    save_volume(_small_volume(), folder / "t1.nii.gz")


def _write_stored_scan(folder):
    import numpy as np

    from AmyloidKDLib.phantom import write_scan

    write_scan(_small_volume(), "LPS", folder / "scan.nii.gz", np.int16)


def _write_model_config(folder):
    from AmyloidKDLib.models import ModelConfig

    ModelConfig.preset("cpu", "student").to_json(folder / "model.json")


def _write_checkpoint(folder):
    from torch import nn

    from AmyloidKDLib.checkpoint import save_checkpoint
    from AmyloidKDLib.models import ModelConfig

    save_checkpoint(folder / "ckpt", nn.Linear(3, 1), ModelConfig.preset("cpu", "student"),
                    prep_config={}, slice_config={}, threshold=0.5)


def _write_transform(folder):
    from AmyloidKDLib.registration import Grid, Transform

    part = folder.parent / f"{folder.name}_affine.mat"
    part.write_bytes(b"affine")
    grid = Grid.of(_small_volume())
    Transform([str(part)], [str(part)], [True], grid, grid, "affine").save(folder / "transform")


def _write_overview(folder):
    from AmyloidKDLib.report_png import render_overview

    render_overview(_small_volume(), None, None, folder / "overview.png", case="c",
                    probability=0.7, label=1, threshold=0.5)


# Each library writer, made to fail at the final rename, leaves neither its file nor a
# temporary: proof that it writes through AmyloidKDLib.atomic.
@pytest.mark.parametrize("write", [_write_volume, _write_stored_scan, _write_model_config,
                                   _write_checkpoint, _write_transform, _write_overview],
                         ids=lambda f: f.__name__.removeprefix("_write_"))
def test_library_writers_are_atomic(tmp_path, monkeypatch, write):
    import os

    folder = tmp_path / "out"
    write(folder)  # works, and leaves only the real files
    written = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert written and not [p for p in written if p.name.startswith(".")]

    def disk_full(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", disk_full)
    failed = tmp_path / "failed"
    with pytest.raises(OSError, match="disk full"):
        write(failed)
    assert [p for p in failed.rglob("*") if p.is_file()] == []
