"""A worker's idle mappings of recycled segments, kept for the next value written into the same file.

A pooled segment (``comm/shm_pool.py``) is written again, under a new name, once nothing refers to it
and nobody maps it; the next run of a graph so hands a worker the same few files under new names.
Mapping a file afresh costs its reader the page-table set-up of every page it reads (a fault per 16
pages) and an unmapping afterwards: about 12% of a worker's CPU on the rechunk benchmark. So once the
last view of a pooled segment is gone, the worker keeps its mapping, unlocked (its writer may write
the file again), and when a later name leads to the same file it takes the file's shared lock again
and hands out views of the kept mapping, whose pages are mapped already::

    open(name, nbytes): open the name, check the owner, LOCK_SH, the name still leads to this file
      an idle mapping of this file (st_dev, st_ino)? ─► take it        else ─► mmap the whole file
      views ◄── a read-only NumPy array over the mapping (the "wrapper"), finalized once its last
                view is gone: unlock, and the mapping (with this descriptor) is idle again

Safe because:

- views are handed out only while this process holds the file's shared lock, which its writer must
  take exclusively (without waiting) before it writes the file again: as for a fresh mapping;
- an idle mapping keeps its file, and the descriptor kept with it keeps the inode, whose number can
  therefore not be given to another file: the same (``st_dev``, ``st_ino``) is the same file;
- the writer copies into the very pages the kept mapping maps (its own shared mapping of the file),
  and lets go of its lock only after that copy, so a kept mapping shows the new content.

Bounded: at most ``entries`` idle mappings, least recently used first out. An idle mapping whose file
lost its last name (its writer unlinked it) keeps its pages until ``drop_unlinked`` lets it go (each
open, and the worker every 0.5 s). Without NumPy (nothing to finalize per reader), a pooled segment is
mapped afresh each time, as ``open_segment`` does.
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
import sys
import threading
import weakref

from minidist.comm.shm import (
    _POOLED_MAPPINGS_MAX,
    _check_holds,
    _check_owner,
    _pooled_descriptors,
    lock_for_reading,
    open_for_reading,
    open_segment,
)
from minidist.comm.shm_sweep import SHM_DIR, _check_name, file_unlinked


class _Idle:
    __slots__ = ("fd", "mapping", "size")

    def __init__(self, fd: int, mapping: mmap.mmap, size: int):
        self.fd = fd  # unlocked; keeps the inode while the mapping is idle
        self.mapping = mapping
        self.size = size


class PooledMappings:
    """Idle read-only mappings of pooled segments, by file (``st_dev``, ``st_ino``). Thread-safe."""

    def __init__(self, entries: int = 32):
        self.entries = entries
        self._lock = threading.Lock()
        self._idle: collections.OrderedDict[tuple[int, int], _Idle] = collections.OrderedDict()
        # filled by finalizers (any thread, any moment: only an append there), emptied under the lock
        self._returned: collections.deque = collections.deque()
        self.hits = 0  # opens served by an idle mapping (for tests and benchmarks)

    def __len__(self) -> int:
        _forget(self._take_returned())
        return len(self._idle)

    def open(self, name: str, nbytes: int, offset: int = 0) -> memoryview:
        """What ``open_segment(name, nbytes, offset, pooled=True)`` returns (same errors), from an
        idle mapping of the same file when there is one."""
        numpy = sys.modules.get("numpy")
        if numpy is None or nbytes == 0 or len(_pooled_descriptors) >= _POOLED_MAPPINGS_MAX:
            return open_segment(name, nbytes, offset, True)  # (it copies past the bound)
        _check_name(name)
        path = os.path.join(SHM_DIR, name)
        fd = open_for_reading(name, path)
        try:
            info = _check_owner(fd, name, path)
            lock_for_reading(fd, name, path)
            _check_holds(info, name, offset + nbytes)
            key = (info.st_dev, info.st_ino)
            idle = self._take(key, info.st_size)
            if idle is None:
                mapping = mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ)
                size = info.st_size
            else:
                mapping, size = idle.mapping, idle.size
                os.close(idle.fd)  # this open's descriptor holds the lock (and the inode) now
            wrapper = numpy.frombuffer(mapping, numpy.uint8)
        except BaseException:
            os.close(fd)
            raise
        _pooled_descriptors.add(fd)
        weakref.finalize(wrapper, _return, self._returned, fd, key, mapping, size)
        return memoryview(wrapper)[offset : offset + nbytes]

    def _take(self, key: tuple[int, int], size: int) -> _Idle | None:
        gone = self._take_returned()
        with self._lock:
            idle = self._idle.pop(key, None)
            if idle is not None and idle.size == size:
                self.hits += 1
            elif idle is not None:  # the file's size changed: never, for a pool's file
                gone.append(idle)
                idle = None
        _forget(gone)
        return idle

    def _take_returned(self) -> list[_Idle]:
        """File the mappings whose last view went since the last look; those beyond the bound."""
        gone: list[_Idle] = []
        with self._lock:
            while self._returned:
                fd, key, mapping, size = self._returned.popleft()
                old = self._idle.pop(key, None)
                if old is not None:
                    gone.append(old)
                self._idle[key] = _Idle(fd, mapping, size)
            while len(self._idle) > self.entries:
                gone.append(self._idle.popitem(last=False)[1])
        return gone

    def drop_unlinked(self) -> int:
        """Let go of the idle mappings of files that have no name left; how many."""
        gone = self._take_returned()
        with self._lock:
            unlinked = [key for key, idle in self._idle.items() if file_unlinked(idle.fd)]
            gone += [self._idle.pop(key) for key in unlinked]
        _forget(gone)
        return len(gone)

    def close(self) -> None:
        """Let go of every idle mapping (views handed out stay valid). Idempotent."""
        gone = self._take_returned()
        with self._lock:
            gone += self._idle.values()
            self._idle.clear()
        _forget(gone)


def _return(returned: collections.deque, fd: int, key, mapping, size: int) -> None:
    """The last view of a mapping is gone (a finalizer: no lock taken here): unlock the file, so its
    writer may write it again, and hand the mapping back as idle."""
    _pooled_descriptors.discard(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    returned.append((fd, key, mapping, size))


def _forget(gone: list[_Idle]) -> None:
    for idle in gone:
        os.close(idle.fd)
        try:
            idle.mapping.close()
        except BufferError:  # a wrapper being collected right now still exports it: the GC unmaps
            pass
