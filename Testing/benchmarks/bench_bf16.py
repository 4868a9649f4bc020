"""Benchmark: is bf16 native on this CPU, for PyTorch's kernels as set? (not part of CI)

Prints the kernel set PyTorch dispatches to, what ``cpu_has_native_bf16`` answers, and the
speed of a 1024^3 matmul (GFLOP/s) and of a 16-channel 3-D convolution on 48^3 (ms, under
autocast for bf16) in fp32 and bf16. Where bf16 is emulated its matmul runs at about 1 GFLOP/s.
To see the AVX2 path on an AVX512_BF16 machine, cap both kernel sets (oneDNN runs bf16
matmuls and convolutions and ignores ATEN_CPU_CAPABILITY):

    python Testing/benchmarks/bench_bf16.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python Testing/benchmarks/bench_bf16.py
"""

from __future__ import annotations

import time


def best_seconds(function, repeats: int = 5) -> float:
    function()  # first call: oneDNN's set-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    import torch

    from AmyloidKDLib.capability import cpu_has_native_bf16, cpu_kernel_set

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 1024, generator=generator)
    b = torch.randn(1024, 1024, generator=generator)
    volume = torch.randn(1, 16, 48, 48, 48, generator=generator)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    print(f"kernel set {cpu_kernel_set()}, native bf16: {cpu_has_native_bf16()}, "
          f"{torch.get_num_threads()} threads")
    print("| dtype | matmul GFLOP/s | conv3d ms |")
    print("| --- | --- | --- |")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        left, right = a.to(dtype), b.to(dtype)
        matmul = best_seconds(lambda: left @ right)

        def convolve():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                 enabled=dtype == torch.bfloat16):
                conv(volume)

        convolution = best_seconds(convolve, repeats=1 if dtype == torch.bfloat16 else 3)
        print(f"| {name} | {2 * 1024 ** 3 / matmul / 1e9:.1f} | {convolution * 1e3:.0f} |")


if __name__ == "__main__":
    main()
