"""Slicer's own slice views of an AmyloidKD result, rendered offscreen to one PNG.

Uses Slicer's core from PyPI (``slicer-core`` + ``trame-slicer``, the ``test`` extra): the
views are real Slicer slice views (slice logic, layer blending, Slicer's default
radiological orientation), laid out by the module's own scene layer
(``AmyloidKDModuleLib.scene.show_case``), and rendered through EGL, so no display is needed.

Make the picture used in the README, docs/slicer.md and as the extension's screenshot (the
module's synthetic sample case with the shipped synthetic demo checkpoint, or a tiny untrained
one when that is absent), and the Sample Data thumbnail::

    PYTHONPATH=$PWD python Testing/slicer/slicer_views.py --out docs/slicer_views.png \
        --thumbnail AmyloidKD/Resources/SampleData/AmyloidKDSyntheticPhantom.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # before VTK makes a window

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib import runner, scene  # noqa: E402

#: (view name, orientation) in the order they are put side by side.
VIEWS = (("Red", "Axial"), ("Green", "Coronal"), ("Yellow", "Sagittal"))
DEMO_CHECKPOINT = REPO / "AmyloidKD" / "Resources" / "Models" / "synthetic-demo"
SAMPLE_T1 = REPO / "AmyloidKD" / "Resources" / "SampleData" / "AmyloidKD-synthetic-T1w.nii.gz"


def create_views(app, size: int = 320) -> dict:
    """Axial, coronal and sagittal offscreen slice views (this creates their slice and composite nodes)."""
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = {}
    for name, orientation in VIEWS:
        view = app.view_manager.create_view(ViewLayoutDefinition.slice_view(orientation, label=name))
        view.render_window().SetSize(size, size)
        views[name] = view
    return views


def grab(view, point_ras=None) -> np.ndarray:
    """Render one view (centred on its background volume, or through ``point_ras``) to an RGB array."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    view.fit_view_to_content()
    if point_ras is not None:
        view._view_node.JumpSliceByOffsetting(*point_ras)  # slice through the given point, no panning
    view.render_window().Render()
    window_to_image = vtk.vtkWindowToImageFilter()
    window_to_image.SetInput(view.render_window())
    window_to_image.SetInputBufferTypeToRGB()
    window_to_image.ReadFrontBufferOff()
    window_to_image.Update()
    image = window_to_image.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, 3)
    return pixels[::-1].copy()  # VTK's first row is the bottom one


def render_case(app, overlay: scene.CaseOverlay, size: int = 320, point_ras=None) -> dict:
    """Lay out the case with the module's scene layer, then grab each view: name -> RGB array."""
    views = create_views(app, size)
    scene.show_case(app.scene, overlay)
    return {name: grab(view, point_ras) for name, view in views.items()}


def hot_overlay_mask(pixels: np.ndarray) -> np.ndarray:
    """Pixels where the Iron saliency overlay shows (red/yellow over a grey MRI; outlines are not red)."""
    rgb = pixels.astype(int)
    return (rgb[..., 0] - rgb[..., 2]) > 60


def write_figure(images: dict, path: str | os.PathLike, title: str) -> Path:
    """The three views side by side with their names and the screen sides' anatomical labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from AmyloidKDLib.atomic import atomic_path

    sides = {"Red": ("R", "L"), "Green": ("R", "L"), "Yellow": ("P", "A")}
    figure, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.6), facecolor="black")
    for axis, (name, orientation) in zip(axes, VIEWS):
        axis.imshow(images[name])
        axis.set_axis_off()
        axis.set_title(f"{orientation} ({name})", color="white", fontsize=10)
        left, right = sides[name]
        for x, text in ((0.03, left), (0.97, right)):
            axis.text(x, 0.5, text, color="yellow", fontsize=11, ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(title, color="white", fontsize=9)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=100, facecolor="black", format="png")
    plt.close(figure)
    return target


def brain_centre_ras(mri_path: Path) -> tuple[float, float, float]:
    """RAS of the brain's centre: the centroid of the voxels above 10 % of the robust maximum (the
    sample case is brain-only), so the three views cross in the middle of the brain."""
    import nibabel as nib

    image = nib.load(str(mri_path))
    values = np.asanyarray(image.dataobj).astype(np.float32)
    brain = np.argwhere(values > 0.1 * np.percentile(values[values > 0], 99))
    return tuple(float(v) for v in (image.affine @ np.r_[brain.mean(axis=0), 1.0])[:3])


def _tiny_checkpoint(folder: Path) -> Path:
    from AmyloidKDLib.checkpoint import save_checkpoint
    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.slicing import SliceConfig

    config = ModelConfig.preset("cpu", "light_student", n_slices=4, image_size=64)
    return Path(save_checkpoint(folder, build_model(config, load_pretrained=False), config,
                                prep_config=PrepConfig.preset("fast").to_dict(),
                                slice_config=SliceConfig(n_slices=4, image_size=64).to_dict(), threshold=0.5,
                                provenance={"weights": "untrained"}))


def write_thumbnail(pixels: np.ndarray, path: str | os.PathLike, size: int = 128) -> Path:
    """A square PNG thumbnail of one view (Sample Data shows it next to the case's name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from AmyloidKDLib.atomic import atomic_path

    step = max(1, pixels.shape[0] // size)
    target = Path(path)
    with atomic_path(target) as temporary:
        plt.imsave(temporary, pixels[::step, ::step][:size, :size], format="png")
    return target


def main(argv: list[str] | None = None) -> int:
    """Sample case -> prediction -> Slicer's three slice views -> one PNG (and a thumbnail)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "slicer_views.png")
    parser.add_argument("--mri", type=Path, default=SAMPLE_T1, help="T1w NIfTI (default: the synthetic sample case)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="student checkpoint (default: the shipped synthetic demo, else a tiny untrained one)")
    parser.add_argument("--thumbnail", type=Path, default=None, help="also write the axial view as a 128 px PNG")
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args(argv)

    from trame_slicer.core import SlicerApp

    with tempfile.TemporaryDirectory(prefix="amyloidkd-views-") as work:
        work = Path(work)
        if args.checkpoint is not None:
            checkpoint, model = args.checkpoint, args.checkpoint.name
        elif (DEMO_CHECKPOINT / "checkpoint.json").is_file():
            checkpoint, model = DEMO_CHECKPOINT, "synthetic demo model"
        else:
            checkpoint, model = _tiny_checkpoint(work / "checkpoint"), "untrained tiny model"
        app = SlicerApp()
        mri = app.volumes_logic.AddArchetypeVolume(str(args.mri), "AmyloidKD synthetic T1w", 0)
        job = scene.start_prediction(app.scene, mri, sys.executable,
                                     runner.library_environment(os.environ, runner.library_parent_directory()),
                                     checkpoint, device="cpu", skull_strip="none", temporary_root=work / "tmp")
        if job.process.wait(timeout=600) != 0:
            print(job.process.tail(), file=sys.stderr)
            return 1
        centre = brain_centre_ras(args.mri)  # the views cross at the brain's centre
        result = scene.finish_prediction(app.scene, app.volumes_logic, job)
        images = render_case(app, scene.case_overlay(mri), args.size, point_ras=centre)
        title = (f"AmyloidKD in Slicer's slice views: synthetic phantom, {model} "
                 f"(synthetic data only), p = {result.probability:.2f}")
        print(write_figure(images, args.out, title))
        if args.thumbnail is not None:
            print(write_thumbnail(images["Red"], args.thumbnail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
