"""Framed byte streams over a socket, plain or TLS: the ``Connection`` that ``comm/tcp.py`` hands out.

A frame is an 8-byte big-endian length followed by that many bytes. ``send_bytes`` may be called from
any thread (a lock keeps frames whole); ``recv_bytes`` is meant for one reader thread per connection.

Why TLS reads are non-blocking: OpenSSL forbids using one SSL object from two threads at once, yet the
engine reads in one thread and writes from another. So every SSL call runs under a per-connection lock
on a non-blocking socket, and waiting for the socket (poll) happens outside the lock. Plain TCP sockets
are full duplex in the kernel and use ordinary blocking calls.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time

from minidist.errors import CommClosedError

DEFAULT_MAX_FRAME_SIZE = 1 << 30  # 1 GiB
_HEADER = struct.Struct("!Q")
_POLL_INTERVAL = 0.5  # waits wake up this often to notice close() from another thread
_TLS_CHUNK = 1 << 20  # bytes handed to one SSL_write
_SMALL_FRAME = 1 << 16  # below this, header and payload go out in a single send
_TIMEOUTS = (TimeoutError, socket.timeout)  # one class from Python 3.10 on, two before


class ProtocolError(ValueError):
    """The peer sent bytes that are not a valid frame (too large, truncated) or handshake message."""


# --- byte streams: the one place that differs between plain TCP and TLS ------------------------------


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


class _PlainStream:
    """A connected TCP socket used with blocking calls (with a timeout during the handshake)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def recv_into(self, view: memoryview, deadline: float | None) -> int:
        if deadline is not None:
            self.sock.settimeout(_remaining(deadline))
        return self.sock.recv_into(view)

    def sendall(self, data, deadline: float | None) -> None:
        if deadline is not None:
            self.sock.settimeout(_remaining(deadline))
        self.sock.sendall(data)

    def handshake_done(self) -> None:
        self.sock.settimeout(None)

    def close(self) -> None:
        _shutdown_and_close(self.sock)


class _TLSStream:
    """An SSLSocket driven non-blocking, every SSL call under one lock (see the module docstring)."""

    def __init__(self, sock: ssl.SSLSocket):
        self.sock = sock
        self.fd = sock.fileno()
        self.lock = threading.Lock()
        self.closed = False
        sock.setblocking(False)

    def _wait(self, events: int, deadline: float | None) -> None:
        left = _remaining(deadline)
        timeout = _POLL_INTERVAL if left is None else min(left, _POLL_INTERVAL)
        poller = select.poll()
        poller.register(self.fd, events)
        poller.poll(timeout * 1000)

    def _check_open(self) -> None:
        if self.closed:
            raise OSError("connection closed locally")

    def recv_into(self, view: memoryview, deadline: float | None) -> int:
        while True:
            with self.lock:
                self._check_open()
                try:
                    return self.sock.recv_into(view, len(view))
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
            self._wait(events, deadline)

    def sendall(self, data, deadline: float | None) -> None:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            # After a "want" error OpenSSL needs the very same chunk again, which this slice is.
            chunk = view[sent : sent + _TLS_CHUNK]
            with self.lock:
                self._check_open()
                try:
                    sent += self.sock.send(chunk)
                    continue
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                except ssl.SSLWantReadError:
                    events = select.POLLIN
            self._wait(events, deadline)

    def handshake_done(self) -> None:
        pass

    def close(self) -> None:
        with self.lock:
            self.closed = True
            _shutdown_and_close(self.sock)


def _shutdown_and_close(sock: socket.socket) -> None:
    # shutdown() first: it wakes a thread blocked in recv on this socket, close() alone would not.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# --- Connection ----------------------------------------------------------------------------------------


class _Closable:
    """``with`` support and the ``closed`` flag shared by Connection and Listener."""

    _closed = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed


class Connection(_Closable):
    """One authenticated, framed, bidirectional message stream. Made by ``connect`` and ``Listener``."""

    def __init__(self, stream, peer: str, local: str, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE):
        self._stream = stream
        self.peer = peer
        self.local = local
        self.max_frame_size = max_frame_size
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Connection {self.local} -> {self.peer} ({state})>"

    def send_bytes(self, data: bytes) -> None:
        """Send one frame. Thread-safe. Raises CommClosedError if the connection is gone."""
        self._send(data, None, self.max_frame_size)

    def recv_bytes(self) -> bytes:
        """Block until one whole frame arrives and return it.

        Raises CommClosedError when the connection closes between frames, ProtocolError (and closes the
        connection) when a frame is too large or the peer hangs up in the middle of one.
        """
        return self._recv(None, self.max_frame_size)

    def close(self) -> None:
        """Close the socket; a thread blocked in recv_bytes gets CommClosedError. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stream.close()

    # The handshake uses the same framing with a deadline and a small size limit.

    def _send(self, data, deadline: float | None, limit: int) -> None:
        size = len(memoryview(data).cast("B"))
        if size > limit:
            raise ProtocolError(f"Cannot send a frame of {size} bytes: the limit is {limit} bytes")
        header = _HEADER.pack(size)
        with self._send_lock:
            self._raise_if_closed()
            try:
                if size <= _SMALL_FRAME:
                    self._stream.sendall(header + data, deadline)
                else:
                    self._stream.sendall(header, deadline)
                    self._stream.sendall(data, deadline)
            except _TIMEOUTS:
                raise
            except (OSError, ValueError) as exc:
                self.close()
                raise CommClosedError(
                    f"Connection to {self.peer} closed while sending: {exc}"
                ) from exc

    def _recv(self, deadline: float | None, limit: int) -> bytes:
        with self._recv_lock:
            self._raise_if_closed()
            header = bytearray(_HEADER.size)
            if not self._read_exact(header, deadline, allow_eof=True):
                self.close()
                raise CommClosedError(f"Connection to {self.peer} was closed by the peer")
            (size,) = _HEADER.unpack(header)
            if size > limit:
                self.close()
                error = ProtocolError(
                    f"{self.peer} sent a frame of {size} bytes, over the limit of {limit}"
                )
                error.header = bytes(header)  # lets the listener guess what the stranger speaks
                raise error
            # Only frames within the limit get a buffer; before authentication the limit is tiny.
            payload = bytearray(size)
            self._read_exact(payload, deadline, allow_eof=False)
            return bytes(payload)

    def _read_exact(self, buffer: bytearray, deadline: float | None, allow_eof: bool) -> bool:
        """Fill ``buffer``. False on a clean EOF before any byte (if allowed); else raises."""
        view = memoryview(buffer)
        got = 0
        while got < len(buffer):
            try:
                n = self._stream.recv_into(view[got:], deadline)
            except _TIMEOUTS:
                raise
            except (OSError, ValueError) as exc:
                if self._closed:
                    raise CommClosedError(f"Connection to {self.peer} was closed locally") from None
                self.close()
                raise CommClosedError(f"Connection to {self.peer} failed: {exc}") from exc
            if n == 0:
                if self._closed:
                    raise CommClosedError(f"Connection to {self.peer} was closed locally")
                if got == 0 and allow_eof:
                    return False
                self.close()
                raise ProtocolError(
                    f"{self.peer} closed the connection in the middle of a frame "
                    f"({got} of {len(buffer)} bytes received)"
                )
            got += n
        return True

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise CommClosedError(f"Connection to {self.peer} is closed")
