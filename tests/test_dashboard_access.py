"""Who may use the dashboard: Host headers (DNS rebinding), slow or silent connections, the optional token."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time

import pytest

from conftest import wait_until, wake_ups
from minidist import Client, LocalCluster
from minidist.dashboard.server import DashboardServer

pytestmark = pytest.mark.timeout(60)


def _snapshot() -> dict:
    return {"time": 0.0, "cluster": {}, "workers": [], "tasks": {}, "task_stream": []}


def _logs() -> dict:
    return {"Scheduler": "what a task logged: a password, perhaps"}


@pytest.fixture
def dashboard():
    server = DashboardServer(":0", _snapshot, _logs, allowed_hosts=["dash.example.org"])
    server.start()
    yield server
    server.close()


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "host",
    ["attacker.example.com", "attacker.example.com:8787", "127.0.0.1.attacker.example.com"],
)
def test_a_host_name_the_dashboard_does_not_answer_to_is_refused(dashboard, host):
    """DNS rebinding: a page of attacker.example.com, re-pointed at 127.0.0.1, must not read the logs."""
    status, _, body = get(dashboard.port, "/json/logs.json", {"Host": host})
    assert status == 403
    assert "DNS rebinding" in json.loads(body)["error"]
    assert b"password" not in body


@pytest.mark.parametrize(
    "host",
    [
        None,  # http.client's own: 127.0.0.1:<port>
        "localhost",
        "LOCALHOST:8787",
        "[::1]:8787",
        "10.1.2.3:8787",
        socket.gethostname(),
        "dash.example.org",  # given in allowed_hosts
    ],
)
def test_addresses_localhost_this_machine_and_allowed_names_are_answered(dashboard, host):
    status, _, body = get(dashboard.port, "/json/logs.json", {"Host": host} if host else {})
    assert status == 200
    assert json.loads(body) == _logs()


def test_silent_connections_hold_no_thread_and_are_closed(dashboard):
    dashboard._server.request_timeout = 1.0
    before = threading.active_count()
    silent = [socket.create_connection(("127.0.0.1", dashboard.port)) for _ in range(100)]
    try:
        status, _, _ = get(dashboard.port, "/health")  # a real request is answered meanwhile
        assert status == 200
        assert threading.active_count() - before < 5, "silent connections hold threads"
        for sock in silent:
            sock.settimeout(10)
        assert all(sock.recv(1) == b"" for sock in silent)  # each closed after its timeout
    finally:
        for sock in silent:
            sock.close()


def test_an_idle_dashboard_thread_sleeps_until_a_connection_comes(dashboard):
    # It used to wake every second; what each wake-up made lived on while it slept, in whichever
    # allocator arena was current, and after a large run that kept one of the run's arenas in the
    # client's memory (3-4 points of the 10% the client may keep after releasing 100,000 tasks)
    (thread,) = [t for t in threading.enumerate() if t.name == "minidist-dashboard"]
    assert get(dashboard.port, "/health")[0] == 200

    def asleep() -> bool:  # back in poll(): its innermost Python frame is the serving loop
        frame = sys._current_frames().get(thread.ident)
        return frame is not None and frame.f_code.co_name == "serve"

    assert wait_until(asleep)
    start = wake_ups(thread)
    time.sleep(4.5)  # a window to count wake-ups in, not a wait for something
    # at most going to sleep, if the wait above saw it just before, and a wait for the GIL on the
    # way (a busy machine): it used to wake 4-5 times in this window
    assert wake_ups(thread) - start <= 2
    assert get(dashboard.port, "/health")[0] == 200  # and a connection still wakes it


def test_a_request_that_stops_half_way_times_out(dashboard):
    dashboard._server.request_timeout = 1.0
    sock = socket.create_connection(("127.0.0.1", dashboard.port))
    with sock:
        sock.sendall(b"GET /json/logs.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end
        started = time.monotonic()
        sock.settimeout(20)
        while sock.recv(4096):
            pass
        assert time.monotonic() - started < 8  # the handler's read timeout ended it
    assert wait_until(lambda: threading.active_count() < 50)


def test_requests_beyond_the_busy_limit_get_503_and_service_comes_back(dashboard):
    """At most MAX_ACTIVE requests hold a thread: with all of them stuck half way, the next request is
    answered 503 at once instead of queueing a thread; once they go, requests are served again."""
    limit = dashboard._server.max_active
    stuck = [socket.create_connection(("127.0.0.1", dashboard.port)) for _ in range(limit)]
    try:
        for sock in stuck:  # each request line arrives, its headers never end: its thread waits
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # the dashboard hands the stuck requests to threads in its own time: ask until all are taken
        assert wait_until(lambda: get(dashboard.port, "/health")[0] == 503, timeout=10)
    finally:
        for sock in stuck:
            sock.close()
    assert wait_until(lambda: get(dashboard.port, "/health")[0] == 200, timeout=10)


# --- the token ------------------------------------------------------------------------------------------


@pytest.fixture
def guarded():
    with LocalCluster(
        n_workers=1, processes=False, dashboard_address=":0", dashboard_token="s3cret-Token_1"
    ) as cluster:
        yield cluster


def _port_and_path(link: str) -> tuple[int, str]:
    rest = link.split("://", 1)[1]
    host_port, _, path = rest.partition("/")
    return int(host_port.rsplit(":", 1)[1]), "/" + path


def test_the_dashboard_link_carries_the_token_and_sets_a_cookie(guarded):
    assert guarded.dashboard_link.endswith("/status?token=s3cret-Token_1")
    port, path = _port_and_path(guarded.dashboard_link)
    status, headers, body = get(port, path)
    assert status == 200 and b"<html" in body.lower()
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"minidist-dashboard-{port}=s3cret-Token_1")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    # the page's own requests carry the cookie
    status, _, body = get(port, "/json/status.json", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and json.loads(body)["cluster"]["n_workers"] == 1


def test_requests_without_the_token_are_refused(guarded):
    port, _ = _port_and_path(guarded.dashboard_link)
    for path, headers in [
        ("/json/logs.json", {}),
        ("/status", {}),
        ("/status?token=wrong", {}),
        ("/json/logs.json", {"Cookie": f"minidist-dashboard-{port}=wrong"}),
        ("/json/logs.json", {"Authorization": "Bearer wrong"}),
    ]:
        status, headers_back, body = get(port, path, headers)
        assert status == 403, path
        assert b"needs its token" in body
        assert "Set-Cookie" not in headers_back


def test_scripts_may_send_the_token_as_a_bearer_header_and_health_needs_none(guarded):
    port, _ = _port_and_path(guarded.dashboard_link)
    status, _, body = get(port, "/json/logs.json", {"Authorization": "Bearer s3cret-Token_1"})
    assert status == 200 and "Scheduler" in json.loads(body)
    assert get(port, "/health")[0] == 200
    status, _, body = get(port, "/json/status.json?since=0&token=s3cret-Token_1")
    assert status == 200  # the token is taken out before the route checks its own query


def test_client_makes_a_random_token_on_request_and_bad_tokens_are_refused():
    with Client(
        n_workers=1, processes=False, dashboard_address=":0", dashboard_token=True
    ) as client:
        token = client.dashboard_link.rsplit("?token=", 1)[1]
        assert len(token) >= 24
        port, path = _port_and_path(client.dashboard_link)
        assert get(port, path)[0] == 200
        assert get(port, "/status")[0] == 403
    with pytest.raises(ValueError, match="dashboard_token"):
        LocalCluster(n_workers=0, processes=False, dashboard_token="has space")
