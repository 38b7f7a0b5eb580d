"""The C allocator of a worker process: keep freed array memory for the next array instead of giving it
back to the kernel.

A dask array graph allocates and frees chunk-sized NumPy buffers (8-12 MB each for 1000x1000 float64
chunks) over and over. glibc's malloc serves blocks above its mmap threshold with a fresh ``mmap`` and
returns them with ``munmap`` when freed, and shrinks its heaps whenever more than its trim threshold is
free at their top; either way the next chunk gets new pages, which the kernel must fault in and zero.
Under perf that zeroing was 21% of a worker's CPU on ``(x + x.T).mean()``. Raising the two thresholds
(``tune_allocator``, called once as the worker process starts, before it runs any task) lets freed
chunks be reused from the heap: the minor faults of two workers on that graph fell from ~17,000 a run
to ~2,500 and their CPU by 7-15% (interleaved runs on a loaded machine); a rechunk's faults, on
shared-memory pages, are not the allocator's and stay.

The price: a worker keeps up to ``TRIM_THRESHOLD`` of freed memory at the top of each malloc heap
(the main heap and one per task thread), so its RSS may stay that much higher after a large result is
freed; the memory monitor sees those pages as used. With a small ``memory_limit`` the thresholds are
lowered to a fraction of it (``thresholds_for``), so they can never take a worker near its pause line.

Only worker processes call this: they are minidist's own processes. The client's process and thread
workers (which run inside it) are never touched, since an embedded library must not change its host's
allocator. It does nothing where the C library is not glibc, or if the call fails.
"""

from __future__ import annotations

import os
from typing import Optional

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # smaller blocks come from the heap (glibc allows no more)
TRIM_THRESHOLD = 64 * 1024 * 1024  # free memory at a heap's top kept for reuse, at most
LIMIT_FRACTION = 16  # with a memory limit, keep at most 1/16 of it per heap


def thresholds_for(memory_limit: Optional[int]) -> tuple[int, int]:
    """(mmap threshold, trim threshold) for a worker with this memory limit (None: no limit)."""
    trim = TRIM_THRESHOLD
    if memory_limit:
        trim = min(trim, memory_limit // LIMIT_FRACTION)
    return min(MMAP_THRESHOLD, trim // 2), trim


def is_glibc() -> bool:
    try:  # glibc names itself here ("glibc 2.36"); other C libraries raise or answer otherwise
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def tune_allocator(memory_limit: Optional[int]) -> bool:
    """Set the worker process's malloc thresholds; True if glibc accepted both."""
    if not is_glibc():
        return False
    mmap_threshold, trim_threshold = thresholds_for(memory_limit)
    if mmap_threshold <= 128 * 1024:  # glibc's own starting value: a limit this small gains nothing
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # each returns 1 on success, 0 for a value glibc refuses (then it keeps its own)
        return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) & bool(
            mallopt(M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError):
        return False
