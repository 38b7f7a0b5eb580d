"""Which tasks a worker process is running right now, readable by the parent even after it dies.

When a worker process dies mid-task, the scheduler must blame the task that was running, not one that
had just finished: results are held back up to 2 ms to share a message (``runtime.REPORT_DELAY``), so a
task that crashes its worker at once would otherwise let the task before it take the blame. The parent
creates a small anonymous shared-memory file (``memfd``) per worker and passes its descriptor to the
child; each task thread writes a 64-bit token of the key it runs into its own slot when it starts and
zero when it ends. Writes are plain memory stores, so they cost nothing on the hot path and survive the
process's death. Where ``memfd_create`` is missing the board is absent and the scheduler falls back to
"the oldest queued tasks were the running ones".
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Optional
from zlib import adler32, crc32

SLOTS = 64  # task threads tracked per worker (threads + seceded tasks); beyond that, the fallback
_SLOT = struct.Struct("<Q")


def key_token(key) -> int:
    """A non-zero 64-bit token for a key, the same in every process: CRC-32 and Adler-32 of its repr
    (a fifth of a cryptographic hash's cost, on every task; tokens only tell running keys apart)."""
    data = repr(key).encode()
    return (crc32(data) << 32) | adler32(data) | 1


class RunningBoard:
    """One slot per task thread holding the token of the task it runs (0: idle)."""

    def __init__(self, fd: int):
        self._map = mmap.mmap(fd, SLOTS * _SLOT.size)

    @classmethod
    def create(cls) -> tuple[Optional[RunningBoard], Optional[int]]:
        """The parent's board and the descriptor to hand the child, or (None, None) if unsupported."""
        try:
            fd = os.memfd_create("minidist-running", 0)  # inheritable: passed with pass_fds
        except (AttributeError, OSError):
            return None, None
        os.ftruncate(fd, SLOTS * _SLOT.size)
        return cls(fd), fd

    def mark(self, slot: int, key) -> None:
        # the one definition of the token: the parent compares it with key_token of the keys it sent
        _SLOT.pack_into(self._map, slot * _SLOT.size, key_token(key))

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, 0)

    def tokens(self) -> set:
        return {value for (value,) in _SLOT.iter_unpack(self._map) if value}

    def close(self) -> None:
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass
