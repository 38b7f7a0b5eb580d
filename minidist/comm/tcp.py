"""TCP (and TLS) transport: authenticated, framed, bidirectional message streams.

    client process                                        scheduler process
    connect(address) ──TCP──► Listener.accept()
      [TLS handshake, tls:// only; both sides present certificates]
      ◄── frame: MAGIC + server nonce + mode
      ──► frame: client nonce + HMAC(secret, "client" + server nonce + client nonce + mode)
      ◄── frame: "OK" + HMAC(secret, "server" + client nonce + server nonce + mode)   or "FAIL <reason>"
    Connection  ◄──── length-prefixed frames, both ways ────►  Connection

Frames and the ``Connection`` class live in ``comm/streams.py``.

The mode byte says whether the frames that follow carry an HMAC tag. Plain tcp:// traffic between two
hosts can be altered on the way: there (the peer's address is not loopback) every frame is tagged under
per-direction keys derived from the secret and both nonces (``streams.FrameKeys``), so nobody without the
secret can inject, alter, replay or reorder a frame (which, frames being pickles, would run code). Loopback
traffic never leaves the machine and tls:// has its own integrity: those keep untagged frames, at full
speed. Both proofs cover the mode byte, so it cannot be downgraded on the way. Integrity is not secrecy:
use tls:// to encrypt.

Handshakes run concurrently, one short-lived ``minidist-handshake`` thread per peer, each under a short
deadline (``handshake_timeout``), so a silent or slow peer delays nobody else::

    accept() ──poll──► listening socket ──accept──► handshake thread ──authenticated──► ready queue
       ▲                                  (at most max_pending_handshakes;                 │
       └────────────── wake-up pipe ◄──── the rest are closed at once) ◄───────────────────┘

accept() returns the next authenticated Connection from the ready queue. A peer that fails in any way
(wrong secret, garbage, too slow, hangs up) is closed and reported through ``on_reject(peer, reason)``
(or a warning on the ``minidist.comm.tcp`` logger when no callback is given); a bad peer never makes
accept() raise. A flood of connections is refused, not queued: while ``max_pending_handshakes`` peers
are authenticating, every further connection is closed at once and reported. Before a peer has
authenticated, frames are limited to a few hundred bytes, so nothing is allocated for a stranger.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import os
import select
import socket
import ssl
import threading
import time
from typing import Callable

from minidist.comm.addressing import format_address, parse_address
from minidist.comm.streams import (
    _POLL_INTERVAL,
    _TIMEOUTS,
    DEFAULT_MAX_FRAME_SIZE,
    Connection,
    FrameKeys,
    ProtocolError,
    _Closable,
    _PlainStream,
    _remaining,
    _shutdown_and_close,
    _TLSStream,
)
from minidist.errors import CommClosedError  # one class for every transport; re-exported here
from minidist.security import (
    Security,
    check_secret,
    read_secret,
    remove_secret,
    secret_path,
    tls_context,
    write_secret,
)

__all__ = [
    "AuthenticationError",
    "CommClosedError",
    "Connection",
    "Listener",
    "ProtocolError",
    "connect",
]

logger = logging.getLogger("minidist.comm.tcp")


class AuthenticationError(PermissionError):
    """The peer could not be authenticated: wrong or missing secret, or rejected TLS credentials."""


HANDSHAKE_TIMEOUT = 3.0  # seconds a peer has to complete TLS + authentication
MAX_PENDING_HANDSHAKES = 16  # peers authenticating at once; further connections are refused
_MAGIC = b"minidist-auth-2:"
_NONCE_SIZE = 32
_TAGGED_FRAMES = b"H"  # mode byte: every frame after the handshake carries an HMAC tag
_PLAIN_FRAMES = b"-"  # mode byte: loopback or TLS, frames as they are
_AUTH_FRAME_LIMIT = 512  # no handshake message is longer; a stranger cannot make us allocate more
# accept()'s wait between two looks at close(): an int made once, not a number made for each wait
_POLL_MS = int(_POLL_INTERVAL * 1000)


def _hmac(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, label + first + second, hashlib.sha256).digest()


def _session_keys(
    secret: bytes, server_nonce: bytes, client_nonce: bytes, mode: bytes, server: bool
) -> FrameKeys:
    return FrameKeys(_hmac(secret, b"session", server_nonce, client_nonce + mode), server)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address as sockets report it) is this machine's loopback."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _looks_like(frame_header: bytes) -> str:
    """A hint for a rejected first frame: which common protocol the stranger seems to speak."""
    if frame_header[:1] == b"\x16" and frame_header[1:2] == b"\x03":
        return (
            " (it looks like a TLS handshake: the client used tls:// but this listener is tcp://)"
        )
    if frame_header[:4] in (b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI"):
        return " (it looks like an HTTP request)"
    return ""


# --- Listener ------------------------------------------------------------------------------------------


class Listener(_Closable):
    """A listening socket whose accept() only ever returns authenticated connections."""

    def __init__(
        self,
        address: str,
        secret: bytes,
        security: Security | None = None,
        on_reject: Callable[[str, str], None] | None = None,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        publish_secret: bool = False,
        role: str = "scheduler",
        backlog: int = 128,
    ):
        """Bind ``address`` ("tcp://host:0" picks a free port) and listen.

        ``publish_secret=True`` writes the secret file for the bound address (so local clients of the
        same user find it) and removes it on close().
        """
        if max_pending_handshakes < 1:
            raise ValueError(f"max_pending_handshakes must be >= 1, not {max_pending_handshakes}")
        protocol, host, port = parse_address(address)
        self._secret = check_secret(secret)
        self._context = tls_context(protocol, security, True, role, address)
        self._protocol = protocol
        self._on_reject = on_reject
        self.handshake_timeout = handshake_timeout
        self.max_pending_handshakes = max_pending_handshakes
        self.max_frame_size = max_frame_size
        # handshakes in flight: thread -> a duplicate of its socket, to wake it when the listener closes
        self._pending: dict[threading.Thread, socket.socket] = {}
        self._ready: collections.deque[Connection] = collections.deque()
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=backlog)
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.address = format_address(protocol, bound_host, bound_port)
        self.frame_integrity = _describe_frame_integrity(protocol, bound_host)
        self._closed = False
        self._published: list[str] = []
        if publish_secret:
            try:
                self._publish()
            except BaseException:
                self._sock.close()
                os.close(self._wake_read)
                os.close(self._wake_write)
                raise

    def _publish(self) -> None:
        addresses = [self.address]
        _, host, port = parse_address(self.address)
        if host in ("0.0.0.0", "::"):  # listening everywhere: local clients will say loopback
            addresses.append(
                format_address(self._protocol, "127.0.0.1" if host == "0.0.0.0" else "::1", port)
            )
        for address in addresses:
            write_secret(address, self._secret)
            self._published.append(address)

    def __repr__(self) -> str:
        return f"<Listener {self.address}{' (closed)' if self._closed else ''}>"

    def accept(self, timeout: float | None = None) -> Connection:
        """Wait for the next peer that authenticates, and return its Connection.

        Raises TimeoutError if none did within ``timeout`` seconds, CommClosedError once the listener
        is closed (also when close() is called from another thread while waiting).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # made once, and the wait below holds no object made for it: a thread that waits here for
        # hours must not keep a fresh object alive in whatever allocator arena was current (after a
        # large run, one of the run's arenas that would otherwise be given back)
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            with self._lock:
                if self._closed:
                    raise CommClosedError(f"Listener {self.address} is closed")
                if self._ready:
                    return self._ready.popleft()
            self._start_handshakes()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"No client connected to {self.address} in time")
            poller.poll(_POLL_MS if left is None else 1000 * min(left, _POLL_INTERVAL))
            with (
                self._lock
            ):  # close() closes the pipe under this lock: never read a reused descriptor
                if not self._closed:
                    _drain(self._wake_read)

    def close(self) -> None:
        """Stop listening, end pending handshakes, remove the published secret file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending.items())
            ready = list(self._ready)
            self._ready.clear()
            for _, waker in pending:  # wakes a handshake blocked on its socket (plain or TLS)
                try:
                    waker.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        _shutdown_and_close(self._sock)
        for conn in ready:
            conn.close()
        for thread, _ in pending:
            if thread is not threading.current_thread():
                thread.join(self.handshake_timeout + 1)
        with self._lock:
            os.write(self._wake_write, b"x")  # an accept() in another thread notices at once
            os.close(self._wake_write)
            os.close(self._wake_read)
        for address in self._published:
            remove_secret(address, self._secret)
        self._published.clear()

    def _start_handshakes(self) -> None:
        """Accept every waiting peer and start its handshake (or refuse it when too many are pending)."""
        while True:
            try:
                sock, addr = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if self._closed:
                    return
                # Out of file descriptors or an aborted connection: log, back off briefly, go on.
                logger.warning("accept() on %s failed: %s", self.address, exc)
                time.sleep(0.05)
                return
            peer = format_address(self._protocol, addr[0], addr[1])
            with self._lock:
                crowded = len(self._pending) >= self.max_pending_handshakes
                if not crowded and not self._closed:
                    try:
                        waker = sock.dup()
                    except OSError:
                        crowded = True
                    else:
                        thread = threading.Thread(
                            target=self._handshake,
                            args=(sock, peer),
                            name=f"minidist-handshake-{peer}",
                            daemon=True,
                        )
                        self._pending[thread] = waker
                        thread.start()
                        continue
            _shutdown_and_close(sock)
            self._reject(
                peer,
                f"refused: {self.max_pending_handshakes} connections are already authenticating "
                "(a flood of connections is refused, not queued)",
            )

    def _handshake(self, sock: socket.socket, peer: str) -> None:
        conn = None
        try:
            conn = self._authenticate(sock, peer)
        except _Rejected as rejection:
            self._reject(peer, rejection.reason)
        except Exception as exc:  # never let one bad peer take the listener down
            _shutdown_and_close(sock)
            self._reject(peer, f"unexpected error during the handshake: {exc!r}")
        with self._lock:
            waker = self._pending.pop(threading.current_thread())
            waker.close()
            if conn is None:
                return
            if not self._closed:
                self._ready.append(conn)
                os.write(self._wake_write, b"x")
                return
        conn.close()  # the listener closed while this peer was authenticating

    def _authenticate(self, sock: socket.socket, peer: str) -> Connection:
        deadline = time.monotonic() + self.handshake_timeout
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Read before wrapping: wrapping in TLS detaches ``sock`` from its file descriptor.
            local = format_address(self._protocol, *sock.getsockname()[:2])
            stream = _wrap_tls(sock, self._context, deadline, server=True)
        except ssl.SSLError as exc:
            _shutdown_and_close(sock)
            raise _Rejected(f"TLS handshake failed: {exc}") from None
        except (*_TIMEOUTS, OSError) as exc:
            _shutdown_and_close(sock)
            raise _Rejected(_describe_handshake_error(exc, self.handshake_timeout)) from None
        conn = Connection(stream, peer, local, self.max_frame_size)
        mode = self._frame_mode(peer)
        try:
            server_nonce = os.urandom(_NONCE_SIZE)
            conn._send(_MAGIC + server_nonce + mode, deadline, _AUTH_FRAME_LIMIT)
            reply = conn._recv(deadline, _AUTH_FRAME_LIMIT)
            if len(reply) != 2 * _NONCE_SIZE:
                raise _Rejected(f"malformed authentication reply ({len(reply)} bytes)")
            client_nonce, proof = reply[:_NONCE_SIZE], reply[_NONCE_SIZE:]
            expected = _hmac(self._secret, b"client", server_nonce, client_nonce + mode)
            if not hmac.compare_digest(proof, expected):
                try:  # tell the peer why, if it is still listening
                    conn._send(b"FAIL wrong secret", deadline, _AUTH_FRAME_LIMIT)
                except OSError:
                    pass
                raise _Rejected("wrong secret")
            answer = b"OK" + _hmac(self._secret, b"server", client_nonce, server_nonce + mode)
            conn._send(answer, deadline, _AUTH_FRAME_LIMIT)
            if mode == _TAGGED_FRAMES:
                conn._authenticate_frames(
                    _session_keys(self._secret, server_nonce, client_nonce, mode, server=True)
                )
        except _Rejected:
            conn.close()
            raise
        except ProtocolError as exc:
            conn.close()
            hint = _looks_like(getattr(exc, "header", b""))
            raise _Rejected(f"malformed handshake: {exc}{hint}") from None
        except (*_TIMEOUTS, OSError) as exc:
            conn.close()
            raise _Rejected(_describe_handshake_error(exc, self.handshake_timeout)) from None
        except BaseException:
            conn.close()
            raise
        stream.handshake_done()
        return conn

    def _frame_mode(self, peer: str) -> bytes:
        if self._protocol == "tcp" and not is_loopback(parse_address(peer)[1]):
            return _TAGGED_FRAMES
        return _PLAIN_FRAMES

    def _reject(self, peer: str, reason: str) -> None:
        if self._on_reject is None:
            logger.warning("Rejected connection from %s to %s: %s", peer, self.address, reason)
            return
        try:
            self._on_reject(peer, reason)
        except Exception:
            logger.exception("on_reject callback failed for %s (%s)", peer, reason)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


class _Rejected(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _describe_frame_integrity(protocol: str, host: str) -> str:
    """What a listener on ``host`` does for the integrity of frames after the handshake (for logs)."""
    if protocol == "tls":
        return "TLS encrypts and authenticates every frame"
    if is_loopback(host):
        return "loopback only: frames never leave this machine"
    return (
        "plain tcp:// reachable from other hosts: every frame from another host carries an HMAC "
        "(integrity, not secrecy; use tls:// to encrypt)"
    )


def _describe_handshake_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, _TIMEOUTS):
        return f"did not complete the handshake within {timeout:g}s"
    if isinstance(exc, CommClosedError):
        return "closed the connection during the handshake"
    return f"connection failed during the handshake: {exc}"


def _wrap_tls(sock: socket.socket, context: ssl.SSLContext | None, deadline: float, server: bool):
    """The stream for ``sock``: plain, or TLS after a handshake that must finish by ``deadline``."""
    if context is None:
        return _PlainStream(sock)
    tls = context.wrap_socket(sock, server_side=server, do_handshake_on_connect=False)
    try:
        tls.settimeout(_remaining(deadline))
        tls.do_handshake()
    except BaseException:
        tls.close()  # detaches and closes the underlying socket too
        raise
    return _TLSStream(tls)


# --- connect ---------------------------------------------------------------------------------------------


def connect(
    address: str,
    secret: bytes | None = None,
    security: Security | None = None,
    timeout: float = 10,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    role: str = "client",
) -> Connection:
    """Connect to the Listener at ``address`` and authenticate both ways.

    ``secret=None`` reads the secret the scheduler published for this address (same user, same machine).
    Raises AuthenticationError when there is no secret or it is refused, ConnectionRefusedError when
    nothing listens there, TimeoutError when the whole exchange takes over ``timeout`` seconds.
    """
    protocol, host, port = parse_address(address)
    context = tls_context(protocol, security, False, role, address)
    from_file = secret is None
    if from_file:
        secret = read_secret(address)
        if secret is None:
            raise AuthenticationError(
                f"No secret found for {address} (looked for {secret_path(address)}). Run the client as "
                "the same user on the same machine as the scheduler, or pass the cluster's secret "
                "explicitly (connect(address, secret=...))"
            )
    secret = check_secret(secret)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError as exc:
        raise ConnectionRefusedError(
            exc.errno,
            f"Could not connect to {address}: connection refused. Is the scheduler running?",
        ) from None
    except _TIMEOUTS:
        raise TimeoutError(f"Timed out after {timeout:g}s connecting to {address}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local = format_address(protocol, *sock.getsockname()[:2])
        try:
            stream = _wrap_tls(sock, context, deadline, server=False)
        except _TIMEOUTS:
            raise TimeoutError(f"Timed out during the TLS handshake with {address}") from None
        except ssl.SSLError as exc:
            raise AuthenticationError(
                f"TLS handshake with {address} failed: {exc}. Is the scheduler listening with TLS "
                "(tls://), and were you given the cluster's Security credentials?"
            ) from None
    except BaseException:
        sock.close()
        raise
    conn = Connection(stream, address, local, max_frame_size)
    try:
        _client_handshake(conn, secret, deadline, address, from_file)
    except BaseException:
        conn.close()
        raise
    stream.handshake_done()
    return conn


def _client_handshake(
    conn: Connection, secret: bytes, deadline: float, address: str, from_file: bool
):
    try:
        greeting = conn._recv(deadline, _AUTH_FRAME_LIMIT)
        mode = greeting[-1:]
        if (
            not greeting.startswith(_MAGIC)
            or len(greeting) != len(_MAGIC) + _NONCE_SIZE + 1
            or mode not in (_TAGGED_FRAMES, _PLAIN_FRAMES)
        ):
            raise ProtocolError(
                f"{address} is not a minidist scheduler of this version (unexpected greeting)"
            )
        server_nonce = greeting[len(_MAGIC) : -1]
        client_nonce = os.urandom(_NONCE_SIZE)
        proof = _hmac(secret, b"client", server_nonce, client_nonce + mode)
        conn._send(client_nonce + proof, deadline, _AUTH_FRAME_LIMIT)
        answer = conn._recv(deadline, _AUTH_FRAME_LIMIT)
    except _TIMEOUTS:
        raise TimeoutError(f"Timed out waiting for {address} to authenticate") from None
    except CommClosedError as exc:
        raise CommClosedError(
            f"{address} closed the connection during authentication ({exc}). If the scheduler uses "
            "TLS, connect to its tls:// address with its Security; otherwise check the address"
        ) from None
    if answer.startswith(b"FAIL"):
        reason = answer[4:].decode("utf-8", "replace").strip()
        where = (
            f"the secret in {secret_path(address)} is not this scheduler's (the file may be stale)"
            if from_file
            else "the secret you passed is not this scheduler's"
        )
        raise AuthenticationError(
            f"The scheduler at {address} refused the connection: {reason}; {where}. Use the secret of "
            "the cluster you mean to reach (cluster.security / the secret file of its user)"
        )
    expected = _hmac(secret, b"server", client_nonce, server_nonce + mode)
    if not (answer.startswith(b"OK") and hmac.compare_digest(answer[2:], expected)):
        raise AuthenticationError(
            f"The server at {address} did not prove it knows the cluster secret; refusing to talk to it"
        )
    if mode == _TAGGED_FRAMES:
        conn._authenticate_frames(
            _session_keys(secret, server_nonce, client_nonce, mode, server=False)
        )
