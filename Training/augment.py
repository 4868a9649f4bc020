"""Paired MRI / PET augmentation of slice stacks: one spatial draw for both modalities.

Inputs are the model's CLIP-normalised slice stacks ``[N, 3, S, S]`` (or a batch
``[B, N, 3, S, S]``). A random in-plane rotation, scaling and translation is drawn once per
case and applied to every slice of the MRI *and* the PET, so the two stay registered.
Intensity jitter touches the MRI only: the PET's absolute SUVR scale is the signal and is
never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from AmyloidKDLib.errors import ConfigError, InputError


@dataclass
class AugmentConfig:
    """Strength of the paired augmentation (all zero = off)."""

    enabled: bool = True
    max_rotation_deg: float = 5.0     # in-plane rotation, uniform in [-max, max]
    max_scale: float = 0.05           # isotropic zoom factor in [1 - max, 1 + max]
    max_translation: float = 0.04     # shift as a fraction of the image side
    mri_contrast: float = 0.1         # MRI intensity x (1 +/- contrast)
    mri_brightness: float = 0.1       # MRI intensity + (+/- brightness), normalised units

    def __post_init__(self) -> None:
        for name in ("max_rotation_deg", "max_scale", "max_translation", "mri_contrast",
                     "mri_brightness"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}.")
        if self.max_scale >= 0.5 or self.max_translation >= 0.5:
            raise ConfigError("augment.max_scale and augment.max_translation must be < 0.5.")


def random_affines(batch: int, config: AugmentConfig, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """``batch`` random 2x3 affine matrices (rotation, zoom, shift) for ``affine_grid``."""

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(batch, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(config.max_rotation_deg))
    scale = 1 + uniform(config.max_scale)
    shift = torch.stack([uniform(2 * config.max_translation), uniform(2 * config.max_translation)], 1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def apply_affines(stacks: torch.Tensor, theta: torch.Tensor, background: float | None = None
                  ) -> torch.Tensor:
    """Warp every slice of case ``b`` in ``stacks[B, N, C, S, S]`` with ``theta[b]``.

    Outside the image ``background`` is used; by default each slice's minimum, i.e. what zero
    intensity became after CLIP normalisation (a harmonised PET stack has background 0).
    """
    b, n, c, h, w = stacks.shape
    flat = stacks.reshape(b * n, c, h, w)
    if background is None:
        background = flat.amin(dim=(2, 3), keepdim=True)
    theta = theta.to(device=stacks.device, dtype=stacks.dtype)
    grid = F.affine_grid(theta.repeat_interleave(n, 0), [b * n, c, h, w],
                         align_corners=False)
    warped = F.grid_sample(flat - background, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False) + background
    return warped.reshape(b, n, c, h, w)


def augment_pair(mri: torch.Tensor, pet: torch.Tensor | None, config: AugmentConfig,
                 generator: torch.Generator | None = None, pet_background: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment MRI and (optional) PET stacks with the same spatial draw per case.

    Accepts ``[N, 3, S, S]`` or ``[B, N, 3, S, S]``; returns tensors of the same shapes.
    ``pet_background`` fills the PET outside the image (default: each slice's minimum).
    The stacks stay on their device (CPU or GPU): only the few random parameters are drawn
    on the CPU (with ``generator``, so a draw is the same on every device) and moved there.
    """
    if not config.enabled:
        return mri, pet
    single = mri.dim() == 4
    if single:
        mri = mri.unsqueeze(0)
        pet = None if pet is None else pet.unsqueeze(0)
    if mri.dim() != 5:
        raise InputError(f"slice stacks must be [N, 3, S, S] or [B, N, 3, S, S], got {tuple(mri.shape)}.")
    if pet is not None and pet.shape != mri.shape:
        raise InputError(f"MRI and PET stacks differ in shape: {tuple(mri.shape)} vs {tuple(pet.shape)}.")
    theta = random_affines(mri.shape[0], config, generator)
    mri_out = apply_affines(mri, theta)
    pet_out = None if pet is None else apply_affines(pet, theta, pet_background)
    shape = (mri.shape[0], 1, 1, 1, 1)
    contrast = 1 + (torch.rand(shape, generator=generator) * 2 - 1) * config.mri_contrast
    brightness = (torch.rand(shape, generator=generator) * 2 - 1) * config.mri_brightness
    mri_out = mri_out * contrast.to(mri_out) + brightness.to(mri_out)
    if single:
        return mri_out[0], None if pet_out is None else pet_out[0]
    return mri_out, pet_out
