"""The synthetic sample case the module adds to Slicer's Sample Data module.

One phantom subject made by the library's generator from the MNI152 template (a 2 mm T1w
and its amyloid PET SUVR map), shipped in ``Resources/SampleData/`` so that a new user can
try the module without downloading anything. It is *synthetic*: it says nothing about any
real person. Rebuild it with ``PYTHONPATH=$PWD python Testing/slicer/build_sample_data.py``
(which prints the new checksums to paste below).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

SAMPLE_CATEGORY = "AmyloidKD"
SAMPLE_NAME = "AmyloidKD synthetic phantom (T1w + amyloid PET)"
THUMBNAIL = "AmyloidKDSyntheticPhantom.png"


@dataclass(frozen=True)
class SampleFile:
    """One file of the sample case, its node name and its SHA-256."""

    file_name: str
    node_name: str
    sha256: str


#: The phantom generator's subject (seed and index in build_sample_data.py), T1w then PET.
SAMPLE_FILES = (
    SampleFile("AmyloidKD-synthetic-T1w.nii.gz", "AmyloidKD synthetic T1w",
               "ebd1f2a1e54ca6fdb7f6f3063e4df2a611a719c2648a5c155062c3325af0bf9d"),
    SampleFile("AmyloidKD-synthetic-PET-SUVR.nii.gz", "AmyloidKD synthetic PET SUVR",
               "71de1427efe1f8cf6f35df9a8e227e5ef9ab58d4674d6b30155c3221edf834ca"),
)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_data_arguments(sample_dir: str | os.PathLike) -> dict:
    """Keyword arguments of ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` (Slicer 5.4+).

    The files are given as ``file://`` URIs into the installed extension, so Sample Data
    "downloads" them from disk into its cache (checking the checksums) and loads them.
    """
    folder = Path(sample_dir).resolve()
    arguments = {
        "category": SAMPLE_CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": [(folder / f.file_name).as_uri() for f in SAMPLE_FILES],
        "fileNames": [f.file_name for f in SAMPLE_FILES],
        "nodeNames": [f.node_name for f in SAMPLE_FILES],
        "checksums": [f"SHA256:{f.sha256}" for f in SAMPLE_FILES],
        "loadFiles": [True for _ in SAMPLE_FILES],
    }
    if (folder / THUMBNAIL).is_file():
        arguments["thumbnailFileName"] = str(folder / THUMBNAIL)
    return arguments
