"""Segment names, unlinking, and the sweeps that remove segments whose owners are gone.

Data flow::

    scheduler frees a value ──► SegmentJanitor.unlink(names) ──► its thread: os.unlink in /dev/shm
    cluster closes          ──► sweep_cluster(cluster_id)     ──► every segment of the cluster
    a worker died           ──► sweep_process(cluster, pid)   ──► what it wrote and nobody kept
    a new cluster starts    ──► sweep_orphans()               ──► segments of dead clusters

A segment is named ``minidist_<cluster_id>_<writer pid>_<counter>-<random>`` (``comm/shm.py`` writes
them). Everything here considers only regular files owned by this user: another user's file with a
minidist name (or a symbolic link) is never listed, unlinked or swept, and never makes a sweep fail.
``minidist.comm.shm`` re-exports these names, the way callers reach them.
"""

from __future__ import annotations

import os
import queue
import re
import stat
import threading
from typing import Iterable, NamedTuple

SEGMENT_PREFIX = "minidist_"
SHM_DIR = "/dev/shm"

_OWNED_CLUSTER_ID = re.compile(
    r"(\d+)-[0-9a-f]+\Z"
)  # what new_cluster_id() makes: "<owner pid>-<hex>"


class SegmentInfo(NamedTuple):
    """A segment name split into its parts."""

    name: str
    cluster_id: str
    pid: int
    counter: int


def _check_name(name: str) -> None:
    if not name.startswith(SEGMENT_PREFIX) or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a minidist segment name")


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
    except (FileNotFoundError, PermissionError):
        return False  # already gone, or (sticky /dev/shm) another user's: never ours to remove
    return True


def file_unlinked(fd: int) -> bool:
    """Whether the file open as ``fd`` has no name left (its last link is gone, or fd is unusable):
    a mapping kept of it only holds memory nobody can name again."""
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
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

    :meth:`unlink` is safe in a weakref callback once :meth:`start` ran (``comm/shm_kept.py`` calls
    it from one): such a callback may run inside any code of any thread, this class's own and
    ``threading``'s included, so it must neither wait for a lock nor start a thread. Names go through a
    ``queue.SimpleQueue`` (re-entrant by design) to the thread already running. (Without ``start``,
    the thread is started under a lock taken without waiting: whoever holds it starts the thread, or
    closes, and that drains the queue.)
    """

    def __init__(self, thread_name: str = "minidist-shm-janitor"):
        self.thread_name = thread_name
        self._pending: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # None: stop
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def unlink(self, names: Iterable[str]) -> None:
        """Queue these segments for unlinking (or unlink them now if the janitor is closed)."""
        names = list(names)
        for name in names:
            _check_name(name)
        if not names:
            return
        if self._closed:
            unlink_segments(names)
            return
        for name in names:
            self._pending.put(name)
        if self._thread is None:
            self._start(blocking=False)
        if self._closed:  # close() may have drained the queue just before our names went in
            self._drain()

    def start(self) -> None:
        """Start the thread now (if it is not running and the janitor is open), so that a later
        :meth:`unlink` from a weakref callback only queues."""
        if self._thread is None:
            self._start(blocking=True)

    def _start(self, blocking: bool) -> None:
        if not self._start_lock.acquire(blocking=blocking):
            return  # whoever holds it starts the thread (or closes, and drains)
        try:
            if self._thread is None and not self._closed:
                thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                thread.start()
                self._thread = thread
        finally:
            self._start_lock.release()

    def _run(self) -> None:
        pending = self._pending
        while True:
            name = pending.get()
            if name is None:
                return
            _unlink_quietly(os.path.join(SHM_DIR, name))

    def _drain(self) -> None:
        while True:
            try:
                name = self._pending.get_nowait()
            except queue.Empty:
                return
            if name is not None:
                _unlink_quietly(os.path.join(SHM_DIR, name))

    def close(self) -> None:
        """Unlink what is still queued, stop the thread. Idempotent."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._pending.put(None)
            thread.join()
        self._drain()  # a thread that never started (or a join from the thread itself)


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
