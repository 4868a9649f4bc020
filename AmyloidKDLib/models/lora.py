"""LoRA adapters (peft) on the encoder's attention projections, block freezing, and a report
of what will be trained.

The paper fine-tunes BiomedCLIP with LoRA (rank 10, alpha 16, dropout 0.2) on the attention
projections of all 12 blocks and keeps the first 6 blocks frozen: their adapters exist but get
no gradient, so only blocks 6-11 adapt. Base weights of the encoder are never trained when
LoRA is on; without LoRA (``rank=0``) the encoder is trained in full except its frozen blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from AmyloidKDLib.errors import ConfigError

#: Hits the timm trunk's attention Linear layers but not open_clip's final ``head.proj``.
DEFAULT_LORA_TARGET = r".*trunk\.blocks\.\d+\.attn\.(qkv|proj)"

_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_STEM_NAMES = ("patch_embed", "cls_token", "pos_embed", "reg_token", "conv_stem", "bn1.", "stem")


def block_index(parameter_name: str) -> int | None:
    """Index ``i`` of the first ``blocks.<i>.`` in a parameter name, or None outside the blocks."""
    match = _BLOCK_INDEX.search(parameter_name)
    return int(match.group(1)) if match else None


def apply_lora(module: nn.Module, *, rank: int, alpha: float, dropout: float,
               target_regex: str = DEFAULT_LORA_TARGET) -> int:
    """Inject peft LoRA adapters (in place) into the Linear layers of ``module`` whose full
    names match ``target_regex``; returns how many layers were adapted.

    Raises ConfigError when the regex matches no layer (e.g. LoRA asked for a CNN encoder).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank <= 0:
        raise ConfigError(f"LoRA rank must be > 0 to inject adapters, got {rank}.")
    pattern = re.compile(target_regex)
    targets = [name for name, sub in module.named_modules()
               if isinstance(sub, nn.Linear) and pattern.fullmatch(name)]
    if not targets:
        raise ConfigError(f"the LoRA target regex '{target_regex}' matches no Linear layer of the "
                          "encoder. Fix lora_target, or set lora_rank=0 (e.g. for CNN encoders).")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex,
                        bias="none")
    inject_adapter_in_model(config, module)
    return len(targets)


def configure_encoder_training(encoder: nn.Module, *, lora: bool, frozen_blocks: int) -> None:
    """Set ``requires_grad`` on the encoder's parameters.

    With LoRA: only adapter weights (``lora_``) of blocks ``>= frozen_blocks`` train. Without:
    everything trains except blocks ``< frozen_blocks`` and, when any block is frozen, the stem
    (patch embedding, class token, position embedding) that feeds them.
    """
    if frozen_blocks < 0:
        raise ConfigError(f"frozen_blocks must be >= 0, got {frozen_blocks}.")
    for name, parameter in encoder.named_parameters():
        index = block_index(name)
        in_frozen_block = index is not None and index < frozen_blocks
        if lora:
            parameter.requires_grad = "lora_" in name and not in_frozen_block
        else:
            in_stem = index is None and frozen_blocks > 0 and any(s in name for s in _STEM_NAMES)
            parameter.requires_grad = not (in_frozen_block or in_stem)


@dataclass
class TrainableReport:
    """Counts of trainable and frozen parameters, per top-level part of a model."""

    total: int
    trainable: int
    by_part: dict[str, tuple[int, int]]  # part -> (trainable, total)

    def __str__(self) -> str:
        lines = [f"trainable parameters: {self.trainable:,} of {self.total:,} "
                 f"({100.0 * self.trainable / max(self.total, 1):.2f} %)"]
        for part, (trainable, total) in self.by_part.items():
            lines.append(f"  {part:<22} {trainable:>12,} / {total:>12,}")
        return "\n".join(lines)


def trainable_parameter_report(model: nn.Module) -> TrainableReport:
    """Count trainable vs. all parameters of ``model`` and of each of its child modules."""
    by_part: dict[str, tuple[int, int]] = {}
    for name, parameter in model.named_parameters():
        part = name.split(".", 1)[0]
        trainable, total = by_part.get(part, (0, 0))
        n = parameter.numel()
        by_part[part] = (trainable + (n if parameter.requires_grad else 0), total + n)
    return TrainableReport(total=sum(t for _, t in by_part.values()),
                           trainable=sum(t for t, _ in by_part.values()), by_part=by_part)
