"""Shared-memory segments for large buffers: write once, map read-only anywhere, unlink by name.

Data flow::

    writer process                         /dev/shm                          reader process
    SegmentStore.write(buffer) ──os.write──► minidist_<cluster>_<pid>_<n>-<random> ──mmap──► open_segment
          │                                  (one file per buffer)             read-only memoryview,
          └─► SharedBuffer(name, nbytes) ── travels through pipes ──────────►  zero-copy

A segment is a plain file on the tmpfs at ``/dev/shm``. We do not use
``multiprocessing.shared_memory`` because its resource tracker unlinks segments and warns behind our back;
here the rules are explicit:

- The process that writes a segment does not own it. The scheduler tracks the names each value uses and
  hands them to a :class:`SegmentJanitor` (a thread that unlinks them) when the value is forgotten;
  :func:`sweep_cluster` runs when the cluster closes; :func:`sweep_orphans` cleans up after processes
  that were killed (all three live in ``comm/shm_sweep.py``; this module re-exports them).
- A buffer written again (same address and length, e.g. one array passed to many tasks) gets a hard
  link to the segment already written if its bytes are unchanged: compared in full the first time, and
  from then on, for large arrays, only on the pages the kernel saw written since (``WriteWatch``).
  A store made with ``keep_fraction`` keeps such a segment by a name of its own while the array lives
  (``comm/shm_kept.py``), so a pass after the earlier tasks were released still finds it.
- Unlinking only removes the name: a mapping that is still in use stays valid until its last view is
  garbage-collected, so readers never see data vanish under them.
- Names encode the cluster and the writing process (``minidist_<cluster_id>_<pid>_<counter>-<random>``) so
  that a sweep can find a cluster's segments and tell whether their writer is still alive. A cluster id
  made by :func:`new_cluster_id` also names the process that owns the cluster, so an orphan sweep never
  removes segments a live cluster still refers to. The random part keeps the next name unguessable from
  the ``/dev/shm`` listing: nobody can create it first.

/dev/shm is shared by every user of the machine, so nothing here trusts a name alone:

- Sweeps only consider regular files owned by this user; another user's file is never touched and never
  makes a sweep fail (even for root, who could remove it).
- Segments are created ``O_EXCL | O_NOFOLLOW`` with mode 0600, and opened ``O_NOFOLLOW``; a reader checks
  with ``fstat`` that the file is a regular file owned by this user before mapping it.

Writes go through ``os.write`` rather than a writable mapping: on a full tmpfs a write fails with ENOSPC,
where a store into a mapping would kill the process with SIGBUS.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import itertools
import mmap
import os
import re
import resource
import stat
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import cast

from minidist.comm.shm_kept import KEEP_FRACTION, KeptSegments
from minidist.comm.shm_sweep import (
    SEGMENT_PREFIX,
    SHM_DIR,
    SegmentInfo,
    SegmentJanitor,
    _check_name,
    _unlink_quietly,
    list_segments,
    parse_segment_name,
    pid_alive,
    sweep_cluster,
    sweep_orphans,
    sweep_process,
    unlink_segments,
)
from minidist.comm.write_watch import WriteWatch
from minidist.keys import CHECKSUM_START, buffer_checksum

__all__ = [  # this module is where callers find the segment API, wherever it is defined
    "KEEP_FRACTION",
    "SEGMENT_PREFIX",
    "SHM_DIR",
    "SegmentInfo",
    "SegmentJanitor",
    "SegmentStore",
    "SharedBuffer",
    "list_segments",
    "new_cluster_id",
    "open_segment",
    "parse_segment_name",
    "pid_alive",
    "sweep_cluster",
    "sweep_orphans",
    "sweep_process",
    "unlink_segments",
]

_CLUSTER_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")
_RANDOM_HEX = 8  # hex digits of randomness in every segment name
_WRITE_CHUNK = 1 << 30  # Linux writes at most ~2 GiB per call; stay well below
_SUMMED_CHUNK = 2 << 20  # written then hashed while still in cache (see _write_new_file)
_RECENT_WRITES = 64  # how many (address, length) -> segment entries a store remembers for re-use
_WATCH_MIN = 16 << 20  # buffers this large passed again are watched for writes (see WriteWatch)


@dataclass(frozen=True)
class SharedBuffer:
    """A handle to ``nbytes`` bytes at ``offset`` in the segment ``name``: what travels instead of data.

    ``pooled``: the segment belongs to its writer's ``SegmentPool`` (``comm/shm_pool.py``) and may be
    written again once nothing refers to it, so readers lock it while they map it.
    """

    name: str
    nbytes: int
    offset: int = 0
    pooled: bool = False

    def __reduce__(self):
        # Compact and version-proof pickling: it crosses a pipe for every large value.
        if self.pooled:
            return (SharedBuffer, (self.name, self.nbytes, self.offset, True))
        return (SharedBuffer, (self.name, self.nbytes, self.offset))


def new_cluster_id() -> str:
    """A fresh cluster id that records this process as the cluster's owner (see :func:`sweep_orphans`)."""
    return f"{os.getpid()}-{os.urandom(6).hex()}"


class SegmentStore:
    """Writes buffers into shared-memory segments for one cluster, in one process.

    Thread-safe. When the same buffer (same address and length) is written again with unchanged
    content, the store gives the new handle a hard link to the segment already written instead of
    copying the data again: each handle has its own name, so unlinking one never breaks another.

    ``keep_fraction`` > 0: the segment of a buffer that is watched for writes (passed twice, 16 MiB or
    more, its owner alive) gets a name of the store's own, so that it outlives the tasks that used it
    and a later pass still finds it, until the owner dies, the buffer is changed, the store forgets it
    (64 entries) or closes, or /dev/shm fills up; in all at most that fraction of RAM and of /dev/shm's
    free space (``comm/shm_kept.py``). :meth:`close` stops the watches and unlinks what was kept.
    """

    def __init__(self, cluster_id: str, threshold: int = 64 * 1024, keep_fraction: float = 0.0):
        if not _CLUSTER_ID.match(cluster_id):
            raise ValueError(
                f"cluster_id {cluster_id!r} must be 1-200 characters from letters, digits, '_', '.', '-'"
            )
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, not {threshold}")
        self.cluster_id = cluster_id
        self.threshold = threshold
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._reuse_lock = threading.Lock()
        # (address, length) of a recently written buffer -> (segment name, checksum of it or None,
        # weak reference to the buffer's owner while its pages are under self._watch, or None,
        # weak reference to the owner of the buffer last written (large ones), or None)
        self._recent: collections.OrderedDict[tuple[int, int], tuple] = collections.OrderedDict()
        self._watch = WriteWatch()
        self._dead_owners: list = []
        # segments of watched buffers kept by a name of the store's own while their owner lives, so
        # that a later pass finds them even after their tasks were released (comm/shm_kept.py);
        # the data plane sends what it lets go to its janitor (``kept.unlink``)
        self.kept = KeptSegments(keep_fraction, unlink_segments)

    def __repr__(self) -> str:
        return f"SegmentStore(cluster_id={self.cluster_id!r}, threshold={self.threshold})"

    def _new_name(self) -> str:
        # The pid is read each time so that names stay truthful if a store is used after a fork.
        # secrets.token_hex, without importing secrets (hmac, OpenSSL) on the way to a worker's start
        random_part = os.urandom(_RANDOM_HEX // 2).hex()
        return (
            f"{SEGMENT_PREFIX}{self.cluster_id}_{os.getpid()}_{next(self._counter)}-{random_part}"
        )

    def write(self, data) -> SharedBuffer:
        """Copy ``data`` (any contiguous buffer) into a new segment; raise OSError if /dev/shm cannot take it.

        On failure nothing is left behind in /dev/shm.
        """
        return self._write(data, checksum=False)[0]

    def write_summed(self, data) -> tuple[SharedBuffer, int]:
        """:meth:`write`, plus the checksum of the data (``keys.buffer_checksum``, for content-based task keys).

        Either way the data is read once: a fresh write hashes each chunk right after writing it; a
        re-use of an earlier segment (a hard link after a byte comparison) returns the checksum
        remembered for that segment, or hashes each chunk right after comparing it.
        """
        handle, crc = self._write(data, checksum=True)
        return handle, cast(int, crc)

    def _write(self, data, checksum: bool) -> tuple[SharedBuffer, int | None]:
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("SegmentStore.write needs a C-contiguous buffer")
        view = view.cast("B") if (view.format != "B" or view.ndim != 1) else view
        key = _address_key(view)
        if key is None:
            return self._write_afresh(None, view, checksum, None)
        with self._lock:
            previous = self._recent.get(key)
        if previous is None:
            return self._write_afresh(key, view, checksum, None)
        # One at a time: a scan of the watch protects again the pages it reports, so the entry must
        # name a segment that agrees with every page not reported before another scan may run (and
        # the entry is read again under the lock: another thread may have just replaced it).
        with self._reuse_lock:
            with self._lock:
                previous = self._recent.get(key)
            if previous is None:
                return self._write_afresh(key, view, checksum, None)
            return self._reuse(key, previous, view, checksum)

    def _write_afresh(self, key, view: memoryview, checksum: bool, watched):
        name = self._new_name()
        try:
            crc = _write_new_file(os.path.join(SHM_DIR, name), view, checksum)
        except OSError as exc:
            # /dev/shm is full: what the store keeps for later passes goes first
            if exc.errno != errno.ENOSPC or not self.kept.release_all_now():
                raise
            crc = _write_new_file(os.path.join(SHM_DIR, name), view, checksum)
        if key is not None:
            kept = self._keep(name, view.nbytes, watched)
            self._remember(key, (kept, crc, watched, watched or _seen(view.obj, key[1])))
        return SharedBuffer(name, view.nbytes), crc

    def _keep(self, name: str, nbytes: int, watched) -> str:
        """The name to remember for segment ``name`` of a buffer: a name of the store's own while the
        buffer is watched (its owner alive) and the budget allows, else ``name`` itself."""
        if watched is None or self.kept.fraction == 0.0:
            return name
        if self.kept.holds(name):
            return name
        return self.kept.keep(name, self._new_name(), nbytes, watched) or name

    def _reuse(self, key, previous: tuple, view: memoryview, checksum: bool):
        """``(handle, crc)``: a new name for the segment last written for this buffer if it still holds
        the buffer's bytes, else a fresh segment.

        The first time a buffer comes again, all its bytes are compared with the segment, and the
        buffer is put under a :class:`WriteWatch` (large ones whose owner can be weakly referenced);
        from then on only the pages written since the last time are compared, usually none. The
        owner must be the very object watched: while it lives its memory cannot be freed and reused.
        """
        name, crc, watched, seen = previous
        owner = view.obj
        need_crc = checksum and crc is None  # a re-used segment's checksum, if known, is the bytes'
        if watched is not None and watched() is owner:
            changed = self._watch.written(key[0], key[1])
            if changed is not None:
                ref, new_crc = self._link_if_same(name, view, need_crc, changed)
                if ref is not None:
                    crc = crc if crc is not None else new_crc
                    kept = name if self.kept.holds(name) else self._keep(ref.name, key[1], watched)
                    self._remember(key, (kept, crc, watched, watched))
                    return ref, crc
                if _exists(name):
                    # changed in place: this buffer is being modified, stop watching it
                    self._stop_watching(key, watched)
                    return self._write_afresh(key, view, checksum, None)
                # its segment was freed: a fresh copy, still watched (the scan was just now)
                return self._write_afresh(key, view, checksum, watched)
            self._stop_watching(key, watched)  # no longer watched (unmapped?): start over
        elif watched is not None:
            self._stop_watching(key, watched)  # another object now lives at this address
        watch = None
        if key[1] >= _WATCH_MIN:
            try:
                watch = weakref.ref(owner, self._owner_died)
            except TypeError:
                pass  # bytes and the like: compared in full each time
            # before the comparison, so that a write during it is seen next time
            if watch is not None and not self._watch.arm(key[0], key[1]):
                watch = None
        ref, new_crc = self._link_if_same(name, view, need_crc, None)
        if ref is not None:
            crc = crc if crc is not None else new_crc
            self._remember(key, (self._keep(ref.name, key[1], watch), crc, watch, watch))
            return ref, crc
        if watch is not None:
            if seen is not None and seen() is owner and not _exists(name):
                # the same object again, its segment freed meanwhile (its tasks finished): copied
                # afresh but watched from now on (armed before this copy, so a write during it is seen)
                return self._write_afresh(key, view, checksum, watch)
            self._watch.disarm(key[0], key[1])
        return self._write_afresh(key, view, checksum, None)

    def _owner_died(self, ref) -> None:
        # a weakref callback may run inside any code, even under self._lock: only note it here,
        # and give back what was kept for it (lock-free: comm/shm_kept.py)
        self._dead_owners.append(ref)
        self.kept.owner_died(ref)

    def _stop_watching(self, key, watched) -> None:
        with self._lock:
            entry = self._recent.get(key)
            if entry is not None and entry[2] is watched:
                self._recent[key] = entry[:2] + (None, None)
        self._watch.disarm(key[0], key[1])
        if entry is not None:
            self.kept.release([entry[0]])  # no longer proven unchanged: keep it no longer

    def _remember(self, key: tuple[int, int], entry: tuple) -> None:
        unwatch = []
        unkeep = []  # names the store may have kept that no entry remembers any more
        with self._lock:
            old = self._recent.get(key)
            if old is not None and old[2] is not None and old[2] is not entry[2]:
                unwatch.append(key)
            if old is not None and old[0] != entry[0]:
                unkeep.append(old[0])
            self._recent[key] = entry
            self._recent.move_to_end(key)
            while len(self._recent) > _RECENT_WRITES:
                evicted, (name, _, watched, _) = self._recent.popitem(last=False)
                unkeep.append(name)
                if watched is not None:
                    unwatch.append(evicted)
            while self._dead_owners:  # owners gone: their memory may be reused by anyone
                dead = self._dead_owners.pop()
                for found, (name, _, watched, _) in list(self._recent.items()):
                    if watched is dead:
                        self._recent[found] = self._recent[found][:2] + (None, None)
                        unwatch.append(found)
                        unkeep.append(name)
        for address, nbytes in unwatch:
            self._watch.disarm(address, nbytes)
        self.kept.release(unkeep)

    def close(self) -> None:
        """Stop watching buffers (and close the fds that takes) and unlink what the store kept; the
        store stays usable."""
        with self._lock:
            self._recent.clear()
        self._watch.close()
        self.kept.release_all_now()

    def _link_if_same(
        self, previous: str, view: memoryview, checksum: bool, spans
    ) -> tuple[SharedBuffer | None, int | None]:
        """A new name for segment ``previous`` if it still exists and holds exactly ``view``'s bytes.

        ``spans``: the only ``(start, end)`` address ranges that may differ (None: all of it). With
        ``checksum``, also the checksum of the bytes, taken during the comparison (one read).
        """
        name = self._new_name()
        path = os.path.join(SHM_DIR, name)
        try:
            # Link first: the new name pins the data even if the scheduler unlinks ``previous`` right now.
            os.link(os.path.join(SHM_DIR, previous), path, follow_symlinks=False)
        except OSError:
            return None, None  # already unlinked (its key was forgotten): write afresh
        try:
            if os.lstat(path).st_size == view.nbytes:
                same, crc = _same_bytes(view, path, checksum, spans)
                if same:
                    return SharedBuffer(name, view.nbytes), crc
        except OSError:
            pass
        _unlink_quietly(path)  # the source changed in place since: this name holds stale bytes
        return None, None


def _write_new_file(path: str, view: memoryview, checksum: bool = False) -> int | None:
    """Write ``view`` into a new file at ``path``; with ``checksum``, return the checksum of the data.

    The checksum is taken chunk by chunk right after each chunk is written, while the chunk is still
    in the CPU's cache: the buffer is read from memory once, not once to write and once to hash.
    """
    nbytes = view.nbytes
    stats = os.statvfs(SHM_DIR)
    if stats.f_bavail * stats.f_frsize < nbytes:
        # Refuse early rather than fill /dev/shm to the brim and fail half-way.
        raise OSError(errno.ENOSPC, f"{SHM_DIR} has less than {nbytes} bytes free", SHM_DIR)
    flags = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_WRONLY | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    crc = CHECKSUM_START if checksum else None
    chunk = _SUMMED_CHUNK if checksum else _WRITE_CHUNK
    try:
        written = 0
        while written < nbytes:
            count = os.write(fd, view[written : written + chunk])
            if crc is not None:
                crc = buffer_checksum(view[written : written + count], crc)
            written += count
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    return crc


def _seen(owner, nbytes: int):
    """A weak reference to the owner of a buffer large enough to be watched if it comes again."""
    if nbytes < _WATCH_MIN:
        return None
    try:
        return weakref.ref(owner)
    except TypeError:
        return None  # bytes and the like


def _exists(name: str) -> bool:
    return os.path.lexists(os.path.join(SHM_DIR, name))


def _address_key(view: memoryview) -> tuple[int, int] | None:
    """(address, length) of a buffer, or None when it cannot be had cheaply (no NumPy loaded)."""
    numpy = sys.modules.get("numpy")
    if numpy is None or _memcmp is None or view.nbytes == 0:
        return None
    return (numpy.frombuffer(view, numpy.uint8).ctypes.data, view.nbytes)


def _load_memcmp():
    try:
        func = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError):
        return None
    func.restype = ctypes.c_int
    func.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return func  # ctypes releases the GIL for the duration of the call


_memcmp = _load_memcmp()


def _same_bytes(view: memoryview, path: str, checksum: bool, spans) -> tuple[bool, int | None]:
    """Whether the file holds ``view``'s bytes; with ``checksum``, the checksum of the bytes too.

    ``spans``: the only address ranges of ``view`` that may differ (None: compare everything).
    Compared chunk by chunk, each chunk hashed while it is in cache, so the buffer is read once.
    """
    numpy = sys.modules["numpy"]
    here = numpy.frombuffer(view, numpy.uint8).ctypes.data
    if spans is not None:
        if spans:  # (no span: nothing written since the segment was made, no need to map it)
            mapped = open_segment(os.path.basename(path), view.nbytes)
            there = numpy.frombuffer(mapped, numpy.uint8).ctypes.data
            for start, end in spans:
                if _memcmp(start, there + (start - here), end - start) != 0:
                    return False, None
        return True, (buffer_checksum(view) if checksum else None)
    mapped = open_segment(os.path.basename(path), view.nbytes)
    there = numpy.frombuffer(mapped, numpy.uint8).ctypes.data
    if not checksum:
        return _memcmp(here, there, view.nbytes) == 0, None
    crc = CHECKSUM_START
    for start in range(0, view.nbytes, _SUMMED_CHUNK):
        count = min(_SUMMED_CHUNK, view.nbytes - start)
        if _memcmp(here + start, there + start, count) != 0:
            return False, None
        crc = buffer_checksum(view[start : start + count], crc)
    return True, crc


def open_segment(name: str, nbytes: int, offset: int = 0, pooled: bool = False) -> memoryview:
    """Map ``nbytes`` bytes at ``offset`` of segment ``name``: a read-only memoryview, no copy.

    The mapping is released when the last view or array built on it is garbage-collected; nothing here
    ever closes it explicitly, so no BufferError can arise. It stays valid after the name is unlinked.
    Raises FileNotFoundError (naming the segment) if the segment is gone, PermissionError if the name is
    a symbolic link or a file that is not this user's (someone else put it there).

    A ``pooled`` segment (``comm/shm_pool.py``) is locked (``flock``, shared) before it is mapped, and
    the lock is held, with its descriptor, until the mapping is garbage-collected: its writer never
    writes it again while any view of it lives. Past ``_POOLED_MAPPINGS_MAX`` such mappings in one
    process, a reader copies the bytes instead (under the lock), so descriptors stay bounded.
    """
    _check_name(name)
    if nbytes == 0:
        return memoryview(b"")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    path = os.path.join(SHM_DIR, name)
    fd = open_for_reading(name, path)
    if pooled:
        return _open_pooled(fd, name, path, nbytes, offset, start)
    try:
        _check_owner(fd, name, path)
        mapping = mmap.mmap(fd, offset - start + nbytes, prot=mmap.PROT_READ, offset=start)
    finally:
        os.close(fd)
    return memoryview(mapping)[offset - start : offset - start + nbytes]


def open_for_reading(name: str, path: str) -> int:
    """A read-only descriptor of segment ``name`` at ``path``: FileNotFoundError naming it if it is
    gone, PermissionError if the name is a symbolic link. The caller checks the owner (``fstat``)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            f"shared-memory segment {name!r} no longer exists: it was unlinked before this reader opened "
            "it (its value was released, or its cluster closed)",
            path,
        ) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise PermissionError(
            errno.EPERM, f"refusing shared-memory segment {name!r}: it is a symbolic link", path
        ) from None


# pooled mappings (each holding a descriptor) one process keeps at most: a quarter of its descriptors
_POOLED_MAPPINGS_MAX = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
_pooled_descriptors: set[int] = set()  # those descriptors (set.add/discard: safe in a finalizer)


def _open_pooled(fd: int, name: str, path: str, nbytes: int, offset: int, start: int) -> memoryview:
    try:
        _check_owner(fd, name, path)
        lock_for_reading(fd, name, path)
        if len(_pooled_descriptors) >= _POOLED_MAPPINGS_MAX:
            copy = bytearray(nbytes)
            done = 0
            while done < nbytes:
                count = os.preadv(fd, [memoryview(copy)[done:]], offset + done)
                if count <= 0:
                    raise OSError(errno.EIO, f"shared-memory segment {name!r} is too short")
                done += count
            os.close(fd)  # and so the lock: the copy is ours
            return memoryview(copy).toreadonly()
        mapping = mmap.mmap(fd, offset - start + nbytes, prot=mmap.PROT_READ, offset=start)
    except BaseException:
        os.close(fd)
        raise
    # the lock lives as long as the mapping: the finalizer runs once its last view is gone
    _pooled_descriptors.add(fd)
    weakref.finalize(mapping, _close_pooled, fd)
    return memoryview(mapping)[offset - start : offset - start + nbytes]


def _close_pooled(fd: int) -> None:
    _pooled_descriptors.discard(fd)
    os.close(fd)


def lock_for_reading(fd: int, name: str, path: str) -> None:
    """Take a shared lock on a pooled segment opened as ``fd`` and check that ``name`` still leads
    to that very file: FileNotFoundError if its writer recycled it meanwhile (``comm/shm_pool.py``)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _recycled(name, path) from None  # its writer is rewriting it under another name
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise _recycled(name, path) from None
    mine = os.fstat(fd)
    if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
        raise _recycled(name, path)


def _recycled(name: str, path: str) -> FileNotFoundError:
    return FileNotFoundError(
        errno.ENOENT,
        f"shared-memory segment {name!r} no longer exists: its value was released and its writer "
        "recycled the segment",
        path,
    )


def _check_owner(fd: int, name: str, path: str) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(
            errno.EPERM,
            f"refusing shared-memory segment {name!r}: it is not a regular file of this user "
            f"(uid {info.st_uid}); another user may have created it",
            path,
        )
    return info


def _check_holds(info: os.stat_result, name: str, end: int) -> None:
    """ValueError unless the segment (``info``: its ``fstat``) holds ``end`` bytes, as its handle says."""
    if info.st_size < end:
        raise ValueError(
            f"shared-memory segment {name!r} holds {info.st_size} bytes, not the {end} its handle names"
        )
