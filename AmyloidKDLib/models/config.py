"""``ModelConfig``: every setting of the teacher, students and baseline, as JSON-ready data.

Presets: ``ModelConfig.preset("paper", kind)`` reproduces the paper (BiomedCLIP ViT-B/16 with
LoRA, 15 slices of 224 px); ``ModelConfig.preset("cpu", kind)`` is a tiny stand-in that trains
on a laptop CPU (ViT-Ti/16 at 112 px, about the 2 mm MNI grid, 8 slices). Light students use
MobileNetV3-Small in both presets: the one timm CNN measured >= 10x faster than the BiomedCLIP
student on a 2-core CPU (EfficientNet-B0 is available with ``encoder="efficientnet_b0"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from AmyloidKDLib import configs
from AmyloidKDLib.atomic import write_text_atomic
from AmyloidKDLib.errors import ConfigError
from AmyloidKDLib.models.encoders import BIOMEDCLIP_HUB_ID, HUB_PREFIX, get_encoder_spec
from AmyloidKDLib.models.lora import DEFAULT_LORA_TARGET

KINDS = ("teacher", "student", "light_student")


@dataclass
class ModelConfig(configs.DictConfig):
    """Architecture and initialisation of one model (teacher, student or light student).

    The MRI-only baseline is a ``student`` trained without a teacher.
    """

    kind: str = "student"                    # teacher | student | light_student
    encoder: str = "biomedclip"              # see AmyloidKDLib.models.encoders.list_encoders()
    weights: str = HUB_PREFIX + BIOMEDCLIP_HUB_ID  # "none" | local file | "hf-hub:<repo id>"
    allow_network: bool = False              # may a hub id be downloaded?
    n_slices: int = 15                       # sagittal slices per case (must match SliceConfig)
    image_size: int = 224                    # slice side in pixels (must match SliceConfig)
    embed_dim: int = 128                     # per-slice and per-case embedding size
    lora_rank: int = 10                      # 0 = no LoRA (encoder trained in full)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.2
    lora_target: str = DEFAULT_LORA_TARGET   # regex over the encoder's module names
    frozen_blocks: int = 6                   # first encoder blocks that get no gradient
    # Whole encoder frozen (no gradient, always in eval mode, no LoRA): only the heads train, so
    # training can run on per-slice encoder features computed once (Training/features.py). With
    # weights "none" the encoder is built from a fixed seed derived from its name, so every model
    # of a run (teacher, student, baseline; every fold) holds the same encoder.
    freeze_encoder: bool = False
    projection_dropout: float = 0.1
    attention_heads: int = 4
    attention_dropout: float = 0.1
    pooling_hidden: int = 64
    classifier_hidden: int = 64
    classifier_dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model kind must be one of {', '.join(KINDS)}; got '{self.kind}'.")
        spec = get_encoder_spec(self.encoder)
        if self.kind == "light_student" and spec.family != "timm_cnn":
            raise ConfigError(f"a light_student needs a CNN encoder (e.g. efficientnet_b0, "
                              f"mobilenetv3_small_100); '{self.encoder}' is a ViT. Use kind='student'.")
        if spec.family == "timm_cnn" and self.lora_rank > 0:
            raise ConfigError(f"LoRA targets ViT attention layers; encoder '{self.encoder}' is a CNN. "
                              "Set lora_rank=0.")
        if self.freeze_encoder and self.lora_rank > 0:
            raise ConfigError(f"freeze_encoder=true trains no encoder weight, so LoRA adapters "
                              f"(lora_rank={self.lora_rank}) would never train; set lora_rank=0 with "
                              "a frozen encoder (or freeze_encoder=false to fine-tune with LoRA).")
        for name in ("n_slices", "image_size", "embed_dim", "attention_heads", "pooling_hidden",
                     "classifier_hidden"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.lora_rank < 0 or self.frozen_blocks < 0:
            raise ConfigError(f"lora_rank and frozen_blocks must be >= 0, got {self.lora_rank} "
                              f"and {self.frozen_blocks}.")
        for name in ("lora_dropout", "projection_dropout", "attention_dropout", "classifier_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.embed_dim % self.attention_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be divisible by attention_heads "
                              f"{self.attention_heads}.")

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the config; also written to ``path`` (atomically) when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ModelConfig:
        """Parse JSON text, or read it from a file path."""
        candidate = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = candidate.read_text() if candidate is not None else str(text_or_path)
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config is not valid JSON: {exc}.") from exc

    @classmethod
    def preset(cls, name: str, kind: str = "student", **overrides: Any) -> ModelConfig:
        """A named preset (``resources/presets/model/<name>.json``) for ``kind``, with ``overrides``.

        A preset file holds ``common`` values and values per kind (``teacher``, ``student``,
        ``light_student``) that replace them.
        """
        if kind not in KINDS:
            raise ConfigError(f"model kind must be one of {', '.join(KINDS)}; got '{kind}'.")
        preset = configs.load_preset("model", name)
        unknown = sorted(set(preset) - {"common", *KINDS})
        if unknown:
            raise ConfigError(f"model preset {name!r}: unknown section(s) {', '.join(unknown)}; "
                              f"valid: common, {', '.join(KINDS)}.")
        values = {**preset.get("common", {}), **preset.get(kind, {}), "kind": kind}
        return cls.from_dict({**values, **overrides})


def list_presets() -> list[str]:
    """Names accepted by :meth:`ModelConfig.preset`."""
    return configs.preset_names("model")
