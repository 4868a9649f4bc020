"""The PET-guided teacher: aligns MRI and PET slice embeddings (phase 1 of the method).

Both modalities go through the same encoder (BiomedCLIP + LoRA), projection and slice-position
embedding. Each modality's tokens are mixed by their own self-attention; then cross-modal
attention lets the PET tokens (queries, residual) attend to the MRI tokens (keys, values),
giving the PET-guided MRI sequence: each PET slice token gathers the MRI evidence it points at.
(With the MRI as residual, PET would reach the guided embedding only through attention weights,
and the teacher stayed at chance on the synthetic cohort.) Attention pooling turns each sequence into one embedding.

Before the encoder, each PET stack can be harmonised against the amyloid-negative reference of
its tracer (:class:`~AmyloidKDLib.models.harmonization.PetHarmonization`, fitted on the training
fold and stored with the weights); pass the tracer rows with ``tracer=``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.models.config import ModelConfig
from AmyloidKDLib.models.encoders import SliceEncoder
from AmyloidKDLib.models.harmonization import PetHarmonization
from AmyloidKDLib.models.heads import AttentionPooling, Classifier, LogitCalibration, TokenAttention
from AmyloidKDLib.models.student import SliceEmbedder, check_slice_stack, is_feature_stack


@dataclass
class TeacherOutput:
    """Embeddings and logits of the teacher for ``B`` MRI/PET pairs."""

    guided: torch.Tensor  # [B, D] PET-guided MRI embedding: triplet anchor, distillation target
    pet: torch.Tensor     # [B, D] PET embedding: triplet positive
    mri: torch.Tensor     # [B, D] MRI-only embedding of the teacher
    logits: torch.Tensor  # [B] amyloid-positivity logit from the guided embedding


class TeacherModel(nn.Module):
    """MRI + PET teacher; ``forward(mri, pet, tracer)`` and ``embed_pet(pet, tracer)``.

    ``tracer`` (``[B]`` rows of :func:`~AmyloidKDLib.models.harmonization.tracer_index`, None for
    unknown) selects the PET harmonisation reference; ``harmonized=True`` says the PET went
    through :meth:`harmonize_pet` already (the training loop harmonises before augmenting).
    """

    def __init__(self, config: ModelConfig, *, load_pretrained: bool = True) -> None:
        super().__init__()
        if config.kind != "teacher":
            raise ConfigError(f"TeacherModel needs a config of kind 'teacher', got '{config.kind}'.")
        self.config = config
        dim, heads, drop = config.embed_dim, config.attention_heads, config.attention_dropout
        self.slices = SliceEmbedder(config, load_pretrained=load_pretrained)
        self.mri_attention = TokenAttention(dim, heads, drop)
        self.pet_attention = TokenAttention(dim, heads, drop)
        self.cross_attention = TokenAttention(dim, heads, drop)
        self.guided_pool = AttentionPooling(dim, config.pooling_hidden)
        self.pet_pool = AttentionPooling(dim, config.pooling_hidden)
        self.mri_pool = AttentionPooling(dim, config.pooling_hidden)
        self.classifier = Classifier(dim, config.classifier_hidden, config.classifier_dropout)
        self.calibration = LogitCalibration()
        self.harmonization = PetHarmonization(config.n_slices, 3, config.image_size)

    @property
    def encoder(self) -> SliceEncoder:
        """The shared per-slice encoder."""
        return self.slices.encoder

    def harmonize_pet(self, pet: torch.Tensor, tracer: torch.Tensor | None = None) -> torch.Tensor:
        """PET stacks as the encoder sees them: harmonised per tracer once fitted, else unchanged."""
        return self.harmonization(pet, tracer)

    def pet_tokens(self, pet: torch.Tensor, tracer: torch.Tensor | None = None,
                   harmonized: bool = False) -> torch.Tensor:
        """PET slice tokens after PET self-attention, ``[B, N, D]``; ``pet`` may be encoder features
        ``[B, N, F]`` when the PET harmonisation is not fitted (it works on pixels)."""
        check_slice_stack(pet, self.config, "PET", num_features=self.slices.num_features)
        if is_feature_stack(pet, self.slices.num_features):
            if self.harmonization.is_fitted and not harmonized:
                raise InputError("this teacher harmonises PET per tracer in pixel space; it needs PET "
                                 "slice stacks [B, N, 3, S, S], not precomputed encoder features.")
        elif not harmonized:
            pet = self.harmonize_pet(pet, tracer)
        return self.pet_attention(self.slices(pet))

    def embed_pet(self, pet: torch.Tensor, tracer: torch.Tensor | None = None,
                  harmonized: bool = False) -> torch.Tensor:
        """PET embedding ``[B, D]`` of PET stacks ``[B, N, 3, S, S]`` (positives and negatives)."""
        return self.pet_pool(self.pet_tokens(pet, tracer, harmonized))[0]

    def forward(self, mri: torch.Tensor, pet: torch.Tensor, tracer: torch.Tensor | None = None,
                harmonized: bool = False) -> TeacherOutput:
        """Embed matched MRI and PET stacks ``[B, N, 3, S, S]`` (or their encoder features ``[B, N, F]``)."""
        check_slice_stack(mri, self.config, "MRI", num_features=self.slices.num_features)
        mri_tokens = self.mri_attention(self.slices(mri))
        pet_tokens = self.pet_tokens(pet, tracer, harmonized)
        guided_tokens = self.cross_attention(pet_tokens, context=mri_tokens)
        guided = self.guided_pool(guided_tokens)[0]
        return TeacherOutput(guided=guided, pet=self.pet_pool(pet_tokens)[0],
                             mri=self.mri_pool(mri_tokens)[0], logits=self.calibration(self.classifier(guided)))
