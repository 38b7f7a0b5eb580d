"""Mappings a worker keeps of the large segments it reads, so that a segment read again is not mapped again.

Data flow::

    task arguments / dependencies (deserialize)       MappingCache                       /dev/shm
    open(name, nbytes) ──────────────────────────────► open the name, fstat: which file? ◄── one file,
      the same file as a kept mapping (same inode) ──► a view of that mapping, nothing     many names
      else ──────────────────────────────────────────► mmap the whole file, keep it (and  (hard links,
                                                        its descriptor), a view of it      comm/shm.py)
    drop_unlinked() (each miss, and the worker every 0.5 s) ─► mappings of files with no name left go

Why: ``submit(f, big)`` three times hands the worker three names of one file (the client's store
links them, ``comm/shm.py``). A fresh mapping of a 200 MB segment costs its reader about 0.02 s of
page-table set-up on its first pass over the data (51,200 faults of 4 KiB pages; ``/dev/shm`` has no
huge pages here), more than the pass itself; a kept mapping is read at memory speed from the second
task on, and across later ``submit``s for as long as the file lives (the client keeps the segment of
an array passed again, ``comm/shm_kept.py``).

Safe because a segment that is not ``pooled`` is never written after it was created (a writer only
ever makes new files and links to them), and the descriptor kept with the mapping keeps the inode:
its number cannot be given to another file while we hold it. Pooled segments (``comm/shm_pool.py``)
are rewritten by their writer: their mappings are kept only while no view of them lives, and under
the file's lock whenever one does (``comm/shm_pool_readers.py``).

Bounded: at most ``entries`` mappings, of segments of at least ``minimum`` bytes, least recently used
first out. A kept mapping holds its file's pages after the last name is unlinked until
``drop_unlinked`` sees it (a worker calls it every 0.5 s): that much /dev/shm stays in use a little
longer, never longer than that unless the worker is stopped.
"""

from __future__ import annotations

import collections
import mmap
import os
import threading

from minidist.comm.shm import _check_holds, _check_owner, open_for_reading, open_segment
from minidist.comm.shm_pool_readers import PooledMappings
from minidist.comm.shm_sweep import SHM_DIR, _check_name, file_unlinked


class _Kept:
    __slots__ = ("fd", "mapping", "size")

    def __init__(self, fd: int, mapping: mmap.mmap, size: int):
        self.fd = fd
        self.mapping = mapping
        self.size = size


class MappingCache:
    """Read-only mappings of large non-pooled segments, by file (``st_dev``, ``st_ino``). Thread-safe."""

    def __init__(self, minimum: int = 1 << 20, entries: int = 16):
        self.minimum = minimum
        self.entries = entries
        self._lock = threading.Lock()
        self._kept: collections.OrderedDict[tuple[int, int], _Kept] = collections.OrderedDict()
        self.hits = 0  # views served from a kept mapping (for tests and benchmarks)
        self.pooled = PooledMappings()  # recycled segments: kept while idle, for their next value

    def __len__(self) -> int:
        return len(self._kept)

    def open(self, name: str, nbytes: int, offset: int = 0, pooled: bool = False) -> memoryview:
        """What :func:`~minidist.comm.shm.open_segment` returns (same errors), from a kept mapping of
        the same file if there is one."""
        if pooled:
            return self.pooled.open(name, nbytes, offset)
        if nbytes < self.minimum:
            return open_segment(name, nbytes, offset, pooled)
        _check_name(name)
        path = os.path.join(SHM_DIR, name)
        fd = open_for_reading(name, path)
        try:
            info = _check_owner(fd, name, path)
            _check_holds(info, name, offset + nbytes)
            key = (info.st_dev, info.st_ino)
            with self._lock:
                kept = self._kept.get(key)
                if kept is not None:
                    self._kept.move_to_end(key)
                    self.hits += 1
            if kept is None:
                mapping = mmap.mmap(fd, info.st_size, prot=mmap.PROT_READ)
                kept = _Kept(fd, mapping, info.st_size)
                fd = -1  # kept with the mapping
                self._add(key, kept)
        finally:
            if fd >= 0:
                os.close(fd)
        return memoryview(kept.mapping)[offset : offset + nbytes]

    def _add(self, key: tuple[int, int], kept: _Kept) -> None:
        gone = self._take_unlinked()
        with self._lock:
            old = self._kept.pop(key, None)  # another thread mapped it meanwhile
            if old is not None:
                gone.append(old)
            self._kept[key] = kept
            while len(self._kept) > self.entries:
                gone.append(self._kept.popitem(last=False)[1])
        _forget(gone)

    def _take_unlinked(self) -> list[_Kept]:
        with self._lock:
            unlinked = [key for key, kept in self._kept.items() if file_unlinked(kept.fd)]
            return [self._kept.pop(key) for key in unlinked]

    def drop_unlinked(self) -> int:
        """Let go of the mappings of files whose names are all gone; how many."""
        gone = self._take_unlinked()
        _forget(gone)
        return len(gone) + self.pooled.drop_unlinked()

    def close(self) -> None:
        """Let go of every kept mapping (views handed out stay valid). Idempotent."""
        with self._lock:
            gone = list(self._kept.values())
            self._kept.clear()
        _forget(gone)
        self.pooled.close()


def _forget(gone: list[_Kept]) -> None:
    # The mapping itself is not closed: views handed out may still use it; it is unmapped when the
    # last of them is garbage-collected. Only our descriptor goes now.
    for kept in gone:
        os.close(kept.fd)
