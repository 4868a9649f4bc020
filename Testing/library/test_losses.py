"""Losses against hand-computed values on small tensors, their limits, and the schedules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss

from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.losses import (
    LossScheduleConfig,
    MarginFocalLoss,
    SoftTripletLoss,
    adaptive_margin,
    alignment_loss,
    binary_kl_divergence,
    classification_weight,
    distillation_weight,
    feature_distillation_loss,
    kd_loss,
    logit_distillation_loss,
    margin_focal_loss,
    margin_scale_at,
    soft_triplet_loss,
    temperature_at,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- soft triplet and adaptive margin ------------------------------------------------------

def test_soft_triplet_matches_hand_computed_value():
    anchor, positive, negative = t(0.0, 0.0)[None], t(3.0, 4.0)[None], t(0.0, 1.0)[None]
    # d(a, p) = 5, d(a, n) = 1, margin 0.5 -> softplus(4.5)
    loss = soft_triplet_loss(anchor, positive, negative, 0.5)
    assert float(loss) == pytest.approx(softplus(4.5), rel=1e-12)


def test_soft_triplet_on_normalised_embeddings():
    anchor, positive, negative = t(2.0, 0.0)[None], t(0.0, 7.0)[None], t(-3.0, 0.0)[None]
    # normalised: a = (1, 0), p = (0, 1) -> d = sqrt 2; n = (-1, 0) -> d = 2
    loss = soft_triplet_loss(anchor, positive, negative, 0.0, normalize=True)
    assert float(loss) == pytest.approx(softplus(math.sqrt(2) - 2), rel=1e-12)


def test_soft_triplet_vanishes_as_the_negative_moves_away():
    anchor, positive = t(0.0, 0.0)[None], t(1.0, 0.0)[None]
    losses = [float(soft_triplet_loss(anchor, positive, t(0.0, far)[None], 1.0)) for far in (1, 5, 20, 60)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 1e-20


def test_soft_triplet_grows_with_the_margin():
    anchor, positive, negative = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
    losses = [float(soft_triplet_loss(anchor, positive, negative, m)) for m in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(losses, losses[1:]))


def test_adaptive_margin_is_monotone_in_the_centiloid_gap():
    gaps = torch.linspace(0, 150, 61, dtype=torch.float64)
    margins = adaptive_margin(gaps, base_margin=0.5, max_margin=2.0, centiloid_scale=50.0)
    assert torch.all(margins[1:] > margins[:-1])
    assert float(margins[0]) == pytest.approx(0.5)
    assert float(adaptive_margin(t(50.0))) == pytest.approx(0.5 + 1.5 * math.tanh(1.0))
    assert float(adaptive_margin(t(-30.0))) == float(adaptive_margin(t(30.0)))  # |gap|
    assert float(adaptive_margin(t(1e4))) == pytest.approx(2.0)


def test_soft_triplet_module_uses_the_centiloid_margin_and_its_schedule():
    anchor, positive, negative = t(0.0, 0.0)[None], t(3.0, 4.0)[None], t(0.0, 1.0)[None]
    loss = SoftTripletLoss(base_margin=0.5, max_margin=2.0, centiloid_scale=50.0)
    m = 0.5 + 1.5 * math.tanh(20.0 / 50.0)
    assert float(loss(anchor, positive, negative, t(20.0))) == pytest.approx(softplus(4 + m))
    assert float(loss(anchor, positive, negative, t(20.0), margin_scale=0.5)) == pytest.approx(softplus(4 + m / 2))


# --- alignment and distillation -------------------------------------------------------------

def test_alignment_loss_is_mse_plus_one_minus_cosine():
    x, y = t(1.0, 0.0)[None], t(0.0, 1.0)[None]
    assert float(alignment_loss(x, y)) == pytest.approx(1.0 + 1.0)
    assert float(alignment_loss(x, y, mse_weight=0.25, cosine_weight=2.0)) == pytest.approx(0.25 + 2.0)
    assert float(alignment_loss(x, x)) == pytest.approx(0.0)


def test_feature_distillation_compares_directions_and_spares_the_teacher():
    student = t(2.0, 0.0)[None].requires_grad_()
    teacher = t(0.0, 3.0)[None].requires_grad_()
    loss = feature_distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(1.0)  # mean((1 - 0)^2, (0 - 1)^2)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert float(feature_distillation_loss(t(2.0, 0.0)[None], t(5.0, 0.0)[None])) == pytest.approx(0.0)


def test_binary_kl_matches_hand_computed_value_and_is_zero_for_identical_logits():
    # p_t = 0.5, p_s = 0.75: KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3)
    assert float(binary_kl_divergence(t(0.0), t(math.log(3.0)))) == pytest.approx(0.5 * math.log(4 / 3))
    logits = torch.randn(16, dtype=torch.float64) * 3
    assert float(binary_kl_divergence(logits, logits).abs().max()) < 1e-12
    assert float(logit_distillation_loss(logits, logits, temperature=3.0)) == pytest.approx(0.0, abs=1e-12)


def test_logit_distillation_scales_by_temperature_squared():
    # student 2 ln 3, teacher 0, T = 2 -> T^2 * KL(sigmoid(0) || sigmoid(ln 3))
    loss = logit_distillation_loss(t(2 * math.log(3.0)), t(0.0), temperature=2.0)
    assert float(loss) == pytest.approx(4 * 0.5 * math.log(4 / 3))


# --- classification ---------------------------------------------------------------------------

def test_margin_focal_with_gamma_zero_and_no_margin_is_binary_cross_entropy():
    logits = torch.randn(32, dtype=torch.float64) * 2
    targets = (torch.rand(32) > 0.6).double()
    loss = margin_focal_loss(logits, targets, alpha=None, gamma=0.0)
    assert float(loss) == pytest.approx(log_loss(targets.numpy(), torch.sigmoid(logits).numpy()), rel=1e-9)


@pytest.mark.parametrize(("logit", "target", "alpha", "gamma", "m_pos", "m_neg", "expected"), [
    (0.0, 1, None, 2.0, 0.0, 0.0, 0.25 * math.log(2)),         # p_t = 0.5: (1 - 0.5)^2 ln 2
    (0.0, 1, 0.75, 2.0, 0.0, 0.0, 0.75 * 0.25 * math.log(2)),  # alpha weights positives
    (0.0, 0, 0.75, 2.0, 0.0, 0.0, 0.25 * 0.25 * math.log(2)),  # 1 - alpha weights negatives
    (1.0, 1, None, 2.0, 1.0, 0.0, 0.25 * math.log(2)),         # margin shifts the positive to 0
    (-1.0, 0, None, 0.0, 0.0, 1.0, math.log(2)),               # margin shifts the negative to 0
    (math.log(3), 1, None, 1.0, 0.0, 0.0, 0.25 * math.log(4 / 3)),  # p_t = 0.75
])
def test_margin_focal_matches_hand_computed_values(logit, target, alpha, gamma, m_pos, m_neg, expected):
    loss = margin_focal_loss(t(logit), t(target), alpha=alpha, gamma=gamma, margin_positive=m_pos,
                             margin_negative=m_neg)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_margin_focal_module_applies_its_alpha():
    logits, targets = t(0.3, -0.2, 1.5, -2.0), t(1, 0, 1, 0)
    weighted = MarginFocalLoss(alpha=0.9, gamma=2.0, margin_positive=0.0)(logits, targets)
    unweighted = margin_focal_loss(logits, targets, alpha=None, gamma=2.0, reduction="none")
    expected = (unweighted * t(0.9, 0.1, 0.9, 0.1)).mean()
    assert float(weighted) == pytest.approx(float(expected), rel=1e-12)


def test_kd_loss_mixes_distillation_and_cross_entropy():
    student, teacher, targets = t(0.4, -1.0, 2.0), t(1.0, -0.5, 0.0), t(1, 0, 0)
    bce = F.binary_cross_entropy_with_logits(student, targets)
    distill = logit_distillation_loss(student, teacher, temperature=3.0)
    assert float(kd_loss(student, teacher, targets, alpha=0.0, temperature=3.0)) == pytest.approx(float(bce))
    assert float(kd_loss(student, teacher, targets, alpha=1.0, temperature=3.0)) == pytest.approx(float(distill))
    mixed = kd_loss(student, teacher, targets, alpha=0.3, temperature=3.0)
    assert float(mixed) == pytest.approx(0.3 * float(distill) + 0.7 * float(bce))


# --- schedules ----------------------------------------------------------------------------------

def test_classification_weight_moves_from_half_to_point_eight():
    config = LossScheduleConfig(ramp_epochs=10)
    assert classification_weight(0, config) == pytest.approx(0.5)
    assert classification_weight(5, config) == pytest.approx(0.65)
    assert classification_weight(10, config) == pytest.approx(0.8)
    assert classification_weight(40, config) == pytest.approx(0.8)
    assert distillation_weight(5, config) == pytest.approx(0.35)
    cosine = LossScheduleConfig(ramp_epochs=10, shape="cosine")
    assert classification_weight(5, cosine) == pytest.approx(0.65)
    assert classification_weight(2, cosine) == pytest.approx(0.5 + 0.3 * 0.5 * (1 - math.cos(math.pi * 0.2)))


def test_temperature_and_margin_follow_their_config():
    config = LossScheduleConfig(ramp_epochs=4, temperature_start=4.0, temperature_end=2.0,
                                margin_scale_start=0.5, margin_scale_end=1.5)
    assert [temperature_at(e, config) for e in (0, 2, 4, 9)] == pytest.approx([4.0, 3.0, 2.0, 2.0])
    assert margin_scale_at(1, config) == pytest.approx(0.75)
    assert LossScheduleConfig.from_dict(config.to_dict()) == config


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda: soft_triplet_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 1.0,
                               reduction="avg"), ConfigError, "mean, sum, none"),
    (lambda: soft_triplet_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), 1.0),
     InputError, r"anchor \[2, 3\].*negative \[2, 4\]"),
    (lambda: margin_focal_loss(torch.zeros(2), torch.zeros(2), alpha=1.5), ConfigError, "alpha"),
    (lambda: logit_distillation_loss(torch.zeros(2), torch.zeros(2), temperature=0.0),
     ConfigError, "temperature"),
    (lambda: LossScheduleConfig(shape="exp"), ConfigError, "linear, cosine, constant"),
    (lambda: LossScheduleConfig.from_dict({"warmup": 3}), ConfigError, "warmup"),
    (lambda: LossScheduleConfig.from_dict({"ramp_epochs": "ten"}), ConfigError,
     "ramp_epochs must be a number"),
], ids=["reduction", "shapes", "alpha", "temperature", "shape", "unknown key", "typed value"])
def test_bad_options_and_shapes_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
