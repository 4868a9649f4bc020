"""Per-slice features of a frozen encoder, computed once per cohort and encoder and cached.

With ``ModelConfig.freeze_encoder`` the encoder never changes during training, so each case's
MRI and PET slice stacks go through it once (:func:`feature_dataset`); the phases then train the
heads on ``[N, F]`` feature stacks instead of ``[N, 3, S, S]`` images. Features are stored on
disk as ``<cache>/features/<encoder hash>/<case key>.safetensors`` (float32 ``mri`` and ``pet``)
where the encoder hash covers its name, input size and every weight, and the case key is the
name of the case's slice file (itself a hash of the inputs and every preparation and slicing
setting), so a changed encoder or case never reuses stale features. Within one process the
feature dataset of a (dataset, encoder) pair is also kept in memory, so later folds and phases,
and :func:`lookup` (used by ``predict_logits``), find it without reading the disk.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from AmyloidKDLib.atomic import atomic_path

logger = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 2  # 2: encoded in float64 on the CPU

#: (id(dataset), encoder hash) -> (weak reference to the image dataset, its feature dataset)
_MEMORY: dict[tuple[int, str], tuple[Any, Any]] = {}


def encoder_hash(encoder: nn.Module) -> str:
    """Hash of an encoder's identity: name, input size and the bytes of its state dict."""
    digest = hashlib.sha256(f"v{FEATURE_CACHE_VERSION}:{getattr(encoder, 'name', type(encoder).__name__)}:"
                            f"{getattr(encoder, 'image_size', '')}".encode())
    for key, value in sorted(encoder.state_dict().items()):
        digest.update(key.encode())
        tensor = value.detach().cpu().contiguous()
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:24]


def _case_key(dataset: Any, index: int) -> str:
    """A case's identity: its slice file's name (a content key), else a hash of its tensors."""
    files = getattr(dataset, "files", None)
    if files:
        return Path(files[index]).stem
    digest = hashlib.sha256()
    for tensor in (dataset.mri[index], dataset.pet[index]):
        if tensor is not None:
            digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "content-" + digest.hexdigest()[:24]


@torch.inference_mode()
def encode_stacks(encoder: nn.Module, stacks: list[torch.Tensor], batch_slices: int = 64
                  ) -> list[torch.Tensor]:
    """Encoder features ``[N, F]`` (float32, CPU) of each stack ``[N, 3, S, S]``, in eval mode,
    ``batch_slices`` slices per encoder call.

    On the CPU the encoder runs in float64 and the features are rounded to float32 once. The
    float32 kernels of AVX2 and AVX-512 CPUs sum in different orders and disagree in the 5th-6th
    digit, and training on the features amplified that into AUC differences of 0.01-0.05 between
    the two kernel sets (issue 26). float64 results differ in the 16th digit, so after rounding
    the cached features are the same bits on both (docs/benchmarks.md). A GPU encodes in
    float32: its results differ from any CPU's anyway.
    """
    device = next(encoder.parameters()).device
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    if dtype == torch.float64:
        encoder = copy.deepcopy(encoder).to(dtype)
    was_training = encoder.training
    encoder.eval()
    flat = [(k, j) for k, stack in enumerate(stacks) for j in range(stack.shape[0])]
    out: list[list[torch.Tensor | None]] = [[None] * s.shape[0] for s in stacks]
    for start in range(0, len(flat), batch_slices):
        chunk = flat[start:start + batch_slices]
        images = torch.stack([stacks[k][j] for k, j in chunk]).to(device=device, dtype=dtype)
        features = encoder(images).float().cpu()
        for row, (k, j) in enumerate(chunk):
            out[k][j] = features[row]
    encoder.train(was_training)
    return [torch.stack(rows) for rows in out]


def lookup(dataset: Any, encoder: nn.Module) -> Any | None:
    """The feature dataset already made in this process for ``dataset`` and ``encoder``, or None."""
    entry = _MEMORY.get((id(dataset), encoder_hash(encoder)))
    if entry is not None and entry[0]() is dataset:
        return entry[1]
    return None


def feature_dataset(dataset: Any, encoder: nn.Module, cache_dir: str | Path | None,
                    batch_slices: int = 64) -> tuple[Any, dict[str, Any]]:
    """``dataset`` with its MRI and PET stacks replaced by the frozen ``encoder``'s features.

    Returns ``(features, info)``: ``features`` is a shallow copy of ``dataset`` (same items,
    labels, subjects, Centiloids, tracers) whose ``mri``/``pet`` lists hold float32 ``[N, F]``
    (``pet`` None where the case has none); ``info`` says how many cases were encoded, read from
    disk or found in memory, and the seconds that took (``encode_seconds``). Features missing from
    the cache are computed under ``torch.inference_mode`` and written to ``cache_dir``
    (``None``: memory only).
    """
    from safetensors.torch import load_file, save_file

    started = time.perf_counter()
    key = encoder_hash(encoder)
    found = lookup(dataset, encoder)
    if found is not None:
        return found, {"encoder_hash": key, "source": "memory", "encoded": 0, "read": 0,
                       "encode_seconds": time.perf_counter() - started}
    folder = Path(cache_dir) / "features" / key if cache_dir is not None else None
    mri: list[torch.Tensor | None] = [None] * len(dataset)
    pet: list[torch.Tensor | None] = [None] * len(dataset)
    missing, read = [], 0
    for i in range(len(dataset)):
        path = folder / f"{_case_key(dataset, i)}.safetensors" if folder is not None else None
        if path is not None and path.is_file():
            tensors = load_file(str(path))
            mri[i], pet[i] = tensors["mri"], tensors.get("pet")
            read += 1
        else:
            missing.append(i)
    if missing:
        stacks = [dataset.mri[i] for i in missing]
        with_pet = [i for i in missing if dataset.pet[i] is not None]
        stacks += [dataset.pet[i] for i in with_pet]
        encoded = encode_stacks(encoder, stacks, batch_slices)
        for i, features in zip(missing, encoded[:len(missing)]):
            mri[i] = features
        for i, features in zip(with_pet, encoded[len(missing):]):
            pet[i] = features
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for i in missing:
                tensors = {"mri": mri[i].contiguous()}
                if pet[i] is not None:
                    tensors["pet"] = pet[i].contiguous()
                with atomic_path(folder / f"{_case_key(dataset, i)}.safetensors") as temporary:
                    save_file(tensors, str(temporary), metadata={"encoder": str(getattr(encoder, "name", ""))})
    result = copy.copy(dataset)
    result.mri, result.pet = mri, pet
    seconds = time.perf_counter() - started
    for stale in [k for k, (ref, _) in _MEMORY.items() if ref() is None]:
        del _MEMORY[stale]
    _MEMORY[(id(dataset), key)] = (weakref.ref(dataset), result)
    info = {"encoder_hash": key, "source": "encoded" if missing else "disk", "encoded": len(missing),
            "read": read, "encode_seconds": seconds}
    logger.info("features of encoder %s (%s): %d case(s) encoded, %d read from the cache in %.1f s",
                getattr(encoder, "name", "?"), key[:8], len(missing), read, seconds)
    return result, info


def clear_memory() -> None:
    """Forget the feature datasets kept in this process (the disk cache stays)."""
    _MEMORY.clear()
