"""Everything the AmyloidKD module does with MRML, without Qt.

Each function takes the MRML scene (and, where volumes are loaded, the volumes logic) as
arguments, so it runs the same in Slicer (``slicer.mrmlScene``,
``slicer.modules.volumes.logic()``) and on Slicer's core from PyPI (``slicer-core``,
``trame-slicer``) in the tests. Nothing here imports Slicer, Qt or VTK: MRML objects are
only used through the scene and the nodes they hand back.

What lives here:

- writing the MRI node to NIfTI through Slicer's own storage node, running the prediction
  command on it (:func:`start_prediction`, :func:`finish_prediction`, :func:`cancel_prediction`);
- loading the outputs as nodes: the saliency volume and the top-regions label map with a
  colour table of its own whose entries name the regions;
- the overlay display (colour, window, threshold, opacity, label outline);
- the *overlay arrangement* (which saliency, top regions and PET belong to which MRI, PET or
  MRI underneath, opacity), stored as node references and attributes on the MRI node, so it
  is saved with the scene (``.mrb``) and needs no slice view to exist;
- laying out the slice views for one case, touching only the views that show that case.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from AmyloidKDModuleLib.errors import ModuleError
from AmyloidKDModuleLib.modelinfo import ModelInfo, read_model_info
from AmyloidKDModuleLib.runner import (
    BackgroundProcess,
    CaseResult,
    PredictRequest,
    build_centiloid_command,
    build_predict_command,
    describe_exit,
    format_centiloid,
    mri_centiloid,
    read_centiloid,
    read_results,
    resolve_checkpoint,
)

#: Node reference roles (MRI node -> its outputs and PET) and attribute names used by the module.
ROLE_SALIENCY = "AmyloidKD.saliency"
ROLE_TOP_REGIONS = "AmyloidKD.topRegions"
ROLE_PET = "AmyloidKD.pet"
ROLE_MRI = "AmyloidKD.mri"  # output node -> the MRI it was computed for
ROLE_RESULTS_TABLE = "AmyloidKD.resultsTable"
ROLE_TOP_REGIONS_SEGMENTATION = "AmyloidKD.topRegionsSegmentation"
ATTRIBUTE_ROLE = "AmyloidKD.role"  # "saliency" | "topRegions" | "resultsTable" | "colorTable" on the module's own nodes
#: The output roles of one case: what a re-run replaces.
OUTPUT_ROLES = (ROLE_SALIENCY, ROLE_TOP_REGIONS, ROLE_RESULTS_TABLE, ROLE_TOP_REGIONS_SEGMENTATION)
RESULTS_TABLE_COLUMNS = ("Measurement", "Value")
ATTRIBUTE_BACKGROUND = "AmyloidKD.background"  # "mri" | "pet"
ATTRIBUTE_OPACITY = "AmyloidKD.opacity"
RESULT_ATTRIBUTES = ("probability", "label", "threshold", "checkpoint", "model",
                     "centiloid_pred", "centiloid_lo", "centiloid_hi")
ROLE_VOIS = "AmyloidKD.vois"  # MRI node -> the segmentation of the PET quantification's VOIs
#: Attributes of the VOI segmentation: the PET quantification's numbers.
PET_ATTRIBUTES = ("tracer", "suvr", "centiloid", "voi_set")
#: Results-table rows that come from the PET quantification (kept when a prediction re-runs).
PET_MEASUREMENTS = ("Tracer", "SUVR (PET)", "Centiloid (PET)", "VOI set (PET)")
#: Segment names and colours of the VOI map's labels (``<case>_vois.nii.gz``: 1 CTX, 2 WhlCbl).
VOI_SEGMENTS = {1: ("CTX", (1.0, 0.55, 0.0)), 2: ("WhlCbl", (0.3, 0.6, 1.0))}
TOP_REGIONS_COLOR_TABLE_NAME = "AmyloidKD top regions"
#: Label values 1..255 (uint8); 1 is the region with the highest summed saliency.
MAX_TOP_REGIONS = 255
#: Outline colours of the top regions, cycled (chosen to stand out against the Iron overlay).
TOP_REGION_COLORS = (
    (0.0, 1.0, 1.0), (0.2, 1.0, 0.2), (0.35, 0.55, 1.0), (1.0, 0.35, 1.0),
    (1.0, 1.0, 1.0), (0.6, 1.0, 0.8), (0.7, 0.5, 1.0), (0.3, 0.8, 0.6),
)


@dataclass
class OverlaySettings:
    """How results are shown: saliency as a coloured foreground, top regions as an outlined label layer."""

    saliencyColorNodeID: str = "vtkMRMLColorTableNodeIron"  # procedural hot scale Slicer always creates
    foregroundOpacity: float = 0.5
    labelOpacity: float = 1.0
    saliencyLowerThreshold: float = 0.2  # saliency below this is transparent, so the MRI shows
    labelOutline: bool = True  # top regions drawn as outlines, the saliency stays visible inside


# --- small helpers ----------------------------------------------------------------------------


def safe_case_name(name: str) -> str:
    """A file-name-safe case name from a node name (``"T1 (copy)"`` -> ``"T1_copy"``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name or "").strip("_") or "mri"


def nodes_by_class(scene: "vtkMRMLScene", class_name: str) -> Iterator[Any]:
    """Every node of ``class_name`` (and its subclasses) in ``scene``."""
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        yield scene.GetNthNodeByClass(index, class_name)


def _node_id(mrml_node: "vtkMRMLNode") -> str | None:
    return mrml_node.GetID() if mrml_node is not None else None


# --- files <-> nodes --------------------------------------------------------------------------


def export_volume(scene: "vtkMRMLScene", volume_node: "vtkMRMLScalarVolumeNode", path: str | os.PathLike) -> Path:
    """Write ``volume_node`` to ``path`` (NIfTI) with Slicer's own volume storage node.

    The file holds the node's own IJK-to-RAS geometry: a parent transform is *not* hardened
    into it (outputs are placed under the same transform instead, see :func:`load_outputs`).
    The file is written under a temporary name and renamed, so no half-written file remains.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if target.name.lower().endswith(".nii.gz") else target.suffix
    temporary = target.with_name(f".{target.name}.part{suffix}")
    storage: "vtkMRMLVolumeArchetypeStorageNode" = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(temporary))
        storage.SetUseCompression(1)
        if not storage.WriteData(volume_node) or not temporary.is_file():
            raise ModuleError(f"could not write {volume_node.GetName()} to {target}; check free disk space "
                              "and that the folder is writable.")
        os.replace(temporary, target)
    finally:
        scene.RemoveNode(storage)
        if temporary.exists():
            temporary.unlink()
    return target


def top_regions_color_table(scene: "vtkMRMLScene"):
    """The colour table naming the top regions (created once per scene, then reused).

    Entry 0 is transparent background; entry k is "AmyloidKD top region k" (1 = highest
    summed saliency), so Slicer's Data Probe names the region under the mouse.
    """
    table: "vtkMRMLColorTableNode"
    for table in nodes_by_class(scene, "vtkMRMLColorTableNode"):
        if table.GetAttribute(ATTRIBUTE_ROLE) == "colorTable":
            return table
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode")
    table.SetName(TOP_REGIONS_COLOR_TABLE_NAME)
    table.SetAttribute(ATTRIBUTE_ROLE, "colorTable")
    table.SetTypeToUser()
    table.SetNumberOfColors(MAX_TOP_REGIONS + 1)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for rank in range(1, MAX_TOP_REGIONS + 1):
        red, green, blue = TOP_REGION_COLORS[(rank - 1) % len(TOP_REGION_COLORS)]
        table.SetColor(rank, top_region_name(rank), red, green, blue, 1.0)
    table.SetNamesInitialised(1)
    return table


def top_region_name(rank: int) -> str:
    """What label ``rank`` of a top-regions map means."""
    if rank == 1:
        return "AmyloidKD top region 1 (highest saliency)"
    return f"AmyloidKD top region {rank}"


def apply_overlay_display(saliency_node: "vtkMRMLScalarVolumeNode", top_regions_node: "vtkMRMLLabelMapVolumeNode",
                          color_table: "vtkMRMLColorTableNode", settings: OverlaySettings) -> None:
    """Saliency: hot colour scale, window 0..1, values below the threshold transparent.
    Top regions: the module's own named colour table."""
    display: "vtkMRMLScalarVolumeDisplayNode" = saliency_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(settings.saliencyColorNodeID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetThreshold(settings.saliencyLowerThreshold, 1.0)
    display.ApplyThresholdOn()
    display.SetInterpolate(0)
    label_display: "vtkMRMLLabelMapVolumeDisplayNode" = top_regions_node.GetDisplayNode()
    label_display.SetAndObserveColorNodeID(color_table.GetID())


@dataclass
class CaseOverlay:
    """The overlay arrangement of one MRI, as stored on its node (see :func:`link_outputs`)."""

    mri: Any
    saliency: Any = None
    top_regions: Any = None
    pet: Any = None
    pet_as_background: bool = False
    opacity: float = OverlaySettings.foregroundOpacity

    @property
    def background(self):
        """The volume shown underneath: the PET when chosen and present, else the MRI."""
        return self.pet if self.pet_as_background and self.pet is not None else self.mri


def link_outputs(mri_node: "vtkMRMLScalarVolumeNode", saliency_node: "vtkMRMLScalarVolumeNode",
                 top_regions_node: "vtkMRMLLabelMapVolumeNode") -> None:
    """Record on the nodes which outputs belong to which MRI (saved with the scene)."""
    mri_node.SetNodeReferenceID(ROLE_SALIENCY, _node_id(saliency_node))
    mri_node.SetNodeReferenceID(ROLE_TOP_REGIONS, _node_id(top_regions_node))
    output: "vtkMRMLScalarVolumeNode"
    for output, role in ((saliency_node, "saliency"), (top_regions_node, "topRegions")):
        if output is not None:
            output.SetAttribute(ATTRIBUTE_ROLE, role)
            output.SetNodeReferenceID(ROLE_MRI, mri_node.GetID())


def store_view_choice(mri_node: "vtkMRMLScalarVolumeNode", pet_node: "vtkMRMLScalarVolumeNode" = None, pet_as_background: bool | None = None,
                      opacity: float | None = None) -> None:
    """Record the PET and the display choices of ``mri_node``'s overlay on the node itself."""
    mri_node.SetNodeReferenceID(ROLE_PET, _node_id(pet_node))
    if pet_as_background is not None:
        mri_node.SetAttribute(ATTRIBUTE_BACKGROUND, "pet" if pet_as_background else "mri")
    if opacity is not None:
        mri_node.SetAttribute(ATTRIBUTE_OPACITY, f"{float(opacity):.4g}")


def case_overlay(mri_node: "vtkMRMLScalarVolumeNode") -> CaseOverlay | None:
    """The overlay arrangement stored on ``mri_node``; None when it has no AmyloidKD result."""
    if mri_node is None:
        return None
    saliency = mri_node.GetNodeReference(ROLE_SALIENCY)
    top_regions = mri_node.GetNodeReference(ROLE_TOP_REGIONS)
    if saliency is None and top_regions is None:
        return None
    opacity = mri_node.GetAttribute(ATTRIBUTE_OPACITY)
    return CaseOverlay(mri=mri_node, saliency=saliency, top_regions=top_regions,
                       pet=mri_node.GetNodeReference(ROLE_PET),
                       pet_as_background=mri_node.GetAttribute(ATTRIBUTE_BACKGROUND) == "pet",
                       opacity=float(opacity) if opacity else OverlaySettings.foregroundOpacity)


def result_attributes(output: "vtkMRMLScalarVolumeNode") -> dict[str, str]:
    """The prediction numbers stored on an output node (probability, label, threshold, checkpoint)."""
    values = {}
    for name in RESULT_ATTRIBUTES:
        value = output.GetAttribute(f"AmyloidKD.{name}") if output is not None else None
        if value is not None:
            values[name] = value
    return values


def load_outputs(scene: "vtkMRMLScene", volumes_logic, mri_node: "vtkMRMLScalarVolumeNode", saliency_path: str | os.PathLike,
                 top_regions_path: str | os.PathLike, attributes: Mapping[str, Any] | None = None,
                 settings: OverlaySettings | None = None, temporary_files: bool = False):
    """Load a case's saliency and top-regions files as nodes next to ``mri_node``.

    Both are read by Slicer's own reader, put under the MRI's parent transform (they are on
    the grid of the file the MRI node was exported to), given the overlay display, the
    result attributes (``AmyloidKD.probability`` ...) and linked to the MRI. With
    ``temporary_files`` the files are about to be deleted: the nodes are marked modified so
    that Slicer's Save dialog offers them. Returns ``(saliency_node, top_regions_node)``.
    """
    settings = settings or OverlaySettings()
    name = mri_node.GetName()
    saliency: "vtkMRMLScalarVolumeNode" = volumes_logic.AddArchetypeVolume(str(saliency_path), f"{name} AmyloidKD saliency", 0)
    if saliency is None:
        raise ModuleError(f"Slicer could not read the saliency map {saliency_path}.")
    top_regions: "vtkMRMLLabelMapVolumeNode" = volumes_logic.AddArchetypeVolume(str(top_regions_path), f"{name} AmyloidKD top regions", 1)
    if top_regions is None:
        scene.RemoveNode(saliency)
        raise ModuleError(f"Slicer could not read the top-regions map {top_regions_path}.")
    for output in (saliency, top_regions):
        output.SetAndObserveTransformNodeID(mri_node.GetTransformNodeID())
        for key, value in (attributes or {}).items():
            output.SetAttribute(f"AmyloidKD.{key}", str(value))
        if temporary_files:
            output.StorableModified()
    apply_overlay_display(saliency, top_regions, top_regions_color_table(scene), settings)
    link_outputs(mri_node, saliency, top_regions)
    return saliency, top_regions


def remove_case_outputs(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode") -> list[str]:
    """Remove the AmyloidKD outputs of ``mri_node`` (saliency, top regions, results table), so that
    a re-run replaces them instead of adding more; returns the names removed.

    Only nodes that the module made for this MRI are removed (their role attribute and their
    reference back to it are checked); anything else the MRI refers to is left alone.
    """
    removed = []
    previous: "vtkMRMLNode"
    for role in OUTPUT_ROLES:
        previous = mri_node.GetNodeReference(role)
        mri_node.SetNodeReferenceID(role, None)
        if previous is None or previous.GetAttribute(ATTRIBUTE_ROLE) is None:
            continue
        owner = previous.GetNodeReferenceID(ROLE_MRI)
        if owner not in (None, mri_node.GetID()):
            continue
        removed.append(previous.GetName())
        scene.RemoveNode(previous)  # its display and storage nodes go with it
    return removed


def place_in_study(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", outputs: Iterable[Any]) -> int | None:
    """Put ``outputs`` next to the MRI in the subject hierarchy (its study, or wherever the MRI is);
    returns the parent item, or None when the MRI has no subject-hierarchy item."""
    hierarchy: "vtkMRMLSubjectHierarchyNode" = scene.GetSubjectHierarchyNode()
    if hierarchy is None:
        return None
    mri_item = hierarchy.GetItemByDataNode(mri_node)
    if not mri_item:
        return None
    parent = hierarchy.GetItemParent(mri_item)
    for data_node in outputs:
        if data_node is None:
            continue
        item = hierarchy.GetItemByDataNode(data_node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:
            hierarchy.CreateItem(parent, data_node)
    return parent


def save_directory(scene: "vtkMRMLScene") -> Path:
    """Where the outputs of a run without an output folder are offered for saving: the scene's
    root directory (Slicer's default scene folder), or the home folder."""
    root = scene.GetRootDirectory()
    return Path(root) if root and Path(root).is_dir() else Path.home()


def point_storage_to(storable: "vtkMRMLStorableNode", directory: str | os.PathLike, extension: str = ".nii.gz") -> Path:
    """Aim the node's storage node at ``directory/<node name><extension>`` (nothing is written yet)
    and mark it modified, so Slicer's Save dialog offers it there instead of a deleted temporary folder."""
    target = Path(directory) / f"{safe_case_name(storable.GetName())}{extension}"
    storable_storage: "vtkMRMLStorageNode" = storable.GetStorageNode()
    if storable_storage is not None:
        storable_storage.SetFileName(str(target))
    storable.StorableModified()
    return target


def read_segmentation(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", path: str | os.PathLike,
                      name: str, role: str, reference_role: str):
    """A label-map file read by Slicer's segmentation reader as a segmentation node ``name`` (one
    segment per label value), under the MRI's transform, with the module's ``role`` attribute and
    linked both ways with the MRI (``reference_role`` on the MRI)."""
    segmentation: "vtkMRMLSegmentationNode" = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetName(name)
    reader: "vtkMRMLStorageNode" = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    segmentation.SetAndObserveStorageNodeID(reader.GetID())
    if not reader.ReadData(segmentation):
        scene.RemoveNode(segmentation)
        raise ModuleError(f"Slicer could not read {path} as a segmentation.")
    segmentation.SetAndObserveTransformNodeID(mri_node.GetTransformNodeID())
    segmentation.SetAttribute(ATTRIBUTE_ROLE, role)
    segmentation.SetNodeReferenceID(ROLE_MRI, mri_node.GetID())
    mri_node.SetNodeReferenceID(reference_role, segmentation.GetID())
    return segmentation


def top_regions_segmentation(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", path: str | os.PathLike,
                              regions: list[Mapping[str, str]] | None = None):
    """The named regions as a segmentation node ("<MRI> AmyloidKD top regions segmentation"), for
    the Segmentations and Segment Statistics modules.

    With ``regions`` (the rows of ``<case>_regions.csv``) ``path`` is the library's
    ``<case>_regions.nii.gz``, whose label k is the atlas region of rank k: each segment carries
    that region's name (and its saliency share as the tag ``AmyloidKD.saliencyShare``), in rank
    order. Without, ``path`` is the top-regions label map and segments are named by rank, like its
    colour table ("AmyloidKD top region 1 (highest saliency)", ...).

    It is read by Slicer's own segmentation reader, placed under the MRI's transform and linked
    to the MRI; it is hidden until the user shows it (the label layer already outlines the regions).
    """
    segmentation = read_segmentation(scene, mri_node, path, f"{mri_node.GetName()} AmyloidKD top regions segmentation",
                                     "topRegionsSegmentation", ROLE_TOP_REGIONS_SEGMENTATION)
    by_rank = {int(row["rank"]): row for row in regions or () if str(row.get("rank", "")).strip().isdigit()}
    segments: "vtkSegmentation" = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segment: "vtkSegment" = segments.GetNthSegment(index)
        rank = segment.GetLabelValue()
        region = by_rank.get(rank)
        segment.SetName(region["region"] if region else top_region_name(rank))
        if region:
            segment.SetTag("AmyloidKD.saliencyShare", str(region.get("saliency_share", "")))
        segment.SetColor(*TOP_REGION_COLORS[(rank - 1) % len(TOP_REGION_COLORS)])
    segments_display: "vtkMRMLDisplayNode" = segmentation.GetDisplayNode()
    if segments_display is not None:  # hidden until the user shows it: the label layer outlines the top regions
        segments_display.SetVisibility(0)
    return segmentation


def results_rows(row: CaseResult, model: ModelInfo | None, regions: Iterable[Mapping[str, str]] = ()) -> list[tuple[str, str]]:
    """(measurement, value) rows of a case's results table.

    ``row.extra`` carries columns the library adds to results.csv beyond the contract: with
    ``centiloid_pred, centiloid_lo, centiloid_hi`` (the MRI-predicted Centiloid and its 90 %
    interval) they become three rows, empty when the model has no Centiloid read-out. ``regions`` are the rows of ``<case>_regions.csv`` (rank, region, atlas,
    saliency_share, voxels) when the library writes it.
    """
    rows = [("Model", model.name if model else ""),
            ("Notice", model.notice if model else "Research use only, not for diagnosis."),
            ("Probability", f"{row.probability:.4f}"),
            ("Threshold", f"{row.threshold:.4f}"),
            ("Result", row.label_text)]
    predicted = mri_centiloid(row)
    if predicted is not None:  # the library writes the MRI-side Centiloid read-out (empty: the model has none)
        rows += [("Centiloid (MRI)", predicted[0]), ("Centiloid (MRI) 90% interval low", predicted[1]),
                 ("Centiloid (MRI) 90% interval high", predicted[2])]
    for region in regions:
        rows.append((f"Saliency share: {region.get('region', '')} ({region.get('atlas', '')})",
                     str(region.get("saliency_share", ""))))
    return rows


def table_rows(results: "vtkMRMLTableNode") -> list[tuple[str, str]]:
    """The (measurement, value) rows of a results table."""
    if results is None:
        return []
    return [(results.GetCellText(index, 0), results.GetCellText(index, 1)) for index in range(results.GetNumberOfRows())]


def set_results_rows(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", rows: Iterable[tuple[str, str]]):
    """Put ``rows`` into the MRI's results table, replacing rows of the same measurement (the table
    is made when the MRI has none yet); returns the table."""
    results: "vtkMRMLTableNode" = mri_node.GetNodeReference(ROLE_RESULTS_TABLE)
    if results is None:
        return results_table(scene, mri_node, rows)
    index_of = {name: index for index, (name, _) in enumerate(table_rows(results))}
    for measurement, value in rows:
        index = index_of.get(measurement)
        if index is None:
            index = results.AddEmptyRow()
            results.SetCellText(index, 0, measurement)
            index_of[measurement] = index
        results.SetCellText(index, 1, value)
    return results


def results_table(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", rows: Iterable[tuple[str, str]]):
    """A table node "<MRI> AmyloidKD results" with one (measurement, value) row each, linked to the MRI."""
    results: "vtkMRMLTableNode" = scene.AddNewNodeByClass("vtkMRMLTableNode")
    results.SetName(f"{mri_node.GetName()} AmyloidKD results")
    for name in RESULTS_TABLE_COLUMNS:
        column: "vtkAbstractArray" = results.AddColumn()
        column.SetName(name)
    for measurement, value in rows:
        index = results.AddEmptyRow()
        results.SetCellText(index, 0, measurement)
        results.SetCellText(index, 1, value)
    results.SetAttribute(ATTRIBUTE_ROLE, "resultsTable")
    results.SetNodeReferenceID(ROLE_MRI, mri_node.GetID())
    mri_node.SetNodeReferenceID(ROLE_RESULTS_TABLE, results.GetID())
    return results


def read_regions(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a ``<case>_regions.csv`` (empty when the library did not write one)."""
    import csv

    target = Path(path)
    if not target.is_file():
        return []
    with open(target, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- slice views ------------------------------------------------------------------------------


def _amyloidkd_outputs(scene: "vtkMRMLScene") -> set[str]:
    ids = set()
    output: "vtkMRMLScalarVolumeNode"
    for output in nodes_by_class(scene, "vtkMRMLScalarVolumeNode"):
        if output.GetAttribute(ATTRIBUTE_ROLE) in ("saliency", "topRegions"):
            ids.add(output.GetID())
    return ids


def _slice_node(scene: "vtkMRMLScene", layout_name: str):
    slice_node: "vtkMRMLSliceNode"
    for slice_node in nodes_by_class(scene, "vtkMRMLSliceNode"):
        if slice_node.GetLayoutName() == layout_name:
            return slice_node
    return None


def views_showing(scene: "vtkMRMLScene", volume_ids: Iterable[str]) -> list[str]:
    """Layout names of the slice views that show any of ``volume_ids`` in any layer, or nothing at all."""
    wanted = {v for v in volume_ids if v}
    names = []
    composite: "vtkMRMLSliceCompositeNode"
    for composite in nodes_by_class(scene, "vtkMRMLSliceCompositeNode"):
        layers = {composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(), composite.GetLabelVolumeID()}
        if layers & wanted or not any(layers):
            names.append(composite.GetLayoutName())
    return names


#: Slicer's three standard slice views: layout name (also its singleton tag) -> orientation.
STANDARD_SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


def ensure_slice_views(scene: "vtkMRMLScene") -> list[str]:
    """Add Slicer's Red/Yellow/Green slice and composite nodes where the scene has none (a
    headless batch has no layout). They carry Slicer's own singleton tags, so a ``.mrb`` saved
    with them opens in Slicer with the overlays shown: its views adopt these nodes' layers."""
    added = []
    for name, orientation in STANDARD_SLICE_VIEWS:
        if _slice_node(scene, name) is None:
            view: "vtkMRMLSliceNode" = scene.AddNewNodeByClass("vtkMRMLSliceNode")
            view.SetSingletonTag(name)
            view.SetLayoutName(name)
            view.SetDefaultOrientation(orientation)
            view.SetOrientation(orientation)
            added.append(name)
        if not _has_composite(scene, name):
            layers: "vtkMRMLSliceCompositeNode" = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
            layers.SetSingletonTag(name)
            layers.SetLayoutName(name)
    return added


def _has_composite(scene: "vtkMRMLScene", layout_name: str) -> bool:
    composite: "vtkMRMLSliceCompositeNode"
    return any(composite.GetLayoutName() == layout_name
               for composite in nodes_by_class(scene, "vtkMRMLSliceCompositeNode"))


def show_case(scene: "vtkMRMLScene", overlay: CaseOverlay, previous: Iterable[Any] = (),
              settings: OverlaySettings | None = None) -> list[str]:
    """Show one case in the slice views that concern it; returns their layout names.

    A view concerns the case when it is empty, or shows the case's MRI or PET, any
    AmyloidKD output, or one of the ``previous`` nodes (what was selected before). Views
    showing other volumes are left as they are. An MRI without a result gets no
    foreground and no label layer, so nothing stale is drawn over it.
    """
    settings = settings or OverlaySettings()
    concerned = {_node_id(overlay.mri), _node_id(overlay.pet)} | {_node_id(n) for n in previous}
    concerned |= _amyloidkd_outputs(scene)
    names = views_showing(scene, concerned)
    composite: "vtkMRMLSliceCompositeNode"
    for composite in nodes_by_class(scene, "vtkMRMLSliceCompositeNode"):
        if composite.GetLayoutName() not in names:
            continue
        composite.SetBackgroundVolumeID(_node_id(overlay.background))
        composite.SetForegroundVolumeID(_node_id(overlay.saliency))
        composite.SetLabelVolumeID(_node_id(overlay.top_regions))
        composite.SetForegroundOpacity(overlay.opacity)
        composite.SetLabelOpacity(settings.labelOpacity)
        slice_node: "vtkMRMLSliceNode" = _slice_node(scene, composite.GetLayoutName())
        if slice_node is not None:
            slice_node.SetUseLabelOutline(int(settings.labelOutline))
    return names


def set_overlay_opacity(scene: "vtkMRMLScene", overlay: CaseOverlay, opacity: float) -> list[str]:
    """Change the saliency opacity in the views whose foreground is this case's saliency only."""
    store_view_choice(overlay.mri, overlay.pet, opacity=opacity)
    overlay.opacity = float(opacity)
    changed = []
    composite: "vtkMRMLSliceCompositeNode"
    for composite in nodes_by_class(scene, "vtkMRMLSliceCompositeNode"):
        if overlay.saliency is not None and composite.GetForegroundVolumeID() == overlay.saliency.GetID():
            composite.SetForegroundOpacity(float(opacity))
            changed.append(composite.GetLayoutName())
    return changed


# --- one prediction, from node to nodes ---------------------------------------------------------


@dataclass
class PredictionJob:
    """A prediction running in the background, with what is needed to load its results.

    ``work_directory`` (the exported MRI, and the outputs unless ``keep_outputs``) is always
    removed when the job is finished or cancelled.
    """

    process: BackgroundProcess
    request: PredictRequest
    case_name: str
    mri_node: Any
    pet_node: Any
    work_directory: Path
    keep_outputs: bool


@dataclass
class PredictionResult:
    """What one prediction gives back: numbers for the panel and the new output nodes."""

    case_name: str
    probability: float
    label: int
    label_text: str
    threshold: float
    seconds: dict
    saliency_node: Any
    top_regions_node: Any
    output_directory: Path | None
    log: list = field(default_factory=list)
    table_node: Any = None
    segmentation_node: Any = None

    @property
    def seconds_total(self) -> float:
        """Wall time the prediction command reported for this case."""
        return float(self.seconds.get("total") or 0.0)


def new_work_directory(temporary_root: str | os.PathLike | None, prefix: str) -> Path:
    """A new temporary folder for one job, under ``temporary_root`` (made if missing) or the system's."""
    if temporary_root is not None:
        Path(temporary_root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=temporary_root))


def start_prediction(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", python_executable: str | os.PathLike, env: Mapping[str, str],
                     checkpoint, pet_node=None, device: str = "auto", skull_strip: str | None = None,
                     output_directory: str | os.PathLike | None = None,
                     temporary_root: str | os.PathLike | None = None) -> PredictionJob:
    """Export the MRI node and start the prediction command on it (returns at once).

    The exported MRI goes to a new folder under ``temporary_root`` that is removed when the
    job ends; the command's files go to ``output_directory`` when given (kept), else there too.
    """
    if mri_node is None:
        raise ModuleError("select an MRI volume first.")
    if checkpoint is None or not str(checkpoint).strip(". "):
        raise ModuleError("select a checkpoint (the folder with model.safetensors and checkpoint.json).")
    checkpoint_dir = resolve_checkpoint(checkpoint)
    work = new_work_directory(temporary_root, "AmyloidKD-")
    try:
        case = safe_case_name(mri_node.GetName())
        input_path = export_volume(scene, mri_node, work / "input" / f"{case}.nii.gz")
        out_dir = Path(output_directory) if output_directory else work / "output"
        request = PredictRequest(input_path, checkpoint_dir, out_dir, device=device, skull_strip=skull_strip)
        process = BackgroundProcess.start(build_predict_command(python_executable, request), env=env, cwd=work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if pet_node is not None:
        store_view_choice(mri_node, pet_node)
    return PredictionJob(process, request, case, mri_node, pet_node, work, keep_outputs=output_directory is not None)


def cancel_prediction(job: PredictionJob) -> None:
    """Stop the job's whole process tree and remove its temporary files."""
    try:
        job.process.cancel()
    finally:
        shutil.rmtree(job.work_directory, ignore_errors=True)


def finish_prediction(scene: "vtkMRMLScene", volumes_logic, job: PredictionJob,
                      settings: OverlaySettings | None = None) -> PredictionResult:
    """Read the finished job's results and load its outputs as nodes linked to the MRI.

    Raises ModuleError with the reason when the run was cancelled, failed, or wrote
    nothing usable. The temporary folder is removed in every case.
    """
    try:
        job.process.poll()
        returncode = job.process.returncode
        if job.process.cancelled:
            raise ModuleError("the prediction was cancelled.")
        if returncode is None:
            raise ModuleError("the prediction is still running.")
        if returncode not in (0, 1):
            last = next((line.strip() for line in reversed(job.process.log) if line.strip()), "no output")
            raise ModuleError(f"the prediction stopped ({describe_exit(returncode)}): {last}\n\n"
                              f"Its last output lines:\n{job.process.tail()}")
        rows = [r for r in read_results(job.request.out_dir) if r.case == job.case_name]
        if not rows:
            raise ModuleError(f"results.csv has no row for {job.case_name}:\n{job.process.tail()}")
        row: CaseResult = rows[0]
        if not row.ok:
            raise ModuleError(f"the prediction failed for {job.mri_node.GetName()}: {row.error}")
        missing = row.outputs.missing()
        if missing:
            raise ModuleError("the prediction did not write " + ", ".join(str(p) for p in missing))
        try:
            model = read_model_info(job.request.checkpoint)
        except ModuleError:
            model = None
        attributes = {"probability": f"{row.probability:.6f}", "label": row.label,
                      "threshold": f"{row.threshold:.6f}", "checkpoint": job.request.checkpoint,
                      "model": model.name if model else ""}
        attributes.update(zip(("centiloid_pred", "centiloid_lo", "centiloid_hi"), mri_centiloid(row) or ()))
        pet_rows = [r for r in table_rows(job.mri_node.GetNodeReference(ROLE_RESULTS_TABLE)) if r[0] in PET_MEASUREMENTS]
        remove_case_outputs(scene, job.mri_node)  # a re-run replaces the case's previous outputs
        saliency, top_regions = load_outputs(scene, volumes_logic, job.mri_node, row.outputs.saliency,
                                             row.outputs.top_regions, attributes, settings,
                                             temporary_files=not job.keep_outputs)
        regions = read_regions(Path(job.request.out_dir) / f"{row.case}_regions.csv")
        table = results_table(scene, job.mri_node, results_rows(row, model, regions) + pet_rows)
        named = Path(job.request.out_dir) / f"{row.case}_regions.nii.gz"  # label k = region of rank k
        segmentation = (top_regions_segmentation(scene, job.mri_node, named, regions) if regions and named.is_file()
                        else top_regions_segmentation(scene, job.mri_node, row.outputs.top_regions))
        if not job.keep_outputs:  # the files are deleted below: offer a folder the user can save to
            for output in (saliency, top_regions):
                point_storage_to(output, save_directory(scene))
            point_storage_to(table, save_directory(scene), ".tsv")
            point_storage_to(segmentation, save_directory(scene), ".seg.nrrd")
        place_in_study(scene, job.mri_node, (saliency, top_regions, table, segmentation))
    finally:
        shutil.rmtree(job.work_directory, ignore_errors=True)
    return PredictionResult(
        case_name=row.case, probability=row.probability, label=row.label, label_text=row.label_text,
        threshold=row.threshold, seconds=dict(row.seconds), saliency_node=saliency,
        top_regions_node=top_regions, table_node=table, segmentation_node=segmentation, output_directory=job.request.out_dir if job.keep_outputs else None,
        log=list(job.process.log))


# --- PET quantification (SUVR, Centiloid) of the selected PET with its MRI ----------------------


@dataclass
class QuantificationJob:
    """``amyloidkd centiloid`` running in the background for one PET and its MRI.

    ``work_directory`` (the exported volumes and the command's files) is removed when the job is
    finished or cancelled (:func:`cancel_prediction` stops it like a prediction).
    """

    process: BackgroundProcess
    mri_node: Any
    pet_node: Any
    tracer: str
    out_dir: Path
    work_directory: Path


@dataclass
class QuantificationResult:
    """What the PET quantification gives back: its numbers and the nodes it made or updated."""

    case_name: str
    tracer: str
    suvr: float
    centiloid: float
    voi_set: str
    seconds: dict
    segmentation_node: Any = None
    table_node: Any = None

    @property
    def seconds_total(self) -> float:
        """Wall time the command reported for this PET."""
        return float(self.seconds.get("total") or 0.0)


def start_quantification(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", pet_node: "vtkMRMLScalarVolumeNode",
                         tracer: str, python_executable: str | os.PathLike, env: Mapping[str, str],
                         temporary_root: str | os.PathLike | None = None) -> QuantificationJob:
    """Export the PET and MRI nodes and start ``amyloidkd centiloid`` on them (returns at once)."""
    if mri_node is None or pet_node is None:
        raise ModuleError("select an MRI and a PET volume: the PET is quantified in VOIs placed through its MRI.")
    if not str(tracer or "").strip():
        raise ModuleError("choose the PET's tracer: each tracer has its own Centiloid equation.")
    work = new_work_directory(temporary_root, "AmyloidKD-PET-")
    try:
        case = safe_case_name(pet_node.GetName())
        pet_path = export_volume(scene, pet_node, work / "input" / f"{case}.nii.gz")
        mri_path = export_volume(scene, mri_node, work / "input" / f"{safe_case_name(mri_node.GetName())}_mri.nii.gz")
        out_dir = work / "output"
        process = BackgroundProcess.start(build_centiloid_command(python_executable, pet_path, mri_path, tracer, out_dir),
                                          env=env, cwd=work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return QuantificationJob(process, mri_node, pet_node, tracer, out_dir, work)


def pet_rows(values: Mapping[str, str]) -> list[tuple[str, str]]:
    """The results-table rows of a PET quantification (``centiloid.csv``'s cells)."""
    return [("Tracer", values.get("tracer", "")), ("SUVR (PET)", values.get("suvr", "")),
            ("Centiloid (PET)", values.get("centiloid", "")), ("VOI set (PET)", values.get("voi_set", ""))]


def pet_quantification_text(values: Mapping[str, str]) -> str:
    """"SUVR 1.800, Centiloid 74 (PiB)" for the panel; "—" without a quantification."""
    if not values or not values.get("suvr"):
        return "\u2014"
    approximate = " (approximate VOIs)" if values.get("voi_set", "").startswith("approx") else ""
    return (f"SUVR {float(values['suvr']):.3f}, Centiloid {format_centiloid(values.get('centiloid', ''))} "
            f"({values.get('tracer', '')}){approximate}")


def stored_quantification(mri_node: "vtkMRMLScalarVolumeNode") -> dict[str, str]:
    """The PET quantification stored with ``mri_node`` (on its VOI segmentation), or {}."""
    vois: "vtkMRMLSegmentationNode" = mri_node.GetNodeReference(ROLE_VOIS) if mri_node is not None else None
    if vois is None:
        return {}
    return {name: vois.GetAttribute(f"AmyloidKD.{name}") or "" for name in PET_ATTRIBUTES}


def load_vois(scene: "vtkMRMLScene", mri_node: "vtkMRMLScalarVolumeNode", path: str | os.PathLike,
              values: Mapping[str, str]):
    """The VOIs on the MRI's grid as a segmentation "<MRI> AmyloidKD PET VOIs" with the segments
    CTX and WhlCbl, under the MRI's transform, carrying the quantification's numbers as attributes;
    replaces the MRI's previous one."""
    previous_vois: "vtkMRMLSegmentationNode" = mri_node.GetNodeReference(ROLE_VOIS)
    if previous_vois is not None and previous_vois.GetAttribute(ATTRIBUTE_ROLE) == "vois":
        scene.RemoveNode(previous_vois)
    segmentation = read_segmentation(scene, mri_node, path, f"{mri_node.GetName()} AmyloidKD PET VOIs", "vois", ROLE_VOIS)
    segments: "vtkSegmentation" = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        segment: "vtkSegment" = segments.GetNthSegment(index)
        name, color = VOI_SEGMENTS.get(segment.GetLabelValue(), (f"VOI {segment.GetLabelValue()}", (1.0, 1.0, 1.0)))
        segment.SetName(name)
        segment.SetColor(*color)
    for name in PET_ATTRIBUTES:
        segmentation.SetAttribute(f"AmyloidKD.{name}", values.get(name, ""))
    return segmentation


def finish_quantification(scene: "vtkMRMLScene", volumes_logic, job: QuantificationJob,
                          settings: OverlaySettings | None = None) -> QuantificationResult:
    """Read the finished quantification: VOIs as a segmentation, SUVR/Centiloid/tracer into the
    MRI's results table. Raises ModuleError with the reason when it was cancelled or failed; the
    temporary folder is removed in every case. (``volumes_logic`` and ``settings``: the signature
    of :func:`finish_prediction`, so one controller runs both.)"""
    try:
        job.process.poll()
        if job.process.cancelled:
            raise ModuleError("the PET quantification was cancelled.")
        returncode = job.process.returncode
        if returncode is None:
            raise ModuleError("the PET quantification is still running.")
        if returncode != 0:
            last = next((line.strip() for line in reversed(job.process.log) if line.strip()), "no output")
            raise ModuleError(f"the PET quantification stopped ({describe_exit(returncode)}): {last}")
        values = read_centiloid(job.out_dir)
        if values.get("status") != "ok":
            raise ModuleError(f"the PET quantification failed: {values.get('error') or 'no reason given'}")
        segmentation = load_vois(scene, job.mri_node, job.out_dir / f"{values['case']}_vois.nii.gz", values)
        table = set_results_rows(scene, job.mri_node, pet_rows(values))
        point_storage_to(segmentation, save_directory(scene), ".seg.nrrd")
        place_in_study(scene, job.mri_node, (segmentation, table))
    finally:
        shutil.rmtree(job.work_directory, ignore_errors=True)
    return QuantificationResult(values["case"], values["tracer"], float(values["suvr"]), float(values["centiloid"]),
                                values.get("voi_set", ""), {"total": float(values.get("seconds") or 0.0)},
                                segmentation_node=segmentation, table_node=table)
