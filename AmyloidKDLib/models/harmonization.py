"""Per-tracer PET harmonisation for the teacher: each PET stack becomes its deviation from the
amyloid-negative reference of its own tracer.

Florbetapir (AV45) and PiB SUVR images differ by more than their cortical uptake: AV45 binds
white matter more (SUVR about 1.55 against 1.35) and has a smaller cortical dynamic range. A
teacher fed raw SUVR slices learns tracer as much as amyloid, and the students then distil the
tracer offset, which no MRI can show. The harmonised input is, per tracer ``t``,

    ``h = (pet - reference_t) / scale_t``

where ``reference_t`` is the mean slice stack of the training fold's amyloid-negative cases of
tracer ``t`` and ``scale_t`` the standard deviation of those cases' deviations inside the brain
(a voxel-wise W-score against same-tracer controls, with one pooled scale). Amyloid then
appears as positive cortical deviation whatever the tracer; background stays 0.

The reference is fitted once per training run (:meth:`PetHarmonization.fit`) and kept as
buffers, so the teacher's checkpoint carries it. A tracer with too few negatives in the
training fold, and a case whose tracer is unknown, use the reference pooled over all tracers.
An unfitted module is the identity (teachers saved before it existed load that way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.models.heads import FittedStatistics

#: Tracers with their own reference; any other (or unknown) tracer uses the pooled one.
PET_TRACERS = ("AV45", "PIB")
POOLED = len(PET_TRACERS)


def tracer_index(tracer: str | None) -> int:
    """Row of ``tracer`` in the reference (``POOLED`` for unknown tracers)."""
    name = (tracer or "").strip().upper()
    return PET_TRACERS.index(name) if name in PET_TRACERS else POOLED


class PetHarmonization(FittedStatistics):
    """``pet[B, N, C, S, S], tracer[B] -> (pet - reference[tracer]) / scale[tracer]`` (per channel)."""

    def __init__(self, n_slices: int, channels: int, image_size: int) -> None:
        super().__init__()
        rows = len(PET_TRACERS) + 1
        self.register_buffer("reference", torch.zeros(rows, n_slices, channels, image_size, image_size))
        self.register_buffer("scale", torch.ones(rows, channels))
        self._register_fitted_flag()

    def forward(self, pet: torch.Tensor, tracer: torch.Tensor | None = None) -> torch.Tensor:
        """Harmonised PET stacks; ``tracer`` holds :func:`tracer_index` rows (None: all unknown)."""
        if not self.is_fitted:
            return pet
        if pet.dim() != 5 or pet.shape[1:] != self.reference.shape[1:]:
            raise InputError(f"PET stacks must be [B, {', '.join(map(str, self.reference.shape[1:]))}] "
                             f"for this teacher's harmonisation, got {tuple(pet.shape)}.")
        if tracer is None:
            tracer = torch.full((pet.shape[0],), POOLED, dtype=torch.long)
        if tracer.shape != (pet.shape[0],):
            raise InputError(f"one tracer row per PET stack is needed: {pet.shape[0]} stacks, tracer "
                             f"shaped {tuple(tracer.shape)}.")
        tracer = tracer.to(self.reference.device).long()
        reference = self.reference[tracer].to(pet.dtype)
        scale = self.scale[tracer].to(pet.dtype)[:, None, :, None, None]
        return (pet - reference) / scale

    @torch.no_grad()
    def fit(self, stacks: Sequence[torch.Tensor], tracers: Sequence[int], labels: Sequence[int],
            min_cases: int = 3) -> dict[str, Any]:
        """Fit the references on training cases: ``stacks[k]`` ``[N, C, S, S]`` (CLIP-normalised
        PET), ``tracers[k]`` a :func:`tracer_index` row, ``labels[k]`` 0/1.

        Each tracer's reference is the mean of its amyloid-negative cases when it has at least
        ``min_cases`` of them, else the pooled reference (mean of all negatives; of all cases
        if fewer than ``min_cases`` negatives exist). Returns what was used, for the run's history.
        """
        if not (len(stacks) == len(tracers) == len(labels)) or not stacks:
            raise InputError(f"harmonisation needs as many stacks, tracers and labels (>= 1); got "
                             f"{len(stacks)}, {len(tracers)}, {len(labels)}.")
        negatives = [k for k, y in enumerate(labels) if int(y) == 0]
        pooled = negatives if len(negatives) >= min_cases else list(range(len(stacks)))
        summary: dict[str, Any] = {}
        for row in range(len(PET_TRACERS) + 1):
            own = [k for k in negatives if int(tracers[k]) == row] if row < POOLED else []
            chosen, source = (own, "own negatives") if len(own) >= min_cases else (pooled, "pooled")
            reference = sum(stacks[k].float() for k in chosen) / len(chosen)
            brain = _brain_pixels(reference)
            # One scale per channel: the spread of the reference cases' deviations in the brain
            # (summed case by case, so the paper preset's large stacks never sit in memory at once).
            squares = sum(((stacks[k].float() - reference) ** 2 * brain).sum(dim=(0, 2, 3)) for k in chosen)
            count = brain.sum(dim=(0, 2, 3)) * len(chosen)
            scale = (squares / (count - 1).clamp_min(1)).sqrt().clamp_min(1e-6)
            self.reference[row] = reference
            self.scale[row] = scale
            name = PET_TRACERS[row] if row < POOLED else "unknown"
            summary[name] = {"source": source, "n_reference": len(chosen),
                             "scale": [round(float(v), 6) for v in scale]}
        self.fitted.fill_(True)
        return summary


def _brain_pixels(reference: torch.Tensor) -> torch.Tensor:
    """``[N, C, S, S]`` 0/1 mask of the pixels above the background (the minimum) in every channel."""
    lowest = reference.amin(dim=(0, 2, 3), keepdim=True)
    span = reference.amax(dim=(0, 2, 3), keepdim=True) - lowest
    inside = (reference - lowest > 1e-3 * span).all(dim=1, keepdim=True)
    return inside.expand_as(reference).float()


__all__ = ["PET_TRACERS", "POOLED", "PetHarmonization", "tracer_index"]
