"""Batch and platform fixes (issue 28, point 9): each tested where this Linux machine can.

- the batch has a default per-case timeout, and 0 turns it off;
- Ctrl-C ends it with 130 (see test_slicer_runner.py's exit-code table), after summarising;
- without --checkpoint it says which remembered checkpoint it uses, and stops clearly when an
  update moved it away; the panel falls back to the demo with a message;
- Windows: no console window (CREATE_NO_WINDOW) and UTF-8 output (PYTHONIOENCODING);
- Cancel does not wait on /proc: on a platform without it (macOS) the exited leader is reaped.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib import batch, runner  # noqa: E402
from AmyloidKDModuleLib.modelinfo import remembered_checkpoint  # noqa: E402

DEMO = REPO / "AmyloidKD" / "Resources" / "Models" / "synthetic-demo"


def test_batch_has_a_default_timeout_and_zero_means_none(tmp_path):
    base = ["--input", str(tmp_path), "--out", "o"]
    assert batch.parse_batch_arguments(base).timeout == batch.DEFAULT_CASE_TIMEOUT_S == 3600.0
    assert batch.parse_batch_arguments(base + ["--timeout", "90"]).timeout == 90.0
    assert batch.parse_batch_arguments(base + ["--timeout", "0"]).timeout is None
    with pytest.raises(SystemExit):
        batch.parse_batch_arguments(base + ["--timeout", "-5"])


def _batch_script():
    spec = importlib.util.spec_from_file_location("AmyloidKDBatchPlatform", REPO / "AmyloidKD" / "Scripts" / "AmyloidKDBatch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slicer_with_settings(remembered: str) -> types.ModuleType:
    """The two ``slicer.util`` calls the batch makes before it needs the application."""
    module = types.ModuleType("slicer")
    module.util = types.SimpleNamespace(modulePath=lambda name: str(REPO / "AmyloidKD" / "AmyloidKD.py"),
                                        settingsValue=lambda key, default: remembered)
    return module


def test_batch_without_checkpoint_names_the_remembered_one_and_stops_if_it_moved(tmp_path, monkeypatch, capsys):
    (tmp_path / "t1.nii.gz").write_bytes(b"")
    moved = tmp_path / "old-extension" / "synthetic-demo"
    monkeypatch.setitem(sys.modules, "slicer", _slicer_with_settings(str(moved)))
    code = _batch_script().run_batch(["--input", str(tmp_path / "t1.nii.gz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == batch.EXIT_USAGE
    assert f"no --checkpoint given: using the one last used in the module, {moved}" in err
    assert f"checkpoint {moved} does not exist" in err


def test_panel_falls_back_to_the_demo_when_the_remembered_checkpoint_moved(tmp_path):
    assert remembered_checkpoint(str(DEMO), None) == (DEMO.resolve(), "")
    assert remembered_checkpoint("", DEMO) == (DEMO, "")
    checkpoint, message = remembered_checkpoint(str(tmp_path / "gone"), DEMO)
    assert checkpoint == DEMO
    assert message.startswith(f"The checkpoint used last ({tmp_path / 'gone'}) is not there any more")


def test_windows_runs_get_no_console_window_and_utf8_output():
    assert runner.popen_options("win32") == {"creationflags": 0x00000200 | 0x08000000}
    assert runner.popen_options("linux") == {"start_new_session": True}
    assert runner.popen_options("darwin") == {"start_new_session": True}
    env = runner.library_environment({"PATH": "/bin"}, "/lib")
    assert env["PYTHONIOENCODING"] == "utf-8" and env["PYTHONUNBUFFERED"] == "1"


def test_a_real_zombie_is_recognised_without_proc():
    """psutil tells an exited, uncollected child from a live one (it does on macOS too)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not runner._is_zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner._is_zombie(child.pid)
    child.wait()
    assert not runner._is_zombie(child.pid)


def test_cancel_returns_at_once_where_zombies_cannot_be_seen(monkeypatch):
    """As on macOS without psutil (no /proc): the exited leader is reaped, not waited on for 5 s."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil fails
    process = runner.BackgroundProcess.start([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.3)
    started = time.monotonic()
    process.cancel(timeout=5.0)
    assert time.monotonic() - started < 2.0
    assert process.returncode is not None
