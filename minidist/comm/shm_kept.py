"""Segments a SegmentStore keeps alive by a name of its own, for buffers that will be passed again.

Data flow::

    SegmentStore: a buffer passed a 2nd time, unchanged, now watched (comm/write_watch.py)
      KeptSegments.keep(name, nbytes, owner_ref) ──os.link──► /dev/shm/<a name of the store's own>
    later passes: link a new task name from the kept name (the watch proves the buffer unchanged)
    the buffer's owner dies (weakref callback) ─┐
    the buffer is changed in place / evicted   ─┼─► release(name) ──► unlink (the janitor's queue)
    the store closes, /dev/shm is full         ─┘

Without a name of the store's own, a segment lives only as long as the tasks that use it: once their
futures are released, the scheduler unlinks it, and the next ``submit(f, big)`` copies all of ``big``
into a new tmpfs file again (page allocation, about 0.4 ms per MB on this machine) although the watch
proves the bytes unchanged. A kept segment doubles the memory of its buffer (the owner's private
copy and the shared one) for as long as the owner lives, so what is kept is bounded: at most
``fraction`` of the machine's RAM and of what ``/dev/shm`` has free (counting what is kept as free).

A release may come from a weakref callback, which runs inside whatever code drops the owner's last
reference (any thread, even one that holds one of our locks): so nothing here takes a lock; each
step is one atomic operation on a dict (CPython's dict methods are), and ``unlink`` must be as safe
(``SegmentJanitor.unlink`` is once its thread runs: it only queues, see ``comm/shm_sweep.py``; so
the thread is started before anything is kept; the default, ``unlink_segments``, takes no lock).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from minidist.comm.shm_sweep import SHM_DIR, _unlink_quietly

KEEP_FRACTION = 0.25  # what a LocalCluster's store may keep: of RAM, and of /dev/shm's free space


def _nothing() -> None:
    pass


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return 0


class KeptSegments:
    """The names a store keeps: ``name -> (nbytes, weak reference to the buffer's owner)``."""

    def __init__(self, fraction: float, unlink: Callable[[list[str]], None]):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the fraction of memory kept must be in [0, 1], not {fraction}")
        self.fraction = fraction
        self.unlink = unlink  # must be safe in a weakref callback once `prepare` ran
        self.prepare: Callable[[], None] = _nothing  # called before anything is kept
        self._kept: dict[str, tuple] = {}

    def unlink_with(self, unlink: Callable[[list[str]], None], prepare: Callable[[], None]) -> None:
        """Let go of kept names through ``unlink`` (e.g. ``SegmentJanitor.unlink``), after
        ``prepare`` (``SegmentJanitor.start``) made it safe to call from a weakref callback."""
        self.unlink, self.prepare = unlink, prepare

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def nbytes(self) -> int:
        return sum(nbytes for nbytes, _ in list(self._kept.values()))

    def budget(self) -> int:
        """Bytes the store may keep in all: ``fraction`` of RAM and of /dev/shm's free space (what is
        kept counts as free: it could be given back)."""
        if self.fraction == 0.0:
            return 0
        kept = self.nbytes
        try:
            stats = os.statvfs(SHM_DIR)
        except OSError:
            return 0
        free = stats.f_bavail * stats.f_frsize + kept
        return int(self.fraction * min(free, _physical_memory()))

    def keep(self, name: str, new_name: str, nbytes: int, owner_ref) -> str | None:
        """Give segment ``name`` the store's own name ``new_name`` if the budget allows: the new name,
        or None (not kept). ``owner_ref``: the weak reference whose death releases it."""
        if owner_ref is None or self.nbytes + nbytes > self.budget():
            return None
        self.prepare()
        try:
            os.link(
                os.path.join(SHM_DIR, name), os.path.join(SHM_DIR, new_name), follow_symlinks=False
            )
        except OSError:
            return None  # already unlinked: nothing to keep
        self._kept[new_name] = (nbytes, owner_ref)
        if owner_ref() is None:  # died meanwhile: its callback may have looked before we kept it
            self.release([new_name])
            return None
        return new_name

    def holds(self, name: str) -> bool:
        return name in self._kept

    def release(self, names: Iterable[str]) -> None:
        """Stop keeping these names (those not kept are ignored) and unlink them."""
        gone = [name for name in names if self._kept.pop(name, None) is not None]
        if gone:
            self.unlink(gone)

    def owner_died(self, owner_ref) -> None:
        """The weakref callback's part: release what was kept for that owner. Takes no lock."""
        self.release([name for name, (_, ref) in list(self._kept.items()) if ref is owner_ref])

    def release_all_now(self) -> int:
        """Unlink every kept name at once, not through ``unlink`` (e.g. /dev/shm is full and a write
        waits for the space). Returns how many were kept."""
        names = list(self._kept)
        count = 0
        for name in names:
            if self._kept.pop(name, None) is not None:
                _unlink_quietly(os.path.join(SHM_DIR, name))
                count += 1
        return count
