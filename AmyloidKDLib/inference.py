"""Predict amyloid positivity for one MRI with a trained student checkpoint.

:class:`Predictor` loads a student (paper or light) with :func:`load_checkpoint`, prepares
the raw MRI exactly as training did (the ``PrepConfig`` and ``SliceConfig`` stored in the
checkpoint), runs the model, and makes the Grad-CAM saliency volume on the user's grid.
Nothing is downloaded: the checkpoint folder holds everything the student needs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AmyloidKDLib.errors import CheckpointError, ConfigError
from AmyloidKDLib.saliency import SaliencyConfig, SaliencyResult, saliency_volumes, slice_gradcam
from AmyloidKDLib.volume import Volume, load_volume

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
STUDENT_KINDS = ("student", "light_student")
#: Seed set before every prediction so that dropout-free eval runs repeat bit for bit.
PREDICTION_SEED = 0

#: Steps reported through ``on_step`` and in ``PredictionResult.timings`` (seconds).
PREDICTION_STEPS = ("prepare", "model", "saliency")


@dataclass
class PredictionResult:
    """What one prediction produced.

    Attributes:
        probability: P(amyloid positive) from the student, in [0, 1].
        label: 1 if ``probability >= threshold`` else 0.
        threshold: the checkpoint's decision threshold (chosen on validation in training).
        timings: seconds per step (``prepare``, ``model``, ``saliency``, ``total``) plus the
            preparation's own steps as ``prepare/<name>``.
        mri: the input MRI (native grid).
        saliency: [0, 1] saliency on the native grid, or None when saliency was not asked for.
        saliency_mni: the same in MNI space (grid of the prepared MRI).
        top_regions: uint8 label map of the top-saliency regions, native grid.
        saliency_target: the class the saliency explains (1 = amyloid positive).
        device: where the model ran.
    """

    probability: float
    label: int
    threshold: float
    timings: dict[str, float]
    mri: Volume
    saliency: Volume | None = None
    saliency_mni: Volume | None = None
    top_regions: Volume | None = None
    saliency_target: int = 1
    device: str = "cpu"
    details: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but PyTorch sees no CUDA GPU here; "
                          "use --device cpu (or auto)")
    return torch.device(device)


class Predictor:
    """A loaded student checkpoint that turns raw MRIs into predictions and saliency maps.

    Args:
        checkpoint: checkpoint folder (``model.safetensors`` + ``checkpoint.json``).
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        skull_strip: override the checkpoint's skull-stripping method (``hd-bet-v1``,
            ``hd-bet`` or ``none``), e.g. ``none`` for an already skull-stripped input.
            Everything else of the preparation stays as in training.
        saliency: make the Grad-CAM saliency volumes (costs one backward pass).
        saliency_config: how saliency and top regions are made.
        deterministic: on CPU, ask PyTorch for deterministic algorithms (process-wide) so
            repeated predictions are identical.
        cache_dir: optional cache for preparation (passed to ``prepare_case``).

    Raises:
        CheckpointError: missing/damaged checkpoint, or one that is not a student.
        ConfigError: bad device or skull-strip choice.
    """

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "auto",
                 skull_strip: str | None = None, saliency: bool = True,
                 saliency_config: SaliencyConfig | None = None, deterministic: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> None:
        from AmyloidKDLib.checkpoint import load_checkpoint

        self.device = resolve_device(device)
        self.checkpoint = Path(checkpoint)
        model, info = load_checkpoint(self.checkpoint, device=self.device)
        self.info = info
        kind = _info_get(info, "model_config", "kind", default=None)
        if kind is not None and kind not in STUDENT_KINDS:
            raise CheckpointError(f"{self.checkpoint} holds a {kind!r} model; prediction needs a "
                                  f"student checkpoint ({' or '.join(STUDENT_KINDS)}) - the "
                                  "teacher needs PET and is only used in training")
        self.prep_config = _prep_config_from(info, self.checkpoint, skull_strip)
        self.slice_config = _slice_config_from(info, self.checkpoint)
        self.threshold = float(_info_get(info, "threshold", default=0.5))
        self.make_saliency = saliency
        self.saliency_config = saliency_config or SaliencyConfig()
        self.cache_dir = cache_dir
        if deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.model = model.to(self.device).eval()

    def predict_file(self, path: str | os.PathLike,
                     on_step: Callable[[str], None] | None = None) -> PredictionResult:
        """Load a NIfTI T1 (validated, RAS+) and predict; see :meth:`predict`."""
        return self.predict(load_volume(path, "T1w"), on_step=on_step)

    def predict(self, mri: Volume, on_step: Callable[[str], None] | None = None) -> PredictionResult:
        """Prepare ``mri`` as in training, run the student and make the saliency volumes.

        ``on_step(name)`` is called after each of ``PREDICTION_STEPS`` (for progress bars).
        """
        from AmyloidKDLib.pipeline import prepare_case
        from AmyloidKDLib.slicing import sagittal_slices

        timings: dict[str, float] = {}
        start = time.perf_counter()
        prepared = prepare_case(mri, None, config=self.prep_config, cache_dir=self.cache_dir)
        for step in getattr(prepared, "steps", None) or []:
            timings[f"prepare/{step.get('name', '?')}"] = float(step.get("seconds", 0.0))
        timings["prepare"] = time.perf_counter() - start
        _notify(on_step, "prepare")

        started = time.perf_counter()
        stack = sagittal_slices(prepared.mri, prepared.mask, self.slice_config)
        slices = torch.as_tensor(np.asarray(stack.images), dtype=torch.float32)
        torch.manual_seed(PREDICTION_SEED)
        with torch.inference_mode():
            output = self.model(slices.unsqueeze(0).to(self.device))
        logits = output.logits if hasattr(output, "logits") else output
        probability = float(torch.sigmoid(logits.float().reshape(-1)[0]).cpu())
        label = int(probability >= self.threshold)
        timings["model"] = time.perf_counter() - started
        _notify(on_step, "model")

        result = PredictionResult(probability=probability, label=label, threshold=self.threshold,
                                  timings=timings, mri=mri, device=str(self.device))
        if self.make_saliency:
            started = time.perf_counter()
            target = label if self.saliency_config.target == "predicted" else 1
            maps = slice_gradcam(self.model, slices, target)
            sal: SaliencyResult = saliency_volumes(
                maps, stack.place_back, prepared.mri, prepared.mask, prepared.mri_to_mni, mri,
                self.saliency_config, target_label=target)
            result.saliency, result.saliency_mni = sal.native, sal.mni
            result.top_regions, result.saliency_target = sal.top_regions, sal.target_label
            result.details["saliency_threshold"] = sal.threshold
            result.details["slice_positions"] = [int(p) for p in np.asarray(stack.positions)]
            timings["saliency"] = time.perf_counter() - started
        _notify(on_step, "saliency")
        timings["total"] = time.perf_counter() - start
        return result


def _notify(on_step: Callable[[str], None] | None, name: str) -> None:
    if on_step is not None:
        on_step(name)


def _info_get(info: Any, *keys: str, default: Any = None) -> Any:
    value = info
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, None)
        else:
            value = getattr(value, key, None)
        if value is None:
            return default
    return value


def _prep_config_from(info: Any, checkpoint: Path, skull_strip: str | None):
    from AmyloidKDLib.pipeline import PrepConfig

    stored = _info_get(info, "prep_config", default=None)
    if stored is None:
        raise CheckpointError(f"{checkpoint}: checkpoint.json has no preprocessing config; "
                              "it cannot be prepared as in training - re-save it with a current "
                              "AmyloidKD")
    config = stored if isinstance(stored, PrepConfig) else PrepConfig.from_dict(dict(stored))
    if skull_strip is not None:
        config = _with_skull_strip(config, skull_strip)
    return config


def _with_skull_strip(config: Any, method: str) -> Any:
    values = config.to_dict()
    values["skull_strip"] = method
    return type(config).from_dict(values)


def _slice_config_from(info: Any, checkpoint: Path):
    from AmyloidKDLib.slicing import SliceConfig

    stored = _info_get(info, "slice_config", default=None)
    if stored is None:
        raise CheckpointError(f"{checkpoint}: checkpoint.json has no slice config; re-save it "
                              "with a current AmyloidKD")
    if isinstance(stored, SliceConfig):
        return stored
    if hasattr(SliceConfig, "from_dict"):
        return SliceConfig.from_dict(dict(stored))
    return SliceConfig(**dict(stored))
