"""The module's scene layer (``AmyloidKDModuleLib.scene``) on Slicer's real MRML.

Slicer's core comes from PyPI (``slicer-core``, ``trame-slicer``; the ``test`` extra): the
scene, Slicer's NIfTI reader and writer, the volumes logic, colour nodes and ``.mrb``
bundles are the real ones. A 2 mm phantom T1 goes through the same path as the Apply
button - export by Slicer's storage node, ``python -m AmyloidKDLib predict`` with a tiny
untrained light student, outputs loaded as nodes - in three geometries: an RAS file, an
LPS oblique file, and an RAS file under a parent linear transform.

Without these packages the tests skip locally and fail under CI (``CI`` set).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib import runner, scene  # noqa: E402
from AmyloidKDModuleLib.errors import ModuleError  # noqa: E402

# --- Slicer's core ------------------------------------------------------------------------


def _require(module: str, attribute: str | None = None):
    """Import ``module`` (and check it has ``attribute``); skip, or fail under CI, when it cannot."""
    try:
        imported = importlib.import_module(module)
        if attribute is not None and not hasattr(imported, attribute):  # e.g. Testing/slicer as a namespace
            raise ImportError(f"{module} has no {attribute}")
        return imported
    except ImportError as exc:
        message = (f"{module} is not installed ({exc}); install the test extra: "
                   "pip install -e '.[test]' (slicer-core, trame-slicer)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def app():
    """A fresh Slicer application core: scene, volumes logic, colour logic (default colours)."""
    _require("slicer", "vtkMRMLScene")  # Slicer's core from PyPI (slicer-core)
    core = _require("trame_slicer.core")
    return core.SlicerApp()


def _matrix_to_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def node_to_world(node) -> np.ndarray:
    """4x4 voxel (i, j, k) -> world RAS of a volume node, parent transforms included."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    to_world = np.eye(4)
    parent = node.GetParentTransformNode()
    if parent is not None:
        matrix = vtk.vtkMatrix4x4()
        assert parent.GetMatrixTransformToWorld(matrix), "test transforms are linear"
        to_world = _matrix_to_numpy(matrix)
    return to_world @ _matrix_to_numpy(ijk_to_ras)


def node_array(node) -> np.ndarray:
    """The node's voxels as an (i, j, k) array."""
    from vtk.util.numpy_support import vtk_to_numpy

    image = node.GetImageData()
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)


def sample_file_at_world(path: Path, world_points: np.ndarray, file_to_world: np.ndarray) -> np.ndarray:
    """Nearest-voxel values of a NIfTI file at world points (``file_to_world``: its parent transform)."""
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    ijk = np.linalg.inv(file_to_world @ image.affine) @ np.c_[world_points, np.ones(len(world_points))].T
    ijk = np.rint(ijk[:3]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(data.shape)[:, None]), axis=0)
    values = np.full(len(world_points), np.nan)
    values[inside] = data[tuple(ijk[:, inside])]
    return values


def world_of_voxels(node) -> tuple[np.ndarray, np.ndarray]:
    """(values, world points) of every voxel of a node."""
    values = node_array(node)
    ijk = np.indices(values.shape).reshape(3, -1)
    world = (node_to_world(node) @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[:3].T
    return values.reshape(-1), world


# --- the phantom case in three geometries -----------------------------------------------------


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Two 2 mm phantom T1s (as the generator stores them), its PET, and a tiny untrained light-student checkpoint."""
    import csv

    from AmyloidKDLib.checkpoint import save_checkpoint
    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.slicing import SliceConfig

    root = tmp_path_factory.mktemp("phantom")
    config = PhantomConfig(mri_spacing_mm=2.0, pet_spacing_mm=4.0, contrasts=("T1w",),
                           longitudinal_share=0.0, montage_subjects=0)
    manifest = generate_cohort(root / "cohort", n_subjects=2, seed=3, layout="manifest", config=config,
                               overwrite=True, progress=False)
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    import torch

    torch.manual_seed(0)  # the untrained weights, hence the saliency, are the same in every run
    model_config = ModelConfig.preset("cpu", "light_student", n_slices=4, image_size=64)
    model = build_model(model_config, load_pretrained=False)
    checkpoint = save_checkpoint(
        root / "checkpoint", model, model_config, prep_config=PrepConfig.preset("fast").to_dict(),
        slice_config=SliceConfig(n_slices=4, image_size=64).to_dict(), threshold=0.5,
        provenance={"purpose": "AmyloidKD scene tests", "weights": "untrained"})
    return {"t1": [Path(manifest).parent / r["t1w"] for r in rows],
            "pet": [Path(manifest).parent / r["pet_path"] for r in rows],
            "checkpoint": Path(checkpoint), "root": root}


def write_ras(source: Path, target: Path) -> Path:
    """The same voxels stored RAS (the generator stores some subjects in other orientations)."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(source)))
    nib.save(image, str(target))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    return target


def write_lps_oblique(source: Path, target: Path, degrees: float = 15.0) -> Path:
    """The same voxels stored LPS (i runs right->left, j anterior->posterior), tilted about S."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(source)))
    data = np.asanyarray(image.dataobj)[::-1, ::-1, :]
    flip = np.eye(4)
    flip[0, 0], flip[1, 1] = -1, -1
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    angle = math.radians(degrees)
    tilt = np.eye(4)
    tilt[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    affine = tilt @ image.affine @ flip
    nib.save(nib.Nifti1Image(data, affine), str(target))
    assert nib.aff2axcodes(affine)[:2] == ("L", "P")
    return target


def load_mri(app, phantom, geometry: str, index: int = 0):
    """The phantom T1 read by Slicer's reader, in the given geometry."""
    path = phantom["t1"][index]
    if geometry == "lps-oblique":
        path = write_lps_oblique(path, phantom["root"] / f"lps_oblique_{index}.nii.gz")
    else:
        path = write_ras(path, phantom["root"] / f"ras_{index}.nii.gz")
    node = app.volumes_logic.AddArchetypeVolume(str(path), f"T1 {geometry} {index}", 0)
    assert node is not None
    if geometry == "transformed":
        import vtk

        transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        angle = math.radians(10.0)
        for r, row in enumerate([[math.cos(angle), -math.sin(angle), 0, 12.0],
                                 [math.sin(angle), math.cos(angle), 0, -7.0], [0, 0, 1, 20.0]]):
            for c, value in enumerate(row):
                matrix.SetElement(r, c, value)
        transform.SetMatrixTransformToParent(matrix)
        node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def predict_env() -> dict:
    return runner.library_environment(os.environ, runner.library_parent_directory())


def hemisphere_map(path: Path) -> float:
    """Overwrite a saliency file with 1 in its left half (RAS x < centre), 0 elsewhere; keep its grid.

    Returns the centre's x in the file's own RAS frame.
    """
    import nibabel as nib

    image = nib.load(str(path))
    ijk = np.indices(image.shape).reshape(3, -1)
    x = (image.affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[0]
    centre = float((x.min() + x.max()) / 2)
    hot = (x < centre - 8.0).reshape(image.shape).astype(np.float32)  # an 8 mm cold band at the midline
    nib.save(nib.Nifti1Image(hot, image.affine), str(path))
    return centre


@pytest.mark.parametrize("geometry", ["ras", "lps-oblique", "transformed"])
def test_prediction_outputs_line_up_with_their_files_in_world_space(app, phantom, geometry, tmp_path):
    """Export -> predict -> load; the loaded saliency is hot exactly where its file is, in world space.

    The saliency file is replaced by a map hot in the left hemisphere only (x < centre in
    the MRI's frame) before loading, so a left/right flip, a lost orientation or a missing
    parent transform moves the hot voxels to the wrong side and fails.
    """
    mri = load_mri(app, phantom, geometry)
    job = scene.start_prediction(app.scene, mri, sys.executable, predict_env(), phantom["checkpoint"],
                                 device="cpu", skull_strip="none", output_directory=tmp_path / "out",
                                 temporary_root=tmp_path / "tmp")
    assert job.process.wait(timeout=300) == 0, job.process.tail()
    (row,) = runner.read_results(job.request.out_dir)
    centre_local_x = hemisphere_map(row.outputs.saliency)
    result = scene.finish_prediction(app.scene, app.volumes_logic, job)

    assert not any((tmp_path / "tmp").iterdir()), "the exported MRI copy was left behind"
    assert 0.0 <= result.probability <= 1.0 and result.label == int(result.probability >= result.threshold)
    saliency, top_regions = result.saliency_node, result.top_regions_node
    assert saliency.GetParentTransformNode() is mri.GetParentTransformNode()
    assert top_regions.IsA("vtkMRMLLabelMapVolumeNode")
    file_to_world = node_to_world(mri) @ np.linalg.inv(_local_ijk_to_ras(mri))  # the parent transform

    for node, path in ((saliency, row.outputs.saliency), (top_regions, row.outputs.top_regions)):
        values, world = world_of_voxels(node)
        expected = sample_file_at_world(path, world, file_to_world)
        assert not np.isnan(expected).any(), f"{node.GetName()} reaches outside its file's grid"
        np.testing.assert_array_equal(values, expected, err_msg=f"{node.GetName()} differs from {path.name}")

    values, world = world_of_voxels(saliency)
    hot = values > 0.5
    assert 0.3 < hot.mean() < 0.6
    subject_x = (np.linalg.inv(file_to_world) @ np.c_[world, np.ones(len(world))].T)[0]  # before the transform
    assert (subject_x[hot] < centre_local_x).all(), "hot voxels fall in the right hemisphere: a left/right flip"
    assert (subject_x[~hot] > centre_local_x - 10.0).all()
    if geometry != "transformed":
        assert (world[hot, 0] < centre_local_x).all()  # no parent transform: world x is the subject's x
    # the MRI itself: the saliency covers it exactly
    mri_values, mri_world = world_of_voxels(mri)
    np.testing.assert_allclose(mri_world.min(axis=0), world.min(axis=0), atol=1e-3)
    np.testing.assert_allclose(mri_world.max(axis=0), world.max(axis=0), atol=1e-3)


def _local_ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _matrix_to_numpy(matrix)


# --- outputs of one real prediction, reused by the display tests ----------------------------


@pytest.fixture(scope="module")
def outputs(phantom, tmp_path_factory):
    """One real prediction's files (saliency, top regions) for the RAS phantom."""
    out = tmp_path_factory.mktemp("predict")
    process = runner.BackgroundProcess.start(
        runner.build_predict_command(sys.executable, runner.PredictRequest(
            phantom["t1"][0], phantom["checkpoint"], out, device="cpu", skull_strip="none")),
        env=predict_env(), cwd=out)
    assert process.wait(timeout=300) == 0, process.tail()
    (row,) = runner.read_results(out)
    return row


def test_top_regions_colour_table_names_the_regions(app, phantom, outputs):
    import nibabel as nib

    mri = load_mri(app, phantom, "ras")
    saliency, top_regions = scene.load_outputs(app.scene, app.volumes_logic, mri, outputs.outputs.saliency,
                                               outputs.outputs.top_regions, {"probability": outputs.probability})
    color = top_regions.GetDisplayNode().GetColorNode()
    assert color.GetName() == scene.TOP_REGIONS_COLOR_TABLE_NAME
    labels = sorted(set(np.unique(node_array(top_regions)).tolist()) - {0})  # what the real output holds
    assert labels == sorted(set(np.unique(np.asanyarray(nib.load(str(outputs.outputs.top_regions)).dataobj)).tolist()) - {0})
    assert color.GetColorName(1) == "AmyloidKD top region 1 (highest saliency)"
    for label in [*labels, 2, 3, 9, 255]:  # whatever the untrained model found, and more ranks
        assert color.GetColorName(label).startswith(f"AmyloidKD top region {label}")
    rgba = [0.0] * 4
    color.GetColor(0, rgba)
    assert rgba[3] == 0.0  # background transparent
    display = saliency.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeIron"
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    assert display.GetLowerThreshold() == pytest.approx(0.2) and display.GetApplyThreshold()
    assert saliency.GetAttribute("AmyloidKD.probability") == str(outputs.probability)
    # a second case reuses the same table instead of adding one per result
    scene.load_outputs(app.scene, app.volumes_logic, mri, outputs.outputs.saliency, outputs.outputs.top_regions)
    assert sum(1 for n in scene.nodes_by_class(app.scene, "vtkMRMLColorTableNode")
               if n.GetAttribute(scene.ATTRIBUTE_ROLE) == "colorTable") == 1


def _add_views(app_scene, names=("Red", "Green", "Yellow")) -> dict:
    """Slice nodes and composite nodes as Slicer's layout creates them."""
    views = {}
    for name in names:
        slice_node = app_scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(name)
        composite = app_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        views[name] = (composite, slice_node)
    return views


def _layers(composite) -> tuple:
    return (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetLabelVolumeID())


def test_selecting_a_second_mri_leaves_no_stale_overlay(app, phantom, outputs):
    views = _add_views(app.scene, ("Red", "Green", "Yellow", "Slice4"))
    first, second = load_mri(app, phantom, "ras", 0), load_mri(app, phantom, "ras", 1)
    other = app.volumes_logic.AddArchetypeVolume(str(phantom["pet"][1]), "unrelated PET", 0)
    saliency, top_regions = scene.load_outputs(app.scene, app.volumes_logic, first, outputs.outputs.saliency,
                                               outputs.outputs.top_regions)
    views["Slice4"][0].SetBackgroundVolumeID(other.GetID())  # the user shows something else there

    shown = scene.show_case(app.scene, scene.case_overlay(first))
    assert sorted(shown) == ["Green", "Red", "Yellow"]
    for name in shown:
        assert _layers(views[name][0]) == (first.GetID(), saliency.GetID(), top_regions.GetID())
        assert views[name][1].GetUseLabelOutline()
    assert _layers(views["Slice4"][0]) == (other.GetID(), None, None)

    assert scene.case_overlay(second) is None
    scene.show_case(app.scene, scene.case_overlay(second) or scene.CaseOverlay(second), previous=[first])
    for name in ("Red", "Green", "Yellow"):
        assert _layers(views[name][0]) == (second.GetID(), None, None), f"{name} keeps the old overlay"
    assert _layers(views["Slice4"][0]) == (other.GetID(), None, None)

    scene.show_case(app.scene, scene.case_overlay(first), previous=[second])  # back: its overlay returns
    assert _layers(views["Red"][0]) == (first.GetID(), saliency.GetID(), top_regions.GetID())
    changed = scene.set_overlay_opacity(app.scene, scene.case_overlay(first), 0.8)
    assert sorted(changed) == ["Green", "Red", "Yellow"]
    assert views["Slice4"][0].GetForegroundOpacity() != pytest.approx(0.8)
    assert scene.case_overlay(first).opacity == pytest.approx(0.8)


def test_batch_scene_saved_as_mrb_keeps_the_overlay_arrangement(app, phantom, outputs, tmp_path):
    """A scene saved without any slice view (as the headless batch does) and loaded back."""
    mri = load_mri(app, phantom, "ras")
    pet = app.volumes_logic.AddArchetypeVolume(str(phantom["pet"][0]), "PET", 0)
    saliency, top_regions = scene.load_outputs(app.scene, app.volumes_logic, mri, outputs.outputs.saliency,
                                               outputs.outputs.top_regions, {"probability": outputs.probability},
                                               temporary_files=True)
    scene.store_view_choice(mri, pet, pet_as_background=True, opacity=0.7)
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 0
    bundle = tmp_path / "case.mrb"
    assert app.scene.WriteToMRB(str(bundle)) and bundle.is_file()

    core = _require("trame_slicer.core")
    loaded = core.SlicerApp()
    assert loaded.scene.ReadFromMRB(str(bundle))
    (mri2,) = [n for n in scene.nodes_by_class(loaded.scene, "vtkMRMLScalarVolumeNode") if n.GetName() == mri.GetName()]
    overlay = scene.case_overlay(mri2)
    assert overlay is not None, "the MRI lost its link to its outputs"
    assert overlay.saliency.GetName() == saliency.GetName()
    assert overlay.top_regions.GetName() == top_regions.GetName()
    assert overlay.pet.GetName() == "PET" and overlay.pet_as_background and overlay.opacity == pytest.approx(0.7)
    np.testing.assert_array_equal(node_array(overlay.saliency), node_array(saliency))
    assert overlay.saliency.GetAttribute("AmyloidKD.probability") == str(outputs.probability)
    display = overlay.saliency.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeIron" and display.GetApplyThreshold()
    color = overlay.top_regions.GetDisplayNode().GetColorNode()
    assert color is not None and color.GetColorName(1) == "AmyloidKD top region 1 (highest saliency)"

    views = _add_views(loaded.scene)  # Slicer with a main window opens it
    scene.show_case(loaded.scene, overlay)
    for composite, _ in views.values():
        assert _layers(composite) == (overlay.pet.GetID(), overlay.saliency.GetID(), overlay.top_regions.GetID())
        assert composite.GetForegroundOpacity() == pytest.approx(0.7)


def test_no_temporary_copy_is_left_after_a_failure_or_a_cancel(app, phantom, tmp_path):
    mri = load_mri(app, phantom, "ras")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not weights")
    (broken / "checkpoint.json").write_text("{}")
    job = scene.start_prediction(app.scene, mri, sys.executable, predict_env(), broken, device="cpu",
                                 skull_strip="none", temporary_root=tmp_path / "tmp")
    assert job.request.input_path.is_file()
    assert job.process.wait(timeout=120) == 2
    with pytest.raises(ModuleError, match=r"stopped \(bad usage or input\): .*checkpoint"):
        scene.finish_prediction(app.scene, app.volumes_logic, job)
    assert not any((tmp_path / "tmp").iterdir())
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1  # nothing half-loaded

    job = scene.start_prediction(app.scene, mri, sys.executable, predict_env(), broken, device="cpu",
                                 skull_strip="none", temporary_root=tmp_path / "tmp")
    scene.cancel_prediction(job)
    assert not any((tmp_path / "tmp").iterdir())
    with pytest.raises(ModuleError, match="cancelled"):
        scene.finish_prediction(app.scene, app.volumes_logic, job)


def test_export_writes_the_nodes_own_geometry_through_slicers_writer(app, phantom, tmp_path):
    import nibabel as nib

    mri = load_mri(app, phantom, "lps-oblique")
    path = scene.export_volume(app.scene, mri, tmp_path / "out" / "mri.nii.gz")
    assert [p.name for p in path.parent.iterdir()] == ["mri.nii.gz"]
    image = nib.load(str(path))
    values, world = world_of_voxels(mri)
    np.testing.assert_array_equal(values, sample_file_at_world(path, world, np.eye(4)))
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 1  # only the MRI's own
    assert image.shape == node_array(mri).shape


# --- the panel's controller: every way a run ends leaves Apply usable ------------------------


def test_after_a_failure_or_a_cancel_apply_works_again_and_the_panel_says_why(app, phantom, tmp_path):
    from AmyloidKDModuleLib.panel import PredictionController

    mri = load_mri(app, phantom, "ras")
    controller = PredictionController(app.scene, app.volumes_logic)

    def starter(checkpoint):
        return lambda: scene.start_prediction(app.scene, mri, sys.executable, predict_env(), checkpoint,
                                              device="cpu", skull_strip="none", temporary_root=tmp_path / "tmp")

    outcome = controller.start(starter(tmp_path / "no-such-checkpoint"))  # fails before anything runs
    assert outcome is not None and not outcome.ok and not controller.running
    assert outcome.status.startswith("Failed to start: checkpoint") and "does not exist" in outcome.error

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not weights")
    (broken / "checkpoint.json").write_text("{}")
    assert controller.start(starter(broken)) is None and controller.running
    assert controller.start(starter(broken)).status.startswith("Failed: a prediction is already running")
    controller.job.process.wait(timeout=120)
    assert controller.finished
    outcome = controller.finish()
    assert not controller.running and not outcome.ok
    assert outcome.status.startswith("Failed: the prediction stopped (bad usage or input): "), outcome.status
    assert "is not an AmyloidKD checkpoint" in outcome.status  # the command's own one-line reason

    assert controller.start(starter(phantom["checkpoint"])) is None
    outcome = controller.cancel()
    assert outcome.status == "Cancelled" and not controller.running
    assert not any((tmp_path / "tmp").iterdir())

    assert controller.start(starter(phantom["checkpoint"])) is None  # Apply works again, to the end
    controller.job.process.wait(timeout=300)
    outcome = controller.finish()
    assert outcome.ok and outcome.status.startswith("Done in"), outcome.error
    assert scene.case_overlay(mri).saliency is outcome.result.saliency_node
    assert not any((tmp_path / "tmp").iterdir())


# --- Slicer's own slice views -----------------------------------------------------------------


def test_rendered_views_put_the_left_hemisphere_on_the_screen_right(app, phantom, tmp_path):
    """Slicer's default radiological convention: the patient's left is on the right of the screen
    in axial and coronal views. An LPS oblique MRI with a saliency hot in its left hemisphere
    (as the scene layer loads it) must be drawn hot on the screen's right half only."""
    import nibabel as nib

    sys.path.insert(0, str(Path(__file__).parent))
    slicer_views = importlib.import_module("slicer_views")  # the helper that draws docs/slicer_views.png
    mri = load_mri(app, phantom, "lps-oblique")
    source = nib.load(str(phantom["root"] / "lps_oblique_0.nii.gz"))
    saliency_path = tmp_path / "left_saliency.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(source.shape, np.float32), source.affine), str(saliency_path))
    hemisphere_map(saliency_path)
    labels_path = tmp_path / "no_regions.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(source.shape, np.uint8), source.affine), str(labels_path))
    scene.load_outputs(app.scene, app.volumes_logic, mri, saliency_path, labels_path)

    images = slicer_views.render_case(app, scene.case_overlay(mri), size=160)
    for name in ("Red", "Green"):
        hot = slicer_views.hot_overlay_mask(images[name])
        assert hot.sum() > 500, f"{name}: no saliency overlay drawn"
        columns = np.nonzero(hot)[1]
        assert (columns > hot.shape[1] // 2).mean() > 0.97, f"{name}: hot pixels not on the screen's right"
    figure = slicer_views.write_figure(images, tmp_path / "views.png", "test")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_changes_of_the_case_re_layer_the_views(app, phantom, outputs):
    """Entering the module, or changing the device/checkpoint/skull stripping, leaves the views;
    the opacity only sets the opacity; a new MRI or a new result re-layers."""
    from AmyloidKDModuleLib.panel import SelectionFollower

    first, second = load_mri(app, phantom, "ras", 0), load_mri(app, phantom, "ras", 1)
    follower = SelectionFollower()
    follower.remember(first, None, False, 0.5)  # the module is entered: nothing happens
    assert follower.change(first, None, False, 0.5) == follower.change(first, None, False, 0.5)
    assert not follower.change(first, None, False, 0.5).relayout  # e.g. the device changed
    change = follower.change(first, None, False, 0.8)
    assert not change.relayout and change.opacity == 0.8
    change = follower.change(second, None, False, 0.8)
    assert change.relayout and change.previous == (first.GetID(),)
    scene.load_outputs(app.scene, app.volumes_logic, second, outputs.outputs.saliency, outputs.outputs.top_regions)
    change = follower.change(second, None, False, 0.8)  # a new result for the selected MRI
    assert change.relayout and second.GetID() in change.previous
    assert not follower.change(second, None, False, 0.8).relayout
    assert follower.change(second, first, True, 0.8).relayout  # PET underneath


# --- Slicer-native outputs: results table, replace on re-run, study, storage, .mrb views ------


def finished_job(mri, outputs, checkpoint: Path, root: Path) -> scene.PredictionJob:
    """A job whose process has ended and whose out folder holds a copy of a real prediction's files,
    as finish_prediction finds them after Apply (without running the model again)."""
    import shutil

    work = root / "work"
    out = work / "output"
    out.mkdir(parents=True)
    for path in outputs.outputs.saliency.parent.iterdir():
        shutil.copy(path, out / path.name)
    process = runner.BackgroundProcess.start([sys.executable, "-c", "pass"])
    assert process.wait(timeout=60) == 0
    request = runner.PredictRequest(out / "input.nii.gz", checkpoint, out, device="cpu")
    return scene.PredictionJob(process, request, outputs.case, mri, None, work, keep_outputs=False)


def _table_rows(table) -> dict:
    return {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}


def test_rerun_replaces_outputs_in_the_mris_study_with_a_results_table_and_savable_storage(app, phantom, outputs,
                                                                                            tmp_path):
    mri = load_mri(app, phantom, "ras")
    hierarchy = app.scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "sub-01"), "baseline")
    hierarchy.CreateItem(study, mri)
    saves = tmp_path / "saves"
    saves.mkdir()
    app.scene.SetRootDirectory(str(saves))

    first = scene.finish_prediction(app.scene, app.volumes_logic, finished_job(mri, outputs, phantom["checkpoint"], tmp_path / "1"))
    nodes_after_first = app.scene.GetNumberOfNodes()
    second = scene.finish_prediction(app.scene, app.volumes_logic, finished_job(mri, outputs, phantom["checkpoint"], tmp_path / "2"))

    assert app.scene.GetNumberOfNodes() == nodes_after_first, "a re-run added nodes instead of replacing"
    latest = (second.saliency_node, second.top_regions_node, second.table_node, second.segmentation_node)
    for old in (first.saliency_node, first.top_regions_node, first.table_node, first.segmentation_node):
        assert app.scene.GetNodeByID(old.GetID()) is not old, f"{old.GetName()} was not removed"
    owned = [n for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLTableNode", "vtkMRMLSegmentationNode")
             for n in scene.nodes_by_class(app.scene, cls)
             if n.GetAttribute(scene.ATTRIBUTE_ROLE) in ("saliency", "topRegions", "resultsTable", "topRegionsSegmentation")]
    assert sorted(n.GetID() for n in owned) == sorted(n.GetID() for n in latest)
    assert mri.GetNodeReference(scene.ROLE_RESULTS_TABLE) is second.table_node

    for output in latest:  # in the MRI's study
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(output)) == study

    rows = _table_rows(second.table_node)
    assert second.table_node.GetName() == f"{mri.GetName()} AmyloidKD results"
    assert rows["Probability"] == f"{outputs.probability:.4f}" and rows["Threshold"] == "0.5000"
    assert rows["Result"] == outputs.label_text and rows["Model"] == phantom["checkpoint"].name
    assert rows["Notice"] == f"Model: {phantom['checkpoint'].name}. Research use only, not for diagnosis."
    assert second.table_node.GetColumnName(0) == "Measurement" and second.table_node.GetColumnName(1) == "Value"
    shares = {k: float(v) for k, v in rows.items() if k.startswith("Saliency share: ")}  # from <case>_regions.csv
    assert shares and all(k.endswith("(amyloidkd-spheres)") for k in shares) and 0 < sum(shares.values()) <= 1.0001

    # the named regions as a segmentation: the segments carry the atlas names of <case>_regions.csv, in rank order
    import csv

    with open(outputs.outputs.saliency.parent / f"{outputs.case}_regions.csv", newline="", encoding="utf-8") as handle:
        regions = list(csv.DictReader(handle))
    segments = second.segmentation_node.GetSegmentation()
    names = [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]
    assert len(regions) > 2 and names == [r["region"] for r in regions]
    assert [segments.GetNthSegment(i).GetLabelValue() for i in range(len(names))] == [int(r["rank"]) for r in regions]
    display = second.segmentation_node.GetDisplayNode()
    assert display is None or not display.GetVisibility()  # hidden until shown: the label layer outlines already
    assert Path(second.segmentation_node.GetStorageNode().GetFileName()).name.endswith("segmentation.seg.nrrd")

    # the temporary files are gone; the storage nodes point where the user can save, and saving works
    assert not (tmp_path / "2" / "work").exists()
    for output in (second.saliency_node, second.top_regions_node):
        storage = output.GetStorageNode()
        target = Path(storage.GetFileName())
        assert target.parent == saves and target.name.endswith(".nii.gz")
        assert storage.WriteData(output) and target.is_file()


def test_results_table_carries_region_shares_and_the_mri_centiloid_only_when_the_library_writes_it(outputs):
    import dataclasses

    row = dataclasses.replace(outputs, extra={"centiloid_pred": "34.2", "centiloid_lo": "-20.4", "centiloid_hi": "88.0"})
    rows = scene.results_rows(row, None, [{"rank": "1", "region": "Precuneus", "atlas": "aal",
                                           "saliency_share": "0.31", "voxels": "812"}])
    assert ("Centiloid (MRI)", "34.2") in rows and ("Centiloid (MRI) 90% interval low", "-20.4") in rows
    assert ("Centiloid (MRI) 90% interval high", "88.0") in rows
    assert ("Saliency share: Precuneus (aal)", "0.31") in rows
    # predict writes the three columns, empty for a checkpoint without the read-out (the demo's)
    assert outputs.extra.get("centiloid_pred") == ""
    assert ("Centiloid (MRI)", "") in scene.results_rows(outputs, None)
    empty = dataclasses.replace(outputs, extra={"centiloid_pred": "", "centiloid_lo": "", "centiloid_hi": ""})
    assert ("Centiloid (MRI)", "") in scene.results_rows(empty, None)  # a checkpoint without the read-out
    # what the panel shows beside the probability
    assert runner.mri_centiloid_text(runner.mri_centiloid(row)) == "34 [\u221220, 88], 90 % interval"
    assert runner.mri_centiloid_text(runner.mri_centiloid(empty)) == "\u2014"
    assert runner.mri_centiloid_text(runner.mri_centiloid(outputs)) == "\u2014"


def test_a_prediction_with_centiloid_columns_fills_the_table_and_keeps_the_pet_rows(app, phantom, outputs, tmp_path):
    """results.csv with the MRI-side Centiloid columns (as the library will write them): the loaded
    outputs carry them, the table shows them, and a PET quantification's rows survive the re-run."""
    import csv

    mri = load_mri(app, phantom, "ras")
    scene.results_table(app.scene, mri, scene.pet_rows({"tracer": "PiB", "suvr": "1.8000", "centiloid": "74.1",
                                                        "voi_set": "gaain"}))
    job = finished_job(mri, outputs, phantom["checkpoint"], tmp_path)
    path = job.request.out_dir / "results.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*table[0], *runner.MRI_CENTILOID_COLUMNS])
        writer.writeheader()
        writer.writerows({**r, "centiloid_pred": "34.2", "centiloid_lo": "-20.4", "centiloid_hi": "88.0"} for r in table)
    result = scene.finish_prediction(app.scene, app.volumes_logic, job)

    rows = _table_rows(result.table_node)
    assert rows["Centiloid (MRI)"] == "34.2" and rows["Centiloid (MRI) 90% interval low"] == "-20.4"
    assert rows["Centiloid (MRI) 90% interval high"] == "88.0"
    assert rows["Tracer"] == "PiB" and rows["SUVR (PET)"] == "1.8000" and rows["Centiloid (PET)"] == "74.1"
    stored = scene.result_attributes(result.saliency_node)
    assert (stored["centiloid_pred"], stored["centiloid_lo"], stored["centiloid_hi"]) == ("34.2", "-20.4", "88.0")


@pytest.mark.parametrize("with_views", [True, False])
def test_batch_mrb_opens_in_slicer_with_the_overlays_shown(app, phantom, outputs, tmp_path, with_views):
    """The batch has no layout; with ensure_slice_views its .mrb opens with the overlays in Slicer's views
    (Slicer's layout owns Red/Yellow/Green as singletons: they take the saved layers). Without, blank."""
    mri = load_mri(app, phantom, "ras")
    saliency, top_regions = scene.load_outputs(app.scene, app.volumes_logic, mri, outputs.outputs.saliency,
                                               outputs.outputs.top_regions, temporary_files=True)
    if with_views:
        assert scene.ensure_slice_views(app.scene) == ["Red", "Yellow", "Green"]
        assert scene.ensure_slice_views(app.scene) == []  # never twice
    scene.show_case(app.scene, scene.case_overlay(mri))
    bundle = tmp_path / "case.mrb"
    assert app.scene.WriteToMRB(str(bundle))

    slicer_app = _require("trame_slicer.core").SlicerApp()
    views = {}
    for name, _ in scene.STANDARD_SLICE_VIEWS:  # what Slicer's layout manager has before a scene is opened
        composite = slicer_app.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetSingletonTag(name)
        composite.SetLayoutName(name)
        views[name] = composite
    assert slicer_app.scene.ReadFromMRB(str(bundle))
    assert slicer_app.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 3
    for name, composite in views.items():
        layers = [slicer_app.scene.GetNodeByID(i).GetName() if i else None for i in _layers(composite)]
        if with_views:
            assert layers == [mri.GetName(), saliency.GetName(), top_regions.GetName()], name
        else:
            assert layers == [None, None, None], name


# --- PET quantification (issue 27): SUVR, Centiloid, tracer, VOIs, results table -------------------


@pytest.fixture(scope="module")
def known_pet(tmp_path_factory):
    """The MNI152 template (2 mm) as the MRI and a PET on its grid that is 2.7 in the CTX VOI and 1.5 in
    the WhlCbl VOI (each widened by 2 voxels, so that a near-identity registration keeps the means):
    SUVR 1.8, so PiB's Centiloid is 100 (1.8 - 1.009) / 1.067 = 74.13."""
    import nibabel as nib
    from scipy import ndimage

    from AmyloidKDLib.centiloid import approximate_voi_set
    from AmyloidKDLib.template import load_template

    root = tmp_path_factory.mktemp("known_pet")
    template, vois = load_template(2), approximate_voi_set(2)
    assert template.t1.shape == vois.ctx.shape
    ctx, reference = vois.ctx.data > 0.5, vois.reference.data > 0.5
    # tissue contrast elsewhere, so the rigid PET->MRI registration has something to align (a flat PET
    # lands ~5 mm off with one ITK thread: SUVR 1.65)
    pet = (0.1 + 1.2 * template.gm.data + 0.6 * template.wm.data).astype(np.float32)
    pet[ndimage.binary_dilation(ctx, iterations=2) & ~reference] = 2.7
    pet[ndimage.binary_dilation(reference, iterations=2) & ~ctx] = 1.5
    mri_path, pet_path = root / "mni_t1.nii.gz", root / "known_pet.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(template.t1.data, np.float32), template.t1.affine), str(mri_path))
    nib.save(nib.Nifti1Image(pet, template.t1.affine), str(pet_path))
    return {"mri": mri_path, "pet": pet_path, "ctx_voxels": int(ctx.sum()), "reference_voxels": int(reference.sum())}


def _binary_voxels(segmentation, segment_name: str) -> int:
    """How many voxels a segment of a segmentation node holds (its binary labelmap)."""
    import slicer

    segments = segmentation.GetSegmentation()
    segment_id = segments.GetSegmentIdBySegmentName(segment_name)
    image = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(segment_id, image)
    from vtk.util.numpy_support import vtk_to_numpy

    values = vtk_to_numpy(image.GetPointData().GetScalars())
    return int((values > 0).sum())


def test_pet_quantification_shows_the_equations_centiloid_with_the_vois_and_the_results_table(app, known_pet, tmp_path):
    mri = app.volumes_logic.AddArchetypeVolume(str(known_pet["mri"]), "MNI T1", 0)
    pet = app.volumes_logic.AddArchetypeVolume(str(known_pet["pet"]), "known PET", 0)
    earlier = scene.results_table(app.scene, mri, [("Probability", "0.7000")])  # a prediction's table is kept
    job = scene.start_quantification(app.scene, mri, pet, "PiB", sys.executable, predict_env(), temporary_root=tmp_path)
    assert job.process.wait(timeout=300) == 0, job.process.tail()
    result = scene.finish_quantification(app.scene, app.volumes_logic, job)

    assert result.suvr == pytest.approx(1.8, abs=0.005)  # the known means: 2.7 / 1.5
    assert result.centiloid == pytest.approx(100.0 * (result.suvr - 1.009) / 1.067, abs=0.05)  # Klunk's equation
    assert result.centiloid == pytest.approx(74.13, abs=0.6)
    assert result.tracer == "PiB" and result.voi_set == "approx-mni152-2009"
    shown = scene.pet_quantification_text(scene.stored_quantification(mri))
    assert shown == f"SUVR {result.suvr:.3f}, Centiloid {round(result.centiloid):.0f} (PiB) (approximate VOIs)"

    rows = dict(scene.table_rows(result.table_node))
    assert result.table_node is earlier and rows["Probability"] == "0.7000"
    assert rows["Tracer"] == "PiB" and float(rows["SUVR (PET)"]) == pytest.approx(result.suvr, abs=1e-4)
    assert float(rows["Centiloid (PET)"]) == pytest.approx(result.centiloid, abs=0.05)

    vois = result.segmentation_node  # CTX and WhlCbl on the MRI's grid (the template: about the MNI VOIs)
    assert mri.GetNodeReference(scene.ROLE_VOIS) is vois and vois.GetName() == "MNI T1 AmyloidKD PET VOIs"
    segments = vois.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == ["CTX", "WhlCbl"]
    assert _binary_voxels(vois, "CTX") == pytest.approx(known_pet["ctx_voxels"], rel=0.05)
    assert _binary_voxels(vois, "WhlCbl") == pytest.approx(known_pet["reference_voxels"], rel=0.05)
    assert not job.work_directory.exists()

    # a second quantification replaces the VOIs and updates the same rows; a prediction re-run keeps them
    assert scene.set_results_rows(app.scene, mri, scene.pet_rows({"tracer": "florbetapir", "suvr": "1.2",
                                                                  "centiloid": "28.2"})) is earlier
    assert sum(1 for name, _ in scene.table_rows(earlier) if name == "Tracer") == 1
    assert dict(scene.table_rows(earlier))["Tracer"] == "florbetapir"
