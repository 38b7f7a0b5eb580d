"""Framed byte streams over a socket, plain or TLS: the ``Connection`` that ``comm/tcp.py`` hands out.

A frame is an 8-byte big-endian length followed by that many bytes. ``send_bytes`` may be called from
any thread (a lock keeps frames whole); ``recv_bytes`` is meant for one reader thread per connection.

What an authenticated peer can make us spend is bounded too:

- The buffer for a frame grows as its bytes arrive (1 MiB first, doubling): an 8-byte header announcing
  1 GiB allocates nothing until the bytes come.
- Once a frame has begun, every read must make progress within ``read_timeout`` seconds (30 s), else the
  connection is closed with a ProtocolError. Between frames a connection may stay idle for ever.
- With frame authentication on (plain tcp:// from another host, see ``comm/tcp.py``), every frame carries
  an HMAC-SHA256 tag over a per-direction sequence number and its payload, under keys derived from the
  handshake: a frame that was injected, altered, replayed or reordered closes the connection.

Why TLS reads are non-blocking: OpenSSL forbids using one SSL object from two threads at once, yet the
engine reads in one thread and writes from another. So every SSL call runs under a per-connection lock
on a non-blocking socket, and waiting for the socket (poll) happens outside the lock. Plain TCP sockets
are full duplex in the kernel and use ordinary blocking calls.
"""

from __future__ import annotations

import hashlib
import hmac
import select
import socket
import ssl
import struct
import threading
import time
from typing import overload

from minidist.errors import CommClosedError

DEFAULT_MAX_FRAME_SIZE = 1 << 30  # 1 GiB
_HEADER = struct.Struct("!Q")
_POLL_INTERVAL = 0.5  # waits wake up this often to notice close() from another thread
_TLS_CHUNK = 1 << 20  # bytes handed to one SSL_write
_SMALL_FRAME = 1 << 16  # below this, header and payload go out in a single send
_TIMEOUTS = (TimeoutError, socket.timeout)  # one class from Python 3.10 on, two before
_FIRST_BUFFER = 1 << 20  # a frame's buffer starts at this size and doubles as its bytes arrive
DEFAULT_READ_TIMEOUT = 30.0  # seconds a frame that has begun may go without a byte arriving
_TAG_SIZE = 32  # HMAC-SHA256
_SEQUENCE = struct.Struct("!Q")


class ProtocolError(ValueError):
    """The peer sent bytes that are not a valid frame (too large, truncated) or handshake message."""

    # the refused frame's header, if any: lets a listener guess what the peer speaks
    header: bytes = b""


# --- byte streams: the one place that differs between plain TCP and TLS ------------------------------


@overload
def _remaining(deadline: float) -> float: ...
@overload
def _remaining(deadline: None) -> None: ...
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
        self.handshaking = True

    def recv_into(self, view: memoryview, deadline: float | None) -> int:
        if deadline is None:
            return self.sock.recv_into(view)
        if self.handshaking:  # nobody else uses the socket yet: its own timeout is simplest
            self.sock.settimeout(_remaining(deadline))
            return self.sock.recv_into(view)
        # Afterwards a writer thread shares the socket, so its timeout must stay None: wait with poll.
        while True:
            try:
                return self.sock.recv_into(view, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            poller.poll(_remaining(deadline) * 1000)

    def sendall(self, data, deadline: float | None) -> None:
        if deadline is not None:
            self.sock.settimeout(_remaining(deadline))
        self.sock.sendall(data)

    def handshake_done(self) -> None:
        self.sock.settimeout(None)
        self.handshaking = False

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

    def close(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed


class FrameKeys:
    """The keys and sequence numbers that authenticate the frames of one connection, one per direction.

    Both ends derive them from the handshake (``session_key``): the side that connected sends with the
    "client" key and receives with the "server" key; the listening side the other way round.
    """

    def __init__(self, session_key: bytes, server: bool):
        client_key = hmac.new(session_key, b"frames from the client", hashlib.sha256).digest()
        server_key = hmac.new(session_key, b"frames from the server", hashlib.sha256).digest()
        self._send_key, self._recv_key = (
            (server_key, client_key) if server else (client_key, server_key)
        )
        self._sent = 0
        self._received = 0

    def sign(self, data) -> bytes:
        """The tag of the next frame sent (call under the send lock: tags follow the order of frames)."""
        tag = _tag(self._send_key, self._sent, data)
        self._sent += 1
        return tag

    def verify(self, data, tag) -> bool:
        """Whether ``tag`` is right for the next frame received, in order."""
        ok = hmac.compare_digest(_tag(self._recv_key, self._received, data), tag)
        self._received += 1
        return ok


def _tag(key: bytes, sequence: int, data) -> bytes:
    mac = hmac.new(key, _SEQUENCE.pack(sequence), hashlib.sha256)
    mac.update(data)
    return mac.digest()


class Connection(_Closable):
    """One authenticated, framed, bidirectional message stream. Made by ``connect`` and ``Listener``.

    ``authenticates_frames`` says whether every frame carries an HMAC tag (see the module docstring).
    """

    def __init__(
        self,
        stream,
        peer: str,
        local: str,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    ):
        self._stream = stream
        self.peer = peer
        self.local = local
        self.max_frame_size = max_frame_size
        self.read_timeout = read_timeout
        self._keys: FrameKeys | None = None
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Connection {self.local} -> {self.peer} ({state})>"

    @property
    def authenticates_frames(self) -> bool:
        return self._keys is not None

    def _authenticate_frames(self, keys: FrameKeys) -> None:
        """From now on every frame both ways carries a tag (called once, right after the handshake)."""
        self._keys = keys

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
        with self._send_lock:
            self._raise_if_closed()
            tag = b"" if self._keys is None else self._keys.sign(data)
            header = _HEADER.pack(size + len(tag))
            try:
                if size <= _SMALL_FRAME:
                    self._stream.sendall(b"".join((header, data, tag)), deadline)
                else:
                    self._stream.sendall(header, deadline)
                    self._stream.sendall(data, deadline)
                    if tag:
                        self._stream.sendall(tag, deadline)
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
            tag_size = 0 if self._keys is None else _TAG_SIZE
            if size > limit + tag_size or size < tag_size:
                self.close()
                error = ProtocolError(
                    f"{self.peer} sent a frame of {size - tag_size} bytes, over the limit of {limit}"
                    if size >= tag_size
                    else f"{self.peer} sent a frame too short to carry its authentication tag"
                )
                error.header = bytes(header)  # lets the listener guess what the stranger speaks
                raise error
            # Only frames within the limit get a buffer; before authentication the limit is tiny.
            frame = self._read_payload(size, deadline)
            if self._keys is None:
                return frame
            payload, tag = (
                memoryview(frame)[: size - tag_size],
                memoryview(frame)[size - tag_size :],
            )
            if not self._keys.verify(payload, tag):
                self.close()
                raise ProtocolError(
                    f"a frame from {self.peer} failed its authentication check (altered, injected, "
                    "replayed or out of order); the connection is closed"
                )
            return bytes(payload)

    def _read_payload(self, size: int, deadline: float | None) -> bytes:
        """The ``size`` bytes of a frame, in buffers that grow as the bytes arrive."""
        if size <= _FIRST_BUFFER:
            buffer = bytearray(size)
            self._read_exact(buffer, deadline, allow_eof=False, begun=True)
            return bytes(buffer)
        chunks = []
        got = 0
        while got < size:
            chunk = bytearray(
                min(size - got, max(_FIRST_BUFFER, got))
            )  # doubles the total each time
            self._read_exact(chunk, deadline, allow_eof=False, begun=True, done=got, total=size)
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_exact(
        self,
        buffer: bytearray,
        deadline: float | None,
        allow_eof: bool,
        begun: bool = False,
        done: int = 0,
        total: int | None = None,
    ) -> bool:
        """Fill ``buffer``. False on a clean EOF before any byte (if allowed); else raises.

        ``begun``: the frame has started, so (after the handshake) every read must bring a byte within
        ``read_timeout``. ``done`` and ``total`` only make error messages speak of the whole frame.
        """
        view = memoryview(buffer)
        got = 0
        while got < len(buffer):
            read_deadline = deadline
            if deadline is None and (begun or got) and self.read_timeout is not None:
                read_deadline = time.monotonic() + self.read_timeout
            try:
                n = self._stream.recv_into(view[got:], read_deadline)
            except _TIMEOUTS:
                if deadline is not None:
                    raise  # the handshake's deadline: the caller reports it
                self.close()
                raise ProtocolError(
                    f"{self.peer} sent part of a frame, then nothing for {self.read_timeout:g}s "
                    f"({done + got} of {total or len(buffer)} bytes received); the connection is closed"
                ) from None
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
                    f"({done + got} of {total or len(buffer)} bytes received)"
                )
            got += n
        return True

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise CommClosedError(f"Connection to {self.peer} is closed")
