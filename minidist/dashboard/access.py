"""Who may talk to the dashboard, and for how long: connections, Host headers and the optional token.

::

    serve() thread "minidist-dashboard"           (one poll() over the listening socket)
      accept ──► waiting room (no thread yet; at most MAX_WAITING, each for REQUEST_TIMEOUT seconds)
                   │ bytes arrive                       │ silent too long: closed
                   ▼
      a request thread (at most MAX_ACTIVE at once, else "503 busy") ──► _Handler in server.py
                   │ reads the request with a REQUEST_TIMEOUT per read
                   ▼
      check_request(): Host header allowed? token presented (when the dashboard has one)?

A connection that never says anything costs a socket in the waiting room, not a thread, and is closed
after ``REQUEST_TIMEOUT``; a flood beyond ``MAX_WAITING`` is closed at once.

Host headers (DNS rebinding: a web page whose name the attacker re-points at 127.0.0.1 could otherwise read
``/json/logs.json`` with the victim's browser): a request is answered only when its ``Host`` names an IP
address (nothing to rebind), ``localhost``, this machine's host name, the host the dashboard was bound to,
or a name in ``allowed_hosts``. A request without a Host header (no browser sends one) is answered.

The token (``LocalCluster(dashboard_token=...)``): every request must present it, as ``?token=`` in the
URL (the dashboard link carries it; the answer then sets a cookie so the page's own requests need nothing
more), as that cookie, or as ``Authorization: Bearer <token>``. ``/health`` needs no token.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import secrets
import select
import socket
import threading
import time
from http.cookies import CookieError, SimpleCookie
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REQUEST_TIMEOUT = 5.0  # seconds a connection may wait before its request, and per read of it
MAX_WAITING = 256  # connections that have not sent a byte yet
MAX_ACTIVE = 16  # requests being read and answered at once (one thread each)
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOKEN = re.compile(r"[A-Za-z0-9_.~-]{1,256}\Z")


def make_token(token) -> str | None:
    """``dashboard_token`` -> the token: None (no token), True (a fresh random one) or a URL-safe string."""
    if token is None or token is False:
        return None
    if token is True:
        return secrets.token_urlsafe(24)
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise ValueError(
            "dashboard_token must be True (a random token), None, or a string of letters, digits and "
            f"'_.~-' (it travels in URLs); got {token!r}"
        )
    return token


class DashboardHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose loop (``serve``) keeps silent connections in a waiting room."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog (the stdlib's 5 makes a burst of browsers wait)
    request_timeout = REQUEST_TIMEOUT
    max_waiting = MAX_WAITING
    max_active = MAX_ACTIVE

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.socket.setblocking(False)
        self._active = threading.BoundedSemaphore(self.max_active)
        self._wake_read, self._wake_write = socket.socketpair()
        self._stopping = False

    def serve(self) -> None:
        """Serve until ``stop()``: the dashboard thread's whole life.

        It sleeps in ``poll()`` holding nothing made for that sleep, and with no connection in the
        waiting room it has no timeout either: a thread that wakes now and then keeps what it made
        for each wait alive while it sleeps, in whichever allocator arena was current, and after a
        large run that kept one of the run's arenas in the client's memory (architecture.md)."""
        poller = select.poll()
        poller.register(self.socket, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        waiting: dict[int, tuple] = {}  # fd -> (socket, peer address, deadline)
        try:
            while not self._stopping:
                self._turn(poller, waiting, poller.poll(self._wait_ms(waiting)))
        finally:
            for sock, _, _ in waiting.values():
                self.shutdown_request(sock)

    def _wait_ms(self, waiting: dict) -> int | None:
        """How long ``poll()`` may sleep: until the first waiting connection's deadline, or for good."""
        if not waiting:
            return None
        first_deadline = min(deadline for _, _, deadline in waiting.values())
        return max(0, math.ceil((first_deadline - time.monotonic()) * 1000))

    def _turn(self, poller, waiting: dict, events: list) -> None:
        listening, wake = self.socket.fileno(), self._wake_read.fileno()
        for fd, _ in events:
            if fd == listening:
                self._accept(poller, waiting)
            elif fd == wake:
                self._wake_read.recv(64)
            else:  # bytes arrived, or the peer hung up: a request thread reads which
                poller.unregister(fd)
                sock, peer, _ = waiting.pop(fd)
                self._dispatch(sock, peer)
        now = time.monotonic()
        for fd, (sock, _, deadline) in list(waiting.items()):
            if deadline <= now:  # said nothing in time
                poller.unregister(fd)
                del waiting[fd]
                self.shutdown_request(sock)

    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass

    def server_close(self) -> None:
        super().server_close()
        for sock in (getattr(self, "_wake_read", None), getattr(self, "_wake_write", None)):
            if sock is not None:  # absent when binding failed inside __init__
                sock.close()

    def _accept(self, poller, waiting: dict) -> None:
        while True:
            try:
                sock, peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, or a connection reset before accept
                return
            if len(waiting) >= self.max_waiting:
                self.shutdown_request(sock)  # a flood: refused, not queued
                continue
            waiting[sock.fileno()] = (sock, peer, time.monotonic() + self.request_timeout)
            poller.register(sock, select.POLLIN)

    def _dispatch(self, sock: socket.socket, peer) -> None:
        if not self._active.acquire(blocking=False):
            try:
                sock.setblocking(False)
                sock.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(sock)
            return
        try:
            sock.setblocking(True)
            self.process_request(sock, peer)  # a thread of its own (ThreadingMixIn)
        except BaseException:
            self._active.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._active.release()

    def handle_error(self, request, client_address):
        # a client that hangs up mid-answer is not worth a traceback on the user's stderr
        pass


# --- per-request checks -------------------------------------------------------------------------------


class HostCheck:
    """Which ``Host`` header values a dashboard answers (see the module docstring)."""

    def __init__(self, bound_host: str, allowed_hosts=()):
        self._names = {_bare(h) for h in allowed_hosts if h}
        bound = _bare(bound_host)
        if bound and not _is_address(bound):
            self._names.add(bound)
        self._machine_names: set | None = None  # looked up on first need (getfqdn may ask DNS)

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        host = _bare(header)
        if not host:
            return False
        if _is_address(host) or host == "localhost" or host.endswith(".localhost"):
            return True
        if host in self._names:
            return True
        if self._machine_names is None:
            names = {socket.gethostname().lower()}
            try:
                names.add(socket.getfqdn().lower())
            except OSError:
                pass
            self._machine_names = {n.rstrip(".") for n in names if n}
        return host in self._machine_names


def _bare(host: str) -> str:
    """``Host`` header or host -> lower-case name or address without port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_request(
    path: str, headers, host_check: HostCheck, token: str | None, prefix: str, cookie_name: str
) -> tuple[str | None, str, str | None]:
    """``(why the request is refused or None, its path without the token, a Set-Cookie value or None)``."""
    if not host_check.allows(headers.get("Host")):
        return (
            f"this dashboard does not answer to the host name {headers.get('Host')!r} (a guard "
            "against DNS rebinding); use its link, or add the name with "
            "service_kwargs={'dashboard': {'allowed_hosts': [...]}}",
            path,
            None,
        )
    if token is None:
        return None, path, None
    url = urlsplit(path)
    in_url, query = split_token(url.query)
    path = urlunsplit(("", "", url.path, query, ""))
    if url.path in ("/health", prefix + "/health"):
        return None, path, None
    if token_matches(in_url, token):
        # the page's own requests (JSON polls, assets, links) then carry the cookie
        cookie = f"{cookie_name}={token}; Path={prefix or '/'}; HttpOnly; SameSite=Strict"
        return None, path, cookie
    if token_matches(presented_token(headers, cookie_name), token):
        return None, path, None
    return (
        "this dashboard needs its token: open the link from cluster.dashboard_link (it ends in "
        "?token=...), or send the header 'Authorization: Bearer <token>'",
        path,
        None,
    )


def split_token(query: str) -> tuple[str | None, str]:
    """``(token given in the query or None, the query without it)``."""
    pairs = parse_qsl(query, keep_blank_values=True)
    tokens = [value for key, value in pairs if key == "token"]
    if not tokens:
        return None, query  # left exactly as it came, for the routes' own strict checks
    rest = urlencode([(key, value) for key, value in pairs if key != "token"])
    return tokens[-1], rest


def presented_token(headers, cookie_name: str) -> str | None:
    """The token a request carries in its cookie or its ``Authorization: Bearer`` header."""
    authorization = headers.get("Authorization") or ""
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    cookie_header = headers.get("Cookie")
    if cookie_header:
        try:
            cookie = SimpleCookie(cookie_header)
        except CookieError:
            return None
        if cookie_name in cookie:
            return cookie[cookie_name].value
    return None


def token_matches(presented: str | None, token: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())
