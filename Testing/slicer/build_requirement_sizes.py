"""Measure the installed size of every package the Slicer module may install, with its dependencies.

Writes ``AmyloidKD/Resources/requirement_sizes.json``: for each distribution reachable from
``Resources/requirements.txt`` and the skull-stripping backends' packages (torch and torchvision
excluded: the PyTorch extension brings them), its installed size in MiB (the files its RECORD
lists) and the distributions it requires. The module's install prompt sums these over what is
missing. Run in the project's venv (Linux x86_64; other platforms' wheels differ somewhat):

    PYTHONPATH=$PWD/AmyloidKD python Testing/slicer/build_requirement_sizes.py
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib.dependencies import (  # noqa: E402
    PROVIDED_ELSEWHERE,
    SIZES_FILE,
    SKULL_STRIP_REQUIREMENTS,
    canonical_name,
    read_requirements,
    requirement_name,
)


def installed_mib(dist: metadata.Distribution) -> float:
    total = 0
    for file in dist.files or ():
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total / 2**20


def plain_requires(dist: metadata.Distribution) -> list[str]:
    """Required distributions without extras-only or platform-excluded ones (as on Linux, this Python)."""
    names = []
    for line in dist.requires or ():
        requirement, _, marker = line.partition(";")
        if marker and "extra" in marker:
            continue
        if marker and not _marker_holds(marker):
            continue
        names.append(requirement_name(re.sub(r"\[.*?\]", "", requirement)))
    return names


def _marker_holds(marker: str) -> bool:
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    return Marker(marker).evaluate()


def main() -> None:
    roots = [requirement_name(r) for r in read_requirements(REPO / "AmyloidKD" / "Resources" / "requirements.txt")]
    roots += [requirement_name(r) for reqs in SKULL_STRIP_REQUIREMENTS.values() for r in reqs]
    table, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        if name in table or name in PROVIDED_ELSEWHERE:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            print(f"not installed here, left out: {name}", file=sys.stderr)
            continue
        requires = [r for r in plain_requires(dist) if r not in PROVIDED_ELSEWHERE]
        table[canonical_name(name)] = {"mib": round(installed_mib(dist), 2), "version": dist.version,
                                       "requires": sorted(set(requires))}
        todo.extend(requires)
    SIZES_FILE.write_text(json.dumps({"measured_with": f"Python {sys.version.split()[0]}, {sys.platform}",
                                      "distributions": dict(sorted(table.items()))}, indent=1) + "\n",
                          encoding="utf-8")
    print(f"{len(table)} distributions, {sum(e['mib'] for e in table.values()):.0f} MiB in all -> {SIZES_FILE}")


if __name__ == "__main__":
    main()
