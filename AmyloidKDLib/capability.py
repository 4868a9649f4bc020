"""What this machine can run: the device, native reduced precision, the autocast context.

The bottom of the library's import graph: it imports nothing from AmyloidKDLib but
:mod:`AmyloidKDLib.errors`, and torch only inside its functions, so that any module
(``skullstrip``, ``inference``, ``models``, the training pipeline, tests) can ask about the
hardware without importing the modules that use the answer.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from AmyloidKDLib.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used, not when this module is
    import torch

#: Device names a user may give (``--device``): ``auto`` is CUDA when PyTorch sees a GPU.
DEVICES = ("auto", "cpu", "cuda")
#: Reduced-precision names and their torch dtypes (fp32 and int8 run without autocast).
REDUCED_PRECISIONS = ("bf16", "fp16")
#: PyTorch's CPU kernel sets (``torch.backends.cpu.get_cpu_capability()``) below AVX-512:
#: with one of these in force, bf16 is emulated.
_NO_BF16_KERNELS = ("DEFAULT", "NO AVX", "AVX2")
#: oneDNN instruction-set caps (``ONEDNN_MAX_CPU_ISA``) without bf16 arithmetic.
_NO_BF16_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error.

    Raises:
        ConfigError: an unknown name, or ``cuda`` where PyTorch sees no GPU.
    """
    import torch

    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but PyTorch sees no CUDA GPU here; "
                          "use --device cpu (or auto)")
    return torch.device(device)


def cpu_kernel_set() -> str:
    """The CPU kernel set PyTorch dispatches to (``AVX512``, ``AVX2``, ``DEFAULT``, ...).

    It follows ``ATEN_CPU_CAPABILITY`` when that is set (read once, at torch's import), so
    ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 machine gives the AVX2 path.
    """
    import torch

    getter = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return str(getter()).upper() if getter else "DEFAULT"


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512_BF16 or AMX), as PyTorch detects it,
    and neither PyTorch's kernel set (``ATEN_CPU_CAPABILITY=avx2`` or ``default``) nor oneDNN's
    (``ONEDNN_MAX_CPU_ISA=AVX2`` and the like) is capped below it.

    Without native bf16, PyTorch emulates bf16 matmuls and convolutions on the CPU, which is
    many times slower than fp32 (0.7 vs 35-69 GFLOP/s measured on an AVX2-only machine).
    oneDNN, which runs bf16 matmuls and convolutions, picks its own instructions: on an
    AVX512_BF16 machine ``ATEN_CPU_CAPABILITY=avx2`` alone leaves bf16 fast, and
    ``ONEDNN_MAX_CPU_ISA=AVX2`` as well gives the emulated speed. Either cap makes this False,
    so that such a run makes the choices of an AVX2-only machine (fp32 for ``auto``, and in
    the tests).
    """
    import torch

    if cpu_kernel_set() in _NO_BF16_KERNELS:
        return False
    onednn_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if onednn_cap and onednn_cap.strip().upper() in _NO_BF16_ONEDNN_ISAS:
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def reduced_dtype(precision: str) -> torch.dtype | None:
    """The torch dtype of ``bf16``/``fp16``; None for any other precision (fp32, int8)."""
    if precision not in REDUCED_PRECISIONS:
        return None
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32 and int8)."""
    dtype = reduced_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)


__all__ = ["DEVICES", "REDUCED_PRECISIONS", "autocast_for", "cpu_has_native_bf16", "cpu_kernel_set",
           "reduced_dtype", "resolve_device"]
