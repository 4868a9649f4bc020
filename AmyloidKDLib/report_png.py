"""An overview picture per case: the MRI with the saliency overlay on three planes.

Meant for a person skimming a batch: probability, label and threshold in the title, the
axial, coronal and sagittal planes through the saliency peak, top regions outlined. Drawn
with matplotlib's Agg canvas directly (no pyplot state, works without a display).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from AmyloidKDLib.atomic import atomic_path
from AmyloidKDLib.volume import Volume

#: Saliency below this is left transparent so the anatomy stays readable.
OVERLAY_FLOOR = 0.1
DISCLAIMER = "Research software - not for clinical use."


def _display_window(mri: np.ndarray) -> tuple[float, float]:
    values = mri[mri > 0] if np.any(mri > 0) else mri.ravel()
    lo, hi = np.percentile(values, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _focus_voxel(mri: Volume, saliency: Volume | None) -> tuple[int, int, int]:
    if saliency is not None and float(saliency.data.max()) > 0.0:
        return tuple(int(i) for i in np.unravel_index(np.argmax(saliency.data), saliency.shape))  # type: ignore[return-value]
    return tuple(s // 2 for s in mri.shape)  # type: ignore[return-value]


def _planes(volume: np.ndarray, focus: tuple[int, int, int]) -> list[np.ndarray]:
    i, j, k = focus
    # RAS+ voxel order: each plane shown with rows = second axis (flipped by origin="lower").
    return [volume[:, :, k].T, volume[:, j, :].T, volume[i, :, :].T]


def render_overview(mri: Volume, saliency: Volume | None, top_regions: Volume | None,
                    path: str | os.PathLike, *, case: str, probability: float, label: int,
                    threshold: float, explains: str = "predicted class") -> Path:
    """Write the overview PNG for one case (atomically) and return its path.

    Args:
        mri: the user's MRI (native grid, RAS+).
        saliency: [0, 1] saliency on the same grid, or None to show the MRI only.
        top_regions: uint8 label map on the same grid (outlined), or None.
        case: name shown in the title.
        probability, label, threshold: the prediction.
        explains: what the saliency is evidence for, shown under the title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    focus = _focus_voxel(mri, saliency)
    lo, hi = _display_window(mri.data)
    sx, sy, sz = mri.spacing
    extents = [(0, mri.shape[0] * sx, 0, mri.shape[1] * sy),
               (0, mri.shape[0] * sx, 0, mri.shape[2] * sz),
               (0, mri.shape[1] * sy, 0, mri.shape[2] * sz)]
    titles = [f"axial k={focus[2]}", f"coronal j={focus[1]}", f"sagittal i={focus[0]}"]
    side_labels = [("L", "R"), ("L", "R"), ("P", "A")]

    figure = Figure(figsize=(12, 4.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    mri_planes = _planes(mri.data, focus)
    sal_planes = _planes(saliency.data, focus) if saliency is not None else [None] * 3
    top_planes = _planes(top_regions.data, focus) if top_regions is not None else [None] * 3
    overlay = None
    for ax, image, sal, top, extent, title, sides in zip(axes, mri_planes, sal_planes, top_planes,
                                                         extents, titles, side_labels):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent,
                  interpolation="nearest")
        if sal is not None:
            overlay = ax.imshow(np.ma.masked_less(sal, OVERLAY_FLOOR), cmap="hot", vmin=0.0,
                                vmax=1.0, alpha=0.55, origin="lower", extent=extent,
                                interpolation="nearest")
        if top is not None and np.any(top > 0):
            ax.contour(top > 0, levels=[0.5], colors="cyan", linewidths=0.8, origin="lower",
                       extent=extent)
        ax.set_title(title, fontsize=9)
        ax.text(0.02, 0.5, sides[0], transform=ax.transAxes, color="yellow", fontsize=10)
        ax.text(0.95, 0.5, sides[1], transform=ax.transAxes, color="yellow", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if overlay is not None:
        figure.colorbar(overlay, ax=list(axes), fraction=0.02, pad=0.01, label="saliency")
    verdict = "amyloid positive" if label == 1 else "amyloid negative"
    figure.suptitle(f"{case}:  P(amyloid+) = {probability:.3f}  ->  {verdict}  "
                    f"(threshold {threshold:.3f})", fontsize=12)
    figure.text(0.5, 0.02, f"Saliency: Grad-CAM evidence for the {explains}; cyan outline: top "
                f"regions.  {DISCLAIMER}", ha="center", fontsize=8)

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path
