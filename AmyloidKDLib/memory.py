"""The process's memory allocator (glibc on Linux; elsewhere these calls do nothing).

Prediction allocates many large, short-lived arrays: HD-BET's activations, resampled volumes,
the student's activations. glibc's defaults return some freed blocks to the operating system
at once (the next allocation of that size is page-faulted in again) and keep others in the
heap (they stay in the resident set while the next step allocates more). The two calls here
set the balance: keep blocks below 64 MB for reuse, and return kept memory where a step's
peak is about to come. A third keeps the loaded model's Python objects out of the garbage
collector's full passes. None of them changes any result.
"""

from __future__ import annotations

import ctypes
import gc
from functools import lru_cache
from typing import Any

#: glibc allocator settings while predicting (:func:`keep_freed_memory_for_reuse`): blocks
#: below this size come from the heap ...
HEAP_BLOCKS_BELOW_BYTES = 64 * 2**20
#: ... and freed heap memory up to this much is kept for reuse instead of returned at once.
HEAP_KEPT_BYTES = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


@lru_cache(maxsize=1)
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (macOS, Windows, musl): nothing to do
        return None


def release_freed_memory() -> None:
    """Hand memory that earlier cases freed back to the operating system (glibc only).

    glibc keeps freed heap pages for reuse, so one case's large temporary arrays (HD-BET's
    activations, resampled volumes) stay in the resident set and the next case's peak stacks
    on them; ``malloc_trim`` returns them. It takes milliseconds and changes no result.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_freed_memory_for_reuse() -> None:
    """Let glibc keep freed memory for the next allocation instead of returning it at once
    (process-wide; glibc only; changes no result).

    glibc's defaults hand most freed blocks of a few MB back to the operating system, so the
    next tensor of that size is page-faulted in again: in the ViT student's bf16 forward pass
    the 18 MB activations cost about 15% of its time that way (docs/benchmarks.md, issue 31).
    Here blocks below :data:`HEAP_BLOCKS_BELOW_BYTES` come from the heap and up to
    :data:`HEAP_KEPT_BYTES` of freed heap stay for reuse; the Predictor still returns them
    at the start of every case (:func:`release_freed_memory`), and larger blocks (HD-BET's
    full-resolution activations) are still returned when freed.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, HEAP_KEPT_BYTES)


def freeze_loaded_objects() -> None:
    """Leave everything loaded so far out of Python's later garbage collections (``gc.freeze``,
    after one last collection). For a command that has loaded its model and will now run case
    after case; not for a library call (it changes the caller's process).

    The imports and a loaded student hold about 650,000 objects that live to the end. Each full
    collection walks all of them: 0.34 s on the 2-core build machine, landing in whichever step
    of a case crossed the collector's threshold (it doubled the first case's output writing in
    bench_inference). Objects made later are collected as before; a reference cycle among the
    frozen objects is never freed.
    """
    gc.collect()
    gc.freeze()
