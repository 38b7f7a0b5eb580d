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
  :func:`sweep_cluster` runs when the cluster closes;
  :func:`sweep_orphans` cleans up after processes that were killed.
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
import itertools
import mmap
import os
import re
import secrets
import stat
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Iterable, NamedTuple, cast

SEGMENT_PREFIX = "minidist_"
SHM_DIR = "/dev/shm"

_CLUSTER_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")
_OWNED_CLUSTER_ID = re.compile(
    r"(\d+)-[0-9a-f]+\Z"
)  # what new_cluster_id() makes: "<owner pid>-<hex>"
_RANDOM_HEX = 8  # hex digits of randomness in every segment name
_WRITE_CHUNK = 1 << 30  # Linux writes at most ~2 GiB per call; stay well below
_SUMMED_CHUNK = 2 << 20  # written then hashed while still in cache (see _write_new_file)
_RECENT_WRITES = 64  # how many (address, length) -> segment entries a store remembers for re-use


@dataclass(frozen=True)
class SharedBuffer:
    """A handle to ``nbytes`` bytes at ``offset`` in the segment ``name``: what travels instead of data."""

    name: str
    nbytes: int
    offset: int = 0

    def __reduce__(self):
        # Compact and version-proof pickling: it crosses a pipe for every large value.
        return (SharedBuffer, (self.name, self.nbytes, self.offset))


class SegmentInfo(NamedTuple):
    """A segment name split into its parts."""

    name: str
    cluster_id: str
    pid: int
    counter: int


def new_cluster_id() -> str:
    """A fresh cluster id that records this process as the cluster's owner (see :func:`sweep_orphans`)."""
    return f"{os.getpid()}-{secrets.token_hex(6)}"


class SegmentStore:
    """Writes buffers into shared-memory segments for one cluster, in one process.

    Thread-safe. Holds no file descriptors or mappings, so it needs no closing. When the same buffer
    (same address and length) is written again with unchanged content, the store gives the new handle a
    hard link to the segment already written instead of copying the data again: each handle has its own
    name, so unlinking one never breaks another.
    """

    def __init__(self, cluster_id: str, threshold: int = 64 * 1024):
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
        # (address, length) of a recently written buffer -> (segment name, CRC-32 of it or None)
        self._recent: collections.OrderedDict[tuple[int, int], tuple] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"SegmentStore(cluster_id={self.cluster_id!r}, threshold={self.threshold})"

    def _new_name(self) -> str:
        # The pid is read each time so that names stay truthful if a store is used after a fork.
        random_part = secrets.token_hex(_RANDOM_HEX // 2)
        return (
            f"{SEGMENT_PREFIX}{self.cluster_id}_{os.getpid()}_{next(self._counter)}-{random_part}"
        )

    def write(self, data) -> SharedBuffer:
        """Copy ``data`` (any contiguous buffer) into a new segment; raise OSError if /dev/shm cannot take it.

        On failure nothing is left behind in /dev/shm.
        """
        return self._write(data, checksum=False)[0]

    def write_summed(self, data) -> tuple[SharedBuffer, int]:
        """:meth:`write`, plus the CRC-32 of the data (for content-based task keys).

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
        if key is not None:
            with self._lock:
                previous = self._recent.get(key)
            if previous is not None:
                # the linked segment holds exactly these bytes: its checksum, if known, is theirs
                need_crc = checksum and previous[1] is None
                ref, crc = self._link_if_same(previous[0], view, need_crc)
                if ref is not None:
                    crc = previous[1] if previous[1] is not None else crc
                    self._remember(key, ref.name, crc)
                    return ref, crc
        name = self._new_name()
        crc = _write_new_file(os.path.join(SHM_DIR, name), view, checksum)
        if key is not None:
            self._remember(key, name, crc)
        return SharedBuffer(name, view.nbytes), crc

    def _remember(self, key: tuple[int, int], name: str, crc: int | None) -> None:
        with self._lock:
            self._recent[key] = (name, crc)
            self._recent.move_to_end(key)
            while len(self._recent) > _RECENT_WRITES:
                self._recent.popitem(last=False)

    def _link_if_same(
        self, previous: str, view: memoryview, checksum: bool
    ) -> tuple[SharedBuffer | None, int | None]:
        """A new name for segment ``previous`` if it still exists and holds exactly ``view``'s bytes.

        With ``checksum``, also the CRC-32 of the bytes, taken during the comparison (one read).
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
                same, crc = _same_bytes(view, path, checksum)
                if same:
                    return SharedBuffer(name, view.nbytes), crc
        except OSError:
            pass
        _unlink_quietly(path)  # the source changed in place since: this name holds stale bytes
        return None, None


def _write_new_file(path: str, view: memoryview, checksum: bool = False) -> int | None:
    """Write ``view`` into a new file at ``path``; with ``checksum``, return the CRC-32 of the data.

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
    crc = 0 if checksum else None
    chunk = _SUMMED_CHUNK if checksum else _WRITE_CHUNK
    try:
        written = 0
        while written < nbytes:
            count = os.write(fd, view[written : written + chunk])
            if crc is not None:
                crc = zlib.crc32(view[written : written + count], crc)
            written += count
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)
    return crc


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


def _same_bytes(view: memoryview, path: str, checksum: bool) -> tuple[bool, int | None]:
    """Whether the file holds ``view``'s bytes; with ``checksum``, the CRC-32 of the bytes too.

    Compared chunk by chunk, each chunk hashed while it is in cache, so the buffer is read once.
    """
    numpy = sys.modules["numpy"]
    mapped = open_segment(os.path.basename(path), view.nbytes)
    here = numpy.frombuffer(view, numpy.uint8).ctypes.data
    there = numpy.frombuffer(mapped, numpy.uint8).ctypes.data
    if not checksum:
        return _memcmp(here, there, view.nbytes) == 0, None
    crc = 0
    for start in range(0, view.nbytes, _SUMMED_CHUNK):
        count = min(_SUMMED_CHUNK, view.nbytes - start)
        if _memcmp(here + start, there + start, count) != 0:
            return False, None
        crc = zlib.crc32(view[start : start + count], crc)
    return True, crc


def open_segment(name: str, nbytes: int, offset: int = 0) -> memoryview:
    """Map ``nbytes`` bytes at ``offset`` of segment ``name``: a read-only memoryview, no copy.

    The mapping is released when the last view or array built on it is garbage-collected; nothing here
    ever closes it explicitly, so no BufferError can arise. It stays valid after the name is unlinked.
    Raises FileNotFoundError (naming the segment) if the segment is gone, PermissionError if the name is
    a symbolic link or a file that is not this user's (someone else put it there).
    """
    _check_name(name)
    if nbytes == 0:
        return memoryview(b"")
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
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
    try:
        _check_owner(fd, name, path)
        mapping = mmap.mmap(fd, offset - start + nbytes, prot=mmap.PROT_READ, offset=start)
    finally:
        os.close(fd)
    return memoryview(mapping)[offset - start : offset - start + nbytes]


def _check_owner(fd: int, name: str, path: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(
            errno.EPERM,
            f"refusing shared-memory segment {name!r}: it is not a regular file of this user "
            f"(uid {info.st_uid}); another user may have created it",
            path,
        )


def _check_name(name: str) -> None:
    if not name.startswith(SEGMENT_PREFIX) or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a minidist segment name")


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
    except (FileNotFoundError, PermissionError):
        return False  # already gone, or (sticky /dev/shm) another user's: never ours to remove
    return True


def unlink_segments(names: Iterable[str]) -> None:
    """Unlink each named segment; names already gone are ignored. Mappings in use stay valid."""
    for name in names:
        _check_name(name)
        _unlink_quietly(os.path.join(SHM_DIR, name))


_LAST_PART = re.compile(
    r"(\d+)(?:-[0-9a-f]+)?\Z"
)  # "<counter>-<random>" (older names: "<counter>")


def parse_segment_name(name: str) -> SegmentInfo | None:
    """Split ``minidist_<cluster_id>_<pid>_<counter>-<random>``; None for names that are not ours."""
    if not name.startswith(SEGMENT_PREFIX):
        return None
    parts = name[len(SEGMENT_PREFIX) :].rsplit("_", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    last = _LAST_PART.match(parts[2])
    if last is None:
        return None
    return SegmentInfo(name, parts[0], int(parts[1]), int(last.group(1)))


def list_segments(cluster_id: str | None = None) -> list[SegmentInfo]:
    """This user's minidist segments in /dev/shm (all of them, or only those of ``cluster_id``).

    Only regular files owned by this user count: another user's file (or a symbolic link) with a
    minidist name is neither listed nor ever swept.
    """
    try:
        entries = list(os.scandir(SHM_DIR))
    except FileNotFoundError:
        return []
    me = os.geteuid()
    found = []
    for entry in entries:
        info = parse_segment_name(entry.name)
        if info is None or (cluster_id is not None and info.cluster_id != cluster_id):
            continue
        try:
            status = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(status.st_mode) and status.st_uid == me:
            found.append(info)
    return found


class SegmentJanitor:
    """Unlinks segments on a thread of its own, so that whoever frees them never waits for it.

    Unlinking the last name of a tmpfs file gives its pages back to the system, which costs about 1 ms
    per 8 MB (30 ms for 200 MB): too long for the scheduler thread, which frees segments whenever a
    key is forgotten. :meth:`unlink` only queues the names (checked at once); the thread starts on
    first use and :meth:`close` unlinks whatever is still queued and joins it, so once ``close``
    returns every name handed over is gone. After ``close``, :meth:`unlink` unlinks at once.
    """

    def __init__(self, thread_name: str = "minidist-shm-janitor"):
        self.thread_name = thread_name
        self._pending: collections.deque[str] = collections.deque()
        self._wakeup = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    def unlink(self, names: Iterable[str]) -> None:
        """Queue these segments for unlinking (or unlink them now if the janitor is closed)."""
        names = list(names)
        for name in names:
            _check_name(name)
        if not names:
            return
        with self._wakeup:
            if not self._closed:
                self._pending.extend(names)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name=self.thread_name, daemon=True
                    )
                    self._thread.start()
                self._wakeup.notify()
                return
        unlink_segments(names)

    def _run(self) -> None:
        pending = self._pending
        while True:
            with self._wakeup:
                while not pending and not self._closed:
                    self._wakeup.wait()
                if not pending:
                    return  # closed, and nothing left
            while pending:
                _unlink_quietly(os.path.join(SHM_DIR, pending.popleft()))

    def close(self) -> None:
        """Unlink what is still queued, stop the thread. Idempotent."""
        with self._wakeup:
            self._closed = True
            thread = self._thread
            self._wakeup.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        while self._pending:  # a thread that never started (or a join from the thread itself)
            _unlink_quietly(os.path.join(SHM_DIR, self._pending.popleft()))


def _unlink_all(infos: Iterable[SegmentInfo]) -> int:
    return sum(_unlink_quietly(os.path.join(SHM_DIR, info.name)) for info in infos)


def sweep_cluster(cluster_id: str) -> int:
    """Unlink every segment of ``cluster_id``; returns how many were removed."""
    return _unlink_all(list_segments(cluster_id))


def sweep_process(cluster_id: str, pid: int, keep: Iterable[str] = ()) -> int:
    """Unlink the segments ``pid`` wrote for ``cluster_id``, except the names in ``keep``.

    For the scheduler after a worker died: it keeps the segments its keys still refer to and drops the
    rest (results the worker wrote but never reported).
    """
    kept = set(keep)
    return _unlink_all(i for i in list_segments(cluster_id) if i.pid == pid and i.name not in kept)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def sweep_orphans(cluster_id: str | None = None) -> int:
    """Unlink segments whose writing process is dead and whose cluster has no live owner.

    A cluster id made by :func:`new_cluster_id` names its owner process; while that process lives, its
    segments are kept even if the worker that wrote them died (the owner may still refer to them). For
    other cluster ids only the writer's pid is known, and a dead writer is enough. With ``cluster_id``,
    only that cluster's segments are considered.
    """
    alive: dict[int, bool] = {}

    def is_alive(pid: int) -> bool:
        if pid not in alive:
            alive[pid] = pid_alive(pid)
        return alive[pid]

    def orphaned(info: SegmentInfo) -> bool:
        if is_alive(info.pid):
            return False
        owner = _OWNED_CLUSTER_ID.match(info.cluster_id)
        return owner is None or not is_alive(int(owner.group(1)))

    return _unlink_all(i for i in list_segments(cluster_id) if orphaned(i))
