"""scripts/ensure_venv.sh: two clones sharing one package venv each run their own code.

The package venv here is a tiny stand-in (its site-packages points at the running test venv's
packages), so the test builds nothing big and never touches the real shared venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_clone(folder: Path, name: str) -> Path:
    """A minimal checkout: the script, the lock, pyproject and a marked AmyloidKDLib."""
    for relative in ("scripts/ensure_venv.sh", "requirements/lock.txt", "pyproject.toml", "README.md",
                     "LICENSE"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, folder / relative)
    (folder / "AmyloidKDLib").mkdir()
    (folder / "AmyloidKDLib" / "__init__.py").write_text(f'CLONE = "{name}"\n')
    (folder / "Training").mkdir()
    (folder / "Training" / "__init__.py").write_text("")
    (folder / "Training" / "cli.py").write_text(f"def main():\n    print('clone {name}')\n")
    return folder


def make_package_venv(folder: Path) -> Path:
    """A stand-in for the 7 GB package venv: a venv whose site-packages reaches this one's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = subprocess.run([str(folder / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # addsitedir, not a bare path: when the tests themselves run from a per-clone venv, its
    # site-packages reaches the real packages only through a .pth file of its own.
    (Path(site) / "test_packages.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    (folder / ".lock-complete").touch()
    return folder


def ensure(clone: Path, package_venv: Path, cache: Path) -> Path:
    env = {**os.environ, "AMYLOIDKD_VENV": str(package_venv), "XDG_CACHE_HOME": str(cache)}
    env.pop("AMYLOIDKD_CLONE_VENV", None)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(clone / "scripts" / "ensure_venv.sh")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


def which_clone(venv: Path) -> tuple[str, str, str]:
    """(AmyloidKDLib.CLONE, its file, what the venv's `amyloidkd` command prints).

    Run from the venv's folder: ``python -c`` puts the working folder first on sys.path, and
    from a clone's root that clone would win whatever the venv holds.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    imported = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import AmyloidKDLib; print(AmyloidKDLib.CLONE, AmyloidKDLib.__file__)"],
                              env=env, cwd=venv, capture_output=True, text=True,
                              check=True).stdout.split()
    command = subprocess.run([str(venv / "bin" / "amyloidkd")], env=env, cwd=venv,
                             capture_output=True, text=True, check=True).stdout.strip()
    return imported[0], imported[1], command


@pytest.mark.slow
def test_two_clones_sharing_one_package_venv_each_import_their_own_code(tmp_path):
    package_venv = make_package_venv(tmp_path / "packages")
    site_before = sorted(p.name for p in (package_venv / "lib").rglob("*"))
    one = make_clone(tmp_path / "one", "one")
    two = make_clone(tmp_path / "two", "two")
    cache = tmp_path / "cache"

    venv_one = ensure(one, package_venv, cache)
    venv_two = ensure(two, package_venv, cache)
    assert venv_one != venv_two
    assert which_clone(venv_one) == ("one", str(one / "AmyloidKDLib" / "__init__.py"), "clone one")
    assert which_clone(venv_two) == ("two", str(two / "AmyloidKDLib" / "__init__.py"), "clone two")
    # the package venv is shared and left as it was (no clone installed into it)
    assert sorted(p.name for p in (package_venv / "lib").rglob("*")) == site_before
    # the per-clone venvs are tiny and reach the shared packages
    assert sum(p.stat().st_size for p in venv_one.rglob("*") if p.is_file()) < 2_000_000
    subprocess.run([str(venv_one / "bin" / "python"), "-c", "import numpy, nibabel"], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=venv_one)

    # a second call reuses both (same paths, nothing rebuilt) and still runs the right clone
    assert ensure(one, package_venv, cache) == venv_one
    assert which_clone(venv_one)[0] == "one"
