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

**Large blocks too, in one heap.** Blocks above the mmap threshold (which glibc caps at 32 MiB) were
still mapped afresh each time, as huge pages the kernel zeroes: a rechunk's 96 MB merges. And the
4 MB pieces cut from them went into heaps of the task thread's own arena, which glibc unmaps whenever
they empty. A worker with room enough (no memory limit, or one of at least ``KEEP_FROM_LIMIT``)
therefore serves every block from one heap (``M_MMAP_MAX`` 0, ``M_ARENA_MAX`` 1: its few threads
rarely allocate at once), whose top is trimmed only beyond ``budget``. What is freed stays for the
next block, and the worker's ``HeapTrimmer`` gives it back (``malloc_trim``, which returns the pages
of every free block, not only the top's): once the worker looked idle at ``IDLE_LOOKS`` looks in a
row (its parent-watching thread looks every 0.5 s), and while it works each time more than
``budget`` (``KEEP_MAX``, at most a sixteenth of the memory limit) comes to lie free. So a busy
worker's RSS may stay up to that much above what it uses, and an idle one's falls back within about
2.5 s. Rechunk (``bench_dask.py``), perf on the loaded machine, CPU of both workers a compute: 442 ->
341 ms, the kernel's page zeroing in it 89 -> 32 ms; waiting 5 looks rather than 2 before trimming
(the loaded machine left workers idle a second between computes): zeroing 24-37 -> 5-15 ms.

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
M_MMAP_MAX = -4
M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 1024 * 1024  # smaller blocks come from the heap (glibc allows no more)
TRIM_THRESHOLD = 64 * 1024 * 1024  # free memory at a heap's top kept for reuse, at most
LIMIT_FRACTION = 16  # with a memory limit, keep at most 1/16 of it per heap
KEEP_FROM_LIMIT = 2 << 30  # large blocks come from the heap too with no limit or one this large
KEEP_MAX = 1 << 30  # free bytes in the heap given back at once, even while the worker works
KEEP_FRACTION = 16  # ... or this part of the memory limit, if less (as the trim threshold)
# looks (0.5 s apart) in a row that saw the worker idle before it gives its free heap back: a loaded
# machine can leave workers idle for a second between two computes of a benchmark's loop
IDLE_LOOKS = 5


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


def keep_budget(memory_limit: Optional[int]) -> Optional[int]:
    """Free heap bytes a worker may keep while it works, if it serves large blocks from its heap
    (None: it maps them afresh, as glibc does; a small memory limit leaves no room to keep them)."""
    if memory_limit is None:
        return KEEP_MAX
    if memory_limit < KEEP_FROM_LIMIT:
        return None
    return min(KEEP_MAX, memory_limit // KEEP_FRACTION)


def tune_allocator(memory_limit: Optional[int]) -> Optional[HeapTrimmer]:
    """Set the worker process's malloc parameters (before it starts a thread); the trimmer its
    watching thread must call if large blocks now come from the heap, else None."""
    if not is_glibc():
        return None
    mmap_threshold, trim_threshold = thresholds_for(memory_limit)
    if mmap_threshold <= 128 * 1024:  # glibc's own starting value: a limit this small gains nothing
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # each returns 1 on success, 0 for a value glibc refuses (then it keeps its own)
        mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        budget = keep_budget(memory_limit)
        if budget is not None:
            # made first: it needs mallinfo2 and malloc_trim (glibc 2.33), else nothing changes
            trimmer = HeapTrimmer(libc, budget, trim_threshold)
            if mallopt(M_ARENA_MAX, 1) and mallopt(M_MMAP_MAX, 0):
                # the trimmer bounds what the heap keeps, at its top as in its middle
                mallopt(M_TRIM_THRESHOLD, budget)
                return trimmer
        mallopt(M_TRIM_THRESHOLD, trim_threshold)
    except (OSError, AttributeError):
        pass
    return None


class HeapTrimmer:
    """Gives the heap's free memory back to the kernel (``look`` is called every 0.5 s): once when the
    worker was idle at ``IDLE_LOOKS`` looks in a row and more than ``keep_idle`` bytes lie free; and
    while it works, once each time more than ``budget`` bytes come to lie free. Pages given back still
    count as free in glibc's books until reused, hence "once": not again until the worker worked, or
    the free bytes fell below the budget."""

    def __init__(self, libc, budget: int, keep_idle: int):
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_size_t)
                for name in (
                    "arena",
                    "ordblks",
                    "smblks",
                    "hblks",
                    "hblkhd",
                    "usmblks",
                    "fsmblks",
                    "uordblks",
                    "fordblks",
                    "keepcost",
                )
            ]

        self._mallinfo2 = libc.mallinfo2  # glibc 2.33 and later (AttributeError before)
        self._mallinfo2.restype = MallInfo2
        self._mallinfo2.argtypes = []
        self._malloc_trim = libc.malloc_trim
        self._malloc_trim.argtypes = [ctypes.c_size_t]
        self._malloc_trim.restype = ctypes.c_int
        self.budget = budget
        self.keep_idle = keep_idle
        self._idle_looks = 0  # looks in a row that saw no task running
        self._idle_trimmed = False
        self._over_budget = False

    def free_bytes(self) -> int:
        """Bytes of free blocks in the heap (resident or given back)."""
        return int(self._mallinfo2().fordblks)

    def look(self, idle: bool) -> bool:
        """One look (``idle``: no task runs now); True if it gave memory back."""
        self._idle_looks = self._idle_looks + 1 if idle else 0
        idle_long = self._idle_looks >= IDLE_LOOKS
        if not idle:
            self._idle_trimmed = False
        free = self.free_bytes()
        over = free > self.budget
        trim = (over and not self._over_budget) or (
            idle_long and not self._idle_trimmed and free > self.keep_idle
        )
        self._over_budget = over
        if trim:
            self._malloc_trim(0)
            self._idle_trimmed = idle
        return trim
