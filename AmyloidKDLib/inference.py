"""Predict amyloid positivity for one MRI with a trained student checkpoint.

:class:`Predictor` loads a student (paper or light) with :func:`load_checkpoint`, prepares
the raw MRI exactly as training did (the ``PrepConfig`` and ``SliceConfig`` stored in the
checkpoint), runs the model, and makes the Grad-CAM saliency volume on the user's grid.
Nothing is downloaded: the checkpoint folder holds everything the student needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AmyloidKDLib.capability import autocast_for, cpu_has_native_bf16, resolve_device
from AmyloidKDLib.errors import CheckpointError, ConfigError
from AmyloidKDLib.memory import keep_freed_memory_for_reuse, release_freed_memory
from AmyloidKDLib.saliency import SaliencyConfig, SaliencyResult, saliency_volumes, slice_saliency
from AmyloidKDLib.volume import Volume, load_volume

log = logging.getLogger(__name__)

#: Numeric precision of the student's forward pass (see :func:`resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
STUDENT_KINDS = ("student", "light_student")
#: Seed set before every prediction so that dropout-free eval runs repeat bit for bit.
PREDICTION_SEED = 0

ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

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
        top_regions: label map of the top-saliency regions on the native grid (integers
            1..255 by strength, 0 elsewhere; written as uint8).
        saliency_target: the class the saliency explains (1 = amyloid positive).
        regions: the atlas regions ranked by their share of the MNI saliency
            (:func:`AmyloidKDLib.regions.named_regions`), with saliency.
        region_ranks: on the native grid, each voxel of a listed region holds its rank in
            ``regions`` (0 elsewhere).
        device: where the model ran.
        details: extras for reports: the saliency threshold of the top regions and the
            sagittal MNI planes the model saw.
        centiloid_pred, centiloid_lo, centiloid_hi: the MRI-predicted Centiloid and its 90 %
            interval (:mod:`AmyloidKDLib.centiloid_readout`), None when the checkpoint has no
            Centiloid read-out.
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
    regions: list | None = None
    region_ranks: Volume | None = None
    details: dict[str, Any] = field(default_factory=dict)
    centiloid_pred: float | None = None
    centiloid_lo: float | None = None
    centiloid_hi: float | None = None


def resolve_precision(precision: str, device: torch.device, matmul_bound: bool = True) -> str:
    """The precision the student will run in, from the user's choice and the hardware.

    ``auto``: on a GPU bf16 where supported, else fp16; on a CPU bf16 where the CPU has
    AVX512_BF16 or AMX (:func:`AmyloidKDLib.capability.cpu_has_native_bf16`) and the model's time is in large
    matmuls (``matmul_bound``: the ViT students), else fp32. The light CNN student (under
    2 GFLOP per case) gains nothing from bf16 and pays oneDNN's bf16 set-up on its first call. int8 (dynamic quantisation
    of the encoder's Linear layers) is CPU-only and never chosen automatically: on the ViT
    student it is slower than native bf16 and not faster than fp32 on AVX2 (docs/benchmarks.md).
    fp16 is GPU-only. Explicit choices are honoured even where they are emulated (slow).

    Raises:
        ConfigError: an unknown name, fp16 on the CPU, or int8 on a GPU.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        if precision == "int8":
            raise ConfigError("precision 'int8' (dynamic quantisation) runs on the CPU only; use "
                              "bf16, fp16 or auto on a GPU, or --device cpu")
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "fp16":
        raise ConfigError("precision 'fp16' is for GPUs; on the CPU use bf16 (native on "
                          "AVX512_BF16/AMX CPUs), int8, fp32 or auto")
    if precision == "auto":
        return "bf16" if matmul_bound and cpu_has_native_bf16() else "fp32"
    return precision


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` intra-op torch threads (None: leave them), then restore.

    A small CNN's many tiny kernels gain nothing from a second thread, and when another
    process holds a core its OpenMP barriers make a 0.07 s forward pass take over 1 s
    (measured on the 2-core build machine); the light student therefore runs on one thread.
    """
    previous = torch.get_num_threads()
    if count is None or count >= previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_deterministic(device: torch.device) -> None:
    """Ask for repeatable results in this process: single-threaded ITK (ANTs), fixed seeds,
    and on the CPU deterministic PyTorch algorithms.

    ANTs registration sums its metric over threads in a varying order, so two runs of the
    same case differ slightly unless ITK uses one thread. ITK reads that setting once, at
    its first use in the process: set here before any registration runs (the ``predict``
    command does), or set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1`` in the environment.
    A value the user already set is kept.
    """
    os.environ.setdefault(ITK_THREADS_ENV, "1")
    if os.environ[ITK_THREADS_ENV] != "1":
        log.warning("%s=%s: ANTs registration may differ slightly between runs",
                    ITK_THREADS_ENV, os.environ[ITK_THREADS_ENV])
    torch.manual_seed(PREDICTION_SEED)


@contextlib.contextmanager
def deterministic_torch(enabled: bool) -> Iterator[None]:
    """Deterministic PyTorch algorithms for the student's forward/backward only.

    Scoped rather than process-wide: the same switch makes HD-BET's 3-D convolutions several
    times slower, and a library call should not change the caller's global torch settings.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


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
        deterministic: make repeated predictions identical (process-wide settings, see
            :func:`make_deterministic`): single-threaded ITK for registration, and on the CPU
            deterministic PyTorch algorithms.
        cache_dir: optional cache for preparation (passed to ``prepare_case``).
        precision: ``auto`` (default; bf16 on CPUs with AVX512_BF16/AMX and on GPUs, else
            fp32), ``fp32``, ``bf16``, ``fp16`` (GPU) or ``int8`` (CPU: dynamic quantisation
            of the encoder's Linear layers below the Grad-CAM layer); see
            :func:`resolve_precision`. Reduced precision stays within 0.01 of fp32 in
            probability and 0.98 in saliency correlation on the test cases
            (``Testing/library/test_precision.py``).

    Loading also pays the preparation's one-time costs (ANTs' import, the MNI template:
    :func:`load_preparation`) and sets glibc to keep freed blocks under 64 MB for reuse, for
    the whole process (:func:`AmyloidKDLib.memory.keep_freed_memory_for_reuse`).

    Raises:
        CheckpointError: missing/damaged checkpoint, or one that is not a student.
        ConfigError: bad device or skull-strip choice.
    """

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "auto",
                 skull_strip: str | None = None, saliency: bool = True,
                 saliency_config: SaliencyConfig | None = None, deterministic: bool = True,
                 cache_dir: str | os.PathLike | None = None, precision: str = "auto") -> None:
        from AmyloidKDLib.checkpoint import load_checkpoint
        from AmyloidKDLib.models.precision import prepare_for_inference

        self.device = resolve_device(device)
        self.checkpoint = Path(checkpoint)
        # Refuse a teacher or an inconsistent checkpoint before building its (large) model.
        described = _read_description(self.checkpoint)
        if described is not None:
            _check_student(described.get("model_config"), self.checkpoint)
            _check_slices_fit_model(described.get("model_config"), described.get("slice_config"),
                                    self.checkpoint)
        model, info = load_checkpoint(self.checkpoint, device=self.device)
        model_config = info.model_config.to_dict()
        _check_student(model_config, self.checkpoint)
        self.info = info
        # An explicit device choice applies to skull stripping too (HD-BET runs on torch).
        self.prep_config = _prep_config_from(info.prep_config, self.checkpoint, skull_strip,
                                             None if device == "auto" else self.device)
        self.slice_config = _slice_config_from(info.slice_config, self.checkpoint)
        _check_slices_fit_model(model_config, self.slice_config.to_dict(), self.checkpoint)
        self.threshold = float(info.threshold)
        self.make_saliency = saliency
        self.saliency_config = saliency_config or SaliencyConfig()
        self.cache_dir = cache_dir
        self.deterministic = deterministic and self.device.type == "cpu"
        if deterministic:
            make_deterministic(self.device)
        load_preparation(self.prep_config)
        keep_freed_memory_for_reuse()
        encoder = getattr(model, "encoder", None)
        matmul_bound = bool(getattr(encoder, "is_vit", True))
        self.precision = resolve_precision(precision, self.device, matmul_bound)
        #: torch threads for the model step: one for the small CNN student on the CPU
        self.model_threads = None if matmul_bound or self.device.type != "cpu" else 1
        # bf16 ViT layers below the Grad-CAM layer keep oneDNN's weight layout (same output);
        # gradient x input needs gradients through them, so it keeps plain layers
        pack = not saliency or self.saliency_config.method == "gradcam"
        self.model = prepare_for_inference(model.to(self.device).eval(), self.precision, pack)
        self.centiloid_readout = _centiloid_readout_from(info, self.prep_config, self.checkpoint)
        self._parcellation = _readout_parcellation(self.centiloid_readout, self.checkpoint)

    def predict_file(self, path: str | os.PathLike,
                     on_step: Callable[[str], None] | None = None) -> PredictionResult:
        """Load a NIfTI T1 (validated, RAS+) and predict; see :meth:`predict`."""
        return self.predict(load_volume(path, "T1w"), on_step=on_step)

    def predict(self, mri: Volume, on_step: Callable[[str], None] | None = None) -> PredictionResult:
        """Prepare ``mri`` as in training, run the student and make the saliency volumes.

        ``on_step(name)`` is called after each of ``PREDICTION_STEPS`` (for progress bars).
        The ``model`` time is slicing plus the forward pass (shared with Grad-CAM);
        ``saliency`` is Grad-CAM's backward pass, placing the maps back and warping them to the
        native grid.
        """
        from AmyloidKDLib.pipeline import prepare_case

        release_freed_memory()  # the previous case's temporaries: not part of this peak
        timings: dict[str, float] = {}
        start = time.perf_counter()
        prepared = prepare_case(mri, None, config=self.prep_config, cache_dir=self.cache_dir)
        for step in prepared.steps:
            timings[f"prepare/{step['name']}"] = float(step["seconds"])
        timings["prepare"] = time.perf_counter() - start
        _notify(on_step, "prepare")

        with deterministic_torch(self.deterministic), autocast_for(self.precision, self.device), \
                torch_threads(self.model_threads):
            result = self._predict_prepared(mri, prepared, timings, start, on_step)
        if self.centiloid_readout is not None:
            started = time.perf_counter()
            result.centiloid_pred, result.centiloid_lo, result.centiloid_hi = self.predict_centiloid(prepared.mri)
            timings["centiloid"] = time.perf_counter() - started
            timings["total"] = time.perf_counter() - start
        return result

    def predict_centiloid(self, prepared_mri: Volume) -> tuple[float, float, float]:
        """The checkpoint's Centiloid read-out on a prepared (MNI) MRI: (Centiloid, lower, upper)."""
        from AmyloidKDLib.regional_features import case_features

        if self.centiloid_readout is None:
            raise CheckpointError(f"{self.checkpoint} has no Centiloid read-out")
        values = self.centiloid_readout.predict(case_features(prepared_mri.data, self._parcellation)[None])
        return tuple(float(v[0]) for v in values)

    def _predict_prepared(self, mri: Volume, prepared: Any, timings: dict[str, float],
                          start: float, on_step: Callable[[str], None] | None) -> PredictionResult:
        from AmyloidKDLib.slicing import sagittal_slices

        started = time.perf_counter()
        stack = sagittal_slices(prepared.mri, prepared.mask, self.slice_config)
        slices = torch.as_tensor(np.asarray(stack.images), dtype=torch.float32)
        torch.manual_seed(PREDICTION_SEED)
        if not self.make_saliency:
            with torch.inference_mode():
                logit = float(self.model(slices.unsqueeze(0).to(self.device)).logits.reshape(-1)[0])
            timings["model"] = time.perf_counter() - started
            _notify(on_step, "model")
            result = self._result(logit, mri, timings)
            _notify(on_step, "saliency")
        else:
            # One forward pass serves the prediction and Grad-CAM; its time counts as "model".
            sliced = time.perf_counter() - started
            target = None if self.saliency_config.target == "predicted" else 1
            cam = slice_saliency(self.model, slices, target, self.threshold, self.saliency_config.method)
            timings["model"] = sliced + cam.forward_seconds
            _notify(on_step, "model")
            result = self._result(cam.logit, mri, timings)
            sal: SaliencyResult = saliency_volumes(
                cam.maps, stack.place_back, prepared.mri, prepared.mask, prepared.mri_to_mni, mri,
                self.saliency_config, target_label=cam.target_label)
            result.saliency, result.saliency_mni = sal.native, sal.mni
            result.top_regions, result.saliency_target = sal.top_regions, sal.target_label
            from AmyloidKDLib.regions import named_regions

            result.regions, result.region_ranks = named_regions(sal.mni, prepared.mri_to_mni, mri)
            result.details["saliency_threshold"] = sal.threshold
            result.details["slice_positions"] = [int(p) for p in np.asarray(stack.positions)]
            timings["saliency"] = time.perf_counter() - started - timings["model"]
            _notify(on_step, "saliency")
        timings["total"] = time.perf_counter() - start
        return result


    def _result(self, logit: float, mri: Volume, timings: dict[str, float]) -> PredictionResult:
        probability = float(torch.sigmoid(torch.tensor(logit, dtype=torch.float32)))
        return PredictionResult(probability=probability, label=int(probability >= self.threshold),
                                threshold=self.threshold, timings=timings, mri=mri,
                                device=str(self.device))


def load_preparation(prep_config: Any) -> None:
    """Pay the preparation's one-time costs now instead of in the first case: ANTs' import
    (about 1 s) and the MNI template the registration uses (about 0.5 s, then cached). Called
    by the Predictor after :func:`make_deterministic`, which ITK must see first."""
    from AmyloidKDLib.preprocess import import_ants
    from AmyloidKDLib.template import load_template

    import_ants()
    load_template(prep_config.registration.template_resolution)


def _centiloid_readout_from(info: Any, prep_config: Any, checkpoint: Path):
    """The checkpoint's Centiloid read-out (``CentiloidReadout``), or None when it has none."""
    from AmyloidKDLib.centiloid_readout import CentiloidReadout
    from AmyloidKDLib.regional_features import template_resolution

    stored = getattr(info, "centiloid_readout", None)
    if not stored:
        return None
    readout = CentiloidReadout.from_dict(stored)
    if readout.resolution != template_resolution(prep_config):
        raise CheckpointError(f"{checkpoint}: its Centiloid read-out is for the {readout.resolution} mm MNI "
                              f"grid, its preparation makes {template_resolution(prep_config)} mm; the "
                              "checkpoint is inconsistent - re-export it from its training run")
    return readout


def _readout_parcellation(readout: Any, checkpoint: Path):
    """The parcels of a Centiloid read-out, rebuilt from its stored centres and checked against
    its stored checksum (None without a read-out)."""
    from AmyloidKDLib.regional_features import parcellation_from_centroids

    if readout is None:
        return None
    parcellation = parcellation_from_centroids(readout.centroids_mm, readout.resolution)
    if parcellation.signature != readout.parcellation_signature:
        raise CheckpointError(f"{checkpoint}: the parcels rebuilt from its Centiloid read-out differ from "
                              "those it was trained on (another MNI152 template in this nilearn?); "
                              "re-train the read-out with this installation")
    return parcellation


def _read_description(checkpoint: Path) -> dict | None:
    """checkpoint.json as a dict, or None when unreadable (load_checkpoint then says why)."""
    from AmyloidKDLib.checkpoint import INFO_FILE

    path = checkpoint / INFO_FILE if checkpoint.is_dir() else checkpoint
    try:
        described = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return described if isinstance(described, dict) else None


def _check_student(model_config: Any, checkpoint: Path) -> None:
    kind = model_config.get("kind") if isinstance(model_config, dict) else None
    if kind is not None and kind not in STUDENT_KINDS:
        raise CheckpointError(f"{checkpoint} holds a {kind!r} model; prediction needs a student "
                              f"checkpoint ({' or '.join(STUDENT_KINDS)}) - the teacher needs PET "
                              "and is only used in training")


def _check_slices_fit_model(model_config: Any, slice_config: Any, checkpoint: Path) -> None:
    if not isinstance(model_config, dict) or not isinstance(slice_config, dict):
        return
    model = (model_config.get("n_slices"), model_config.get("image_size"))
    slices = (slice_config.get("n_slices"), slice_config.get("image_size"))
    if None not in model + slices and model != slices:
        raise CheckpointError(
            f"{checkpoint}: the model expects {model[0]} slices of {model[1]} px but the stored "
            f"slice config gives {slices[0]} of {slices[1]} px; the checkpoint is inconsistent - "
            "re-export it from its training run")


def _notify(on_step: Callable[[str], None] | None, name: str) -> None:
    if on_step is not None:
        on_step(name)


def _prep_config_from(stored: dict, checkpoint: Path, skull_strip: str | None,
                      device: torch.device | None = None):
    """The checkpoint's PrepConfig, with the skull-strip backend and device overridden if given."""
    from AmyloidKDLib.pipeline import PrepConfig

    values = json.loads(json.dumps(stored))
    if skull_strip is not None:
        values.setdefault("skull_strip", {})["backend"] = skull_strip
    if device is not None:
        values.setdefault("skull_strip", {})["device"] = device.type
    try:
        return PrepConfig.from_dict(values)
    except ConfigError as exc:
        raise CheckpointError(f"{checkpoint}: its preprocessing config is not usable by this "
                              f"AmyloidKD version ({exc})") from None


def _slice_config_from(stored: dict, checkpoint: Path):
    """The checkpoint's SliceConfig."""
    from AmyloidKDLib.slicing import SliceConfig

    try:
        return SliceConfig.from_dict(dict(stored))
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}: its slice config is not usable by this AmyloidKD "
                              f"version ({exc})") from None
