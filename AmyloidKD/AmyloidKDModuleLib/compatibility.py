"""Which Slicer (and so which Python) the module supports, checked when the module loads.

The library's prediction path needs Python 3.10 or newer: its configs evaluate ``X | None``
type hints at run time, and the pinned stack (torch, numpy, scipy, nilearn) needs 3.10+.
Slicer 5.4-5.8 ship Python 3.9.10; Slicer 5.10 is the first release with a newer one (3.12).
So the module claims Slicer 5.10 or newer. This file, ``AmyloidKD.py`` and the rest of
``AmyloidKDModuleLib`` stay importable on Python 3.9, so that an older Slicer shows this
message instead of a traceback (Testing/slicer/test_slicer_python.py checks both with vermin).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

#: The oldest Slicer release the module supports (README, docs/slicer.md and CMakeLists.txt agree).
MINIMUM_SLICER_VERSION = (5, 10)
#: The Python that Slicer release ships.
MINIMUM_SLICER_PYTHON = (3, 12)
#: The oldest Python the library's prediction path runs on (pyproject.toml's requires-python).
LIBRARY_MINIMUM_PYTHON = (3, 10)
#: The Python the library is tested on (this project's build machine).
TESTED_PYTHON = (3, 11)


def _dotted(version: Sequence[int]) -> str:
    return ".".join(str(part) for part in version)


def python_problem(version_info: Sequence[int] = sys.version_info) -> Optional[str]:
    """One actionable sentence when this Python cannot run the prediction, else None."""
    if tuple(version_info[:2]) >= LIBRARY_MINIMUM_PYTHON:
        return None
    return (f"AmyloidKD needs 3D Slicer {_dotted(MINIMUM_SLICER_VERSION)} or newer (Python "
            f"{_dotted(LIBRARY_MINIMUM_PYTHON)}+); this Slicer runs Python {_dotted(version_info[:3])}. "
            f"Install Slicer {_dotted(MINIMUM_SLICER_VERSION)} or newer from download.slicer.org, then "
            "install AmyloidKD there.")
