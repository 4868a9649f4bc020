"""Safe model checkpoints: a folder with ``model.safetensors`` and ``checkpoint.json``.

The JSON carries everything needed to rebuild and trust the model: the model config, the
preprocessing and slicing configs the model was trained with, the decision threshold, metrics,
provenance, package versions, and the SHA-256 and size of the weights file. Loading checks all
of it and raises :class:`CheckpointError` for a truncated, tampered, mismatched or unknown file.
Nothing is ever unpickled: weights are read with safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from AmyloidKDLib.atomic import atomic_path, write_text_atomic
from AmyloidKDLib.errors import AmyloidKDError, CheckpointError
from AmyloidKDLib.models.heads import IdentityUntilFitted

FORMAT_NAME = "amyloidkd-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
INFO_FILE = "checkpoint.json"
_VERSIONED_PACKAGES = ("torch", "open_clip_torch", "timm", "peft", "safetensors", "numpy")


@dataclass
class CheckpointInfo:
    """Everything stored next to the weights (see module docstring)."""

    model_config: Any  # AmyloidKDLib.models.ModelConfig
    prep_config: dict
    slice_config: dict
    threshold: float
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    created: str = ""
    path: Path | None = None
    #: JSON form of an :class:`AmyloidKDLib.centiloid_readout.CentiloidReadout`, or None.
    centiloid_readout: dict | None = None


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a model's weights and outputs."""
    from AmyloidKDLib import __version__

    versions = {"python": platform.python_version(), "amyloidkd": __version__}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(directory: str | Path, model: nn.Module, model_config: Any, *, prep_config: dict,
                    slice_config: dict, threshold: float, metrics: dict | None = None,
                    provenance: dict | None = None) -> Path:
    """Write ``model``'s weights and their description into ``directory``; returns the folder.

    Both files are written to temporary names and renamed into place (the JSON last), so a
    crash never leaves a half-written file under the final name.
    """
    from safetensors.torch import save_file

    if not 0.0 <= float(threshold) <= 1.0:
        raise CheckpointError(f"decision threshold must be a probability in [0, 1], got {threshold}.")
    info = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_config": model_config.to_dict(),
        "prep_config": prep_config,
        "slice_config": slice_config,
        "threshold": float(threshold),
        "metrics": metrics or {},
        "provenance": provenance or {},
        "versions": package_versions(),
    }
    try:
        json.dumps(info, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable ({exc}); pass plain "
                              "dicts of numbers and strings for configs, metrics and provenance.") from exc
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    weights_path = directory / WEIGHTS_FILE
    with atomic_path(weights_path) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt", "producer": FORMAT_NAME})
    info["weights"] = {"file": WEIGHTS_FILE, "sha256": _sha256(weights_path),
                       "size_bytes": weights_path.stat().st_size, "tensors": len(state)}
    text = json.dumps(info, indent=2, sort_keys=True, allow_nan=False)
    write_text_atomic(directory / INFO_FILE, text + "\n")
    return directory


def _read_info(directory: Path) -> dict:
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        found = ", ".join(sorted(p.name for p in directory.iterdir())[:8]) or "nothing"
        raise CheckpointError(f"{directory} is not an AmyloidKD checkpoint: {INFO_FILE} is missing "
                              f"(found: {found}). A checkpoint is a folder with {WEIGHTS_FILE} and "
                              f"{INFO_FILE}, written by save_checkpoint; pickled .pt/.bin files are "
                              "not loaded.")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{info_path} is damaged (not valid JSON: {exc}). Re-export the "
                              "checkpoint or restore it from a copy.") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{info_path} is not an AmyloidKD checkpoint description "
                              f"(format is {info.get('format') if isinstance(info, dict) else None!r}, "
                              f"expected '{FORMAT_NAME}').")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"{info_path} has checkpoint format version {version!r}; this AmyloidKD "
                              f"reads version {FORMAT_VERSION}. Upgrade AmyloidKD to load it.")
    missing = [k for k in ("model_config", "prep_config", "slice_config", "threshold", "weights")
               if k not in info]
    if missing:
        raise CheckpointError(f"{info_path} lacks the entries {', '.join(missing)}.")
    return info


def _check_weights_file(directory: Path, info: dict) -> Path:
    recorded = info["weights"]
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint folder is incomplete.")
    size = path.stat().st_size
    if size != recorded.get("size_bytes"):
        raise CheckpointError(f"{path} has {size} bytes but the checkpoint recorded "
                              f"{recorded.get('size_bytes')}: the file is truncated or was replaced. "
                              "Copy the checkpoint again.")
    if _sha256(path) != recorded.get("sha256"):
        raise CheckpointError(f"{path} does not match the SHA-256 recorded in {INFO_FILE}: the "
                              "weights were modified or corrupted. Use an untouched copy.")
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model saved in ``path`` (the folder, or its ``checkpoint.json``), in eval mode.

    Raises:
        CheckpointError: missing, truncated, tampered, unknown-format or incompatible files.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.models.encoders import state_dict_mismatch

    directory = Path(path)
    if directory.is_file() and directory.name == INFO_FILE:
        directory = directory.parent
    if not directory.exists():
        raise CheckpointError(f"checkpoint {directory} does not exist.")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not an AmyloidKD checkpoint folder "
                              f"({WEIGHTS_FILE} + {INFO_FILE}). Pickled .pt/.bin/.ckpt files are never "
                              "loaded, for safety; export the model with save_checkpoint.")
    info = _read_info(directory)
    weights_path = _check_weights_file(directory, info)
    try:
        config = ModelConfig.from_dict(info["model_config"])
    except AmyloidKDError as exc:
        raise CheckpointError(f"the model config in {directory / INFO_FILE} is not usable by this "
                              f"AmyloidKD version: {exc}") from exc
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights_path}: {exc}.") from exc
    model = build_model(config, load_pretrained=False)
    expected = model.state_dict()
    # Weights saved before a fitted-identity module existed (calibration, feature
    # standardisation, PET harmonisation) load it at its defaults, i.e. the identity.
    for name, module in model.named_modules():
        if isinstance(module, IdentityUntilFitted):
            for buffer, _ in module.named_buffers(recurse=False):
                key = f"{name}.{buffer}" if name else buffer
                state.setdefault(key, expected[key].clone())
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(
            f"the weights in {weights_path} do not match the model described in {INFO_FILE} "
            f"({config.kind}, encoder {config.encoder}): {mismatch}. "
            "The two files do not belong together.")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, CheckpointInfo(
        model_config=config, prep_config=info["prep_config"], slice_config=info["slice_config"],
        threshold=float(info["threshold"]), metrics=info.get("metrics", {}),
        provenance=info.get("provenance", {}), versions=info.get("versions", {}),
        created=info.get("created", ""), path=directory,
        centiloid_readout=info.get("centiloid_readout"))


def set_centiloid_readout(path: str | Path, readout: dict | None) -> Path:
    """Store ``readout`` (a ``CentiloidReadout.to_dict()``; None removes it) in the checkpoint
    folder ``path``'s ``checkpoint.json``, rewritten atomically; the weights are not touched.

    Raises:
        CheckpointError: ``path`` is not a checkpoint, or ``readout`` is not finite JSON.
    """
    directory = Path(path)
    info = _read_info(directory)
    if readout is None:
        info.pop("centiloid_readout", None)
    else:
        info["centiloid_readout"] = readout
    try:
        text = json.dumps(info, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the Centiloid read-out is not finite JSON ({exc}).") from exc
    write_text_atomic(directory / INFO_FILE, text + "\n")
    return directory
