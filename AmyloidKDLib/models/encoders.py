"""Per-slice image encoders by name: BiomedCLIP's vision tower and small CPU stand-ins.

Every encoder maps a stack of slices ``[N, 3, S, S]`` (CLIP-normalised) to one feature
vector per slice ``[N, num_features]``. ViT encoders are built by open_clip from an open_clip
model config (BiomedCLIP's ships as ``resources/biomedclip_vision.json``), so the module
names match a real open_clip checkpoint (``trunk.blocks.0.attn.qkv.weight``, ``head.proj.weight``);
CNN encoders for the light student are plain timm models built without downloads.

Weights sources (``weights=``):

- ``"none"``: random initialisation. For an encoder that is meant to be pretrained
  (BiomedCLIP) this logs a loud warning: results from a random encoder are meaningless.
- a local file: an open_clip checkpoint (``open_clip_pytorch_model.bin``, ``.pt``) read with
  ``torch.load(weights_only=True)``, or a ``.safetensors`` file. Full CLIP state dicts are
  accepted: only the ``visual.*`` part is used.
- ``"hf-hub:<repo id>"``: the open_clip weights file of that Hugging Face repository; read
  from the local Hugging Face cache, downloaded only when ``allow_network=True``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from AmyloidKDLib.errors import ConfigError, DependencyError, InputError

logger = logging.getLogger(__name__)

#: OpenAI CLIP normalisation (open_clip's OPENAI_DATASET_MEAN/STD): the default of every
#: EncoderSpec; BiomedCLIP's own comes from its open_clip preprocess config (same values).
#: The slicing step reads it from the spec (SliceConfig.mean/std).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

HUB_PREFIX = "hf-hub:"
BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder name stands for: how to build it and which weights it expects."""

    name: str
    family: Literal["open_clip", "timm_cnn"]
    description: str
    model_cfg: dict = field(default_factory=dict)  # open_clip model config (embed_dim, vision_cfg)
    timm_name: str = ""                            # timm architecture for the CNN family
    hub_id: str | None = None                      # where the pretrained weights live
    hub_weights_file: str = "open_clip_pytorch_model.bin"
    expects_pretrained: bool = False               # random init is a loud warning if True
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD


def _read_biomedclip_spec() -> EncoderSpec:
    text = resources.files("AmyloidKDLib.resources").joinpath("biomedclip_vision.json").read_text()
    raw = json.loads(text)
    return EncoderSpec(
        name="biomedclip",
        family="open_clip",
        description="BiomedCLIP ViT-B/16 vision tower (86.2 M parameters, 224 px, 512-d output)",
        model_cfg=raw["model_cfg"],
        hub_id=raw["hub_id"],
        hub_weights_file=raw["hub_weights_file"],
        expects_pretrained=True,
        mean=tuple(raw["preprocess_cfg"]["mean"]),
        std=tuple(raw["preprocess_cfg"]["std"]),
    )


def _small_vit(name: str, timm_name: str, embed_dim: int, description: str) -> EncoderSpec:
    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"timm_model_name": timm_name, "timm_model_pretrained": False,
                          "timm_pool": "", "timm_proj": "linear", "image_size": 224}}
    return EncoderSpec(name=name, family="open_clip", description=description, model_cfg=cfg)


def _cnn(name: str, description: str) -> EncoderSpec:
    return EncoderSpec(name=name, family="timm_cnn", description=description, timm_name=name)


_ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec for spec in (
        _read_biomedclip_spec(),
        _small_vit("vit_tiny", "vit_tiny_patch16_224", 256,
                   "timm ViT-Ti/16 through open_clip (5.6 M parameters), CPU preset"),
        _small_vit("vit_small", "vit_small_patch16_224", 384,
                   "timm ViT-S/16 through open_clip (21.8 M parameters)"),
        _cnn("efficientnet_b0", "timm EfficientNet-B0 (4.0 M parameters), light student"),
        _cnn("mobilenetv3_small_100", "timm MobileNetV3-Small (0.9 M parameters), light student"),
        _cnn("mobilenetv3_large_100", "timm MobileNetV3-Large (3.0 M parameters), light student"),
        _cnn("resnet18", "timm ResNet-18 (11.2 M parameters), light student"),
    )
}


def list_encoders() -> list[str]:
    """Names accepted by :func:`create_encoder` (and ``ModelConfig.encoder``)."""
    return sorted(_ENCODERS)


def get_encoder_spec(name: str) -> EncoderSpec:
    """The :class:`EncoderSpec` of ``name``; an unknown name raises ConfigError with suggestions."""
    if name not in _ENCODERS:
        close = difflib.get_close_matches(name, list(_ENCODERS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown encoder '{name}'.{hint} Available: {', '.join(list_encoders())}.")
    return _ENCODERS[name]


def tokens_to_grid(tokens: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """ViT tokens ``[N, prefix + H*W, C]`` -> feature map ``[N, C, H, W]`` (class token dropped).

    This is the reshape transform Grad-CAM needs for a ViT target layer.
    """
    patches = tokens[:, num_prefix_tokens:, :]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise InputError(f"cannot arrange {patches.shape[1]} patch tokens in a square grid; "
                         "the encoder expects square slices.")
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


class SliceEncoder(nn.Module):
    """One encoder applied to every slice: ``[N, 3, S, S] -> [N, num_features]``.

    Wraps the open_clip vision tower (``backbone.trunk`` = timm ViT, ``backbone.head.proj``)
    or a timm CNN (``backbone``). Carries what the caller must match (``image_size``; the
    slices' normalisation is the spec's ``mean``/``std``, applied by ``SliceConfig``) and
    handles for Grad-CAM and block freezing.
    """

    def __init__(self, spec: EncoderSpec, backbone: nn.Module, num_features: int,
                 image_size: int) -> None:
        super().__init__()
        self.name = spec.name
        self.family = spec.family
        self.backbone = backbone
        self.num_features = num_features
        self.image_size = image_size

    @property
    def is_vit(self) -> bool:
        """True for the open_clip/timm ViT encoders (token outputs, LoRA targets)."""
        return self.family == "open_clip"

    @property
    def trunk(self) -> nn.Module:
        """The timm network inside (the ViT trunk, or the CNN itself)."""
        return self.backbone.trunk if self.is_vit else self.backbone

    @property
    def num_blocks(self) -> int:
        """How many ``blocks.<i>`` stages the trunk has (ViT layers or CNN stages)."""
        blocks = getattr(self.trunk, "blocks", None)
        return len(blocks) if blocks is not None else 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode slices ``[N, 3, S, S]`` into features ``[N, num_features]``."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != self.image_size \
                or images.shape[-2] != self.image_size:
            raise InputError(f"encoder '{self.name}' expects slices shaped [N, 3, {self.image_size}, "
                             f"{self.image_size}], got {list(images.shape)}.")
        return self.backbone(images)

    def gradcam_target_layers(self) -> list[nn.Module]:
        """Layers whose activations Grad-CAM should use: the last ViT block's first norm, or
        the last CNN stage."""
        if self.is_vit:
            return [self.trunk.blocks[-1].norm1]
        module_name = self.trunk.feature_info[-1]["module"]
        return [self.trunk.get_submodule(module_name)]

    @property
    def gradcam_reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Function turning the target layer's tokens into ``[N, C, H, W]``; None for CNNs."""
        if not self.is_vit:
            return None
        prefix = int(getattr(self.trunk, "num_prefix_tokens", 1))
        return lambda tokens: tokens_to_grid(tokens, prefix)


@contextlib.contextmanager
def _quiet_timm_import() -> Iterator[None]:
    """Importing timm (open_clip imports it too) warns that ``torch.jit.interface``, which its
    HRNet module uses, is deprecated: a FutureWarning no user of ours can act on. That one
    message, from that place, is ignored while we import them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated",
                                category=FutureWarning, module=r"torch\.jit\._script")
        yield


def _build_open_clip_tower(spec: EncoderSpec) -> tuple[nn.Module, int]:
    with _quiet_timm_import():
        from open_clip.model import _build_vision_tower  # open_clip's own vision-tower builder

    cfg = copy.deepcopy(spec.model_cfg)
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]), int(cfg["embed_dim"])


def _resize_vit(encoder: SliceEncoder, image_size: int) -> None:
    trunk = encoder.trunk
    patch = trunk.patch_embed.patch_size[0]
    if image_size % patch:
        raise ConfigError(f"image_size {image_size} is not a multiple of the patch size {patch} "
                          f"of encoder '{encoder.name}'; use e.g. {patch * max(1, image_size // patch)}.")
    trunk.set_input_size(img_size=(image_size, image_size))  # resamples the position embedding
    encoder.backbone.image_size = (image_size, image_size)
    encoder.image_size = image_size


def _build_timm_cnn(spec: EncoderSpec) -> tuple[nn.Module, int]:
    with _quiet_timm_import():
        import timm

    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    # MobileNetV3 has a conv head after the last stage: its width, not num_features, comes out.
    return model, int(getattr(model, "head_hidden_size", None) or model.num_features)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif suffix in (".bin", ".pt", ".pth"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DependencyError(f"encoder weights file {path} has an unknown type '{suffix}'; "
                                  "expected .safetensors, .bin, .pt or .pth.")
    except DependencyError:
        raise
    except Exception as exc:  # corrupt file or one that needs unpickling of arbitrary objects
        raise DependencyError(f"cannot read encoder weights {path}: {exc}. It must be a plain "
                              "tensor state dict (no pickled objects).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DependencyError(f"{path} does not hold a state dict of tensors.")
    return state


def vision_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision-tower part of an open_clip state dict.

    Accepts a whole CLIP model's keys (``visual.trunk...``, ``text...``, ``logit_scale``), with or
    without a DistributedDataParallel ``module.`` prefix, or a vision-only dict (``trunk...``).
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        return {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return state


def _resolve_hub_file(spec: EncoderSpec, weights: str, allow_network: bool) -> Path:
    repo_id = weights.removeprefix(HUB_PREFIX)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise DependencyError("loading weights from a hub id needs the package "
                              "'huggingface_hub' (pip install huggingface_hub).") from exc
    try:
        return Path(hf_hub_download(repo_id, spec.hub_weights_file, local_files_only=not allow_network))
    except Exception as exc:
        how = ("downloading failed" if allow_network else
               "it is not in the local Hugging Face cache and the network is not allowed")
        raise DependencyError(
            f"cannot get weights '{weights}' ({spec.hub_weights_file}): {how} ({type(exc).__name__}). "
            f"Either download {spec.hub_weights_file} from https://huggingface.co/{repo_id} and pass "
            "its path as the weights, allow the network (ModelConfig allow_network=True; in training `--set model.teacher.allow_network=true`), "
            "or use weights='none' for a random encoder.") from exc


def resolve_weights(name: str, weights: str, *, allow_network: bool = False) -> Path | None:
    """The local file that ``weights`` names for encoder ``name`` (None for ``"none"``).

    A hub id is looked up in the local Hugging Face cache, or downloaded when
    ``allow_network``. Raises DependencyError, before anything is built, when it is not there.
    """
    spec = get_encoder_spec(name)
    if weights == "none":
        return None
    if weights.startswith(HUB_PREFIX):
        return _resolve_hub_file(spec, weights, allow_network)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DependencyError(f"encoder weights file {path} does not exist. Pass the path of a "
                              "downloaded open_clip checkpoint (.bin/.pt) or a .safetensors file, "
                              "or weights='none'.")
    return path


def load_encoder_weights(encoder: SliceEncoder, weights: str | Path | None, *, allow_network: bool = False,
                         warn_if_random: bool = True) -> None:
    """Load ``weights`` (``"none"``/None, a file path or ``"hf-hub:<id>"``) into ``encoder``, strictly.

    Raises DependencyError when the file is missing, unreadable, or its keys or shapes do not
    match the encoder (a list of the offending keys is in the message).
    """
    spec = get_encoder_spec(encoder.name)
    path = None if weights is None else resolve_weights(encoder.name, str(weights), allow_network=allow_network)
    if path is None:
        if spec.expects_pretrained and warn_if_random:
            message = (f"encoder '{spec.name}' is RANDOMLY INITIALISED (weights='none'): its features "
                       f"mean nothing until trained. For real use pass the pretrained weights "
                       f"('{HUB_PREFIX}{spec.hub_id}' or a local {spec.hub_weights_file}).")
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)
        return
    state = _read_state_dict(path)
    if encoder.is_vit:
        state = vision_state_dict(state)
    else:
        classifier = encoder.backbone.pretrained_cfg.get("classifier", "classifier")
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    mismatch = state_dict_mismatch(encoder.backbone.state_dict(), state, shown=5)
    if mismatch:
        raise DependencyError(f"weights {path} do not fit encoder '{spec.name}': {mismatch}. "
                              "Check that the file is a checkpoint of this architecture.")
    encoder.backbone.load_state_dict(state, strict=True)
    logger.info("loaded encoder '%s' weights from %s", spec.name, path)


def create_encoder(name: str, *, weights: str = "none", image_size: int | None = None,
                   allow_network: bool = False, warn_if_random: bool = True) -> SliceEncoder:
    """Build the encoder ``name`` (see :func:`list_encoders`) and load its ``weights``.

    Args:
        name: encoder name, e.g. ``"biomedclip"``, ``"vit_tiny"``, ``"efficientnet_b0"``.
        weights: ``"none"``, a local weights file, or ``"hf-hub:<repo id>"``.
        image_size: slice side in pixels; ViT position embeddings are resampled when it
            differs from the config's (must be a multiple of the patch size). Default: native.
        allow_network: permit a download for a hub id (otherwise only the local cache is used).
        warn_if_random: warn loudly when a pretrained-by-design encoder gets ``weights="none"``
            (off when a checkpoint's weights are loaded right after).

    Raises:
        ConfigError: unknown name or impossible image size.
        DependencyError: weights missing, unreadable or not matching the architecture.
    """
    spec = get_encoder_spec(name)
    weights_path = resolve_weights(name, weights, allow_network=allow_network)  # fail before building
    if spec.family == "open_clip":
        native = int(spec.model_cfg["vision_cfg"]["image_size"])
        backbone, num_features = _build_open_clip_tower(spec)
    else:
        native = 224
        backbone, num_features = _build_timm_cnn(spec)
    size = int(image_size or native)
    if size < 32:
        raise ConfigError(f"image_size must be >= 32 pixels, got {size}.")
    encoder = SliceEncoder(spec, backbone, num_features, native)
    load_encoder_weights(encoder, weights_path, warn_if_random=warn_if_random)
    if size != native:
        if encoder.is_vit:
            _resize_vit(encoder, size)
        else:
            encoder.image_size = size
    return encoder


def state_dict_mismatch(expected: dict, state: dict, shown: int = 3) -> str:
    """How ``state`` fails to fit ``expected`` (missing, unexpected, other-shape keys); '' if it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if not (missing or unexpected or wrong):
        return ""

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (" ..." if len(keys) > shown else "")
    return (f"{len(missing)} missing [{first(missing)}], {len(unexpected)} unexpected "
            f"[{first(unexpected)}], {len(wrong)} with another shape [{first(wrong)}]")
