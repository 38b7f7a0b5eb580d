"""Reading the frames of a worker's pipe with one system call for each batch of small frames.

The scheduler and each process worker talk over a socket pair wrapped in ``multiprocessing``'s
``Connection``, whose frame is a 4-byte big-endian length (-1 and then an 8-byte length for frames of
2 GiB and more) followed by that many bytes. ``Connection.recv_bytes`` reads the length and the body
with two system calls and copies each through an ``io.BytesIO``: on a round trip of one tiny task that
is two of its four reads. ``FrameReader`` reads whatever has arrived (up to ``CHUNK`` bytes) with one
call and cuts frames out of it, so a small frame costs one read and frames that arrived together cost
one read for all of them; the body of a larger frame is read straight into its own buffer. Senders
write the same frames with ``write_frame``: a small frame's length and body in one system call, without
``Connection.send_bytes``' layers of Python calls (the bytes on the wire do not change)::

    socket ──os.read(CHUNK)──► buffer ──recv_bytes()──► one frame (bytes)
                                  └── has_frame(): a whole frame is already here (a selector that
                                      watches the socket will not say so: read it now)

One thread reads at a time: the scheduler thread, or in a worker the task thread that receives (its
reader waits in ``poll`` for data before it reads: see ``FrameReader.__init__``).
"""

from __future__ import annotations

import os
import select
import struct

CHUNK = 64 * 1024  # bytes asked for per read: a batch of small frames fits
SMALL_FRAME = 64 * 1024  # frames up to this size go out as one write of length and body
_SIZE = struct.Struct("!i")
_LARGE_SIZE = struct.Struct("!Q")  # after a size of -1: frames of 2 GiB and more


class FrameReader:
    """The frames arriving on file descriptor ``fd`` (a ``multiprocessing`` Connection's socket)."""

    __slots__ = ("_fd", "_buffer", "_readable")

    def __init__(self, fd: int, blocking: bool = False):
        self._fd = fd
        self._buffer = b""  # bytes read and not yet handed out (the start of the next frames)
        # A reader that blocks in read() (a worker) first waits in poll() until data is there. A
        # thread asleep in a socket pair's read() is also woken each time the peer reads what this end
        # sent (the kernel wakes one queue for "data here" and "room to write"), and goes back to sleep:
        # in a chain of tasks that was ~0.3 extra sleeps and wake-ups a task. poll() wakes for data only.
        self._readable = None
        if blocking and hasattr(select, "poll"):
            self._readable = select.poll()
            self._readable.register(fd, select.POLLIN)

    def has_frame(self) -> bool:
        """Whether a whole frame was already read (``recv_bytes`` returns it without a read)."""
        buffer = self._buffer
        if len(buffer) < 4:
            return False
        (size,) = _SIZE.unpack_from(buffer)
        return 0 <= size <= len(buffer) - 4

    def recv_bytes(self) -> bytes:
        """The next frame (a bytearray if it is larger than ``CHUNK``); blocks until it is whole.
        EOFError if the peer closed the pipe between frames, OSError if in the middle of one (or if
        the descriptor is closed)."""
        buffer = self._buffer
        if not buffer:  # the common case: nothing left over, a small frame comes in one read
            if self._readable is not None:
                self._readable.poll()
            buffer = os.read(self._fd, CHUNK)
            if not buffer:
                raise EOFError
            self._buffer = buffer
        if len(buffer) >= 4:
            (size,) = _SIZE.unpack_from(buffer)
            if 0 <= size <= len(buffer) - 4:
                self._buffer = buffer[4 + size :]
                return buffer[4 : 4 + size]
        return self._read_frame()

    def _read_more(self, buffer: bytes) -> bytes:
        data = os.read(self._fd, CHUNK)
        if not data:
            if buffer:
                raise OSError("got end of file during message")
            raise EOFError
        return buffer + data if buffer else data

    def _read_frame(self) -> bytes:
        buffer = self._buffer
        while len(buffer) < 4:
            buffer = self._read_more(buffer)
        (size,) = _SIZE.unpack_from(buffer)
        header = 4
        if size == -1:
            while len(buffer) < 12:
                buffer = self._read_more(buffer)
            (size,) = _LARGE_SIZE.unpack_from(buffer, 4)
            header = 12
        elif size < 0:
            raise OSError(f"bad frame size {size}")
        end = header + size
        if end - len(buffer) < CHUNK:  # the rest comes in a read or two: keep what follows it
            while len(buffer) < end:
                buffer = self._read_more(buffer)
            self._buffer = buffer[end:]
            return buffer[header:end]
        # a large frame: read its body in place, and not a byte beyond it
        self._buffer = b""
        body = bytearray(size)
        have = len(buffer) - header
        body[:have] = buffer[header:]
        view = memoryview(body)
        while have < size:
            n = os.readv(self._fd, [view[have:]])
            if n == 0:
                raise OSError("got end of file during message")
            have += n
        view.release()
        return body  # type: ignore[return-value]  # bytes-like: pickle reads it without a copy


def write_frame(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` (a blocking socket) as one frame in ``Connection``'s format. A small
    frame goes in one write of length and body; a larger one as its length, then the body itself (no
    copy into a joint buffer), with the 8-byte length past 2 GiB. Callers that share ``fd`` between
    threads hold a lock around it."""
    size = len(data)
    if size <= SMALL_FRAME:
        _write_all(fd, _SIZE.pack(size) + data)
    else:
        if size < 0x7FFFFFFF:
            header = _SIZE.pack(size)
        else:
            header = _SIZE.pack(-1) + _LARGE_SIZE.pack(size)
        _write_all(fd, header)
        _write_all(fd, data)


def _write_all(fd: int, data) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a full socket buffer took part of it
        view = memoryview(data)
        while written < len(data):
            written += os.write(fd, view[written:])
