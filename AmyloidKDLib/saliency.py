"""Where the student looked: Grad-CAM per slice, put back into a 3-D saliency volume.

The student sees N sagittal slices of the MNI-registered MRI. Grad-CAM (pytorch-grad-cam)
gives one 2-D map per slice; each map fills the slab of sagittal planes its slice stands for
(``SliceStack.place_back``), the volume is scaled to [0, 1] inside the brain, and the inverse
registration carries it to the user's native MRI grid. A label map of the top regions (above
a percentile of the saliency inside the brain) serves as an overlay a viewer can outline.

Maps keep their relative magnitude across slices: pytorch-grad-cam scales every image's CAM
to [0, 1] on its own, which would make a slice with no evidence look as bright as the slice
that decided the prediction, so this module scales the whole volume once instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from AmyloidKDLib import configs
from AmyloidKDLib.errors import ConfigError
from AmyloidKDLib.volume import Volume

SALIENCY_TARGETS = ("predicted", "positive")
#: How the per-slice maps are made: Grad-CAM at the encoder's last stage (coarse: a 3x3 grid per
#: 96 px slice for MobileNetV3-Small, the 6x6 token grid for a ViT at 96 px), or gradient x input at
#: the input's own pixels (smoothed by GRADIENT_X_INPUT_SIGMA_PX); see docs/inference.md.
SALIENCY_METHODS = ("gradcam", "gradient-x-input")
GRADIENT_X_INPUT_SIGMA_PX = 1.5


@dataclass
class SaliencyConfig(configs.DictConfig):
    """How the saliency volume and its top-region label map are made."""

    target: str = "predicted"     # explain the predicted class, or always amyloid positivity
    top_percentile: float = 90.0  # top regions: saliency above this percentile inside the brain
    max_regions: int = 255        # connected top regions kept as separate labels (uint8)
    method: str = "gradcam"       # "gradcam" or "gradient-x-input" (SALIENCY_METHODS)

    def __post_init__(self) -> None:
        if self.target not in SALIENCY_TARGETS:
            raise ConfigError(f"saliency target must be one of {', '.join(SALIENCY_TARGETS)}, "
                              f"got {self.target!r}")
        if self.method not in SALIENCY_METHODS:
            raise ConfigError(f"saliency method must be one of {', '.join(SALIENCY_METHODS)}, "
                              f"got {self.method!r}")
        if not 0.0 <= self.top_percentile < 100.0:
            raise ConfigError(f"top_percentile must be in [0, 100), got {self.top_percentile}")
        if not 1 <= self.max_regions <= 255:
            raise ConfigError(f"max_regions must be in 1..255 (uint8 labels), got {self.max_regions}")


@dataclass
class SaliencyResult:
    """Saliency of one case: [0, 1] maps in MNI and on the native grid, plus top-region labels."""

    mni: Volume
    native: Volume
    top_regions_mni: Volume
    top_regions: Volume
    slice_maps: np.ndarray          # (N, S, S) Grad-CAM per slice, before volume scaling
    target_label: int               # the class the maps explain (1 = amyloid positive)
    threshold: float                # saliency value above which a voxel is a top region


class _SliceBagModel(torch.nn.Module):
    """A student seen by pytorch-grad-cam: one case's N slices as the batch, its logit as output.

    Grad-CAM hooks the encoder layer, which sees the slices as a batch of B*N images, so the
    N slices of one case arrive as a batch of N maps.
    """

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.student(slices.unsqueeze(0)).logits.reshape(1, 1)


class _LogitTarget:
    """Grad-CAM target: the case logit for the positive class, its negative for the negative.

    With ``label=None`` the class is the predicted one, decided from the output itself
    (``sigmoid(logit) >= threshold``), so one forward pass serves prediction and saliency.
    """

    def __init__(self, label: int | None, threshold: float = 0.5) -> None:
        self.label = label
        self.threshold = threshold
        self.logit: float | None = None

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        logit = model_output[0]
        self.logit = float(logit.detach().float().cpu())
        if self.label is None:
            self.label = int(float(torch.sigmoid(logit.detach().float())) >= self.threshold)
        return logit if self.label == 1 else -logit


@dataclass
class SliceMaps:
    """Grad-CAM of one case: per-slice maps, the logit of the same forward pass, and its time."""

    maps: np.ndarray          # (N, S, S), non-negative, comparable across slices
    logit: float              # the case logit (eval mode), as a plain forward pass gives it
    target_label: int         # the class the maps explain (1 = amyloid positive)
    forward_seconds: float    # time of the forward pass alone (the rest is the backward pass)


@lru_cache(maxsize=1)
def _unscaled_gradcam_class():
    # Imported here: pytorch-grad-cam pulls in OpenCV, which the rest of the library never needs.
    from pytorch_grad_cam import GradCAM

    class UnscaledGradCAM(GradCAM):
        """GradCAM that resizes each slice's map without rescaling it to [0, 1] on its own."""

        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):  # noqa: D102
            activations = [a.float().cpu().numpy() for a in self.activations_and_grads.activations]
            gradients = [g.float().cpu().numpy() for g in self.activations_and_grads.gradients]
            if len(gradients) != len(self.target_layers):
                raise RuntimeError(
                    "Grad-CAM received no gradient at the target layer; the layer is not on the "
                    "path from the input to the logit (check gradcam_target_layers())")
            size = tuple(input_tensor.shape[-2:])
            per_layer = []
            for layer, acts, grads in zip(self.target_layers, activations, gradients):
                cam = self.get_cam_image(input_tensor, layer, targets, acts, grads, eigen_smooth)
                cam = torch.from_numpy(np.maximum(cam, 0.0).astype(np.float32))[:, None]
                cam = torch.nn.functional.interpolate(cam, size=size, mode="bilinear",
                                                      align_corners=False)
                per_layer.append(cam[:, 0].numpy())
            return per_layer

        def aggregate_multi_layers(self, cam_per_target_layer):  # noqa: D102
            return np.maximum(np.mean(np.stack(cam_per_target_layer, axis=0), axis=0), 0.0)

    return UnscaledGradCAM


def gradcam_parts(model: torch.nn.Module) -> tuple[list[torch.nn.Module], Callable | None]:
    """The student's Grad-CAM target layers and token->map reshape (None for CNN students)."""
    owner = model if hasattr(model, "gradcam_target_layers") else getattr(model, "encoder", None)
    if owner is None or not hasattr(owner, "gradcam_target_layers"):
        raise ConfigError(f"{type(model).__name__} has no gradcam_target_layers(); saliency needs "
                          "a student built by AmyloidKDLib.models.build_model")
    return list(owner.gradcam_target_layers()), getattr(owner, "gradcam_reshape_transform", None)


def slice_gradcam(model: torch.nn.Module, slices: torch.Tensor, target_label: int | None = None,
                  threshold: float = 0.5) -> SliceMaps:
    """Grad-CAM of one case: ``slices`` (N, 3, S, S) -> non-negative maps (N, S, S) and the logit.

    ``target_label`` 1 explains evidence for amyloid positivity (the logit), 0 evidence for
    negativity (minus the logit), None the predicted class (probability >= ``threshold``).
    Magnitudes are comparable across the N slices.
    """
    layers, reshape = gradcam_parts(model)
    with _frozen_in_eval(model):
        return _slice_gradcam(model, slices, layers, reshape, target_label, threshold)


def _slice_gradcam(model: torch.nn.Module, slices: torch.Tensor, layers: list, reshape: Callable | None,
                   target_label: int | None, threshold: float) -> SliceMaps:
    device = next(model.parameters()).device
    # Gradients are needed only from the target layer on: with every parameter frozen, start the
    # graph at that layer's output, so the backward pass skips the encoder below it.
    graph_starts = [layer.register_forward_hook(_start_graph_here) for layer in layers]
    # The student's own adapter when it has one (models contract), else the equivalent here.
    case_model = model.gradcam_model() if hasattr(model, "gradcam_model") else _SliceBagModel(model)
    clock: dict[str, float] = {}
    timers = [case_model.register_forward_pre_hook(
                  lambda *_: clock.__setitem__("start", time.perf_counter())),
              case_model.register_forward_hook(
                  lambda *_: clock.__setitem__("stop", time.perf_counter()))]
    target = _LogitTarget(target_label, threshold)
    cam = _unscaled_gradcam_class()(case_model, layers, reshape_transform=reshape)
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=slices.to(device), targets=[target])
    finally:
        cam.activations_and_grads.release()
        for handle in graph_starts + timers:
            handle.remove()
    return SliceMaps(np.asarray(maps, dtype=np.float32), float(target.logit), int(target.label),
                     clock["stop"] - clock["start"])


def slice_gradient_x_input(model: torch.nn.Module, slices: torch.Tensor, target_label: int | None = None,
                           threshold: float = 0.5) -> SliceMaps:
    """Gradient x input of one case: ``slices`` (N, 3, S, S) -> non-negative maps (N, S, S) at the
    input's own resolution, and the logit; the same contract as :func:`slice_gradcam`.

    Each pixel's map value is the positive part of sum over channels of d(score)/d(pixel) * pixel
    (score: the logit for ``target_label`` 1, minus it for 0, the predicted class for None),
    smoothed by a Gaussian of GRADIENT_X_INPUT_SIGMA_PX pixels (single pixels' gradients are
    noisy). Unlike Grad-CAM it needs no target layer, so it serves CNN and ViT students alike,
    and its resolution is the slice's, not the last stage's grid.
    """
    device = next(model.parameters()).device
    with _frozen_in_eval(model):
        images = slices.to(device).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            started = time.perf_counter()
            logit = model(images.unsqueeze(0)).logits.reshape(-1)[0]
            forward_seconds = time.perf_counter() - started
            label = target_label
            if label is None:
                label = int(float(torch.sigmoid(logit.detach().float())) >= threshold)
            (logit if label == 1 else -logit).backward()
        attribution = (images.grad.float() * images.detach().float()).sum(dim=1).cpu().numpy()
    maps = ndimage.gaussian_filter(np.maximum(attribution, 0.0),
                                   sigma=(0.0, GRADIENT_X_INPUT_SIGMA_PX, GRADIENT_X_INPUT_SIGMA_PX))
    return SliceMaps(maps.astype(np.float32), float(logit.detach().float()), int(label), forward_seconds)


def slice_saliency(model: torch.nn.Module, slices: torch.Tensor, target_label: int | None = None,
                   threshold: float = 0.5, method: str = "gradcam") -> SliceMaps:
    """Per-slice maps by ``method`` (:data:`SALIENCY_METHODS`)."""
    if method == "gradient-x-input":
        return slice_gradient_x_input(model, slices, target_label, threshold)
    return slice_gradcam(model, slices, target_label, threshold)


@contextlib.contextmanager
def _frozen_in_eval(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode with every parameter frozen (no weight gradients are kept), restored after."""
    was_training = model.training
    model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
        model.train(was_training)


def _start_graph_here(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach().requires_grad_(True)
    return output


def scale_in_brain(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale non-negative evidence to [0, 1] by its maximum inside the brain; 0 outside it.

    Dividing by the maximum (not min-max) keeps 0 meaning "no evidence"; a map with no
    evidence anywhere stays all zero.
    """
    brain = np.asarray(mask) > 0.5
    scaled = np.zeros(data.shape, dtype=np.float32)
    values = np.maximum(np.asarray(data, dtype=np.float32), 0.0)
    peak = float(values[brain].max()) if brain.any() else 0.0
    if peak > 0.0:
        scaled[brain] = values[brain] / peak
    return np.clip(scaled, 0.0, 1.0)


def top_region_labels(saliency: np.ndarray, mask: np.ndarray, percentile: float,
                      max_regions: int = 255) -> tuple[np.ndarray, float]:
    """Label map (uint8) of the connected regions above ``percentile`` inside the brain.

    Regions are numbered 1, 2, ... by their summed saliency (1 = strongest); regions beyond
    ``max_regions`` share the last label. Returns the labels and the saliency threshold used.
    """
    brain = np.asarray(mask) > 0.5
    labels = np.zeros(saliency.shape, dtype=np.uint8)
    if not brain.any():
        return labels, 0.0
    threshold = float(np.percentile(saliency[brain], percentile))
    top = brain & (saliency > threshold)
    components, count = ndimage.label(top)
    if count == 0:
        return labels, threshold
    strength = ndimage.sum_labels(saliency, components, index=np.arange(1, count + 1))
    order = np.argsort(-strength, kind="stable")
    new_label = np.zeros(count + 1, dtype=np.uint8)
    new_label[order + 1] = np.minimum(np.arange(1, count + 1), max_regions).astype(np.uint8)
    return new_label[components], threshold


def warp_to_native(transform: Any, volume: Volume, support: np.ndarray, native: Volume,
                   interpolation: str) -> np.ndarray:
    """``volume`` (zero outside ``support``) pulled onto ``native``'s grid through the inverse
    of ``transform``, resampling only the box it can reach (``Transform.reach``)."""
    from AmyloidKDLib.registration import Grid

    out = np.zeros(native.shape, np.float32)
    box = transform.reach(support, volume, "inverse", native)
    box = box or tuple(slice(0, n) for n in native.shape)
    if any(b.stop <= b.start for b in box):
        return out
    out[box] = transform.apply(volume, direction="inverse", interpolation=interpolation,
                               reference=Grid.of(native).crop(box)).data
    return out


def saliency_volumes(slice_maps: np.ndarray, place_back: Callable[[np.ndarray, Volume], np.ndarray],
                     mni_reference: Volume, mni_mask: Volume, transform: Any, native: Volume,
                     config: SaliencyConfig, target_label: int = 1) -> SaliencyResult:
    """Per-slice maps -> MNI slabs -> [0, 1] in the brain -> native grid, plus top regions.

    Args:
        slice_maps: (N, S, S) non-negative maps, in the layout of the model's input slices.
        place_back: ``SliceStack.place_back`` of the stack the maps were computed on.
        mni_reference: the prepared MRI in MNI space (grid of the slices).
        mni_mask: brain mask on that grid.
        transform: the case's ``mri_to_mni`` Transform; its inverse maps MNI -> native.
        native: the user's MRI, whose grid the native outputs share.
    """
    mni_data = np.asarray(place_back(slice_maps, mni_reference), dtype=np.float32)
    if mni_data.shape != mni_reference.shape:
        raise RuntimeError(f"place_back returned shape {mni_data.shape}, expected the MNI grid "
                           f"{mni_reference.shape}")
    mni_scaled = scale_in_brain(mni_data, mni_mask.data)
    labels_mni, threshold = top_region_labels(mni_scaled, mni_mask.data, config.top_percentile,
                                              config.max_regions)
    mni_volume = mni_reference.with_data(mni_scaled, modality="saliency")
    labels_mni_volume = mni_reference.with_data(labels_mni, modality="label")

    # Only the part of the native grid that the evidence maps onto can be non-zero: resample
    # that box (the whole grid when the transform is not linear) and leave the rest 0.
    native_saliency = warp_to_native(transform, mni_volume, mni_scaled > 0, native, "linear")
    native_labels = warp_to_native(transform, labels_mni_volume, labels_mni > 0, native,
                                       "nearest")
    native_saliency = Volume(np.clip(native_saliency, 0.0, 1.0), native.affine.copy(),
                             "saliency", native.source)
    native_labels = Volume(np.rint(native_labels), native.affine.copy(), "label", native.source)
    return SaliencyResult(mni=mni_volume, native=native_saliency,
                          top_regions_mni=labels_mni_volume, top_regions=native_labels,
                          slice_maps=slice_maps, target_label=int(target_label),
                          threshold=threshold)


__all__: Sequence[str] = (
    "SaliencyConfig", "SaliencyResult", "SliceMaps", "slice_gradcam", "slice_gradient_x_input", "slice_saliency",
    "SALIENCY_METHODS", "scale_in_brain", "top_region_labels",
    "saliency_volumes", "gradcam_parts", "SALIENCY_TARGETS",
)
