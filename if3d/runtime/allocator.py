"""Process-wide CPU allocator tuning for training and evaluation (a fast path).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
gives it back with ``munmap`` on free. A CPU training step of the fusion models allocates and frees
dozens of activations of ~100 MB (batch 64 × 128 channels × 56 × 56 fp32), so every step pays again for
page faults and zeroing (≈ 1.5 M minor faults per gate step, measured). Sending those allocations to
the heap and never trimming it makes steady-state steps reuse memory: ×1.18 training and ×2.9
evaluation throughput on the gate model (``benchmarks/RESULTS.md``).

The price is that the process keeps its peak heap until it exits (the memory is reused, not returned
to the OS), which is what a training or evaluation process wants and a long-lived interactive session
may not; hence a switch (``--tune-allocator/--no-tune-allocator``).

Forking is the one hazard: a DataLoader worker forked from a process holding ~12 GB of retained heap
shares those pages copy-on-write, and the parent's next training step writes into all of them, so
the machine briefly holds two copies (measured: the gate model with 2 JPEG workers was OOM-killed on
24 GiB). :func:`release_free_heap` hands the free part of the heap back to the OS just before workers
are forked; the engine's loader calls it on every iteration that starts workers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied = False


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the heap instead of returning large blocks to the OS (glibc only).

    Sets ``M_MMAP_MAX = 0`` (no allocation is served by ``mmap``) and ``M_TRIM_THRESHOLD = 2**31 - 1``
    (the heap is not trimmed) with ``mallopt``. Idempotent; affects the whole process.

    Returns:
        True when the settings are in effect, False where the C library has no ``mallopt``
        (musl, macOS, Windows).
    """
    global _applied
    if _applied:
        return True
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied


def release_free_heap() -> bool:
    """Return the free pages of the heap to the OS (``malloc_trim(0)``), when the tuning is active.

    Live allocations are untouched; the next training step faults the released pages in again (about
    one untuned step's extra cost). A no-op returning False when :func:`tune_glibc_malloc` is not in
    effect (untuned glibc already unmaps large blocks on free).

    Returns:
        True when memory was released.
    """
    if not _applied:
        return False
    malloc_trim = _libc().malloc_trim
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))


__all__ = ["release_free_heap", "tune_glibc_malloc"]
