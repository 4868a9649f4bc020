"""What a checkpoint says about itself, read without the library (no torch, no nibabel).

The panel uses it to run a model with the settings it was trained with (skull stripping "as
the model was trained" is the default choice), to say which model ran and that it is for
research use only (and synthetic, when it is), to warn once when the synthetic demo model is
run on anything but its own sample case, and to install only what the model needs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from AmyloidKDModuleLib.errors import ModuleError
from AmyloidKDModuleLib.runner import resolve_checkpoint
from AmyloidKDModuleLib.sampledata import SAMPLE_FILES

#: The panel's skull-stripping choice that passes no ``--skull-strip``: the checkpoint's own setting.
SKULL_STRIP_AS_TRAINED = "as trained"


@dataclass(frozen=True)
class ModelInfo:
    """The parts of ``checkpoint.json`` the panel shows or acts on."""

    folder: Path
    name: str
    synthetic: bool
    trained_on: str
    skull_strip: str  # the backend the model was trained with ("hd-bet-v1", "hd-bet", "none")
    kind: str  # "student", "light_student", "teacher"
    encoder: str
    lora_rank: int
    versions: dict = field(default_factory=dict)

    @property
    def needs_open_clip(self) -> bool:
        """ViT encoders are built by open_clip; the light student's CNN comes from timm alone."""
        return self.kind != "light_student"

    @property
    def needs_peft(self) -> bool:
        """LoRA adapters are peft's; a model without them does not need it."""
        return self.needs_open_clip and self.lora_rank > 0

    @property
    def notice(self) -> str:
        """The line the panel shows next to every result of this model."""
        if self.synthetic:
            return (f"Model: {self.name}. SYNTHETIC / RESEARCH USE ONLY: trained on synthetic data, "
                    "its output says nothing about a real patient.")
        return f"Model: {self.name}. Research use only, not for diagnosis."


def read_model_info(checkpoint: str | os.PathLike) -> ModelInfo:
    """Read the checkpoint's own description; ModuleError when it is not a usable checkpoint."""
    folder = resolve_checkpoint(checkpoint)
    path = folder / "checkpoint.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModuleError(f"cannot read {path}: {error}. Choose another checkpoint.") from error
    if not isinstance(data, dict):
        raise ModuleError(f"{path} is not an AmyloidKD checkpoint description.")
    provenance = data.get("provenance") or {}
    model = data.get("model_config") or {}
    prep = data.get("prep_config") or {}
    skull = (prep.get("skull_strip") or {}).get("backend") or "hd-bet-v1"
    return ModelInfo(
        folder=folder,
        name=str(provenance.get("name") or folder.name),
        synthetic=bool(provenance.get("synthetic", False)),
        trained_on=str(provenance.get("trained_on") or ""),
        skull_strip=str(skull),
        kind=str(model.get("kind") or "student"),
        encoder=str(model.get("encoder") or ""),
        lora_rank=int(model.get("lora_rank") or 0),
        versions=dict(data.get("versions") or {}),
    )


def effective_skull_strip(choice: Optional[str], info: Optional[ModelInfo]) -> Optional[str]:
    """The backend a run will use: the panel's override, or the model's own for "as trained"/None."""
    if choice in (None, "", SKULL_STRIP_AS_TRAINED):
        return info.skull_strip if info is not None else None
    return choice


def skull_strip_argument(choice: Optional[str]) -> Optional[str]:
    """What the prediction command gets: None (no ``--skull-strip``) for "as trained"."""
    return None if choice in (None, "", SKULL_STRIP_AS_TRAINED) else choice


def remembered_checkpoint(remembered: str, fallback: Optional[Path]) -> tuple:
    """(checkpoint to preselect, message): the one used last if it is still a checkpoint, else
    ``fallback`` (the shipped demo) and a sentence saying why (an extension update moves its folder)."""
    if not str(remembered or "").strip():
        return fallback, ""
    try:
        return resolve_checkpoint(remembered), ""
    except ModuleError:
        return fallback, (f"The checkpoint used last ({remembered}) is not there any more (moved by an update?); "
                          "the demo model is selected instead. Choose your checkpoint again.")


def is_sample_case(node_name: str, file_name: str = "") -> bool:
    """True for the module's own synthetic T1w (by its node name or the file it was loaded from)."""
    sample = SAMPLE_FILES[0]
    return node_name == sample.node_name or Path(file_name or "").name == sample.file_name


class SampleCaseWarning:
    """Says once per model and session that a synthetic model runs on a case it was not made for."""

    def __init__(self) -> None:
        self._warned: set = set()

    def check(self, info: ModelInfo, node_name: str, file_name: str = "") -> Optional[str]:
        """The warning to show now, or None (a real model, the sample case, or already warned)."""
        if not info.synthetic or is_sample_case(node_name, file_name) or info.folder in self._warned:
            return None
        self._warned.add(info.folder)
        return (f"{info.name} is a synthetic demo model: it was made for the module's synthetic sample "
                f"case, and its result for '{node_name}' means nothing about that scan. Use it to see how "
                "the module works; choose a model trained on real data for anything else.")
