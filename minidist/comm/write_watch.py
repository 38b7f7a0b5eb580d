"""Which pages of a buffer were written since a given moment, asked of the kernel in microseconds.

Data flow::

    SegmentStore, a buffer passed again      WriteWatch                              Linux
    arm(address, nbytes) ─────────────────► userfaultfd: register the pages, ────► write-protect (async:
                                             write-protect them                     a write just clears
    written(address, nbytes) ─────────────► PAGEMAP_SCAN on /proc/self/pagemap ◄── the page's mark)
      └─ the (start, end) ranges written since, clipped to the buffer; those pages are protected again

This is what lets the store re-use a segment for an array passed to many tasks without comparing all
its bytes each time: only the pages written since the segment was made need comparing (usually none).
It uses the kernel's asynchronous write-protect mode for userfaultfd (``UFFD_FEATURE_WP_ASYNC``, Linux 6.7,
and ``UFFD_USER_MODE_ONLY``, which needs no privilege): a write to a protected page is resolved in the
kernel by lifting the protection, no thread of ours is involved, and ``PAGEMAP_SCAN`` reports the
pages whose protection was lifted. Nothing else about the process changes: no signal handler, and the
first write to each watched page costs one minor fault (about 2 us). Without kernel support (older
kernels, other systems, a seccomp filter) ``arm`` returns False and the store compares bytes as before.

What the answer proves: every write through this process's page tables to a watched page is reported,
whoever makes it (Python, NumPy, C code, another thread, ``read()`` into the buffer, another process
through ``process_vm_writev``). Only private anonymous memory is watched (heap, ``mmap`` without a file,
checked in ``/proc/self/maps``: the kernel would register any memory in this mode), so pages that
another mapping or a file could change are never trusted. If the memory is unmapped
(the buffer was freed) the watch is gone, and ``written`` answers None ("unknown"); pages thrown away
without a write (``madvise(MADV_DONTNEED)`` on live memory: they read back as zeros) are reported as
written. The store also watches only buffers whose owner it holds a weak reference to and finds
alive, so their memory cannot have been freed and given to another object (see ``SegmentStore``).
"""

from __future__ import annotations

import collections
import ctypes
import os
import platform
import sys
import threading
import weakref

from minidist.keys import buffer_checksum

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_SYSCALL_USERFAULTFD = {"x86_64": 323, "aarch64": 282}.get(platform.machine())
_USER_MODE_ONLY = 1  # UFFD_USER_MODE_ONLY: faults from user space only; allowed without privilege


def _iowr(kind: int, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | number


def _ior(kind: int, number: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (kind << 8) | number


# linux/userfaultfd.h and linux/fs.h
_UFFDIO_API = _iowr(0xAA, 0x3F, 24)
_UFFDIO_REGISTER = _iowr(0xAA, 0x00, 32)
_UFFDIO_UNREGISTER = _ior(0xAA, 0x01, 16)
_UFFDIO_WRITEPROTECT = _iowr(0xAA, 0x06, 24)
_UFFD_API = 0xAA
_FEATURE_WP_UNPOPULATED = 1 << 13
_FEATURE_WP_ASYNC = 1 << 15
_REGISTER_MODE_WP = 1 << 1
_WRITEPROTECT_MODE_WP = 1 << 0
_PAGEMAP_SCAN = _iowr(0x66, 16, 96)
_SCAN_WP_MATCHING = 1 << 0  # protect again the pages it reports
_SCAN_CHECK_WPASYNC = 1 << 1  # fail (EPERM) unless the whole range is watched
_PAGE_IS_WRITTEN = 1 << 1
_PAGE_IS_PRESENT = 1 << 3
_PAGE_IS_SWAPPED = 1 << 4
_MAX_RANGES = 64  # more written ranges than this: the caller compares everything


def _load_libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        libc.ioctl.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_libc = _load_libc() if _SYSCALL_USERFAULTFD is not None else None


class WriteWatch:
    """Watches buffers of this process for writes. Thread-safe; :meth:`close` releases its two fds."""

    def __init__(self):
        self._lock = threading.Lock()
        self._uffd: int | None = None
        self._pagemap: int | None = None
        self._broken = _libc is None  # no kernel support (or closed): every arm() says False

    def _open(self) -> bool:
        """Open the userfaultfd and /proc/self/pagemap on first use; False if the kernel says no."""
        if self._uffd is not None:
            return True
        if self._broken or _libc is None:
            return False
        flags = os.O_CLOEXEC | os.O_NONBLOCK | _USER_MODE_ONLY
        uffd = _libc.syscall(_SYSCALL_USERFAULTFD, flags)
        if uffd < 0:
            self._broken = True
            return False
        api = (ctypes.c_uint64 * 3)(_UFFD_API, _FEATURE_WP_ASYNC | _FEATURE_WP_UNPOPULATED, 0)
        try:
            if _libc.ioctl(uffd, _UFFDIO_API, ctypes.addressof(api)) != 0:
                raise OSError(ctypes.get_errno(), "UFFDIO_API")
            pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(uffd)
            self._broken = True
            return False
        self._uffd, self._pagemap = uffd, pagemap
        return True

    def arm(self, address: int, nbytes: int) -> bool:
        """Start watching the pages of ``[address, address + nbytes)``; False if that is impossible."""
        start, end = _pages(address, nbytes)
        libc = _libc
        with self._lock:
            if libc is None or not self._open() or not _private_anonymous(start, end):
                return False
            register = (ctypes.c_uint64 * 4)(start, end - start, _REGISTER_MODE_WP, 0)
            if libc.ioctl(self._uffd, _UFFDIO_REGISTER, ctypes.addressof(register)) != 0:
                return False  # refused (e.g. watched by someone else's userfaultfd)
            protect = (ctypes.c_uint64 * 3)(start, end - start, _WRITEPROTECT_MODE_WP)
            if libc.ioctl(self._uffd, _UFFDIO_WRITEPROTECT, ctypes.addressof(protect)) != 0:
                self._unregister(start, end)
                return False
            return True

    def written(self, address: int, nbytes: int) -> list[tuple[int, int]] | None:
        """The ``(start, end)`` address ranges of the buffer written since :meth:`arm` or the last call.

        Those pages are protected again before this returns, so a write after it is seen next time.
        Pages that are no longer there at all (neither in memory nor in swap: thrown away by
        ``madvise``, which reads back as zeros) count as written too. None if the buffer is no longer
        (entirely) watched, or was written in too many places.
        """
        start, end = _pages(address, nbytes)
        with self._lock:
            if self._pagemap is None:
                return None
            written = self._scan(start, end, _SCAN_WP_MATCHING, 0, _PAGE_IS_WRITTEN)
            if written is None:
                return None
            # both bits inverted, both required: pages neither present nor swapped
            gone = _PAGE_IS_PRESENT | _PAGE_IS_SWAPPED
            dropped = self._scan(start, end, 0, gone, gone)
        if dropped is None:
            return None
        limit = address + nbytes
        return [(max(low, address), min(high, limit)) for low, high in sorted(written + dropped)]

    def _scan(self, start: int, end: int, flags: int, inverted: int, mask: int):
        """PAGEMAP_SCAN: the page ranges in ``[start, end)`` whose categories match; None on failure."""
        if _libc is None:
            return None
        regions = (ctypes.c_uint64 * (3 * _MAX_RANGES))()
        scan = (ctypes.c_uint64 * 12)(
            96,  # size of the struct
            flags | _SCAN_CHECK_WPASYNC,
            start,
            end,
            0,  # walk_end (out)
            ctypes.addressof(regions),
            _MAX_RANGES,
            0,  # max_pages: no limit
            inverted,  # category_inverted
            mask,  # category_mask: all of these
            0,  # category_anyof_mask
            mask,  # return_mask
        )
        found = _libc.ioctl(self._pagemap, _PAGEMAP_SCAN, ctypes.addressof(scan))
        if found < 0 or scan[4] < end:  # an error, or the walk stopped early (regions full)
            return None
        return [(regions[3 * i], regions[3 * i + 1]) for i in range(found)]

    def disarm(self, address: int, nbytes: int) -> None:
        """Stop watching (errors ignored: the memory may be unmapped already)."""
        start, end = _pages(address, nbytes)
        with self._lock:
            if self._uffd is not None:
                self._unregister(start, end)

    def _unregister(self, start: int, end: int) -> None:
        span = (ctypes.c_uint64 * 2)(start, end - start)
        assert _libc is not None and self._uffd is not None
        _libc.ioctl(self._uffd, _UFFDIO_UNREGISTER, ctypes.addressof(span))

    def close(self) -> None:
        """Close the fds: every watch ends (the kernel unregisters all), none starts again. Idempotent."""
        with self._lock:
            self._broken = True
            for fd in (self._uffd, self._pagemap):
                if fd is not None:
                    os.close(fd)
            self._uffd = self._pagemap = None


def _private_anonymous(start: int, end: int) -> bool:
    """Whether every page of ``[start, end)`` is mapped private and anonymous (no file behind it)."""
    covered = start
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, perms, _offset, _device, inode = line.split(None, 5)[:5]
                low, high = (int(x, 16) for x in span.split("-"))
                if high <= covered or low >= end:
                    continue
                if low > covered or perms[3] != "p" or inode != "0":
                    return False  # a hole, a shared mapping, or a file's pages
                covered = high
                if covered >= end:
                    return True
    except (OSError, ValueError):
        pass
    return False


def _pages(address: int, nbytes: int) -> tuple[int, int]:
    """The page-aligned span that holds ``[address, address + nbytes)``."""
    start = address - address % _PAGE
    end = -(-(address + nbytes) // _PAGE) * _PAGE
    return start, end


class ChecksumCache:
    """Checksums (``keys.buffer_checksum``) of large buffers (pure task keys), kept while the kernel
    watches them for writes.

    For thread workers, whose arguments are never written anywhere: the same array passed to many
    pure ``submit``s is hashed on its first two passes (the second one starts the watch, before
    hashing, so a write during the hash is seen), then only if a page was written since. The rules
    are the store's (``SegmentStore._reuse``): only the very owner object watched, while alive; a
    buffer found changed stops being watched. Thread-safe; :meth:`close` ends every watch.
    """

    def __init__(self, minimum: int = 16 << 20, entries: int = 64):
        self.minimum = minimum
        self._capacity = entries
        self._watch = WriteWatch()
        self._lock = threading.Lock()
        # (address, nbytes) -> (crc, weak reference to the owner, watched?)
        self._entries: collections.OrderedDict[tuple[int, int], tuple] = collections.OrderedDict()

    def checksum(self, view: memoryview) -> int:
        numpy = sys.modules.get("numpy")
        if view.nbytes < self.minimum or numpy is None:
            return buffer_checksum(view)
        key = (numpy.frombuffer(view, numpy.uint8).ctypes.data, view.nbytes)
        owner = view.obj
        with self._lock:  # one at a time: a scan protects again the pages it reports
            entry = self._entries.pop(key, None)
            if entry is not None and entry[1]() is not owner:
                if entry[2]:
                    self._watch.disarm(*key)
                entry = None
            if entry is None:
                try:
                    ref = weakref.ref(owner)
                except TypeError:
                    return buffer_checksum(view)  # bytes and the like: hashed every time
                crc = buffer_checksum(view)
                self._keep(key, (crc, ref, False))
                return crc
            before, ref, watched = entry
            if watched:
                changed = self._watch.written(*key)
                if changed == []:
                    self._keep(key, entry)
                    return before
                self._watch.disarm(*key)  # changed (or no longer watched): stop watching
                crc = buffer_checksum(view)
                self._keep(key, (crc, ref, False))
                return crc
            # the second pass: watch first, then hash (a write during the hash is seen next time)
            watched = self._watch.arm(*key)
            crc = buffer_checksum(view)
            if watched and crc != before:
                self._watch.disarm(*key)  # it is being changed between passes: do not watch
                watched = False
            self._keep(key, (crc, ref, watched))
            return crc

    def _keep(self, key, entry) -> None:
        self._entries[key] = entry
        while len(self._entries) > self._capacity:
            old, (_, _, watched) = self._entries.popitem(last=False)
            if watched:
                self._watch.disarm(*old)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
        self._watch.close()
