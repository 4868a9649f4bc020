"""MRI-only students: the paper student (BiomedCLIP + LoRA), the light CNN student, and the
shared slice-embedding front end the teacher also uses.

A student sees only the MRI slice stack ``[B, N, 3, S, S]``: each slice is encoded, projected to
``D`` = 128, tagged with its slice position, mixed by self-attention, pooled by attention over
slices, and classified. The MRI-only baseline is this model trained without a teacher.
Between encoder and projection the features can be standardised per slice and feature
(:class:`~AmyloidKDLib.models.heads.FeatureStandardization`, fitted on training cases).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.models.config import ModelConfig
from AmyloidKDLib.models.encoders import SliceEncoder, create_encoder
from AmyloidKDLib.models.heads import (
    AttentionPooling,
    Classifier,
    FeatureStandardization,
    LogitCalibration,
    SlicePositionEmbedding,
    SliceProjection,
    TokenAttention,
)
from AmyloidKDLib.models.lora import apply_lora, configure_encoder_training


@dataclass
class ModelOutput:
    """What a student returns for ``B`` cases of ``N`` slices."""

    logits: torch.Tensor          # [B] amyloid-positivity logit (calibrated once trained)
    embedding: torch.Tensor       # [B, D] case embedding (distillation target/feature)
    slice_tokens: torch.Tensor    # [B, N, D] per-slice tokens after attention
    slice_weights: torch.Tensor   # [B, N] attention-pooling weight of each slice (sums to 1)


def frozen_encoder_seed(name: str) -> int:
    """The fixed seed a frozen encoder ``name`` is initialised from (before any weights load)."""
    return int.from_bytes(hashlib.sha256(f"amyloidkd-frozen-encoder:{name}".encode()).digest()[:4], "big")


def build_encoder(config: ModelConfig, *, load_pretrained: bool = True) -> SliceEncoder:
    """The configured encoder with LoRA injected and frozen blocks set.

    ``load_pretrained=False`` builds random weights silently (used when a checkpoint's own
    weights will be loaded next). With ``freeze_encoder`` the encoder is built inside a forked
    RNG seeded by :func:`frozen_encoder_seed` (the same weights in every build, the caller's RNG
    untouched) and none of its parameters requires a gradient.
    """
    def create() -> SliceEncoder:
        return create_encoder(config.encoder, weights=config.weights if load_pretrained else "none",
                              image_size=config.image_size, allow_network=config.allow_network,
                              warn_if_random=load_pretrained)

    if config.freeze_encoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(frozen_encoder_seed(config.encoder))
            encoder = create()
        encoder.requires_grad_(False)
        return encoder
    encoder = create()
    lora = config.lora_rank > 0
    if lora:
        apply_lora(encoder, rank=config.lora_rank, alpha=config.lora_alpha,
                   dropout=config.lora_dropout, target_regex=config.lora_target)
    configure_encoder_training(encoder, lora=lora, frozen_blocks=config.frozen_blocks)
    return encoder


def is_feature_stack(stack: torch.Tensor, num_features: int | None) -> bool:
    """True when ``stack`` is precomputed encoder features ``[B, N, num_features]``."""
    return num_features is not None and stack.ndim == 3 and stack.shape[-1] == num_features


def check_slice_stack(images: torch.Tensor, config: ModelConfig, what: str = "MRI",
                      num_features: int | None = None) -> None:
    """Raise InputError unless ``images`` is ``[B, n_slices, 3, image_size, image_size]`` or,
    when ``num_features`` (the encoder's) is given, encoder features ``[B, n_slices, num_features]``."""
    expected = [config.n_slices, 3, config.image_size, config.image_size]
    if images.ndim == 5 and list(images.shape[1:]) == expected:
        return
    if is_feature_stack(images, num_features) and images.shape[1] == config.n_slices:
        return
    features = (f", or encoder features [B, {config.n_slices}, {num_features}]"
                if num_features is not None else "")
    raise InputError(f"{what} slice stack must be shaped [B, {', '.join(map(str, expected))}] "
                     f"(cases, slices, channels, height, width){features}; got {list(images.shape)}. "
                     "Slice with the n_slices and image_size of the model config.")


class SliceEmbedder(nn.Module):
    """Encoder + per-slice projection + slice-position embedding: ``[B, N, 3, S, S] -> [B, N, D]``.

    Also takes precomputed encoder features ``[B, N, F]`` (``F`` = ``encoder.num_features``), which
    skip the encoder. A frozen encoder (``config.freeze_encoder``) stays in eval mode even when the
    model is put in training mode (dropout/batch-norm statistics never change its features).
    """

    def __init__(self, config: ModelConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.frozen_encoder = bool(config.freeze_encoder)
        self.encoder = build_encoder(config, load_pretrained=load_pretrained)
        self.standardization = FeatureStandardization(config.n_slices, self.encoder.num_features)
        self.projection = SliceProjection(self.encoder.num_features, config.embed_dim,
                                          config.projection_dropout)
        self.position = SlicePositionEmbedding(config.n_slices, config.embed_dim)

    @property
    def num_features(self) -> int:
        """Size ``F`` of the encoder's per-slice features."""
        return int(self.encoder.num_features)

    def train(self, mode: bool = True) -> SliceEmbedder:
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw encoder features ``[B, N, F]`` of a stack ``[B, N, 3, S, S]``; features ``[B, N, F]``
        are returned as they are."""
        if is_feature_stack(images, self.num_features):
            return images
        b, n = images.shape[:2]
        return self.encoder(images.reshape(b * n, *images.shape[2:])).reshape(b, n, -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Slice tokens ``[B, N, D]`` of a stack ``[B, N, 3, S, S]`` (or of its features ``[B, N, F]``)."""
        return self.position(self.projection(self.standardization(self.features(images))))


class StudentModel(nn.Module):
    """MRI-only classifier (paper student, light student, or baseline); see module docstring."""

    def __init__(self, config: ModelConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.slices = SliceEmbedder(config, load_pretrained=load_pretrained)
        self.attention = TokenAttention(config.embed_dim, config.attention_heads, config.attention_dropout)
        self.pool = AttentionPooling(config.embed_dim, config.pooling_hidden)
        self.classifier = Classifier(config.embed_dim, config.classifier_hidden, config.classifier_dropout)
        self.calibration = LogitCalibration()

    @property
    def encoder(self) -> SliceEncoder:
        """The per-slice encoder, callable on ``[N, 3, S, S]`` (e.g. for per-slice Grad-CAM)."""
        return self.slices.encoder

    def forward(self, mri: torch.Tensor) -> ModelOutput:
        """Classify MRI slice stacks ``[B, N, 3, S, S]`` (or their encoder features ``[B, N, F]``)."""
        check_slice_stack(mri, self.config, num_features=self.slices.num_features)
        tokens = self.attention(self.slices(mri))
        embedding, weights = self.pool(tokens)
        return ModelOutput(self.calibration(self.classifier(embedding)), embedding, tokens, weights)

    def gradcam_target_layers(self) -> list[nn.Module]:
        """The encoder layer(s) Grad-CAM should hook (see SliceEncoder.gradcam_target_layers)."""
        return self.encoder.gradcam_target_layers()

    @property
    def gradcam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Tokens -> ``[N, C, H, W]`` for ViT encoders (class token dropped); None for CNNs."""
        return self.encoder.gradcam_reshape_transform

    def gradcam_model(self) -> nn.Module:
        """This model seen as ``slices[N, 3, S, S] -> logit[1, 1]`` (one case), the form
        pytorch-grad-cam needs to return one map per slice."""
        return _CaseLogitFromSlices(self)


class _CaseLogitFromSlices(nn.Module):
    """Grad-CAM adapter: the slices of one case in, that case's logit out."""

    def __init__(self, student: StudentModel) -> None:
        super().__init__()
        self.student = student

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.student(slices.unsqueeze(0)).logits.unsqueeze(-1)
