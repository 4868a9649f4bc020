"""Losses of the teacher (alignment) and the students (distillation, classification), and
their epoch schedules.

Each loss is a small function whose docstring is its formula; ``MarginFocalLoss`` and
``SoftTripletLoss`` are thin ``nn.Module`` wrappers holding the options. Shapes: ``B`` cases,
``D`` embedding size; logits are raw (pre-sigmoid) values ``[B]``; targets are 0/1 ``[B]``.
Reductions: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per case).

Schedules (:class:`LossScheduleConfig`) make the weights epoch-dependent without literals in
the training loop: the student moves from distillation towards classification (weight 0.5 ->
0.8), the distillation temperature and the triplet margin can ramp too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from AmyloidKDLib import configs
from AmyloidKDLib.errors import ConfigError, InputError

REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ConfigError(f"unknown reduction '{reduction}'; choose one of {', '.join(REDUCTIONS)}.")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise InputError("these tensors must have the same shape: "
                         + ", ".join(f"{n} {list(s)}" for n, s in shapes.items()) + ".")


def adaptive_margin(centiloid_gap: torch.Tensor, *, base_margin: float = 0.5, max_margin: float = 2.0,
                    centiloid_scale: float = 50.0) -> torch.Tensor:
    """Triplet margin that grows with the Centiloid gap between anchor and negative:

        m = base_margin + (max_margin - base_margin) * tanh(|gap| / centiloid_scale)

    Strictly increasing in ``|gap|`` (for ``max_margin > base_margin``): a negative whose amyloid
    burden is far from the anchor's must be pushed further away than a near one.
    """
    if centiloid_scale <= 0:
        raise ConfigError(f"centiloid_scale must be > 0, got {centiloid_scale}.")
    if max_margin < base_margin:
        raise ConfigError(f"max_margin ({max_margin}) must be >= base_margin ({base_margin}).")
    return base_margin + (max_margin - base_margin) * torch.tanh(centiloid_gap.abs() / centiloid_scale)


def soft_triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                      margin: torch.Tensor | float, *, normalize: bool = False,
                      reduction: str = "mean") -> torch.Tensor:
    """Soft triplet loss:

        L_b = softplus(d(a_b, p_b) - d(a_b, n_b) + m_b),   d = Euclidean distance

    (on L2-normalised embeddings when ``normalize``). ``margin`` is a float or ``[B]`` (e.g.
    from :func:`adaptive_margin`). Unlike the hinge, the softplus keeps a gradient for triplets
    already satisfied; it tends to 0 as ``d(a, n) - d(a, p)`` grows past the margin.
    """
    _check_same_shape(anchor=anchor, positive=positive, negative=negative)
    if normalize:
        anchor, positive, negative = (F.normalize(t, dim=-1) for t in (anchor, positive, negative))
    d_pos = (anchor - positive).norm(dim=-1)
    d_neg = (anchor - negative).norm(dim=-1)
    return _reduce(F.softplus(d_pos - d_neg + margin), reduction)


def alignment_loss(x: torch.Tensor, y: torch.Tensor, *, mse_weight: float = 1.0,
                   cosine_weight: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """MSE + cosine alignment of paired embeddings ``[B, D]``:

        L_b = mse_weight * mean_d (x_bd - y_bd)^2 + cosine_weight * (1 - cos(x_b, y_b))
    """
    _check_same_shape(x=x, y=y)
    per_case = mse_weight * (x - y).pow(2).mean(dim=-1) + cosine_weight * (1 - F.cosine_similarity(x, y, dim=-1))
    return _reduce(per_case, reduction)


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                              reduction: str = "mean") -> torch.Tensor:
    """Feature distillation: MSE between L2-normalised embeddings ``[B, D]``:

        L_b = mean_d (s_b/||s_b|| - t_b/||t_b||)_d^2

    The teacher is a fixed target (detached).
    """
    _check_same_shape(student=student, teacher=teacher)
    diff = F.normalize(student, dim=-1) - F.normalize(teacher.detach(), dim=-1)
    return _reduce(diff.pow(2).mean(dim=-1), reduction)


def binary_kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-case KL divergence between two Bernoulli distributions given by logits:

        KL(p_t || p_s) = p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s)),
        p = sigmoid(logit), computed with log-sigmoid for stability.
    """
    p_t = torch.sigmoid(teacher_logits)
    log_p_t, log_q_t = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    log_p_s, log_q_s = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    return p_t * (log_p_t - log_p_s) + (1 - p_t) * (log_q_t - log_q_s)


def logit_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                            temperature: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Logit distillation with temperature ``T`` (binary, Hinton et al. 2015):

        L_b = T^2 * KL(sigmoid(t_b / T) || sigmoid(s_b / T))

    The ``T^2`` keeps gradient sizes comparable across temperatures. Teacher detached.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}.")
    _check_same_shape(student_logits=student_logits, teacher_logits=teacher_logits)
    kl = binary_kl_divergence(teacher_logits.detach() / temperature, student_logits / temperature)
    return _reduce(temperature ** 2 * kl, reduction)


def margin_focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float | None = None,
                      gamma: float = 2.0, margin_positive: float = 0.0, margin_negative: float = 0.0,
                      reduction: str = "mean") -> torch.Tensor:
    """Focal loss on margin-shifted logits (class-dependent margin, as in LDAM, plus focal term):

        z'_b = z_b - margin_positive   if y_b = 1,   z_b + margin_negative   if y_b = 0
        p_t  = sigmoid(z'_b) if y_b = 1 else 1 - sigmoid(z'_b)
        L_b  = - a_t (1 - p_t)^gamma log p_t,   a_t = alpha if y_b = 1 else 1 - alpha

    ``alpha=None`` weights both classes 1; ``gamma=0`` with zero margins and ``alpha=None`` is
    binary cross-entropy. A larger margin for the rarer class (amyloid-positive, ~32 %) asks
    the model to place those cases further from the boundary.
    """
    _check_same_shape(logits=logits, targets=targets)
    if gamma < 0:
        raise ConfigError(f"focal gamma must be >= 0, got {gamma}.")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"focal alpha must be in [0, 1] or None, got {alpha}.")
    targets = targets.to(logits.dtype)
    shifted = logits - margin_positive * targets + margin_negative * (1 - targets)
    log_p_t = -F.binary_cross_entropy_with_logits(shifted, targets, reduction="none")
    loss = -((1 - log_p_t.exp()) ** gamma) * log_p_t
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _reduce(loss, reduction)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
            alpha: float = 0.5, temperature: float = 4.0, reduction: str = "mean") -> torch.Tensor:
    """Classic knowledge-distillation loss for the light (cross-architecture) student:

        L = alpha * T^2 * KL(sigmoid(t/T) || sigmoid(s/T)) + (1 - alpha) * BCE(s, y)

    ``alpha=0`` is plain binary cross-entropy; ``alpha=1`` pure distillation.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"KD alpha must be in [0, 1], got {alpha}.")
    distill = logit_distillation_loss(student_logits, teacher_logits, temperature=temperature,
                                      reduction="none")
    bce = F.binary_cross_entropy_with_logits(student_logits, targets.to(student_logits.dtype),
                                             reduction="none")
    return _reduce(alpha * distill + (1 - alpha) * bce, reduction)


class MarginFocalLoss(nn.Module):
    """:func:`margin_focal_loss` with its options held; ``forward(logits, targets)``."""

    def __init__(self, *, alpha: float | None = 0.68, gamma: float = 2.0, margin_positive: float = 0.5,
                 margin_negative: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"unknown reduction '{reduction}'; choose one of {', '.join(REDUCTIONS)}.")
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction
        self.margin_positive, self.margin_negative = margin_positive, margin_negative

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits[B]`` against 0/1 ``targets[B]``."""
        return margin_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma,
                                 margin_positive=self.margin_positive,
                                 margin_negative=self.margin_negative, reduction=self.reduction)


class SoftTripletLoss(nn.Module):
    """:func:`soft_triplet_loss` with the Centiloid-:func:`adaptive_margin`;
    ``forward(anchor, positive, negative, centiloid_gap, margin_scale=1.0)``."""

    def __init__(self, *, base_margin: float = 0.5, max_margin: float = 2.0, centiloid_scale: float = 50.0,
                 normalize: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.base_margin, self.max_margin, self.centiloid_scale = base_margin, max_margin, centiloid_scale
        self.normalize, self.reduction = normalize, reduction

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                centiloid_gap: torch.Tensor, margin_scale: float = 1.0) -> torch.Tensor:
        """Loss for triplets ``[B, D]`` whose anchor/negative Centiloid gaps are ``[B]``;
        ``margin_scale`` multiplies the margin (see :func:`margin_scale_at`)."""
        margin = margin_scale * adaptive_margin(centiloid_gap, base_margin=self.base_margin,
                                                max_margin=self.max_margin,
                                                centiloid_scale=self.centiloid_scale)
        return soft_triplet_loss(anchor, positive, negative, margin, normalize=self.normalize,
                                 reduction=self.reduction)


SHAPES = ("linear", "cosine", "constant")


@dataclass
class LossScheduleConfig(configs.DictConfig):
    """Epoch schedules of the loss weights, temperature and margin (start -> end over
    ``ramp_epochs``, then held). Defaults follow the paper: classification weight 0.5 -> 0.8."""

    ramp_epochs: int = 100
    shape: str = "linear"                 # linear | cosine | constant
    classification_start: float = 0.5     # student: weight of the classification loss
    classification_end: float = 0.8       # (distillation gets 1 - this)
    temperature_start: float = 4.0        # logit-distillation temperature
    temperature_end: float = 2.0
    margin_scale_start: float = 1.0       # multiplies the triplet's adaptive margin
    margin_scale_end: float = 1.0
    alignment_start: float = 1.0          # teacher: weight of the MSE + cosine alignment loss
    alignment_end: float = 0.5

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown schedule shape '{self.shape}'; choose one of {', '.join(SHAPES)}.")
        if self.ramp_epochs < 1:
            raise ConfigError(f"ramp_epochs must be >= 1, got {self.ramp_epochs}.")
        for name in ("classification_start", "classification_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if min(self.temperature_start, self.temperature_end) <= 0:
            raise ConfigError("temperatures must be > 0.")


def _ramp(start: float, end: float, epoch: int, config: LossScheduleConfig) -> float:
    if epoch < 0:
        raise ConfigError(f"epoch must be >= 0, got {epoch}.")
    if config.shape == "constant":
        return start
    progress = min(epoch / config.ramp_epochs, 1.0)
    if config.shape == "cosine":
        progress = 0.5 * (1 - math.cos(math.pi * progress))
    return start + (end - start) * progress


def classification_weight(epoch: int, config: LossScheduleConfig) -> float:
    """Weight of the classification loss at ``epoch`` (0-based); distillation gets ``1 - w``."""
    return _ramp(config.classification_start, config.classification_end, epoch, config)


def distillation_weight(epoch: int, config: LossScheduleConfig) -> float:
    """Weight of the distillation losses at ``epoch``: ``1 - classification_weight``."""
    return 1.0 - classification_weight(epoch, config)


def temperature_at(epoch: int, config: LossScheduleConfig) -> float:
    """Logit-distillation temperature at ``epoch``."""
    return _ramp(config.temperature_start, config.temperature_end, epoch, config)


def margin_scale_at(epoch: int, config: LossScheduleConfig) -> float:
    """Factor on the triplet's adaptive margin at ``epoch``."""
    return _ramp(config.margin_scale_start, config.margin_scale_end, epoch, config)


def alignment_weight(epoch: int, config: LossScheduleConfig) -> float:
    """Weight of the teacher's MSE + cosine alignment loss at ``epoch``."""
    return _ramp(config.alignment_start, config.alignment_end, epoch, config)
