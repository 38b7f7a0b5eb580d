"""Recycled shared-memory segments: a worker writes published results into files it wrote before.

A fresh ``/dev/shm`` file costs the kernel a page allocation for every 4 KiB written (and their
zeroing, memory-cgroup charging and LRU insertion), and freeing it costs as much again: about
0.4 ms per MB on an idle machine, several times that when other processes allocate too, against
0.06 ms per MB to write into pages a file already has. So a worker keeps the segments of its
published results (``worker/holding.py``) once nobody refers to them any more, and writes later
publications into them::

    writer (a worker)                      /dev/shm                              any reader process
    SegmentPool.write(buffer)
      a free segment of about that size ─► flock(LOCK_EX | LOCK_NB)  fails while anyone maps it
        rename to a new name, pwrite, close (unlocks) ─► minidist_..._<pid>_<n>-<random>
      none: a new file, as SegmentStore does                                  open_segment(pooled):
      └─► SharedBuffer(new name, nbytes, pooled=True) ── travels ──────────►  open, flock(LOCK_SH),
                                                                              same inode as the name?
    scheduler: the last payload naming it is gone                             mmap; the descriptor
      ──► ReturnSegments(names) ──► give_back(): free for reuse                (and so the lock) lives
                                                                              as long as the mapping

Two things must both hold before a segment is written again, and each has its own guard:

- **Nothing refers to it.** The scheduler's ``SegmentLedger`` counts the payloads that name a
  segment; only when that count drops to 0 (the key is forgotten) does it hand the name back to its
  writer (``ReturnSegments``) instead of unlinking it. A segment the writer has not been given back
  is never written.
- **Nobody reads it.** A reader takes a shared ``flock`` on its own open file description before it
  maps a pooled segment and keeps that descriptor open until the mapping is garbage-collected (the
  last NumPy view of it gone), whatever the process's data store did meanwhile; the writer takes an
  exclusive lock, without waiting, before it writes, and passes the segment over while any reader
  still holds one. The kernel drops the locks of a process that dies, SIGKILL included, so a crashed
  reader never pins a segment, and no message is needed to say a view died.

Each reuse renames the file: the name a payload carries stands for one content only. A reader with a
stale name finds no file, or (renamed between its ``open`` and its lock) a name that no longer leads to
the inode it opened, and fails as it would on an unlinked segment (FileNotFoundError) rather than read
other data.

The pool is bounded: free segments beyond ``capacity`` bytes (or ``MAX_FREE`` of them) are unlinked,
oldest first. Free segments are files only (the writer does not map them), so they count against
``/dev/shm``, not against the worker's memory. When the worker goes, ``close`` unlinks them; if it is
killed, the scheduler's ``sweep_process`` does (they are in no payload).
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
import sys
import threading
from typing import Iterable

from minidist.comm.shm import SegmentStore, SharedBuffer, _write_new_file
from minidist.comm.shm_sweep import SHM_DIR, _unlink_quietly

MAX_FREE = 64  # free segments kept at most (each holds a descriptor or two in the writer)
_SLACK = 2  # a free segment serves a buffer of at least 1/_SLACK of its size
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault a new writable mapping in at once


class _Segment:
    """A file of the pool: its size, its descriptor while it is free (-1 while lent), and the
    writer's own writable mapping of it once it was rewritten (kept: its pages are faulted in once)."""

    __slots__ = ("size", "fd", "mapping")

    def __init__(self, size: int):
        self.size = size
        self.fd = -1
        self.mapping: mmap.mmap | None = None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:  # a copy into it is still running: the collector unmaps it later
                pass
            self.mapping = None


class SegmentPool:
    """The segments one process wrote for published values, and their reuse (thread-safe).

    ``write`` is the ``SegmentStore`` interface ``comm.serialize`` uses (with ``threshold``), so
    ``serialize(value, pool)`` writes a value's large buffers into recycled segments.
    """

    def __init__(self, store: SegmentStore, capacity: int):
        self.store = store  # names new segments (cluster id, this pid, a counter, a random part)
        self.threshold = store.threshold
        self.capacity = capacity
        self._lock = threading.Lock()
        self._free: collections.OrderedDict[str, _Segment] = collections.OrderedDict()
        self._free_bytes = 0
        self._lent: dict[str, _Segment] = {}  # name handed out -> its file
        self._closed = False
        self.reused = 0  # writes into a recycled segment (for tests and benchmarks)
        self.created = 0  # writes into a new file

    def __repr__(self) -> str:
        return (
            f"SegmentPool({len(self._free)} free, {len(self._lent)} lent, "
            f"{self.reused} reused, {self.created} created)"
        )

    def free_names(self) -> list[str]:
        """The segments kept for reuse (nothing refers to them)."""
        with self._lock:
            return list(self._free)

    def write(self, data) -> SharedBuffer:
        """Copy ``data`` (a contiguous buffer) into a free segment of about its size, or a new one."""
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("SegmentPool.write needs a C-contiguous buffer")
        view = view.cast("B") if (view.format != "B" or view.ndim != 1) else view
        nbytes = view.nbytes
        while True:
            taken = self._take_free(nbytes)
            if taken is None:
                break
            handle = self._rewrite(taken[0], taken[1], view)
            if handle is not None:
                return handle
        name = self.store._new_name()
        _write_new_file(os.path.join(SHM_DIR, name), view)
        with self._lock:
            self._lent[name] = _Segment(nbytes)
            self.created += 1
        return SharedBuffer(name, nbytes, 0, True)

    def write_summed(self, data):
        raise NotImplementedError("pooled segments are for results, which have no content token")

    def _take_free(self, nbytes: int) -> tuple[str, _Segment] | None:
        """The smallest free segment that fits ``nbytes`` and whose last reader is gone, locked
        exclusively and out of the free list; None if there is none."""
        with self._lock:
            fits = sorted(
                (segment.size, name)
                for name, segment in self._free.items()
                if nbytes <= segment.size <= max(nbytes * _SLACK, 1 << 16)
            )
            for size, name in fits:
                segment = self._free[name]
                try:
                    fcntl.flock(segment.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # BlockingIOError: a reader still maps it (a view may live)
                    continue
                del self._free[name]
                self._free_bytes -= size
                return name, segment
        return None

    def _rewrite(self, name: str, segment: _Segment, view: memoryview) -> SharedBuffer | None:
        """Write ``view`` into ``segment`` (locked exclusively), renamed from ``name`` to a new
        name; None if the file was removed meanwhile (a sweep)."""
        new_name = self.store._new_name()
        try:
            try:
                os.rename(os.path.join(SHM_DIR, name), os.path.join(SHM_DIR, new_name))
            except FileNotFoundError:
                segment.release()
                return None
            if segment.mapping is None:
                # every page of the file exists (it was written whole), so a store into the
                # mapping cannot fail with SIGBUS the way one into a new tmpfs file can
                segment.mapping = mmap.mmap(
                    segment.fd, segment.size, flags=mmap.MAP_SHARED | _MAP_POPULATE
                )
            _copy_into(segment.mapping, view)
        except BaseException:
            _unlink_quietly(os.path.join(SHM_DIR, new_name))
            segment.release()
            raise
        # unlock explicitly: the mapping holds a duplicate of the descriptor (mmap dups it), which
        # would keep the lock of their shared open file description; readers of the new name may come
        fcntl.flock(segment.fd, fcntl.LOCK_UN)
        os.close(segment.fd)
        segment.fd = -1
        with self._lock:
            if len(self._lent) >= MAX_FREE:
                segment.release()  # many lent at once: keep descriptors bounded, map it again later
            self._lent[new_name] = segment
            self.reused += 1
        return SharedBuffer(new_name, view.nbytes, 0, True)

    def discard(self, names: Iterable[str]) -> None:
        """Segments written for a value that will not be sent (its pickling failed): unlink them."""
        names = list(names)
        with self._lock:
            gone = [self._lent.pop(name, None) for name in names]
        for name, segment in zip(names, gone):
            _unlink_quietly(os.path.join(SHM_DIR, name))
            if segment is not None:
                segment.release()

    def give_back(self, names: Iterable[str]) -> None:
        """Nothing refers to these segments any more (the scheduler's ledger says so): keep them for
        reuse, up to the pool's bounds, and unlink the rest."""
        doomed: list[tuple[str, _Segment]] = []
        with self._lock:
            for name in names:
                segment = self._lent.pop(name, None)
                if segment is None:
                    continue  # not one of ours now (discarded, or given back twice)
                if self._closed:
                    doomed.append((name, segment))
                    continue
                try:
                    segment.fd = os.open(
                        os.path.join(SHM_DIR, name),
                        os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW,
                    )
                except OSError:
                    doomed.append((name, segment))  # swept meanwhile
                    continue
                self._free[name] = segment
                self._free_bytes += segment.size
            while self._free and (self._free_bytes > self.capacity or len(self._free) > MAX_FREE):
                name, segment = self._free.popitem(last=False)
                self._free_bytes -= segment.size
                doomed.append((name, segment))
        for name, segment in doomed:
            # a reader that still maps it keeps its pages until it lets go; the name goes now
            _unlink_quietly(os.path.join(SHM_DIR, name))
            segment.release()

    def close(self) -> None:
        """Unlink the free segments; segments given back later are unlinked at once. Idempotent."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, collections.OrderedDict()
            self._free_bytes = 0
            lent = list(self._lent.values())
        for name, segment in free.items():
            _unlink_quietly(os.path.join(SHM_DIR, name))
            segment.release()
        for segment in lent:  # the writer's own mappings: given back later, they are unlinked
            segment.release()


def _copy_into(mapping: mmap.mmap, view: memoryview) -> None:
    """memcpy ``view`` to the start of ``mapping`` (through NumPy, which lets go of the GIL)."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        memoryview(mapping)[: view.nbytes] = view
        return
    target = numpy.frombuffer(mapping, numpy.uint8, count=view.nbytes)
    numpy.copyto(target, numpy.frombuffer(view, numpy.uint8))
    del target  # no export may outlive the copy: the mapping is closed when the segment goes
