"""The QC picture of a PET quantification: the VOIs over the PET and the MRI in three views.

A person checks at a glance that the cortical target (red) lies on cortex and the reference
(blue) on the cerebellum, in both images. Drawn with matplotlib's Agg canvas (no display).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from AmyloidKDLib.atomic import atomic_path
from AmyloidKDLib.report_png import DISCLAIMER, _display_window

VOI_COLOURS = {"ctx": "#e4312b", "reference": "#2b6fe4"}


def _view_voxels(result) -> tuple[int, int, int]:
    # axial through the CTX's centre; coronal and sagittal through the reference's centre,
    # which also cut the parietal and medial cortex
    ctx = np.argwhere(result.ctx.data > 0.5)
    reference = np.argwhere(result.reference.data > 0.5)
    if not len(ctx) or not len(reference):
        return tuple(s // 2 for s in result.pet_mni.shape)  # type: ignore[return-value]
    mid_x = int(round(float(np.median(reference[:, 0]))))
    return mid_x + 3, int(round(float(np.median(reference[:, 1])))), int(round(float(np.median(ctx[:, 2]))))


def _planes(volume: np.ndarray, voxel: tuple[int, int, int]) -> list[np.ndarray]:
    i, j, k = voxel
    return [volume[:, :, k].T, volume[:, j, :].T, volume[i, :, :].T]


def render_centiloid_qc(result, path: str | os.PathLike, *, case: str) -> Path:
    """Write the QC PNG of a :class:`~AmyloidKDLib.centiloid.CentiloidResult` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    voxel = _view_voxels(result)
    images = [("PET", result.pet_mni.data, "gray_r")]
    if result.mri_mni is not None:
        images.append(("MRI", result.mri_mni.data, "gray"))
    figure = Figure(figsize=(9.0, 3.1 * len(images) + 0.8), dpi=100)
    FigureCanvasAgg(figure)
    approx = " (approximate VOIs)" if result.approximate_vois else ""
    figure.suptitle(f"{case}: {result.tracer}  SUVR {result.suvr:.3f}  ->  {result.centiloid:.1f} "
                    f"Centiloid{approx}\nred: cortical target (CTX), blue: reference "
                    f"({result.reference_region}); VOI set {result.voi_set}", fontsize=9)
    masks = {key: _planes(getattr(result, key).data, voxel) for key in VOI_COLOURS}
    for row, (label, data, cmap) in enumerate(images):
        lo, hi = _display_window(data)
        for column, plane in enumerate(_planes(data, voxel)):
            axes = figure.add_subplot(len(images), 3, row * 3 + column + 1)
            axes.imshow(plane, cmap=cmap, vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
            for key, colour in VOI_COLOURS.items():
                mask = masks[key][column]
                if mask.any():
                    axes.contour(mask, levels=[0.5], colors=colour, linewidths=0.8, origin="lower")
            axes.set_axis_off()
            axes.set_title(f"{label} {('axial', 'coronal', 'sagittal')[column]}", fontsize=8)
    figure.text(0.5, 0.005, DISCLAIMER, ha="center", fontsize=7)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


__all__ = ["render_centiloid_qc"]
