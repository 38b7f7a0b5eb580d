"""Giving memory back after a large run: right-sized copies of dicts and sets it left nearly empty, and
the C allocator's free pages handed back to the system.

CPython never shrinks a dict's or a set's table when entries are deleted: a dict that once held one entry
for each of 100,000 tasks keeps a ~4 MB table after its last ``del`` (and a set the same), for the life of
the process. The books that hold one entry per task or per key (a client's futures, the scheduler's tasks
and results, each worker's cache and the scheduler's view of it) pass themselves through ``right_sized``
after they let go of keys and keep what it returns::

    self.tasks = right_sized(self.tasks)     # the same object, or a fresh compact copy

It returns the container itself unless its table is large (``MIN_TABLE_BYTES``) and mostly empty (fewer
than one entry per ``BYTES_PER_ENTRY`` of table); then a copy whose table fits the entries left, in the
same insertion order. An empty container is cleared in place instead (``clear()`` frees its table), so
that no new object is made: one made while a run is released can land in any of the run's allocator
arenas (1 MiB each, given back only when wholly empty) and keep that arena alive. The original is never modified, so a thread that reads the old object meanwhile
still sees every entry; the caller must be the only writer (or hold the writers' lock) while it rebinds.
Copying costs one pass over the entries left, and happens only after the container lost most of its
peak, so its cost is paid for by the deletions that made it sparse. ``right_size_in_place`` keeps the
object instead (for containers read only under their writer's lock): a copy made at the end of a run is
itself an object that outlives the run in one of its arenas.

``trim_heap`` is for what no Python change can reach (and ``_release_thread_top`` for the part of it
that ``malloc_trim`` skips). glibc's malloc serves the larger blocks (dict and
set tables, lists, deque blocks) from heaps that only shrink from their top, and after the first large
table is freed it raises its own mmap threshold, so later tables come from those heaps too; after a run
of 100,000 graph tasks ~80 MB stayed in the client's RSS as free heap memory behind a few small live
blocks. ``malloc_trim(0)`` returns the free pages of every heap to the kernel: no allocation moves, no
object changes, nothing the program can observe changes but its RSS (and later allocations fault the
pages in again). The scheduler thread looks it up when it starts (``prepare_trim``) and calls it only when it has forgotten at least ``TRIM_AFTER`` keys
since the last call and few tasks are left (a large run was released), at a cost of ~15 ms for a heap of
100 MB. It does nothing where the C library is not glibc.

Before that trim, ``trim_heap`` runs one full garbage collection (only while collection is enabled: a
program that disabled it keeps it so). Not for cycles: a full collection is also what empties
CPython's free lists, which keep up to 2,000 freed tuples of each length (and some floats, lists and
dicts) for reuse. After a large run those are the run's last message tuples, scattered over its
allocator arenas, and they kept ~20-40 of them (1 MiB each, given back only when wholly empty) alive:
the client's RSS stayed at twice its start until some later collection. The run itself caused several
full collections of the same heap, so one more costs a fraction of what it already paid.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Callable, Optional, TypeVar

MIN_TABLE_BYTES = 64 * 1024  # smaller tables are not worth a copy
BYTES_PER_ENTRY = 256  # a full table costs ~30-100 B an entry: above this it is mostly empty

Container = TypeVar("Container", dict, set)


def right_sized(container: Container) -> Container:
    """``container``, or a compact copy of it when its table is large and mostly empty."""
    if not container:  # clear() frees an empty container's table in place: no new object to place
        container.clear()
        return container
    size = sys.getsizeof(container)
    if size < MIN_TABLE_BYTES or len(container) * BYTES_PER_ENTRY > size:
        return container
    return type(container)(container)


def right_size_in_place(container: dict | set) -> None:
    """Like ``right_sized``, but the container stays the same object: when its table is large and
    mostly empty, its entries are copied out, it is cleared and they are put back in a compact table.

    For a container whose readers hold its writer's lock: one that does not could find it empty for
    a moment. Keeping the object matters at the end of a large run: a copy made then is a new object
    that outlives the run in whatever allocator arena the run's memory was in, and keeps that arena
    (1 MiB) from being given back, while the container made before the run lies in an older arena.
    """
    if not container:
        container.clear()
        return
    size = sys.getsizeof(container)
    if size < MIN_TABLE_BYTES or len(container) * BYTES_PER_ENTRY > size:
        return
    entries = container.copy()  # a compact table: copies of a mostly empty one are rebuilt
    container.clear()
    container.update(entries)


TRIM_AFTER = 10_000  # forgotten keys between two trims at most; fewer are not worth ~1-15 ms

# a thread heap's top is handed back only by a free() that leaves it at least glibc's trim threshold
# (twice the largest mmapped block freed so far, at most 64 MiB): see _release_thread_top
# 1 MiB: below the mmap threshold once a large run freed its tables, so taken from the heap's top
_TOP_BLOCK = 1 << 20
_TOP_BLOCKS = 48  # covers a threshold up to 48 MiB (tables up to 24 MB); a thread heap holds 64

_malloc_trim: Optional[Callable[[int], int]] = None
_malloc: Optional[Callable[[int], Optional[int]]] = None
_free: Optional[Callable[[int], None]] = None
_looked_up = False


def prepare_trim() -> None:
    """Look ``malloc_trim`` (and ``malloc``, ``free``) up now (once per process). Call it before a
    large run: the few ctypes objects the look-up makes live for ever, and made in the middle of a run
    they would each keep one of its allocator arenas (1 MiB) from being given back."""
    global _malloc_trim, _malloc, _free, _looked_up
    if _looked_up:
        return
    _looked_up = True
    try:  # glibc names itself here ("glibc 2.36"); other C libraries raise or answer otherwise
        glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        glibc = False
    if glibc:
        import ctypes

        try:
            libc = ctypes.CDLL(None)  # our own handle: the types set below change no one else's
            malloc, free = libc.malloc, libc.free
            malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
            free.restype, free.argtypes = None, [ctypes.c_void_p]
            _malloc_trim, _malloc, _free = libc.malloc_trim, malloc, free
        except (OSError, AttributeError):
            _malloc_trim = _malloc = _free = None


def trim_heap() -> bool:
    """Empty the interpreter's free lists (a full collection), return the C allocator's free pages to
    the kernel (glibc's ``malloc_trim``), then the calling thread's heap top (``_release_thread_top``;
    after the trim: in the other order 1-3 MiB more stayed, measured); False where the C library is
    not glibc."""
    prepare_trim()
    if gc.isenabled():
        gc.collect()
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    _release_thread_top()
    return True


def _release_thread_top() -> None:
    """Hand back the free top of the calling thread's glibc heap (a thread other than the main one).

    ``malloc_trim`` gives back the free pages inside a thread heap's free chunks, but not its top
    chunk (glibc's ``mtrim`` trims only the main heap's top): only a ``free()`` that leaves that top
    at least the trim threshold shrinks it. After a large run the scheduler thread's heap top held
    2-6 MiB of pages its tables had used, below a threshold that the run's own frees raised to ~8 MB.
    So: take ``_TOP_BLOCKS`` blocks of ``_TOP_BLOCK`` from the top (untouched pages but each block's
    header), then free them lowest first: only the last one meets the top, in one chunk with all the
    others and the old top, large enough to be given back whole. Where a block is mmapped instead
    (a threshold still below 1 MiB), its free unmaps it, and glibc raises its mmap threshold to 1 MiB
    as after any such free; the heap is left as it was.
    """
    assert _malloc is not None and _free is not None
    blocks = [_malloc(_TOP_BLOCK) for _ in range(_TOP_BLOCKS)]
    for block in sorted(block for block in blocks if block):
        _free(block)
