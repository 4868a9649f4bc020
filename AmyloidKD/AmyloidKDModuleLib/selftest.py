"""The inputs of the module's self-test: one synthetic MRI and a tiny untrained checkpoint.

The MRI comes from the library's phantom (the real MNI152 template, deformed and posed, at
2 mm to keep it quick);
the checkpoint is the CPU preset's student with untrained weights and the ``fast``
preparation, so the self-test checks the plumbing (files, geometry, progress, nodes) in
seconds, not the model's accuracy. Needs the library's dependencies (torch, nibabel, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from AmyloidKDLib.layouts import read_csv_table, read_image_manifest


@dataclass(frozen=True)
class SelfTestCase:
    """A synthetic T1w file, its true label, and a checkpoint folder to run it with."""

    mri_path: Path
    label: int
    checkpoint: Path


def prepare_selftest_case(work_dir: str | os.PathLike, seed: int = 0) -> SelfTestCase:
    """Write one phantom subject and an untrained CPU-preset student checkpoint into ``work_dir``."""
    from AmyloidKDLib.checkpoint import save_checkpoint
    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.slicing import SliceConfig

    work = Path(work_dir)
    phantom = PhantomConfig(mri_spacing_mm=2.0, pet_spacing_mm=4.0, contrasts=("T1w",),
                            longitudinal_share=0.0, montage_subjects=0)  # one small T1w, fast
    manifest = generate_cohort(work / "cohort", n_subjects=1, seed=seed, layout="manifest",
                               config=phantom, overwrite=True, progress=False)
    mri_path = read_image_manifest(manifest)[0].mri  # the library's manifest reading
    row = read_csv_table(manifest, "manifest").rows[0]

    model_config = ModelConfig.preset("cpu", "student", weights="none")
    model = build_model(model_config, load_pretrained=False)
    slice_config = SliceConfig(n_slices=model_config.n_slices, image_size=model_config.image_size)
    checkpoint = work / "checkpoint"
    save_checkpoint(checkpoint, model, model_config,
                    prep_config=PrepConfig.preset("fast").to_dict(), slice_config=slice_config.to_dict(),
                    threshold=0.5, metrics={},
                    provenance={"purpose": "AmyloidKD Slicer self-test", "weights": "untrained"})
    return SelfTestCase(mri_path=mri_path, label=int(row["label"]), checkpoint=checkpoint)
