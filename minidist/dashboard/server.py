"""The dashboard's HTTP server: a small stdlib server that turns cluster snapshots into pages and JSON.

::

    browser ──GET──► ThreadingHTTPServer (daemon thread "minidist-dashboard", one short thread per request)
                          │  _Handler.route(): prefix check, query check, dispatch
                          ├── /status, /worker/<w> ──► static HTML/JS/CSS held in memory; the page polls
                          │                            /json/status.json (or /json/worker/<w>.json) itself
                          ├── /json/...  ──► snapshot() / logs() / worker_snapshot(w) ──► JSON
                          └── /info, /logs/<c> ──► pages.py renders HTML from snapshot() / logs()

Connections, the ``Host`` check and the optional token live in ``dashboard/access.py``: a silent
connection holds no thread, requests time out, and a request for an unexpected Host (DNS rebinding) or
without the dashboard's token is refused with 403.

The engine hands over three callables and never hears from the server again: ``snapshot()`` (called at most
once per request, from a request thread, so it must be thread-safe and cheap; if it takes a ``since``
keyword, ``/json/status.json?since=T`` passes T on so old task-stream entries are never even formatted),
``logs()`` (the same dict as ``get_logs()``) and optionally ``worker_snapshot(address_or_name)``. Whatever
they raise becomes a 500 answer with the message in red (HTML) or ``{"error": ...}`` (JSON); the server
keeps serving.

A worker's own server (``worker=<address>``, for ``worker_dashboard_address``) serves that worker's page
as ``/status``, its JSON and its logs, and nothing about the rest of the cluster but a link home.

The snapshot (what ``/json/status.json`` returns and what the status page draws)::

    {"time": float,                        # time.time() when the snapshot was taken
     "cluster": {"name": str, "scheduler_address": str, "n_workers": int, "threads": int,
                 "memory_limit": int | None, "status": "running" | "closed"},
     "workers": [{"address": str, "name": str, "nthreads": int, "processing": int, "executing": int,
                  "memory": int | None, "memory_limit": int | None, "cpu": float,   # cpu in percent
                  "pid": int | None, "status": "running" | "paused", "in_memory": int,
                  "dashboard": str | None}],            # URL of the worker's own page, if it has one
                  # memory is None for thread workers: they share the cluster's process
     "tasks": {"by_prefix": {prefix: {"waiting": int, "queued": int, "processing": int, "memory": int,
                                      "erred": int, "released": int}},
               "totals": {same keys}},
     "task_stream": [{"key": str, "prefix": str, "worker": str (address), "thread": int,
                      "start": float, "stop": float, "status": "ok" | "error"}]}   # newest last, bounded

``/json/status.json?since=T`` returns the same dict with only the task-stream entries whose ``stop >= T``,
so a polling page downloads each task once.

``worker_snapshot(w)`` returns None for an unknown worker, or::

    {"time": float, "worker": {one entry of "workers" above},
     "tasks": [{"key": str, "prefix": str, "state": str}],      # tasks the worker holds or runs now
     "task_stream": [entries as above, this worker only], "logs": str}

Missing keys are filled in. Without ``worker_snapshot`` the server derives the same dict from
``snapshot()`` and ``logs()`` (``tasks`` is then empty).
"""

from __future__ import annotations

import errno
import inspect
import json
import math
import socket
import threading
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

from minidist.dashboard import pages
from minidist.dashboard.access import (
    REQUEST_TIMEOUT,
    DashboardHTTPServer,
    HostCheck,
    check_request,
    make_token,
)

DEFAULT_PORT = 8787
DEFAULT_HOST = "127.0.0.1"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*"}
# (file name, content type) of the assets served from memory under <prefix>/static/
_STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def parse_dashboard_address(address) -> tuple[str, int] | None:
    """``dashboard_address`` -> ``(host, port)``, or None when the dashboard is disabled.

    Accepts dask's forms: ``":8787"``, ``":0"`` (a free port), ``"host:port"``, ``"[::1]:8787"``,
    ``"host"`` (port 8787), ``"8787"`` or an int; ``None``, ``""`` and ``False`` disable the dashboard.
    """
    if address is None or address is False or address == "":
        return None
    if isinstance(address, bool) or not isinstance(address, (str, int)):
        raise TypeError(
            f"dashboard_address must be a str like ':8787', an int or None, not {address!r}"
        )
    if isinstance(address, int):
        return DEFAULT_HOST, _check_port(address, address)
    text = address.strip()
    if text.startswith("http://"):
        text = text[len("http://") :].rstrip("/")
    if text.isdigit():
        return DEFAULT_HOST, _check_port(int(text), address)
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"cannot parse dashboard_address {address!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:  # bare IPv6 address, no port
        host, port_text = text, ""
    else:
        host, port_text = text, ""
    if port_text == "":
        port = DEFAULT_PORT
    elif port_text.isdigit():
        port = int(port_text)
    else:
        raise ValueError(f"cannot parse dashboard_address {address!r}: the port must be a number")
    return host or DEFAULT_HOST, _check_port(port, address)


def _check_port(port: int, address) -> int:
    if not 0 <= port <= 65535:
        raise ValueError(f"dashboard_address {address!r}: port {port} is out of range 0-65535")
    return port


def normalize_prefix(prefix: str | None) -> str:
    """``"foo"``, ``"/foo/"`` -> ``"/foo"``; ``""`` and ``"/"`` -> ``""``."""
    prefix = (prefix or "").strip().strip("/")
    return "/" + prefix if prefix else ""


def to_json(value) -> bytes:
    """JSON for the browser: NaN/inf become null (JSON has no NaN), unknown objects become strings."""
    try:
        text = json.dumps(value, allow_nan=False, default=str, separators=(",", ":"))
    except ValueError:  # a NaN or inf somewhere: clean it up (rare, so only then walk the value)
        text = json.dumps(_finite(value), allow_nan=False, default=str, separators=(",", ":"))
    return text.encode()


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def find_worker(workers: list, ident: str) -> dict | None:
    """The worker entry whose address or name is ``ident``."""
    for worker in workers:
        if str(worker.get("address")) == ident:
            return worker
    for worker in workers:
        if str(worker.get("name")) == ident:
            return worker
    return None


class _BadRequest(Exception):
    """A request we refuse with 400 (malformed or unexpected query)."""


class _NotFound(Exception):
    """A request for something that does not exist (404)."""


class _HTTPServer(DashboardHTTPServer):
    dashboard: DashboardServer


class DashboardServer:
    """Serves the dashboard for one cluster (or one worker) until ``close()``.

    ``address`` takes ``dashboard_address`` forms (see ``parse_dashboard_address``); a cluster whose
    address is disabled should not create a server at all. ``prefix`` (``service_kwargs={"dashboard":
    {"prefix": "/foo"}}``) moves every page under ``/foo``. After ``start()``, ``host``, ``port`` and
    ``link`` name the real socket, which differs from the request when the port was taken.

    ``token`` (a string, or True for a random one) makes every request present it (see
    ``dashboard/access.py``); ``link`` then carries it. ``allowed_hosts`` adds names the ``Host`` header
    may use (for a dashboard reached under a DNS name, e.g. behind a reverse proxy).
    """

    def __init__(
        self,
        address: str | None,
        snapshot: Callable[..., dict],  # may take since= (see _snapshot_takes_since)
        logs: Callable[[], dict[str, str]],
        prefix: str = "",
        worker_snapshot: Callable[[str], dict | None] | None = None,
        name: str = "minidist",
        worker: str | None = None,
        home: str | None = None,
        warn_on_fallback: bool = True,
        token: str | bool | None = None,
        allowed_hosts: Iterable[str] = (),
    ):
        parsed = parse_dashboard_address(address)
        if parsed is None:
            raise ValueError(
                "the dashboard is disabled (dashboard_address is None or ''): "
                "do not create a DashboardServer"
            )
        self.host, self.port = parsed
        self.prefix = normalize_prefix(prefix)
        self.name = name
        self.snapshot = snapshot
        self.logs = logs
        self.worker_snapshot = worker_snapshot
        self.worker = worker  # set: this is that worker's own dashboard
        self.home = home  # the cluster dashboard's URL, linked from a worker's own pages
        self.warn_on_fallback = warn_on_fallback
        self.token = make_token(token)
        self.host_check = HostCheck(self.host, allowed_hosts)
        try:
            self._snapshot_takes_since = "since" in inspect.signature(snapshot).parameters
        except (TypeError, ValueError):  # builtins without a signature
            self._snapshot_takes_since = False
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._assets, self._templates = self._load_assets()

    # ---- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and serve from a daemon thread; falls back to a free port (with a warning)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this DashboardServer was closed; create a new one")
            if self._server is not None:
                return
            requested = self.port
            try:
                server = self._bind(self.port)
            except OSError as error:
                if error.errno != errno.EADDRINUSE or requested == 0:
                    raise
                server = self._bind(0)
                self.port = server.server_address[1]
                if self.warn_on_fallback:
                    warnings.warn(
                        f"Port {requested} is already in use (perhaps another cluster is running); "
                        f"the dashboard is served at {self.link} instead.",
                        UserWarning,
                        stacklevel=3,
                    )
            self.port = server.server_address[1]
            server.dashboard = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve,
                name="minidist-dashboard",
                daemon=True,
            )
            self._thread.start()

    def _bind(self, port: int) -> _HTTPServer:
        bind_host = "" if self.host in ("*", "") else self.host
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET

        class Server(_HTTPServer):
            address_family = family

        return Server((bind_host, port), _Handler)

    def close(self) -> None:
        """Stop serving, join the thread and free the port. Safe to call twice, or before start()."""
        with self._lock:
            self._closed = True
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.stop()
        if thread is not None:
            thread.join()
        if server is not None:
            server.server_close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def link(self) -> str:
        """The URL of ``/status`` (host as given; a wildcard host becomes the loopback address)."""
        host = self.host
        if host in _WILDCARD_HOSTS:
            host = "[::1]" if host == "::" else DEFAULT_HOST
        elif ":" in host:
            host = f"[{host}]"
        token = f"?token={self.token}" if self.token is not None else ""
        return f"http://{host}:{self.port}{self.prefix}/status{token}"

    @property
    def cookie_name(self) -> str:
        return f"minidist-dashboard-{self.port}"  # cookies ignore ports: one name per server

    def __repr__(self):
        state = "running" if self.running else "not running"
        return f"<DashboardServer {self.link} ({state})>"

    # ---- content ----------------------------------------------------------------------------------

    def _load_assets(self) -> tuple[dict[str, tuple[bytes, str]], dict[str, str]]:
        """Read the static files and the page templates once: ({path: (body, content type)},
        {page: template}); templates get this server's prefix and title when a page is made."""
        static = resources.files("minidist.dashboard") / "static"
        assets = {f"static/{n}": ((static / n).read_bytes(), ct) for n, ct in _STATIC_FILES.items()}
        templates = {
            page: (static / f"{page}.html").read_text(encoding="utf-8")
            for page in ("status", "worker")
        }
        return assets, templates

    def html_page(self, page: str, config: dict) -> bytes:
        """A templated page (``status``/``worker``) with its JSON config embedded."""
        template = self._templates[page]
        config = dict(
            config, prefix=self.prefix, name=self.name, own_server=self.worker is not None
        )
        return (
            template.replace("{{NAV}}", self.nav())
            .replace("{{PREFIX}}", pages.escape(self.prefix))
            .replace("{{TITLE}}", pages.escape(self.name))
            .replace("{{CONFIG}}", pages.script_json(config))
            .encode()
        )

    def nav(self) -> str:
        return pages.nav_links(self.prefix, self.worker, self.home)

    def worker_data(self, ident: str) -> dict | None:
        """The per-worker dict (see module docstring), from ``worker_snapshot`` or derived."""
        if self.worker is not None and ident != self.worker:
            return None  # a worker's own server knows no other worker
        if self.worker_snapshot is not None:
            data = self.worker_snapshot(ident)
            if data is None:
                return None
            data = dict(data)
            data.setdefault("tasks", [])
            data.setdefault("task_stream", [])
            data.setdefault("logs", "")
            data.setdefault("time", None)
            return data
        snap = self.snapshot()
        worker = find_worker(snap.get("workers", []), ident)
        if worker is None:
            return None
        address = str(worker.get("address"))
        logs = self.logs()
        return {
            "time": snap.get("time"),
            "worker": worker,
            "tasks": [],
            "task_stream": [
                t for t in snap.get("task_stream", []) if str(t.get("worker")) == address
            ],
            "logs": logs.get(address, logs.get(str(worker.get("name")), "")),
        }


def _query(query: str, allowed: dict[str, Callable[[str], object]]) -> dict:
    """Parse a query string strictly: unknown names, repeats or bad values are a 400."""
    if not query:
        return {}
    try:
        fields = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as error:
        raise _BadRequest(f"malformed query string: {error}") from None
    result = {}
    for key, values in fields.items():
        if key not in allowed:
            raise _BadRequest(f"unexpected query parameter {key!r}")
        if len(values) != 1:
            raise _BadRequest(f"query parameter {key!r} given {len(values)} times")
        try:
            result[key] = allowed[key](values[0])
        except ValueError:
            raise _BadRequest(f"bad value for query parameter {key!r}: {values[0]!r}") from None
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "minidist-dashboard"

    timeout = REQUEST_TIMEOUT  # per read of the request and write of the answer
    _cookie: str | None = None

    def setup(self):
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # the server's, as its waiting room

    def log_message(self, format, *args):  # no access log on the user's stderr
        pass

    def _check_access(self, dash: DashboardServer) -> tuple | None:
        """None when the request may be answered (``self.path`` then has no token), else a 403 answer."""
        refusal, self.path, self._cookie = check_request(
            self.path, self.headers, dash.host_check, dash.token, dash.prefix, dash.cookie_name
        )
        return None if refusal is None else self._error(dash, HTTPStatus.FORBIDDEN, refusal)

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        dash = self.server.dashboard
        try:
            denied = self._check_access(dash)
            status, body, ctype, extra = denied if denied else self._route(dash)
        except _BadRequest as error:
            status, body, ctype, extra = self._error(dash, HTTPStatus.BAD_REQUEST, str(error))
        except _NotFound as error:
            status, body, ctype, extra = self._error(dash, HTTPStatus.NOT_FOUND, str(error))
        except Exception as error:  # snapshot()/logs() failed, or a bug: answer, keep serving
            message = f"{type(error).__name__}: {error}"
            status, body, ctype, extra = self._error(
                dash, HTTPStatus.INTERNAL_SERVER_ERROR, message
            )
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in extra.items():
                self.send_header(key, value)
            if self._cookie is not None and status < 400:
                self.send_header("Set-Cookie", self._cookie)
            self.end_headers()
            if not head:
                self.wfile.write(body)
        except OSError:  # the client went away
            pass

    def _wants_json(self) -> bool:
        return "/json/" in urlsplit(self.path).path

    def _error(self, dash: DashboardServer, status: HTTPStatus, message: str):
        if self._wants_json():
            return (
                status,
                to_json({"error": message, "status": int(status)}),
                "application/json",
                {},
            )
        body = pages.error_page(
            dash.prefix, dash.name, int(status), status.phrase, message, dash.nav()
        )
        return status, body, "text/html; charset=utf-8", {}

    def _route(self, dash: DashboardServer):
        url = urlsplit(self.path)
        raw_path = url.path or "/"
        if raw_path in ("/", dash.prefix, dash.prefix + "/"):
            _query(url.query, {})
            return self._redirect(dash.prefix + "/status")
        if dash.prefix:
            if not raw_path.startswith(dash.prefix + "/"):
                raise _NotFound(
                    f"no page at {unquote(raw_path)}: the dashboard is under {dash.prefix}/"
                )
            raw_path = raw_path[len(dash.prefix) :]
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        html = "text/html; charset=utf-8"
        head, rest = parts[0], parts[1:]

        if head == "status" and not rest:
            _query(url.query, {})
            if dash.worker is not None:  # a worker's own dashboard: its page is the status page
                return self._worker_page(dash, dash.worker)
            return HTTPStatus.OK, dash.html_page("status", {"page": "status"}), html, {}
        if head == "health" and not rest:
            _query(url.query, {})
            return HTTPStatus.OK, b"ok", "text/plain; charset=utf-8", {}
        if head == "static" and len(rest) == 1 and f"static/{rest[0]}" in dash._assets:
            _query(url.query, {})
            body, ctype = dash._assets[f"static/{rest[0]}"]
            return HTTPStatus.OK, body, ctype, {}
        if head == "info" and not rest:
            _query(url.query, {})
            snap = dash.snapshot()
            body = pages.info_page(dash.prefix, dash.name, snap, _call_logs(dash), dash.nav())
            return HTTPStatus.OK, body, html, {}
        if head == "logs" and len(rest) == 1:
            _query(url.query, {})
            logs = dash.logs()
            if rest[0] not in logs:
                raise _NotFound(
                    f"no logs for component {rest[0]!r}; known: {', '.join(logs) or 'none'}"
                )
            return (
                HTTPStatus.OK,
                pages.logs_page(dash.prefix, dash.name, rest[0], logs[rest[0]], dash.nav()),
                html,
                {},
            )
        if head == "worker" and len(rest) == 1:
            _query(url.query, {})
            return self._worker_page(dash, rest[0])
        if head == "json":
            return self._route_json(dash, rest, url.query)
        raise _NotFound(f"no page at {dash.prefix}{unquote(raw_path)}")

    def _route_json(self, dash: DashboardServer, rest: list[str], query: str):
        ctype = "application/json"
        if rest == ["status.json"]:
            params = _query(query, {"since": _finite_float})
            if dash.worker is not None:
                raise _NotFound(
                    f"this is the dashboard of worker {dash.worker}; the cluster's status is at "
                    f"{dash.home or 'the cluster dashboard'}"
                )
            if "since" in params and dash._snapshot_takes_since:
                snap = dash.snapshot(since=params["since"])
            else:
                snap = dash.snapshot()
            if "since" in params:
                since = params["since"]
                snap = dict(
                    snap,
                    task_stream=[
                        t for t in snap.get("task_stream", []) if t.get("stop", 0) >= since
                    ],
                )
            return HTTPStatus.OK, to_json(snap), ctype, {}
        if rest == ["logs.json"]:
            _query(query, {})
            return HTTPStatus.OK, to_json(dash.logs()), ctype, {}
        if len(rest) == 2 and rest[0] == "worker" and rest[1].endswith(".json"):
            _query(query, {})
            ident = rest[1][: -len(".json")]
            data = dash.worker_data(ident)
            if data is None:
                raise _NotFound(f"no worker with address or name {ident!r}")
            return HTTPStatus.OK, to_json(data), ctype, {}
        raise _NotFound(f"no JSON endpoint at {dash.prefix}/json/{'/'.join(rest)}")

    def _worker_page(self, dash: DashboardServer, ident: str):
        data = dash.worker_data(ident)
        if data is None:
            raise _NotFound(f"no worker with address or name {ident!r}")
        config = {"page": "worker", "worker": ident}
        return HTTPStatus.OK, dash.html_page("worker", config), "text/html; charset=utf-8", {}

    def _redirect(self, location: str):
        body = pages.redirect_page(location)
        return HTTPStatus.FOUND, body, "text/html; charset=utf-8", {"Location": location}


def _call_logs(dash: DashboardServer):
    """logs() for the info page: a failure there shows in red next to the worker table, not as a 500."""
    try:
        return dash.logs()
    except Exception as error:
        return error
