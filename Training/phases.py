"""The training phases of the method, each a function of (config, dataset, split, run dir).

1. :func:`train_teacher` - PET-guided teacher: soft triplet loss with a Centiloid-adaptive
   margin (anchor = PET-guided MRI embedding, positive = matched PET, negative = PET of
   another training subject >= 5 Centiloid away, chosen online), alignment losses with
   epoch-dependent weights, and classification of the guided embedding. AdamW with two
   learning rates (encoder, heads), cosine annealing.
2. :func:`train_student` - MRI-only student initialised from the teacher (self-attention
   from its cross-attention) and trained with feature + logit distillation and a margin
   focal loss, the weight moving from distillation to classification (0.5 -> 0.8); AdamW
   with three learning rates, ReduceLROnPlateau on the monitored validation metric.
   With ``teacher=None`` the same function trains the MRI-only *baseline*.
3. :func:`train_light` - a small CNN student distilled from the teacher with classic KD.

Each phase's per-batch loss is an objective object (:class:`TeacherObjective`,
:class:`StudentObjective`, :class:`LightObjective`) that the engine calls as its train step.

Teacher targets for the students are computed once per case on unaugmented stacks and
reused every epoch (the teacher is frozen by then), which makes distillation cost about
as much as training the baseline.

With a frozen encoder (``ModelConfig.freeze_encoder``, the ``frozen`` model preset) each phase
trains its heads on per-slice encoder features computed once per cohort and encoder
(:mod:`Training.features`); image augmentation and the teacher's pixel-space PET harmonisation
cannot apply to such features and are refused with a ConfigError. The seconds spent encoding
(or reading the cached features) are in ``PhaseResult.extra["encode_seconds"]``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from AmyloidKDLib.errors import ConfigError, InputError
from Training.augment import augment_pair
from Training.config import RunConfig
from Training.data import SliceDataset
from Training.engine import (FitResult, FitSettings, active_accelerator, fit, is_main_process,
                             wait_for_everyone)
from Training.metrics import f1_optimal_threshold, roc_auc, threshold_metrics
from Training.report import write_json
from Training.sampling import CentiloidNegativeSampler, ClassBalancedBatchSampler
from Training.splits import Split

logger = logging.getLogger(__name__)

PHASES = ("teacher", "student", "baseline", "light")


@dataclass
class PhaseResult:
    """A trained phase: its model (best epoch), validation threshold and where it was saved."""

    name: str
    model: nn.Module
    threshold: float
    val_probabilities: np.ndarray
    fit: FitResult
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- loaders


def make_loader(dataset: SliceDataset, indices: Sequence[int], batch_size: int, *, train: bool,
                balanced: bool = False, seed: int = 0, num_workers: int = 0
                ) -> torch.utils.data.DataLoader:
    """Batches of ``dataset[indices]``: class-balanced or shuffled for training, in order otherwise."""
    indices = [int(i) for i in indices]
    if not indices:
        raise InputError("an empty set of cases cannot be batched; the split left a set empty.")
    if train and balanced:
        sampler = ClassBalancedBatchSampler(dataset.labels, indices, batch_size, seed)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)
    subset = torch.utils.data.Subset(dataset, indices)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=train,
                                       drop_last=train and len(indices) > batch_size,
                                       generator=generator, num_workers=num_workers)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- frozen encoders


def _is_frozen(model: nn.Module) -> bool:
    """Whether ``model`` (possibly wrapped for distributed training) has a frozen encoder."""
    model = getattr(model, "module", model)
    return bool(getattr(getattr(model, "config", None), "freeze_encoder", False))


def _check_frozen(config: RunConfig, kind: str, section: str, augment: bool) -> bool:
    """True when the ``kind`` model of this run has a frozen encoder; then image augmentation of
    the phase (``<section>.augment`` with ``augment.enabled``) is a ConfigError."""
    if not config.model_config(kind).freeze_encoder:
        return False
    if augment and config.augment.enabled:
        raise ConfigError(f"{section}.augment: the {kind} of model preset '{config.model.preset}' has a "
                          "frozen encoder and trains on cached encoder features, to which image "
                          f"augmentation cannot apply; set {section}.augment: false (or "
                          "augment.enabled: false).")
    return True


def features_for(config: RunConfig, model: nn.Module, dataset: SliceDataset, run_dir: str | Path
                 ) -> tuple[SliceDataset, dict[str, Any]]:
    """``dataset`` as ``model`` trains on it: its frozen encoder's cached features (with what
    that cost), or the image dataset itself (and ``{}``) when the encoder is not frozen."""
    if not _is_frozen(model):
        return dataset, {}
    from Training.features import feature_dataset

    model = getattr(model, "module", model)
    return feature_dataset(dataset, model.slices.encoder, config.cache_root(run_dir))


def _serving(model: nn.Module, dataset: SliceDataset) -> SliceDataset:
    """The feature dataset already computed for a frozen ``model`` and image ``dataset`` in this
    process (same encoder weights), else ``dataset`` (images are always correct, only slower)."""
    stacks = getattr(dataset, "mri", None)
    if not _is_frozen(model) or not stacks or stacks[0].ndim != 4:
        return dataset
    from Training.features import lookup

    found = lookup(dataset, getattr(model, "module", model).slices.encoder)
    return found if found is not None else dataset


def _eval_batches(dataset: SliceDataset, indices: Sequence[int], batch_size: int,
                  device: torch.device, with_pet: bool = False):
    """``dataset[indices]`` in order, ``batch_size`` at a time, as ``(indices, mri, pet, tracer)``
    stacked on ``device`` (``pet`` and ``tracer`` None unless ``with_pet``)."""
    indices = [int(i) for i in indices]
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        mri = torch.stack([item["mri"] for item in items]).to(device)
        pet = tracer = None
        if with_pet:
            pet = torch.stack([item["pet"] for item in items]).to(device)
            tracer = torch.stack([item["tracer"] for item in items]).to(device)
        yield indices[start:start + batch_size], mri, pet, tracer


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: SliceDataset, indices: Sequence[int],
                   batch_size: int = 8, with_pet: bool = False) -> torch.Tensor:
    """Logits of ``model`` for ``dataset[indices]`` in that order (eval mode, no augmentation).

    Inside a fit launched on several processes each process predicts its share of the cases and
    the logits of all of them are gathered (every process gets the whole set, in order).
    """
    dataset = _serving(model, dataset)
    accelerator = active_accelerator()
    if accelerator is not None and accelerator.num_processes > 1:
        return _gathered_logits(accelerator, model, dataset, indices, batch_size, with_pet)
    was_training = model.training
    model.eval()
    out = []
    for _, mri, pet, tracer in _eval_batches(dataset, indices, batch_size, _device_of(model), with_pet):
        output = model(mri, pet, tracer) if with_pet else model(mri)
        out.append(output.logits.float().cpu())
    model.train(was_training)
    return torch.cat(out)


def _gathered_logits(accelerator, model: nn.Module, dataset: SliceDataset, indices: Sequence[int],
                     batch_size: int, with_pet: bool) -> torch.Tensor:
    """:func:`predict_logits` sharded over the launched processes: Accelerate deals the batches
    out in turn and ``gather_for_metrics`` puts them back in order, without its padding cases."""
    from accelerate.data_loader import prepare_data_loader

    was_training = model.training
    model.eval()
    subset = torch.utils.data.Subset(dataset, [int(i) for i in indices])
    loader = prepare_data_loader(torch.utils.data.DataLoader(subset, batch_size=batch_size),
                                 device=accelerator.device, num_processes=accelerator.num_processes,
                                 process_index=accelerator.process_index, put_on_device=True)
    out = []
    for batch in loader:
        output = (model(batch["mri"], batch["pet"], batch["tracer"]) if with_pet
                  else model(batch["mri"]))
        out.append(accelerator.gather_for_metrics(output.logits.float().contiguous()).cpu())
    model.train(was_training)
    return torch.cat(out)


def predict_probabilities(model: nn.Module, dataset: SliceDataset, indices: Sequence[int],
                          batch_size: int = 8, with_pet: bool = False) -> np.ndarray:
    """Amyloid-positive probabilities for ``dataset[indices]``."""
    return torch.sigmoid(predict_logits(model, dataset, indices, batch_size, with_pet)).numpy()


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Validation metrics the engine monitors: loss (BCE), AUC, F1 and accuracy at 0.5."""
    p = np.clip(probabilities, 1e-6, 1 - 1e-6)
    bce = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    at_half = threshold_metrics(labels, probabilities, 0.5)
    auc = roc_auc(labels, probabilities)
    return {"val_bce": bce, "val_auc": auc if math.isfinite(auc) else 0.5,
            "val_f1": at_half["f1"], "val_accuracy": at_half["accuracy"]}


# ----------------------------------------------------------------------------- parameter groups


def param_groups(model: nn.Module, rules: Sequence[tuple[str, float]], weight_decay: float
                 ) -> list[dict[str, Any]]:
    """AdamW groups: each trainable parameter goes to the first rule whose prefix matches
    its name (``""`` matches all); a parameter matched by no rule is an error."""
    groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix, _ in rules}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        for prefix, _ in rules:
            if name.startswith(prefix):
                groups[prefix].append(parameter)
                break
        else:
            raise ConfigError(f"parameter {name} matches no learning-rate group "
                              f"{[p for p, _ in rules]}.")
    return [{"params": groups[prefix], "lr": lr, "weight_decay": weight_decay, "name": prefix or "rest"}
            for prefix, lr in rules if groups[prefix]]


# ----------------------------------------------------------------------------- shared helpers


def _settings(phase_config: Any, scheduler_step: str = "epoch") -> FitSettings:
    return FitSettings(epochs=phase_config.epochs, patience=phase_config.patience,
                       monitor=phase_config.monitor, mode=phase_config.mode,
                       grad_accum_steps=phase_config.grad_accum_steps, scheduler_step=scheduler_step)


def _labels(batch: dict[str, Any]) -> torch.Tensor:
    return batch["label"].float()


def _loss_dtype(value: torch.Tensor) -> torch.Tensor:
    """A model output as the losses take it: float32, or float64 when the heads train in float64
    (``engine.head_dtype``), so that no loss term drops back to the CPU's float32 kernels."""
    return value if value.dtype == torch.float64 else value.float()


def _checkpoint(config: RunConfig, result_dir: Path, model: nn.Module, kind: str, threshold: float,
                metrics: dict[str, float], provenance: dict[str, Any]) -> Path:
    from AmyloidKDLib.checkpoint import save_checkpoint

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return save_checkpoint(result_dir, model, config.model_config(kind),
                           prep_config=config.prep_config().to_dict(),
                           slice_config=_slice_dict(config), threshold=float(threshold),
                           metrics=clean, provenance={"run": config.name, **provenance})


def _slice_dict(config: RunConfig) -> dict[str, Any]:
    return config.slice_config().to_dict()


def _calibrate(name: str, config: RunConfig, model: nn.Module, raw_logits: torch.Tensor,
               val_labels: np.ndarray) -> dict[str, Any]:
    """Platt-scale the model's logit on its raw validation logits (``evaluation.calibration``);
    returns what was done, for ``history.json``."""
    from AmyloidKDLib.calibration import fit_platt

    if config.evaluation.calibration == "none":
        return {"method": "none"}
    raw = raw_logits.numpy()
    fit = fit_platt(raw, val_labels)
    record = {"method": "platt", "fitted": fit is not None,
              "raw_logit_range": [float(raw.min()), float(raw.max())] if raw.size else None}
    if fit is not None:
        model.calibration.set(fit.scale, fit.offset)
        record.update(scale=fit.scale, offset=fit.offset)
        logger.info("%s: logit calibrated on %d validation cases: %.4g * logit %+.4g",
                    name, len(val_labels), fit.scale, fit.offset)
    return record


def _finish(name: str, config: RunConfig, model: nn.Module, dataset: SliceDataset, split: Split,
            fit_result: FitResult, phase_dir: Path, checkpoint_dir: Path | None, kind: str,
            with_pet: bool = False, history_extra: dict[str, Any] | None = None) -> PhaseResult:
    """Calibration and threshold on validation, history/curves to disk, checkpoint; the model
    holds its best epoch."""
    from Training.report import plot_training_curves

    val_labels = dataset.labels[list(split.val)]
    model.calibration.set()  # fit on raw logits, whatever the model held before
    raw_logits = predict_logits(model, dataset, split.val, with_pet=with_pet)
    calibration = _calibrate(name, config, model, raw_logits, val_labels)
    with torch.no_grad():
        val_probs = torch.sigmoid(model.calibration(raw_logits)).numpy()
    try:
        threshold = f1_optimal_threshold(val_labels, val_probs)
    except InputError:
        logger.warning("%s: validation has no positive case; keeping theta = 0.5", name)
        threshold = 0.5
    checkpoint = checkpoint_dir
    if not is_main_process():  # the other launched processes hold the same model; one writes
        wait_for_everyone()
        return PhaseResult(name, model, threshold, val_probs, fit_result, checkpoint)
    write_json(phase_dir / "history.json", {"history": fit_result.history,
                                            "processes": fit_result.extra.get("processes", 1),
                                            "best_epoch": fit_result.best_epoch,
                                            "best_value": fit_result.best_value,
                                            "stopped_early": fit_result.stopped_early,
                                            "resumed_from_epoch": fit_result.resumed_from_epoch,
                                            "seconds": fit_result.seconds, "threshold": threshold,
                                            "calibration": calibration, **(history_extra or {})})
    plot_training_curves(fit_result.history, phase_dir / "training_curves.png", title=name)
    if checkpoint_dir is not None:
        val_metrics = classification_metrics(val_labels, val_probs)
        checkpoint = _checkpoint(config, checkpoint_dir, model, kind, threshold, val_metrics,
                                 {"phase": name, "best_epoch": fit_result.best_epoch,
                                  "train_cases": len(split.train), "val_cases": len(split.val),
                                  "fold": split.fold, "contrast": config.data.contrast})
    wait_for_everyone()
    return PhaseResult(name, model, threshold, val_probs, fit_result, checkpoint)


# ----------------------------------------------------------------------------- objectives


@dataclass
class BatchLoss:
    """One batch's objective: the loss to minimise, what to log, and the model's logits."""

    loss: torch.Tensor
    logs: dict[str, float]
    logits: torch.Tensor


def _augment_generator(config: RunConfig, epoch: int, batch: dict[str, Any]) -> torch.Generator:
    """The augmentation draw of one batch: fixed by seed, epoch and the batch's first case."""
    return torch.Generator().manual_seed(config.seed * 100003 + epoch * 101 + int(batch["index"][0]))


def _augmented_mri(config: RunConfig, batch: dict[str, Any], epoch: int, enabled: bool) -> torch.Tensor:
    """The batch's MRI stacks, augmented (on their own device) when the phase asks for it."""
    mri = batch["mri"]
    if not (enabled and config.augment.enabled):
        return mri
    augmented, _ = augment_pair(mri, None, config.augment, _augment_generator(config, epoch, batch))
    return augmented


class TeacherObjective:
    """The teacher's loss on one batch: triplet + alignment + classification.

    Triplet: anchor = PET-guided MRI embedding, positive = matched PET embedding, negative =
    the PET embedding of another batch member chosen by :class:`CentiloidNegativeSampler`:
    the closest valid one with ``teacher.hard_negatives`` (online hard negatives, the
    default), else a random valid one.
    Anchors without a valid negative in the batch are left out of the triplet term (their
    fraction is logged as ``no_negative``).

    Args:
        sampler: the negative sampler of the fold batches come from (negatives never leave it).
        augment: apply the paired MRI/PET augmentation (training) or not (validation).
    """

    def __init__(self, config: RunConfig, sampler: CentiloidNegativeSampler, augment: bool) -> None:
        from AmyloidKDLib.losses import SoftTripletLoss

        teacher_config = config.teacher
        self.config = config
        self.augment = augment
        self.schedule = _phase_schedule(config, teacher_config.epochs)
        self.sampler = sampler
        self.triplet = SoftTripletLoss(base_margin=teacher_config.base_margin,
                                       max_margin=teacher_config.max_margin,
                                       centiloid_scale=teacher_config.centiloid_scale, normalize=True)

    def __call__(self, model: nn.Module, batch: dict[str, Any], epoch: int
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """The engine's train step: ``(loss, logs)``."""
        result = self.batch_loss(model, batch, epoch)
        return result.loss, result.logs

    def choose_negatives(self, batch_indices: Sequence[int], anchor: torch.Tensor, positive: torch.Tensor
                         ) -> torch.Tensor:
        """Batch position of each anchor's negative (-1: none valid), on the anchors' device.

        ``anchor`` and ``positive`` are the normalised ``[B, D]`` embeddings; with
        ``teacher.hard_negatives`` their distances pick the closest valid negative.
        """
        distances = torch.cdist(anchor, positive) if self.config.teacher.hard_negatives else None
        return self.sampler.choose(batch_indices, distances).to(anchor.device)

    def batch_loss(self, model: nn.Module, batch: dict[str, Any], epoch: int) -> BatchLoss:
        """Loss, logs and the teacher's logits for ``batch`` at ``epoch`` (1-based)."""
        from accelerate.utils import extract_model_from_parallel

        from AmyloidKDLib.losses import alignment_loss, alignment_weight, margin_scale_at

        teacher_config = self.config.teacher
        # Harmonise the PET per tracer first, so the augmentation moves the deviation map, not
        # the PET against an unmoved reference.
        teacher = extract_model_from_parallel(model)
        mri, pet = batch["mri"], teacher.harmonize_pet(batch["pet"], batch["tracer"])
        if self.augment:
            background = 0.0 if teacher.harmonization.is_fitted else None
            mri, pet = augment_pair(mri, pet, self.config.augment,
                                    _augment_generator(self.config, epoch, batch),
                                    pet_background=background)
        out = model(mri, pet, harmonized=True)
        guided, pet_embedding = _loss_dtype(out.guided), _loss_dtype(out.pet)
        anchor, positive = F.normalize(guided, dim=-1), F.normalize(pet_embedding, dim=-1)
        negatives = self.choose_negatives(batch["index"].tolist(), anchor, positive)
        valid = negatives >= 0
        centiloid = batch["centiloid"].to(anchor.device, anchor.dtype)
        if bool(valid.any()):
            negative = negatives[valid]
            gap = (centiloid[valid] - centiloid[negative]).abs()
            triplet = self.triplet(guided[valid], pet_embedding[valid], pet_embedding[negative], gap,
                                   margin_scale=margin_scale_at(epoch - 1, self.schedule))
            with torch.no_grad():
                d_neg = float((anchor[valid] - positive[negative]).norm(dim=-1).mean())
        else:
            triplet, d_neg = guided.sum() * 0.0, float("nan")
        align = alignment_loss(F.normalize(_loss_dtype(out.mri), dim=-1), anchor)
        logits = _loss_dtype(out.logits)
        cls = F.binary_cross_entropy_with_logits(logits, _labels(batch).to(logits.device, logits.dtype))
        w_align = teacher_config.alignment_weight * alignment_weight(epoch - 1, self.schedule)
        loss = triplet + w_align * align + teacher_config.classification_weight * cls
        d_pos = float((anchor - positive).norm(dim=-1).mean().detach())
        logs = {"triplet_loss": float(triplet.detach()), "align_loss": float(align.detach()),
                "cls_loss": float(cls.detach()), "no_negative": float((~valid).float().mean()),
                "d_anchor_pos": d_pos, "d_anchor_neg": float(d_neg)}
        return BatchLoss(loss, logs, out.logits.detach().float())


#: Frozen teacher outputs per dataset index: (PET-guided embedding [128], logit []).
TeacherTargets = dict[int, tuple[torch.Tensor, torch.Tensor]]


def _stacked_targets(targets: TeacherTargets, batch: dict[str, Any], device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    indices = batch["index"].tolist()
    embeddings = torch.stack([targets[i][0] for i in indices]).to(device)
    logits = torch.stack([targets[i][1] for i in indices]).to(device)
    return embeddings, logits


class StudentObjective:
    """The MRI-only student's loss on one batch, distilled or (``targets=None``) the baseline's.

    ``w_cls * MarginFocal + (1 - w_cls) * (feature_weight * feature KD + logit_weight *
    logit KD)`` with ``w_cls`` following the schedule (0.5 -> 0.8) and a temperature for the
    logit KD that follows it too; the baseline uses the margin focal loss alone.
    """

    def __init__(self, config: RunConfig, targets: TeacherTargets | None) -> None:
        from AmyloidKDLib.losses import MarginFocalLoss

        student_config = config.student
        self.config = config
        self.targets = targets
        self.focal = MarginFocalLoss(alpha=student_config.focal_alpha, gamma=student_config.focal_gamma,
                                     margin_positive=student_config.focal_margin_positive)

    def __call__(self, model: nn.Module, batch: dict[str, Any], epoch: int
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """The engine's train step: ``(loss, logs)``."""
        from AmyloidKDLib.losses import (classification_weight, feature_distillation_loss,
                                         logit_distillation_loss, temperature_at)

        student_config = self.config.student
        out = model(_augmented_mri(self.config, batch, epoch, student_config.augment))
        labels = _labels(batch).to(out.logits.device)
        cls = self.focal(_loss_dtype(out.logits), labels)
        if self.targets is None:
            return cls, {"cls_loss": float(cls.detach())}
        teacher_embedding, teacher_logit = _stacked_targets(self.targets, batch, out.logits.device)
        feature = feature_distillation_loss(_loss_dtype(out.embedding), teacher_embedding.to(out.embedding.dtype))
        logit = logit_distillation_loss(_loss_dtype(out.logits), teacher_logit.to(out.logits.dtype),
                                        temperature=temperature_at(epoch - 1, self.config.schedule))
        w_cls = classification_weight(epoch - 1, self.config.schedule)
        distillation = student_config.feature_weight * feature + student_config.logit_weight * logit
        loss = w_cls * cls + (1 - w_cls) * distillation
        return loss, {"cls_loss": float(cls.detach()), "feature_loss": float(feature.detach()),
                      "logit_loss": float(logit.detach()), "cls_weight": w_cls}


class LightObjective:
    """The light CNN student's loss on one batch: classic KD, ``alpha*T^2*KL + (1-alpha)*BCE``
    against the frozen teacher's logits."""

    def __init__(self, config: RunConfig, targets: TeacherTargets) -> None:
        self.config = config
        self.targets = targets

    def __call__(self, model: nn.Module, batch: dict[str, Any], epoch: int
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """The engine's train step: ``(loss, logs)``."""
        from AmyloidKDLib.losses import kd_loss

        light_config = self.config.light
        out = model(_augmented_mri(self.config, batch, epoch, light_config.augment))
        _, teacher_logit = _stacked_targets(self.targets, batch, out.logits.device)
        loss = kd_loss(_loss_dtype(out.logits), teacher_logit.to(out.logits.dtype), _labels(batch).to(out.logits.device),
                       alpha=light_config.alpha, temperature=light_config.temperature)
        return loss, {}


# ----------------------------------------------------------------------------- teacher


def _phase_schedule(config: RunConfig, epochs: int):
    import dataclasses

    return dataclasses.replace(config.schedule, ramp_epochs=max(1, epochs))


def _teacher_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    teacher_config = config.teacher
    groups = param_groups(model, [("slices.encoder.", teacher_config.lr_encoder),
                                  ("", teacher_config.lr_heads)], teacher_config.weight_decay)
    return torch.optim.AdamW(groups)


def train_teacher(config: RunConfig, dataset: SliceDataset, split: Split, run_dir: str | Path,
                  resume: bool = False) -> PhaseResult:
    """Phase 1: the PET-guided teacher; writes ``run_dir/teacher`` and ``run_dir/checkpoints/teacher``."""
    from AmyloidKDLib.models import build_model

    run_dir = Path(run_dir)
    if not dataset.has_pet(list(split.train) + list(split.val)):
        raise InputError("the teacher needs a PET for every training and validation case; some "
                         "cases have none. Give every case a pet_path, or train only the baseline.")
    teacher_config = config.teacher
    if _check_frozen(config, "teacher", "teacher", teacher_config.augment) \
            and teacher_config.pet_harmonization != "none":
        raise ConfigError(f"teacher.pet_harmonization: '{teacher_config.pet_harmonization}' harmonises PET "
                          "in pixel space before the encoder, but the teacher of model preset "
                          f"'{config.model.preset}' has a frozen encoder and trains on cached encoder "
                          "features; set teacher.pet_harmonization: none.")
    torch.manual_seed(config.seed)
    model = build_model(config.model_config("teacher"))
    harmonization = _fit_harmonization(config, model, dataset, split)
    dataset, encoding = features_for(config, model, dataset, run_dir)
    optimizer = _teacher_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, teacher_config.epochs))
    loader = make_loader(dataset, split.train, teacher_config.batch_size, train=True,
                         balanced=teacher_config.balanced_batches, seed=config.seed,
                         num_workers=config.engine.num_workers)
    def sampler(fold: Sequence[int]) -> CentiloidNegativeSampler:
        return CentiloidNegativeSampler(dataset.subjects, dataset.centiloids, fold,
                                        teacher_config.min_centiloid_gap, config.seed)

    objective = TeacherObjective(config, sampler(split.train),
                                 augment=teacher_config.augment and config.augment.enabled)
    val_objective = TeacherObjective(config, sampler(split.val), augment=False)
    val_labels = dataset.labels[list(split.val)]

    def validate(m: nn.Module, epoch: int) -> dict[str, float]:
        device = _device_of(m)
        losses, logits = [], []
        for batch in make_loader(dataset, split.val, teacher_config.batch_size, train=False):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            result = val_objective.batch_loss(m, batch, epoch)
            losses.append(float(result.loss) * len(batch["index"]))
            logits.append(result.logits.cpu())
        probs = torch.sigmoid(torch.cat(logits)).numpy()
        metrics = classification_metrics(val_labels, probs)
        metrics["val_loss"] = sum(losses) / len(split.val)
        return metrics

    phase_dir = run_dir / "teacher"
    result = fit(model, optimizer, loader, objective, validate, _settings(teacher_config), phase_dir,
                 config.engine, scheduler=scheduler, resume=resume, description="teacher")
    phase = _finish("teacher", config, model, dataset, split, result, phase_dir,
                    run_dir / "checkpoints" / "teacher", "teacher", with_pet=True,
                    history_extra={"pet_harmonization": harmonization, "features": encoding})
    return _timed(phase, encoding)


def _timed(phase: PhaseResult, encoding: dict[str, Any]) -> PhaseResult:
    """Record and log the phase's seconds: encoding features (0 without a frozen encoder), fitting."""
    phase.extra["encode_seconds"] = float(encoding.get("encode_seconds", 0.0))
    phase.extra["features"] = encoding
    phase.extra["fit_seconds"] = float(phase.fit.seconds)
    logger.info("%s: %.1f s encoding features (%s), %.1f s fitting", phase.name,
                phase.extra["encode_seconds"], encoding.get("source", "no frozen encoder"),
                phase.extra["fit_seconds"])
    return phase


def _fit_harmonization(config: RunConfig, model: nn.Module, dataset: SliceDataset, split: Split
                       ) -> dict[str, Any]:
    """Fit the teacher's per-tracer PET reference on the training fold (``teacher.pet_harmonization``)."""
    if config.teacher.pet_harmonization == "none":
        return {"method": "none"}
    train = [int(i) for i in split.train]
    summary = model.harmonization.fit([dataset.pet[i] for i in train], dataset.tracer_rows[train].tolist(),
                                      dataset.labels[train].tolist())
    for tracer, used in summary.items():
        logger.info("teacher: PET reference for %s: %s (%d cases), scale %s", tracer, used["source"],
                    used["n_reference"], used["scale"][0])
    return {"method": "tracer", **summary}


# ----------------------------------------------------------------------------- students


@torch.no_grad()
def teacher_targets(teacher: nn.Module, dataset: SliceDataset, indices: Sequence[int],
                    batch_size: int = 8, dtype: torch.dtype = torch.float32
                    ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The frozen teacher's (PET-guided embedding, logit) per case, on unaugmented stacks,
    computed in ``dtype`` (a float64 copy of the teacher for ``engine.head_dtype: float64``) and
    rounded to :data:`TARGET_GRID` so that the last-bit differences of the CPU's float kernels
    (``ATEN_CPU_CAPABILITY``) do not reach the students' targets."""
    if dtype != torch.float32:
        from Training.engine import in_dtype

        teacher = in_dtype(copy.deepcopy(teacher), dtype)
    teacher.eval()
    targets = {}
    for chunk, mri, pet, tracer in _eval_batches(dataset, indices, batch_size, _device_of(teacher), True):
        out = teacher(mri, pet, tracer)
        for k, i in enumerate(chunk):
            targets[i] = (_on_grid(out.guided[k]), _on_grid(out.logits[k]))
    return targets


#: Teacher targets are rounded to multiples of this (2^-10: far below any effect on training,
#: far above float32 rounding differences between kernel sets).
TARGET_GRID = 2.0 ** -10


def _on_grid(value: torch.Tensor) -> torch.Tensor:
    return torch.round(value.float().cpu() / TARGET_GRID) * TARGET_GRID


def target_diagnostics(targets: dict[int, tuple[torch.Tensor, torch.Tensor]], dataset: SliceDataset
                       ) -> dict[str, float]:
    """What the teacher's logits tell the student on its training cases: their AUC against the
    labels, their range, and their within-class Spearman correlation with the Centiloid
    (near-label logits carry little beyond the label itself)."""
    from scipy.stats import spearmanr

    cases = sorted(targets)
    logits = np.array([float(targets[i][1]) for i in cases])
    labels = np.array([dataset.info[i].label for i in cases])
    centiloids = np.array([dataset.info[i].centiloid for i in cases], dtype=float)
    out = {"n_cases": len(cases), "logit_min": float(logits.min()), "logit_max": float(logits.max()),
           "auc": roc_auc(labels, logits) if len(set(labels.tolist())) == 2 else float("nan")}
    for label, name in ((0, "negative"), (1, "positive")):
        members = labels == label
        ok = members.sum() > 2 and np.isfinite(centiloids[members]).all()
        out[f"spearman_centiloid_{name}"] = (float(spearmanr(logits[members], centiloids[members])[0])
                                             if ok else float("nan"))
    return out


@torch.no_grad()
def _fit_standardization(name: str, model: nn.Module, dataset: SliceDataset, split: Split,
                         batch_size: int = 8) -> None:
    """Fit ``model.slices.standardization`` on the encoder features of the training fold's
    unaugmented MRI stacks (before any training step, so both the student and the baseline
    start from the same statistics of the same encoder)."""
    was_training = model.training
    model.eval()
    features = [model.slices.features(mri).float().cpu()
                for _, mri, _, _ in _eval_batches(dataset, split.train, batch_size, _device_of(model))]
    model.slices.standardization.fit(torch.cat(features))
    model.train(was_training)
    logger.info("%s: encoder features standardised on %d training cases", name, len(split.train))


def _student_optimizer(config: RunConfig, model: nn.Module, lr: tuple[float, float, float],
                       weight_decay: float) -> torch.optim.Optimizer:
    attention, projection, classifier = lr
    groups = param_groups(model, [("attention.", attention), ("slices.", projection),
                                  ("pool.", classifier), ("classifier.", classifier)], weight_decay)
    return torch.optim.AdamW(groups)


def _student_validate(dataset: SliceDataset, split: Split, batch_size: int):
    val_labels = dataset.labels[list(split.val)]

    def validate(m: nn.Module, epoch: int) -> dict[str, float]:
        probs = predict_probabilities(m, dataset, split.val, batch_size)
        metrics = classification_metrics(val_labels, probs)
        metrics["val_loss"] = metrics["val_bce"]
        metrics["val_cases"] = float(len(probs))  # all processes' cases, gathered
        return metrics

    return validate


def train_student(config: RunConfig, dataset: SliceDataset, split: Split, run_dir: str | Path,
                  teacher: nn.Module | None = None, resume: bool = False, name: str | None = None
                  ) -> PhaseResult:
    """Phase 2: the distilled MRI-only student, or with ``teacher=None`` the baseline
    (loss: :class:`StudentObjective`). Writes ``run_dir/<name>`` and ``run_dir/checkpoints/<name>``.
    """
    from AmyloidKDLib.models import build_model, init_student_from_teacher

    name = name or ("student" if teacher is not None else "baseline")
    run_dir = Path(run_dir)
    student_config = config.student
    _check_frozen(config, "student", "student", student_config.augment)
    torch.manual_seed(config.seed + 1)
    model = build_model(config.model_config("student"))
    copied: list[str] = []
    if teacher is not None and student_config.init_from_teacher:
        copied = init_student_from_teacher(model, teacher)
        logger.info("student initialised from the teacher: %s", ", ".join(copied))
    images, (dataset, encoding) = dataset, features_for(config, model, dataset, run_dir)
    if student_config.standardize_features:
        _fit_standardization(name, model, dataset, split)
    targets = (teacher_targets(teacher, features_for(config, teacher, images, run_dir)[0], split.train,
                               dtype=config.engine.training_dtype())
               if teacher is not None else None)
    objective = StudentObjective(config, targets)
    optimizer = _student_optimizer(config, model, (student_config.lr_attention, student_config.lr_projection,
                                                   student_config.lr_classifier), student_config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=student_config.mode, factor=student_config.plateau_factor,
        patience=student_config.plateau_patience)
    loader = make_loader(dataset, split.train, student_config.batch_size, train=True,
                         balanced=student_config.balanced_batches, seed=config.seed + 1,
                         num_workers=config.engine.num_workers)
    phase_dir = run_dir / name
    settings = _settings(student_config, scheduler_step="plateau")
    result = fit(model, optimizer, loader, objective,
                 _student_validate(dataset, split, student_config.batch_size), settings, phase_dir,
                 config.engine, scheduler=scheduler, resume=resume, description=name)
    phase = _finish(name, config, model, dataset, split, result, phase_dir,
                    run_dir / "checkpoints" / name, "student",
                    history_extra={"features": encoding,
                                   "teacher_targets": (target_diagnostics(targets, dataset)
                                                       if targets is not None else None)})
    phase.extra["initialised_from_teacher"] = copied
    return _timed(phase, encoding)


def train_light(config: RunConfig, dataset: SliceDataset, split: Split, run_dir: str | Path,
                teacher: nn.Module, resume: bool = False) -> PhaseResult:
    """Phase 3: the light CNN student, distilled from the teacher (:class:`LightObjective`).

    With ``light.init_from_teacher`` its attention, pooling and classifier start from the
    teacher's (cross-attention, guided pooling, classifier); the CNN keeps its own weights.
    Writes ``run_dir/light`` and ``run_dir/checkpoints/light``.
    """
    from AmyloidKDLib.models import build_model, init_student_from_teacher

    run_dir = Path(run_dir)
    light_config = config.light
    _check_frozen(config, "light_student", "light", light_config.augment)
    torch.manual_seed(config.seed + 2)
    model = build_model(config.model_config("light_student"))
    copied: list[str] = []
    if light_config.init_from_teacher:
        copied = init_student_from_teacher(model, teacher)
        logger.info("light student initialised from the teacher: %s", ", ".join(copied))
    images, (dataset, encoding) = dataset, features_for(config, model, dataset, run_dir)
    if light_config.standardize_features:
        _fit_standardization("light", model, dataset, split)
    objective = LightObjective(config, teacher_targets(
        teacher, features_for(config, teacher, images, run_dir)[0], split.train,
        dtype=config.engine.training_dtype()))
    optimizer = torch.optim.AdamW(param_groups(model, [("", light_config.lr)], light_config.weight_decay))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, light_config.epochs))
    loader = make_loader(dataset, split.train, light_config.batch_size, train=True,
                         balanced=light_config.balanced_batches, seed=config.seed + 2,
                         num_workers=config.engine.num_workers)
    phase_dir = run_dir / "light"
    result = fit(model, optimizer, loader, objective,
                 _student_validate(dataset, split, light_config.batch_size), _settings(light_config),
                 phase_dir, config.engine, scheduler=scheduler, resume=resume, description="light")
    phase = _finish("light", config, model, dataset, split, result, phase_dir,
                    run_dir / "checkpoints" / "light", "light_student", history_extra={"features": encoding})
    phase.extra["initialised_from_teacher"] = copied
    return _timed(phase, encoding)
