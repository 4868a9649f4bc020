"""Sagittal slices of an MNI-space volume, as the 2-D encoder sees them, and the way back.

The informative sagittal range is the run of planes whose brain content (mask voxels in
the plane, relative to the fullest plane) is above ``min_brain_fraction``; ``n_slices``
planes are spread uniformly over it in anatomical order (left -> right). Each plane is
shown with superior at the top and anterior on the right, padded to a square (no aspect
distortion), resized, repeated to 3 channels and normalised with the encoder's pretrained
mean/std (CLIP's, for every encoder we ship). The plane positions are kept, so a 2-D map per slice can be placed back into the volume (:meth:`SliceStack.place_back`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from AmyloidKDLib import configs
from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.models.encoders import get_encoder_spec
from AmyloidKDLib.volume import Volume


@dataclass
class SliceConfig(configs.DictConfig):
    """Which sagittal slices the encoder sees, and how they are turned into images.

    The intensity normalisation is not a setting: it is the ``mean``/``std`` of ``encoder``'s
    pretrained preprocessing (``AmyloidKDLib.models.encoders.EncoderSpec``; BiomedCLIP's
    open_clip config, i.e. the OpenAI CLIP values). All models of a training run share one
    slice stack, so it follows the pretrained encoder.
    """

    n_slices: int = 15
    image_size: int = 224
    min_brain_fraction: float = 0.2
    encoder: str = "biomedclip"   # whose pretrained preprocessing normalises the slices

    def __post_init__(self) -> None:
        get_encoder_spec(self.encoder)  # an unknown name raises ConfigError with suggestions
        if self.n_slices < 1:
            raise ConfigError(f"n_slices must be >= 1, got {self.n_slices}")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8 pixels, got {self.image_size}")
        if not 0.0 <= self.min_brain_fraction < 1.0:
            raise ConfigError(f"min_brain_fraction must be in [0, 1), got {self.min_brain_fraction}")

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean subtracted from the slices (the encoder's pretrained config)."""
        return get_encoder_spec(self.encoder).mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation the slices are divided by (the encoder's)."""
        return get_encoder_spec(self.encoder).std

    @classmethod
    def from_dict(cls, values: dict) -> "SliceConfig":
        """Settings from :meth:`to_dict`; an unknown key is an error naming the valid ones.

        Checkpoints written before the normalisation came from the encoder store ``mean`` and
        ``std``; they load when those equal the encoder's.
        """
        values = dict(values)
        legacy = {key: values.pop(key) for key in ("mean", "std") if key in values}
        config = configs.from_dict(cls, values)
        for key, stored in legacy.items():
            expected = getattr(config, key)
            try:
                matches = tuple(float(v) for v in stored) == expected
            except (TypeError, ValueError):
                matches = False
            if not matches:
                raise ConfigError(f"slice normalisation {key} {stored!r} differs from the "
                                  f"{config.encoder} encoder's {list(expected)}; these slices "
                                  "cannot be reproduced by this AmyloidKD version")
        return config


@dataclass
class SliceStack:
    """Model-ready slices of one volume and where they came from.

    Attributes:
        images: float32 ``[N, 3, S, S]``, CLIP-normalised.
        positions: sagittal plane indices (axis 0 of the RAS volume), ascending = left->right.
        slabs: ``[N, 2]`` first and last+1 plane each slice stands for (used by place_back).
        plane_shape: (Y, Z) size of one sagittal plane of the source volume.
        pad: (rows_before, cols_before) padding added to make the plane square.
    """

    images: np.ndarray
    positions: np.ndarray
    slabs: np.ndarray
    plane_shape: tuple[int, int]
    pad: tuple[int, int]
    config: SliceConfig

    def place_back(self, maps: np.ndarray | torch.Tensor, reference_volume: Volume) -> np.ndarray:
        """Put ``maps[N, S, S]`` (one 2-D map per slice) back into a volume of the source shape.

        Each map is resized back to the plane, un-padded, un-rotated, and fills every plane
        of its slab; planes outside the informative range stay 0.
        """
        maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
        n, size = len(self.positions), self.config.image_size
        if maps.shape != (n, size, size):
            raise InputError(f"place_back needs maps of shape {(n, size, size)}, got {maps.shape}")
        if reference_volume.shape[1:] != self.plane_shape:
            raise InputError(f"reference volume {reference_volume.shape} is not the grid these slices "
                             f"came from (planes of {self.plane_shape}); pass the MNI-space volume")
        side = max(self.plane_shape)
        square = F.interpolate(torch.from_numpy(maps.astype(np.float32))[:, None], size=(side, side),
                               mode="bilinear", align_corners=False)[:, 0].numpy()
        rows, cols = self.plane_shape[1], self.plane_shape[0]
        out = np.zeros(reference_volume.shape, np.float32)
        for image, (start, stop) in zip(square, self.slabs):
            display = image[self.pad[0]:self.pad[0] + rows, self.pad[1]:self.pad[1] + cols]
            out[start:stop] = _from_display(display)[None]
        return out


def _to_display(plane: np.ndarray) -> np.ndarray:
    """(Y, Z) plane -> rows superior->inferior, columns posterior->anterior."""
    return plane.T[::-1]


def _from_display(image: np.ndarray) -> np.ndarray:
    return image[::-1].T


def informative_range(mask: Volume, min_brain_fraction: float) -> tuple[int, int]:
    """First and last sagittal plane whose brain voxel count is >= fraction x the fullest plane."""
    counts = (mask.data > 0.5).sum(axis=(1, 2)).astype(np.float64)
    if counts.max() == 0:
        raise InputError("the brain mask is empty; no sagittal plane holds brain")
    keep = np.flatnonzero(counts >= min_brain_fraction * counts.max())
    return int(keep[0]), int(keep[-1])


def _check_ras(volume: Volume, what: str) -> None:
    if volume.orientation != "RAS":
        raise InputError(f"the {what} is in {volume.orientation} orientation; sagittal slicing needs "
                         "RAS+ voxel order (load it with load_volume or resample it to MNI first)")


def sagittal_slices(volume: Volume, mask: Volume, config: SliceConfig | None = None,
                    positions: np.ndarray | list[int] | None = None) -> SliceStack:
    """Slice ``volume`` (values in [0, 1]) at uniformly spaced informative sagittal planes.

    Pass ``positions`` (e.g. ``stack.positions`` from the MRI) to slice a second volume,
    such as the subject's PET, at exactly the same planes.
    """
    config = config or SliceConfig()
    _check_ras(volume, "volume")
    if mask.shape != volume.shape:
        raise InputError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
    first, last = informative_range(mask, config.min_brain_fraction)
    if positions is None:
        if last - first + 1 < config.n_slices:
            raise InputError(f"only {last - first + 1} informative sagittal planes for "
                             f"{config.n_slices} slices; lower n_slices or min_brain_fraction")
        positions = np.round(np.linspace(first, last, config.n_slices)).astype(int)
    positions = np.asarray(positions, dtype=int)
    if len(positions) != config.n_slices or np.any(np.diff(positions) <= 0) \
            or positions[0] < 0 or positions[-1] >= volume.shape[0]:
        raise InputError(f"positions must be {config.n_slices} increasing plane indices within "
                         f"[0, {volume.shape[0]}), got {positions.tolist()}")
    edges = np.concatenate([[min(first, positions[0])], (positions[:-1] + positions[1:] + 1) // 2,
                            [max(last, positions[-1]) + 1]])
    slabs = np.stack([edges[:-1], edges[1:]], axis=1)

    planes = np.stack([_to_display(volume.data[p]) for p in positions]).astype(np.float32)
    rows, cols = planes.shape[1:]
    side = max(rows, cols)
    pad = ((side - rows) // 2, (side - cols) // 2)
    square = np.zeros((len(positions), side, side), np.float32)
    square[:, pad[0]:pad[0] + rows, pad[1]:pad[1] + cols] = planes
    resized = F.interpolate(torch.from_numpy(square)[:, None], size=(config.image_size,) * 2,
                            mode="bilinear", align_corners=False, antialias=side > config.image_size)
    images = resized.repeat(1, 3, 1, 1)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    images = ((images - mean) / std).numpy().astype(np.float32)
    return SliceStack(images, positions, slabs, (volume.shape[1], volume.shape[2]), pad, config)
