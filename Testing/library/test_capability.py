"""The machine-capability helpers (AmyloidKDLib/capability.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from AmyloidKDLib.capability import autocast_for, cpu_has_native_bf16, cpu_kernel_set, reduced_dtype

PROBE = ("from AmyloidKDLib.capability import cpu_has_native_bf16, cpu_kernel_set; "
         "print(cpu_kernel_set(), cpu_has_native_bf16())")


def _probe(capability: str | None, onednn: str | None = None) -> list[str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env.update({name: value for name, value in (("ATEN_CPU_CAPABILITY", capability),
                                                ("ONEDNN_MAX_CPU_ISA", onednn)) if value})
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.split()


def test_native_bf16_is_off_under_a_kernel_set_below_avx512():
    """ATEN_CPU_CAPABILITY=avx2 or ``default``, or ONEDNN_MAX_CPU_ISA=AVX2 (how the AVX2 path is
    tested on an AVX-512 machine), make bf16 not native even on an AVX512_BF16 CPU, so ``auto``
    picks fp32 there as an AVX2-only machine does; unset, the answer is the CPU's own."""
    assert _probe("avx2") == ["AVX2", "False"]
    assert _probe(None, "avx2")[1] == "False"
    flags = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    onednn_capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ("AVX2", "AVX512_CORE")
    assert cpu_has_native_bf16() == (flags and not onednn_capped
                                     and cpu_kernel_set() not in ("DEFAULT", "AVX2"))


def test_reduced_dtypes_and_their_autocast():
    assert reduced_dtype("bf16") is torch.bfloat16 and reduced_dtype("fp16") is torch.float16
    assert reduced_dtype("fp32") is None and reduced_dtype("int8") is None
    cpu = torch.device("cpu")
    with autocast_for("bf16", cpu):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast_for("fp32", cpu):
        assert not torch.is_autocast_enabled("cpu")
