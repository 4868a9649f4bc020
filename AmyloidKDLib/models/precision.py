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


class PackedBF16Linear(nn.Module):
    """An ``nn.Linear`` for bf16 inference on the CPU whose weight is kept in oneDNN's blocked
    layout, reordered once here instead of inside every matmul call.

    It computes what the Linear computes under bf16 autocast (input cast to bf16, bf16 weight
    and bias, bf16 output), through the oneDNN kernel PyTorch's own CPU compiler uses for the
    same purpose (``torch.ops.mkldnn._linear_pointwise``). The packed weight is an opaque
    oneDNN tensor: the module has no gradient, and cannot be copied or saved (pack a copy of
    the model, never the one you save).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)


def _packing_gives_the_same_output() -> bool:
    """Whether this PyTorch has the oneDNN ops and they give F.linear's bf16 output exactly."""
    try:
        generator = torch.Generator().manual_seed(0)
        linear = nn.Linear(64, 48)
        x = torch.randn(37, 64, generator=generator)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return bool(torch.equal(PackedBF16Linear(linear)(x), linear(x)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def pack_linear_weights_below_gradcam_layer(model: nn.Module) -> int:
    """bf16 on the CPU: the Linear layers of the ViT blocks below the last one (the same blocks as
    :func:`quantize_below_gradcam_layer`) become :class:`PackedBF16Linear`; returns how many.

    The outputs are unchanged bit for bit (checked here once per call on a small layer, and in
    the tests on a student); the BiomedCLIP-size student's bf16 forward pass is about 6% faster
    (docs/benchmarks.md, issue 31). Grad-CAM needs gradients from the last block up only, which
    stays as it is. Nothing is packed (0) for a CNN encoder, or where this PyTorch lacks the
    oneDNN ops or they disagree with ``F.linear``.
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None or not getattr(encoder, "is_vit", False) or not _packing_gives_the_same_output():
        return 0
    packed = 0
    for block in list(encoder.trunk.blocks)[:-1]:
        for parent_name, parent in list(block.named_modules()):
            if "lora_" in parent_name:  # merged adapters' own layers are never called
                continue
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, PackedBF16Linear(child))
                    packed += 1
    return packed


def prepare_for_inference(model: nn.Module, precision: str, pack_weights: bool = False) -> nn.Module:
    """``model`` (in eval mode) with LoRA merged; for ``int8`` its lower blocks quantised, for
    ``bf16``/``fp16`` its Linear weights stored in that dtype (run it under autocast), and with
    ``pack_weights`` (bf16 on the CPU only) those of the ViT blocks below the Grad-CAM layer
    kept in oneDNN's layout (:func:`pack_linear_weights_below_gradcam_layer`: the same output;
    no gradients through those blocks, so not for gradient x input saliency).

    ``precision`` is a resolved one (``fp32``, ``bf16``, ``fp16`` or ``int8``); the model is
    changed in place and returned. Call it once, after loading and before the first forward pass.
    """
    model.eval()
    merge_lora_adapters(model)
    if precision == "int8":
        quantize_below_gradcam_layer(model)
    elif precision in ("bf16", "fp16"):
        store_linear_weights_in(model, reduced_dtype(precision))
        if pack_weights and precision == "bf16" and next(model.parameters()).device.type == "cpu":
            pack_linear_weights_below_gradcam_layer(model)
    return model


__all__ = ["PackedBF16Linear", "merge_lora_adapters", "pack_linear_weights_below_gradcam_layer",
           "prepare_for_inference", "quantize_below_gradcam_layer", "store_linear_weights_in"]
