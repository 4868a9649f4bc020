"""Rebuild the module's *synthetic* sample case (``AmyloidKD/Resources/SampleData/``).

    PYTHONPATH=$PWD python Testing/slicer/build_sample_data.py

Generates a small phantom cohort with a fixed seed (2 mm T1w, 4 mm PET, from the MNI152
template), keeps the T1w of its subject with the highest Centiloid (amyloid-positive) and PET SUVR map under the names
``AmyloidKDModuleLib.sampledata`` expects, and prints their SHA-256 checksums (paste them into
``SAMPLE_FILES`` there; the tests check that they match).
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib.sampledata import SAMPLE_FILES, sha256_of  # noqa: E402

TARGET = REPO / "AmyloidKD" / "Resources" / "SampleData"
SEED = 11


def main() -> int:
    """Write the sample T1w and PET, print their checksums."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    with tempfile.TemporaryDirectory(prefix="amyloidkd-sample-") as work:
        config = PhantomConfig(mri_spacing_mm=2.0, pet_spacing_mm=4.0, contrasts=("T1w",),
                               longitudinal_share=0.0, montage_subjects=0)
        manifest = Path(generate_cohort(Path(work) / "cohort", 6, SEED, "manifest", config=config,
                                        overwrite=True, progress=False))
        rows = list(csv.DictReader(manifest.open(newline="", encoding="utf-8")))
        row = max(rows, key=lambda r: float(r["centiloid"]))  # the clearest amyloid-positive subject
        TARGET.mkdir(parents=True, exist_ok=True)
        for sample, column in zip(SAMPLE_FILES, ("t1w", "pet_path")):
            staging = TARGET / (sample.file_name + ".part")
            shutil.copyfile(manifest.parent / row[column], staging)
            staging.replace(TARGET / sample.file_name)
            print(f"{sample.file_name}  sha256 {sha256_of(TARGET / sample.file_name)}")
        print(f"subject {row['subject_id']}: centiloid {row['centiloid']}, label {row['label']} (synthetic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
