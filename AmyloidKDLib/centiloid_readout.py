"""The MRI-predicted Centiloid with a 90 % CV+ interval, as a checkpoint carries it.

The read-out is a ridge regression of the measured Centiloid on the case's regional MRI
measures (:mod:`AmyloidKDLib.regional_features`: GM-weighted means of 100 template parcels
of the prepared MNI volume). Training (``Training/centiloid_readout.py``) fits it on the
training cases and stores it in ``checkpoint.json`` under ``centiloid_readout``; ``predict``
applies it with numpy alone.

The interval is CV+ (Barber, Candès, Ramdas & Tibshirani, "Predictive inference with the
jackknife+", Ann. Statist. 2021), the cross-validation form of split conformal prediction
(Vovk et al. 2005; Lei et al., JASA 2018). The training cases are split into K subject-
disjoint folds; fold k's model ``μ₋ₖ`` never saw its cases, and ``Rᵢ = |CLᵢ − μ₋ₖ₍ᵢ₎(xᵢ)|``
is case i's held-out residual. For a new case x the interval is

    [ the ⌊α(n+1)⌋-th smallest of μ₋ₖ₍ᵢ₎(x) − Rᵢ ,  the ⌈(1−α)(n+1)⌉-th smallest of μ₋ₖ₍ᵢ₎(x) + Rᵢ ]

over the n calibration cases. Barber et al. prove coverage ≥ 1 − 2α for exchangeable
cases (and about 1 − α in practice); we check it on fresh phantom cohorts
(docs/benchmarks.md). The point prediction is the model fitted on all n cases. Written
here (about 20 lines) rather than taken from MAPIE or crepes, which are not dependencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Version of the stored form (``checkpoint.json``'s ``centiloid_readout.version``).
READOUT_VERSION = 1
#: Miscoverage of the stored interval: 0.1 gives the 90 % interval.
DEFAULT_ALPHA = 0.1


def conformal_rank(n: int, alpha: float) -> int:
    """The rank ⌈(1−α)(n+1)⌉ of the conformal upper quantile among n scores (may exceed n:
    then the interval is unbounded). Rounded first, so that 0.9·10 counts as 9, not 9.000…01."""
    return math.ceil(round((1.0 - alpha) * (n + 1), 9))


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ⌈(1−α)(n+1)⌉-th smallest of ``scores`` (``inf`` when that rank exceeds n): the
    split-conformal threshold of held-out nonconformity scores."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    rank = conformal_rank(len(ordered), alpha)
    return float(ordered[rank - 1]) if rank <= len(ordered) else math.inf


def cv_plus_interval(fold_predictions: np.ndarray, residuals: np.ndarray, folds: np.ndarray,
                     alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """CV+ bounds for m new cases.

    Args:
        fold_predictions: ``(K, m)``, fold k's model applied to the new cases.
        residuals: ``(n,)`` held-out absolute residuals of the calibration cases.
        folds: ``(n,)`` the fold (0..K-1) whose model held each calibration case out.
        alpha: miscoverage (0.1: a 90 % interval).

    Returns ``(lower, upper)``, each ``(m,)``; ±inf where n is too small for α.
    """
    mu = np.asarray(fold_predictions, dtype=np.float64)[np.asarray(folds, dtype=int)]   # (n, m)
    r = np.asarray(residuals, dtype=np.float64)[:, None]
    n = len(r)
    upper_rank = conformal_rank(n, alpha)
    lower_rank = n + 1 - upper_rank   # = ⌊α(n+1)⌋: the same order statistic from below
    upper = np.sort(mu + r, axis=0)[upper_rank - 1] if upper_rank <= n else np.full(mu.shape[1], math.inf)
    lower = np.sort(mu - r, axis=0)[lower_rank - 1] if lower_rank >= 1 else np.full(mu.shape[1], -math.inf)
    return lower, upper


@dataclass
class RidgeModel:
    """A ridge fit on standardised features: CL = target_mean + target_sd · (xs·w + b), with
    xs = (x − mean) / scale."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    target_mean: float
    target_sd: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted Centiloid of each row of ``x``."""
        score = ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        return self.target_mean + self.target_sd * score

    def to_dict(self) -> dict[str, Any]:
        """JSON form (floats round-trip exactly through Python's json)."""
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": float(self.bias),
                "target_mean": float(self.target_mean), "target_sd": float(self.target_sd)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RidgeModel:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(values["mean"], np.float64), np.asarray(values["scale"], np.float64),
                   np.asarray(values["weights"], np.float64), float(values["bias"]),
                   float(values["target_mean"]), float(values["target_sd"]))


@dataclass
class CentiloidReadout:
    """A checkpoint's Centiloid read-out: the full model, the K fold models and the held-out
    residuals of the CV+ interval, and the parcellation the features come from."""

    model: RidgeModel
    fold_models: list[RidgeModel]
    residuals: np.ndarray          # (n,) held-out |CL − μ₋ₖ(x)| of the training cases
    residual_folds: np.ndarray     # (n,) fold of each residual
    alpha: float
    centroids_mm: np.ndarray       # (n_parcels, 3): rebuilds the parcellation exactly
    resolution: int                # template grid (mm)
    parcellation_signature: str
    details: dict[str, Any]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(centiloid, lower, upper)`` for each row of ``x`` (regional feature vectors)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        folds = np.stack([m.predict(x) for m in self.fold_models])
        lower, upper = cv_plus_interval(folds, self.residuals, self.residual_folds, self.alpha)
        return self.model.predict(x), lower, upper

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored as ``checkpoint.json``'s ``centiloid_readout``."""
        return {"version": READOUT_VERSION, "method": "ridge on regional GM means; CV+ interval",
                "alpha": float(self.alpha), "model": self.model.to_dict(),
                "fold_models": [m.to_dict() for m in self.fold_models],
                "residuals": self.residuals.tolist(),
                "residual_folds": [int(f) for f in self.residual_folds],
                "parcellation": {"centroids_mm": self.centroids_mm.tolist(),
                                 "resolution": int(self.resolution),
                                 "signature": self.parcellation_signature},
                "details": self.details}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CentiloidReadout:
        """Inverse of :meth:`to_dict`.

        Raises:
            CheckpointError: a damaged entry or a newer version.
        """
        from AmyloidKDLib.errors import CheckpointError

        try:
            if int(values["version"]) > READOUT_VERSION:
                raise CheckpointError(f"the checkpoint's Centiloid read-out has version {values['version']}; "
                                      f"this AmyloidKD reads version {READOUT_VERSION}. Upgrade AmyloidKD.")
            parcellation = values["parcellation"]
            readout = cls(RidgeModel.from_dict(values["model"]),
                          [RidgeModel.from_dict(m) for m in values["fold_models"]],
                          np.asarray(values["residuals"], np.float64),
                          np.asarray(values["residual_folds"], dtype=int), float(values["alpha"]),
                          np.asarray(parcellation["centroids_mm"], np.float64),
                          int(parcellation["resolution"]), str(parcellation["signature"]),
                          dict(values.get("details", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's Centiloid read-out is damaged ({type(exc).__name__}: "
                                  f"{exc}); re-train or remove the 'centiloid_readout' entry.") from None
        sizes = {len(readout.model.weights)} | {len(m.weights) for m in readout.fold_models}
        if (len(sizes) != 1 or len(readout.residuals) != len(readout.residual_folds)
                or not 0 < readout.alpha < 1 or readout.residual_folds.min(initial=0) < 0
                or readout.residual_folds.max(initial=0) >= len(readout.fold_models)):
            raise CheckpointError("the checkpoint's Centiloid read-out is inconsistent (model sizes, "
                                  "residuals or folds do not match); re-train it.")
        return readout
