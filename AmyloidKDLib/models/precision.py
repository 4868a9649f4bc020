"""Students made ready for inference at a chosen numeric precision.

Training keeps LoRA adapters separate from the frozen base weights; for prediction they are
merged into the base Linear layers (peft's own ``merge``), which removes two small matmuls and
a dropout call per adapted layer. ``int8`` additionally replaces the Linear layers of the ViT
blocks below the Grad-CAM target layer with PyTorch's dynamically quantised Linear
(``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per batch).
Grad-CAM needs gradients only from its target layer (the last block) upward, and those layers
stay in floating point, so saliency works unchanged. bf16 and fp16 run under autocast
(:func:`AmyloidKDLib.capability.autocast_for`); their Linear layers also store their weights in
that dtype, which autocast would cast them to on every call anyway: the outputs are the same
and the model takes half the memory (a ViT-B/16 student: about 170 MB less).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from AmyloidKDLib.capability import reduced_dtype

log = logging.getLogger(__name__)


def merge_lora_adapters(model: nn.Module) -> int:
    """Merge every peft LoRA adapter of ``model`` into its base layer, in place; returns how many.

    The merged layer computes ``W x + (alpha / r) B A x`` as one matmul; ``unmerge()`` on the
    layer restores the separate weights. Without peft installed (or adapters) nothing changes.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    merged = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()
            merged += 1
    return merged


def quantize_below_gradcam_layer(model: nn.Module) -> int:
    """int8 dynamic quantisation of the Linear layers in the ViT blocks below the last one.

    Returns how many Linear layers were replaced (0 for CNN encoders, whose convolutions
    dynamic quantisation does not cover). The last block, whose first norm is Grad-CAM's
    target, and everything above it stay in floating point so that gradients can flow there.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not getattr(encoder, "is_vit", False):
        log.info("int8: the encoder is not a ViT; dynamic quantisation leaves it in fp32")
        return 0
    blocks = encoder.trunk.blocks
    replaced = 0
    for index in range(len(blocks) - 1):
        before = sum(isinstance(m, nn.Linear) for m in blocks[index].modules())
        blocks[index] = torch.ao.quantization.quantize_dynamic(blocks[index], {nn.Linear},
                                                              dtype=torch.qint8)
        replaced += before
    return replaced


def store_linear_weights_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every ``nn.Linear``'s weight and bias in ``dtype``, in place; returns how many.

    Only for running under autocast to that ``dtype``, which casts a Linear's inputs and
    weights to it on each call: a weight already stored in it is used as it is.
    """
    converted = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
            converted += 1
    return converted


def prepare_for_inference(model: nn.Module, precision: str) -> nn.Module:
    """``model`` (in eval mode) with LoRA merged; for ``int8`` its lower blocks quantised, for
    ``bf16``/``fp16`` its Linear weights stored in that dtype (run it under autocast).

    ``precision`` is a resolved one (``fp32``, ``bf16``, ``fp16`` or ``int8``); the model is
    changed in place and returned. Call it once, after loading and before the first forward pass.
    """
    model.eval()
    merge_lora_adapters(model)
    if precision == "int8":
        quantize_below_gradcam_layer(model)
    elif precision in ("bf16", "fp16"):
        store_linear_weights_in(model, reduced_dtype(precision))
    return model


__all__ = ["merge_lora_adapters", "prepare_for_inference", "quantize_below_gradcam_layer",
           "store_linear_weights_in"]
