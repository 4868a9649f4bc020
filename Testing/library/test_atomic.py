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
