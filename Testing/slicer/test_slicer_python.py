"""The module's Slicer target is honest: the Python of the Slicer it claims runs its files.

- vermin (static, per file) finds nothing above 3.9 in the files Slicer loads first
  (``AmyloidKD.py``, ``AmyloidKDModuleLib``, the batch script and the few library files they
  import), so an older Slicer shows the load-time message instead of a traceback; and nothing
  above 3.10 in the library the prediction subprocess runs (3.10 <= the claimed Slicer's 3.12).
- The load-time check itself, on this Python and, where pyenv has them, on a real 3.9 (the
  Python of Slicer 5.4-5.8) and 3.12 (the Python of Slicer 5.10+).
- README, docs/slicer.md, the top-level CMakeLists.txt and the module name the same minimum.

vermin comes with the test extra (``pip install -e '.[test]'``); without it the
static checks are skipped locally and fail under CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AmyloidKD"
sys.path.insert(0, str(MODULE_DIR))

from AmyloidKDModuleLib import compatibility  # noqa: E402
from AmyloidKDModuleLib.compatibility import (  # noqa: E402
    LIBRARY_MINIMUM_PYTHON,
    MINIMUM_SLICER_VERSION,
    python_problem,
)

#: What Slicer imports before the check can speak: must parse and run on Python 3.9.
LOAD_PATH_FILES = sorted(
    [MODULE_DIR / "AmyloidKD.py", MODULE_DIR / "Scripts" / "AmyloidKDBatch.py",
     *(MODULE_DIR / "AmyloidKDModuleLib").glob("*.py")]
    + [REPO / "AmyloidKDLib" / name for name in ("__init__.py", "errors.py", "layouts.py", "atomic.py")])
LIBRARY_FILES = sorted((REPO / "AmyloidKDLib").rglob("*.py"))


def _vermin() -> list[str]:
    """The command that runs vermin: from this Python's packages (the test extra installs it)."""
    import importlib.util

    if importlib.util.find_spec("vermin") is None:
        message = "vermin is not installed (it is in the test extra: pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())"]


def _vermin_violations(target: str, files: list[Path]) -> tuple[int, str]:
    run = subprocess.run([*_vermin(), "--no-tips", "--violations", "--no-parse-comments", f"-t={target}-",
                          *map(str, files)], capture_output=True, text=True, timeout=120)
    return run.returncode, run.stdout + run.stderr


def test_files_slicer_loads_first_need_at_most_python_3_9():
    code, report = _vermin_violations("3.9", LOAD_PATH_FILES)
    assert code == 0, report
    assert f"Analyzing {len(LOAD_PATH_FILES)} files" in report


def test_library_needs_at_most_its_declared_minimum_python():
    code, report = _vermin_violations(".".join(map(str, LIBRARY_MINIMUM_PYTHON)), LIBRARY_FILES)
    assert code == 0, report
    assert len(LIBRARY_FILES) > 30


def test_vermin_does_flag_what_python_3_9_lacks():
    """The check can fail: the library's configs need 3.10 (types.UnionType)."""
    code, report = _vermin_violations("3.9", [REPO / "AmyloidKDLib" / "configs.py"])
    assert code != 0 and "types.UnionType" in report


def test_load_time_check_names_the_slicer_to_install():
    message = python_problem((3, 9, 10, "final", 0))
    assert message is not None
    assert "Slicer 5.10 or newer" in message and "Python 3.9.10" in message
    assert python_problem((3, 10, 0)) is None
    assert python_problem((3, 12, 1)) is None
    assert python_problem() is None  # the Python running these tests is supported


@pytest.mark.parametrize("version", ["3.9", "3.12"])
def test_load_time_check_on_the_python_slicer_ships(version):
    """On a real 3.9 the module's helpers import and the check speaks; on 3.12 it stays silent."""
    pyenv = Path.home() / ".pyenv" / "versions"
    pythons = sorted(pyenv.glob(f"{version}.*/bin/python")) if pyenv.is_dir() else []
    if not pythons:
        pytest.skip(f"no Python {version} on this machine")
    probe = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
             "from AmyloidKDModuleLib import catalog, dependencies, runner, batch\n"
             "from AmyloidKDModuleLib.compatibility import python_problem\n"
             "print(python_problem())\n")
    run = subprocess.run([str(pythons[-1]), "-I", "-c", probe, str(MODULE_DIR), str(REPO)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    if version == "3.9":
        assert "needs 3D Slicer 5.10 or newer" in run.stdout and "Python 3.9." in run.stdout
    else:
        assert run.stdout.strip() == "None"


def test_docs_cmake_and_module_claim_the_same_minimum_slicer():
    minimum = ".".join(map(str, MINIMUM_SLICER_VERSION))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    slicer_doc = (REPO / "docs" / "slicer.md").read_text(encoding="utf-8")
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f"Slicer {minimum} or newer" in readme
    assert f"Slicer {minimum} or newer" in slicer_doc
    assert re.search(rf'set\(AmyloidKD_MINIMUM_SLICER_VERSION "{re.escape(minimum)}"\)', cmake)
    assert "VERSION_LESS" in cmake and "FATAL_ERROR" in cmake
    for text in (readme, slicer_doc):
        assert not re.search(r"Slicer 5\.[4-8] or newer", text)
    assert compatibility.MINIMUM_SLICER_PYTHON >= LIBRARY_MINIMUM_PYTHON


def test_module_runs_the_check_where_slicer_enters_it():
    source = (MODULE_DIR / "AmyloidKD.py").read_text(encoding="utf-8")
    batch = (MODULE_DIR / "Scripts" / "AmyloidKDBatch.py").read_text(encoding="utf-8")
    # module description, panel setup, the logic's start, the batch
    assert source.count("python_problem()") >= 3
    assert "python_problem()" in batch
