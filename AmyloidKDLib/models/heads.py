"""The small modules on top of the per-slice encoder.

Shapes: ``B`` cases, ``N`` slices per case in anatomical order (left -> right), ``D`` embedding
size (128 in the paper). Slices keep their order all the way: each token gets a learned
slice-position embedding, attention mixes them, attention pooling weights them.
"""

from __future__ import annotations

import torch
from torch import nn

from AmyloidKDLib.errors import ConfigError, InputError


def _check_dropout(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}.")


class SliceProjection(nn.Module):
    """Per-slice projection of encoder features to the shared embedding space.

    ``[..., in_features] -> LayerNorm -> Linear -> GELU -> Dropout -> Linear -> [..., D]``
    """

    def __init__(self, in_features: int, embed_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        _check_dropout("projection dropout", dropout)
        self.layers = nn.Sequential(
            nn.LayerNorm(in_features), nn.Linear(in_features, embed_dim), nn.GELU(),
            nn.Dropout(dropout), nn.Linear(embed_dim, embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project ``[..., in_features]`` to ``[..., D]``."""
        return self.layers(features)


class SlicePositionEmbedding(nn.Module):
    """Learned embedding of each slice's place in the anatomical order, added to its token."""

    def __init__(self, n_slices: int, embed_dim: int) -> None:
        super().__init__()
        if n_slices < 1:
            raise ConfigError(f"n_slices must be >= 1, got {n_slices}.")
        self.embedding = nn.Parameter(torch.randn(n_slices, embed_dim) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens[B, N, D]`` plus the position embedding of slices ``0..N-1``."""
        if tokens.shape[1] != self.embedding.shape[0]:
            raise InputError(f"the model was built for {self.embedding.shape[0]} slices per case, "
                             f"got {tokens.shape[1]}. Slice the volume with the same n_slices "
                             "as the model config.")
        return tokens + self.embedding


class TokenAttention(nn.Module):
    """Multi-head attention over slice tokens with a residual and LayerNorm.

    ``out = LayerNorm(residual + Dropout(MHA(query, context, context)))``

    Self-attention (intra-modality aggregation): ``query = context = residual = x``.
    Cross-modal attention in the teacher: PET tokens are the queries, MRI tokens the keys and
    values, and the residual is the PET query (MRI evidence gathered per PET slice). The two uses
    share this structure, which lets the student's self-attention start from the teacher's
    cross-attention weights.
    """

    def __init__(self, embed_dim: int = 128, num_heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by attention_heads {num_heads}.")
        _check_dropout("attention dropout", dropout)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from ``query[B, N, D]`` to ``context[B, M, D]`` (default: self-attention)."""
        context = query if context is None else context
        residual = query if residual is None else residual
        attended, _ = self.attention(query, context, context, need_weights=False)
        return self.norm(residual + self.dropout(attended))


class AttentionPooling(nn.Module):
    """Attention-based pooling over slices (Ilse et al., 2018):

    ``w = softmax_n(v^T tanh(W x_n))``, ``embedding = sum_n w_n x_n``.
    """

    def __init__(self, embed_dim: int = 128, hidden: int = 64) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``tokens[B, N, D]`` -> ``(embedding[B, D], weights[B, N])``."""
        weights = torch.softmax(self.score(tokens).squeeze(-1), dim=1)
        return torch.einsum("bn,bnd->bd", weights, tokens), weights


class Classifier(nn.Module):
    """Amyloid-positivity head: ``D -> hidden -> 1`` with LayerNorm, ReLU and dropout; returns
    one logit per case."""

    def __init__(self, embed_dim: int = 128, hidden: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        _check_dropout("classifier dropout", dropout)
        self.layers = nn.Sequential(nn.Linear(embed_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                    nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding[B, D] -> logits[B]``."""
        return self.layers(embedding).squeeze(-1)


class IdentityUntilFitted(nn.Module):
    """Base of the modules whose buffers are fitted on data outside gradient descent (logit
    calibration, feature standardisation, PET harmonisation). At their initial buffers they
    are the identity, so a checkpoint saved before such a module existed loads it at those
    defaults (:func:`AmyloidKDLib.checkpoint.load_checkpoint`)."""


class FittedStatistics(IdentityUntilFitted):
    """An :class:`IdentityUntilFitted` with a ``fitted`` flag buffer: identity until ``fit``."""

    def _register_fitted_flag(self) -> None:
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)


class LogitCalibration(IdentityUntilFitted):
    """``logit -> scale * logit + offset``: identity while training, set after it by Platt
    scaling on the validation cases (:func:`AmyloidKDLib.calibration.fit_platt`). Stored as
    buffers, so a checkpoint carries it and inference applies it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("offset", torch.zeros(()))

    def set(self, scale: float = 1.0, offset: float = 0.0) -> None:
        """Use ``scale * logit + offset`` from now on (``set()`` restores the identity)."""
        self.scale.fill_(float(scale))
        self.offset.fill_(float(offset))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scale.to(logits.dtype) + self.offset.to(logits.dtype)


class FeatureStandardization(FittedStatistics):
    """Per-slice, per-feature standardisation of frozen-ish encoder features:
    ``features[B, N, F] -> (features - mean[N, F]) / std[N, F]``.

    A randomly initialised encoder (the ``cpu`` preset) gives features whose case-to-case part
    is about 5 % of their size; the heads then barely move in a few hundred steps. Fitted on the
    training fold's features before training (:meth:`fit`), this puts that part at unit scale.
    Buffers, so checkpoints carry it; unfitted it is the identity.
    """

    def __init__(self, n_slices: int, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_slices, n_features))
        self.register_buffer("std", torch.ones(n_slices, n_features))
        self._register_fitted_flag()

    @torch.no_grad()
    def fit(self, features: torch.Tensor, min_std: float = 1e-6) -> None:
        """Fit on ``features[K, N, F]`` of K training cases (K >= 2)."""
        if features.dim() != 3 or tuple(features.shape[1:]) != tuple(self.mean.shape) or features.shape[0] < 2:
            raise InputError(f"standardisation needs features [K >= 2, {self.mean.shape[0]}, "
                             f"{self.mean.shape[1]}], got {tuple(features.shape)}.")
        features = features.float()
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(min_std))
        self.fitted.fill_(True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.is_fitted:
            return features
        return (features - self.mean.to(features.dtype)) / self.std.to(features.dtype)
