"""HTTP tests of the dashboard server against its own contract: a snapshot-shaped dict and a logs dict.

Every endpoint is fetched with urllib, with and without a prefix; failures of the engine's callables must
become 500 answers while the server keeps serving; ports and threads must be gone after close().
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from urllib.parse import quote

import pytest

from minidist.dashboard.server import DashboardServer, parse_dashboard_address

pytestmark = pytest.mark.timeout(30)

WORKER_A = "inproc://127.0.0.1/4242/1"
WORKER_B = "tcp://127.0.0.1:40001"


def make_snapshot(now: float | None = None) -> dict:
    now = time.time() if now is None else now
    counts = {"waiting": 3, "queued": 1, "processing": 2, "memory": 5, "erred": 1, "released": 2}
    return {
        "time": now,
        "cluster": {
            "name": "LocalCluster",
            "scheduler_address": "inproc://127.0.0.1/4242/0",
            "n_workers": 2,
            "threads": 3,
            "memory_limit": 3 * 2**30,
            "status": "running",
        },
        "workers": [
            {
                "address": WORKER_A,
                "name": "0",
                "nthreads": 2,
                "processing": 2,
                "executing": 1,
                "memory": 200 * 2**20,
                "memory_limit": 2**30,
                "cpu": 97.5,
                "pid": 4243,
                "status": "running",
                "in_memory": 4,
                "dashboard": None,
            },
            {
                "address": WORKER_B,
                "name": "big-worker",
                "nthreads": 1,
                "processing": 0,
                "executing": 0,
                "memory": 10 * 2**20,
                "memory_limit": None,
                "cpu": 0.0,
                "pid": None,
                "status": "paused",
                "in_memory": 1,
                "dashboard": "http://127.0.0.1:9999/status",
            },
        ],
        "tasks": {
            "by_prefix": {"inc": dict(counts), "sum": {k: 0 for k in counts}},
            "totals": dict(counts),
        },
        "task_stream": [
            {
                "key": f"inc-{i:032x}",
                "prefix": "inc",
                "worker": WORKER_A if i % 2 else WORKER_B,
                "thread": i % 2,
                "start": now - 10 + i,
                "stop": now - 9.5 + i,
                "status": "error" if i == 3 else "ok",
            }
            for i in range(6)
        ],
    }


LOGS = {
    "Cluster": "cluster started",
    "Scheduler": "scheduler line 1\nscheduler <b>line</b> 2",
    WORKER_A: "worker A started",
    WORKER_B: "",
}


class Engine:
    """The callables a cluster hands to the server, with call counts and switchable failures."""

    def __init__(self):
        self.snapshot_calls = 0
        self.fail: Exception | None = None
        self.logs_fail: Exception | None = None
        self.snap = make_snapshot()

    def snapshot(self) -> dict:
        self.snapshot_calls += 1
        if self.fail is not None:
            raise self.fail
        return self.snap

    def logs(self) -> dict:
        if self.logs_fail is not None:
            raise self.logs_fail
        return dict(LOGS)


def dashboard_threads():
    return [t for t in threading.enumerate() if t.name == "minidist-dashboard"]


@pytest.fixture(params=["", "/foo"], ids=["no-prefix", "prefix"])
def served(request):
    engine = Engine()
    server = DashboardServer(
        ":0", engine.snapshot, engine.logs, prefix=request.param, name="test-cluster"
    )
    server.start()
    yield server, engine
    server.close()
    assert not dashboard_threads()


def fetch(server, path, method="GET"):
    """(status, headers, body bytes) of ``<prefix><path>``; HTTP errors are returned, not raised."""
    url = f"http://127.0.0.1:{server.port}{server.prefix}{path}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method=method), timeout=10
        ) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_link_is_the_status_page_and_root_redirects(served):
    server, _ = served
    assert server.link == f"http://127.0.0.1:{server.port}{server.prefix}/status"
    with urllib.request.urlopen(server.link, timeout=10) as response:
        assert response.status == 200
        assert "text/html" in response.headers["Content-Type"]
    opener = urllib.request.build_opener(NoRedirect)
    roots = {"/", server.prefix + "/"} | ({server.prefix} if server.prefix else set())
    for root in roots:
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(f"http://127.0.0.1:{server.port}{root}", timeout=10)
        info.value.close()  # the error holds urllib's connection: close it, not the garbage collector
        assert info.value.code == 302
        assert info.value.headers["Location"] == f"{server.prefix}/status"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10) as response:
        assert response.url == server.link


def test_status_page_is_self_contained_and_its_assets_load(served):
    server, _ = served
    status, _, body = fetch(server, "/status")
    page = body.decode()
    assert status == 200
    assert 'id="workers"' in page and 'id="stream"' in page and 'id="progress"' in page
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs, page
    for ref in refs:
        assert ref.startswith(server.prefix + "/"), ref  # same server, never a CDN
        status, headers, asset = fetch(server, ref[len(server.prefix) :])
        assert status == 200, ref
        if "/static/" not in ref:
            continue
        text = asset.decode()
        assert "https://" not in text and "@import" not in text and "url(http" not in text
        # the only absolute URL allowed in the assets is the SVG namespace, which is never fetched
        assert set(re.findall(r"http://[^\s\"'`]+", text)) <= {"http://www.w3.org/2000/svg"}, ref
    config = json.loads(
        re.search(r'<script id="config" type="application/json">(.*?)</script>', page).group(1)
    )
    assert config["prefix"] == server.prefix and config["page"] == "status"


def test_status_json_is_the_snapshot_and_since_filters_the_stream(served):
    server, engine = served
    status, headers, body = fetch(server, "/json/status.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == engine.snap
    cut = engine.snap["task_stream"][3]["stop"]
    status, _, body = fetch(server, f"/json/status.json?since={cut!r}")
    data = json.loads(body)
    assert [t["key"] for t in data["task_stream"]] == [
        t["key"] for t in engine.snap["task_stream"][3:]
    ]
    assert data["workers"] == engine.snap["workers"]


def test_each_request_calls_snapshot_at_most_once(served):
    server, engine = served
    for path in [
        "/json/status.json",
        "/info",
        f"/worker/{quote(WORKER_A, safe='')}",
        "/json/worker/0.json",
        "/status",
        "/health",
        "/json/logs.json",
    ]:
        before = engine.snapshot_calls
        assert fetch(server, path)[0] == 200, path
        assert engine.snapshot_calls - before <= 1, path
    before = engine.snapshot_calls
    fetch(server, "/status")
    fetch(server, "/static/dashboard.js")
    assert engine.snapshot_calls == before  # pages and assets are served from memory


def test_logs_json_and_log_pages_show_the_same_texts(served):
    server, _ = served
    status, _, body = fetch(server, "/json/logs.json")
    assert status == 200 and json.loads(body) == LOGS
    for component, text in LOGS.items():
        status, _, page = fetch(server, f"/logs/{quote(component, safe='')}")
        assert status == 200, component
        for line in text.splitlines():
            assert line.replace("<", "&lt;").replace(">", "&gt;") in page.decode()
    assert b"<b>line</b>" not in fetch(server, "/logs/Scheduler")[2]  # escaped, never markup
    status, _, page = fetch(server, "/logs/nobody")
    assert status == 404 and b'class="error"' in page


def test_info_lists_workers_and_links_every_component_log(served):
    server, _ = served
    status, _, body = fetch(server, "/info")
    page = body.decode()
    assert status == 200
    assert "big-worker" in page and WORKER_A in page and "inproc://127.0.0.1/4242/0" in page
    log_links = re.findall(r'href="([^"]*/logs/[^"]+)"', page)
    linked = {urllib.parse.unquote(link.rsplit("/", 1)[1]) for link in log_links}
    assert linked == set(LOGS)
    worker_links = set(re.findall(r'href="([^"]*/worker/[^"]+)"', page))
    assert len(worker_links) == 2
    for link in log_links + sorted(worker_links):
        assert fetch(server, link[len(server.prefix) :])[0] == 200, link
    assert "http://127.0.0.1:9999/status" in page  # the worker's own dashboard is linked


@pytest.mark.parametrize("ident", [WORKER_A, "0", "big-worker", WORKER_B])
def test_worker_page_and_json_by_address_or_name(served, ident):
    server, engine = served
    status, _, page = fetch(server, f"/worker/{quote(ident, safe='')}")
    assert status == 200 and b'id="logs"' in page
    status, _, body = fetch(server, f"/json/worker/{quote(ident, safe='')}.json")
    data = json.loads(body)
    worker = data["worker"]
    assert ident in (worker["address"], worker["name"])
    assert data["time"] == engine.snap["time"]
    assert data["logs"] == LOGS[worker["address"]]
    assert data["task_stream"] and {t["worker"] for t in data["task_stream"]} == {worker["address"]}


def test_unknown_worker_is_a_404(served):
    server, _ = served
    status, _, page = fetch(server, "/worker/nobody")
    assert status == 404 and b'class="error"' in page and b"nobody" in page
    status, headers, body = fetch(server, "/json/worker/nobody.json")
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert "nobody" in json.loads(body)["error"]


def test_worker_snapshot_callable_is_used_when_given():
    asked = []

    def worker_snapshot(ident):
        asked.append(ident)
        if ident != "w1":
            return None
        return {
            "time": 5.0,
            "worker": {"address": "x://w1", "name": "w1"},
            "tasks": [{"key": "inc-1", "prefix": "inc", "state": "executing"}],
        }

    engine = Engine()
    with DashboardServer(
        ":0", engine.snapshot, engine.logs, worker_snapshot=worker_snapshot
    ) as server:
        status, _, body = fetch(server, "/json/worker/w1.json")
        assert status == 200
        assert json.loads(body) == {
            "time": 5.0,
            "worker": {"address": "x://w1", "name": "w1"},
            "tasks": [{"key": "inc-1", "prefix": "inc", "state": "executing"}],
            "task_stream": [],
            "logs": "",
        }
        assert fetch(server, "/worker/w2")[0] == 404
    assert asked == ["w1", "w2"]


def test_a_snapshot_that_takes_since_gets_it_and_the_server_still_filters():
    engine = Engine()
    asked = []

    def snapshot(since=None):
        asked.append(since)
        return engine.snap

    with DashboardServer(":0", snapshot, engine.logs) as server:
        cut = engine.snap["task_stream"][3]["stop"]
        body = json.loads(fetch(server, f"/json/status.json?since={cut!r}")[2])
        assert body["task_stream"] == engine.snap["task_stream"][3:]
        fetch(server, "/json/status.json")
    assert asked == [cut, None]


def test_a_worker_server_serves_only_its_worker():
    engine = Engine()
    own = {"time": 1.0, "worker": engine.snap["workers"][0], "logs": "worker A started"}
    home = "http://127.0.0.1:1/cluster/status"
    with DashboardServer(
        ":0",
        engine.snapshot,
        lambda: {WORKER_A: "worker A started"},
        prefix="/foo",
        worker_snapshot=lambda ident: own if ident == WORKER_A else None,
        name="Worker 0",
        worker=WORKER_A,
        home=home,
    ) as server:
        status, _, page = fetch(server, "/status")
        assert status == 200 and json.dumps(WORKER_A) in page.decode()  # the worker page is /status
        assert f'href="{home}"' in page.decode() and "/json/status.json" not in page.decode()
        data = json.loads(fetch(server, f"/json/worker/{quote(WORKER_A, safe='')}.json")[2])
        assert data["logs"] == "worker A started"
        assert fetch(server, f"/worker/{quote(WORKER_B, safe='')}")[0] == 404
        assert fetch(server, f"/worker/{quote(WORKER_A, safe='')}")[0] == 200
        status, _, body = fetch(server, "/json/status.json")
        assert status == 404 and home in json.loads(body)["error"]
        status, _, page = fetch(server, "/nowhere")
        assert status == 404 and f'href="{home}"' in page.decode()  # error pages keep the way home
        assert "worker A started" in fetch(server, f"/logs/{quote(WORKER_A, safe='')}")[2].decode()


def test_health(served):
    server, _ = served
    status, headers, body = fetch(server, "/health")
    assert (status, body) == (200, b"ok") and headers["Content-Type"].startswith("text/plain")
    assert fetch(server, "/health", method="HEAD")[:1] == (200,)


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/status/extra",
        "/json/nope.json",
        "/static/../server.py",
        "/static/missing.js",
        "/worker",
        "/json/worker/x",
    ],
)
def test_unknown_paths_are_404_pages(served, path):
    server, _ = served
    status, headers, body = fetch(server, path)
    assert status == 404
    if "/json/" in path:
        assert "error" in json.loads(body)
    else:
        assert b'class="error"' in body and headers["Content-Type"].startswith("text/html")


def test_paths_outside_the_prefix_are_404():
    engine = Engine()
    with DashboardServer(":0", engine.snapshot, engine.logs, prefix="foo/") as server:
        assert server.prefix == "/foo" and server.link.endswith(f":{server.port}/foo/status")
        for path in ["/status", "/json/status.json", "/foobar/status", "/health"]:
            url = f"http://127.0.0.1:{server.port}{path}"
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url, timeout=10)
            info.value.close()  # the error holds urllib's connection
            assert info.value.code == 404, path


@pytest.mark.parametrize(
    "query",
    [
        "x=1",
        "since=abc",
        "since=nan",
        "since=inf",
        "since=1&since=2",
        "junk",
        "since=1&other=2",
        "%zz=1=2&&",
    ],
)
def test_junk_queries_are_400(served, query):
    server, _ = served
    status, _, body = fetch(server, f"/json/status.json?{query}")
    assert status == 400 and "error" in json.loads(body)
    status, _, page = fetch(server, f"/status?{query}")
    assert status == 400 and b'class="error"' in page


def test_a_failing_snapshot_is_a_500_with_its_message_and_the_server_keeps_serving(served):
    server, engine = served
    engine.fail = RuntimeError("scheduler state is busy")
    status, headers, body = fetch(server, "/json/status.json")
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"] == "RuntimeError: scheduler state is busy"
    status, _, page = fetch(server, "/info")
    assert status == 500 and b'class="error"' in page and b"scheduler state is busy" in page
    assert fetch(server, "/json/worker/0.json")[0] == 500
    assert fetch(server, "/health")[0] == 200 and fetch(server, "/status")[0] == 200
    engine.fail = None
    assert json.loads(fetch(server, "/json/status.json")[2]) == engine.snap


def test_failing_logs_show_in_red_on_the_info_page(served):
    server, engine = served
    engine.logs_fail = OSError("log buffer gone")
    status, _, page = fetch(server, "/info")
    assert status == 200 and b'class="error"' in page and b"log buffer gone" in page
    assert b"big-worker" in page
    status, _, body = fetch(server, "/json/logs.json")
    assert status == 500 and "log buffer gone" in json.loads(body)["error"]


def test_non_finite_numbers_become_null(served):
    server, engine = served
    engine.snap = make_snapshot()
    engine.snap["workers"][0]["cpu"] = math.nan
    engine.snap["workers"][1]["memory"] = math.inf
    data = json.loads(fetch(server, "/json/status.json")[2])  # strict JSON parses
    assert data["workers"][0]["cpu"] is None and data["workers"][1]["memory"] is None


def test_requests_write_nothing_to_stderr(served, capfd):
    server, _ = served
    for path in ["/status", "/nope", "/json/status.json?bad", "/info"]:
        fetch(server, path)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_port_zero_and_host_forms():
    engine = Engine()
    for address, host in [
        (":0", "127.0.0.1"),
        ("localhost:0", "localhost"),
        ("127.0.0.1:0", "127.0.0.1"),
    ]:
        with DashboardServer(address, engine.snapshot, engine.logs) as server:
            assert server.port > 0 and server.host == host
            assert server.link == f"http://{host}:{server.port}/status"
            with urllib.request.urlopen(server.link, timeout=10) as response:
                assert response.status == 200


def test_a_taken_port_falls_back_to_a_free_one_with_one_warning():
    engine = Engine()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        server = DashboardServer(f":{taken}", engine.snapshot, engine.logs, prefix="/foo")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            server.start()
        try:
            assert server.port not in (taken, 0)
            assert len(caught) == 1
            message = str(caught[0].message)
            assert str(taken) in message and server.link in message
            with urllib.request.urlopen(server.link, timeout=10) as response:
                assert response.status == 200
        finally:
            server.close()


def test_default_address_serves_on_8787_or_warns_once():
    engine = Engine()
    server = DashboardServer(":8787", engine.snapshot, engine.logs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        server.start()
    try:
        # another program may hold 8787 on this machine: then exactly one warning names the new link
        assert (server.port == 8787 and not caught) or (server.port != 8787 and len(caught) == 1)
        assert fetch(server, "/health")[2] == b"ok"
    finally:
        server.close()


def test_close_frees_the_port_and_thread_and_is_idempotent():
    engine = Engine()
    server = DashboardServer(":0", engine.snapshot, engine.logs)
    server.close()  # before start: nothing to do
    server = DashboardServer(":0", engine.snapshot, engine.logs)
    server.start()
    port = server.port
    assert fetch(server, "/health")[0] == 200
    assert [t.daemon for t in dashboard_threads()] == [True]
    server.close()
    server.close()
    assert not server.running and not dashboard_threads()
    with socket.socket() as probe:  # nothing listens there any more (TIME_WAIT is allowed)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a new dashboard gets the very same port, without a warning
        with DashboardServer(f":{port}", engine.snapshot, engine.logs) as again:
            assert again.port == port and fetch(again, "/health")[0] == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    with pytest.raises(RuntimeError):
        server.start()


@pytest.mark.parametrize(
    "address, expected",
    [
        (":8787", ("127.0.0.1", 8787)),
        (":0", ("127.0.0.1", 0)),
        ("localhost:8787", ("localhost", 8787)),
        ("0.0.0.0:1234", ("0.0.0.0", 1234)),
        ("myhost", ("myhost", 8787)),
        ("8788", ("127.0.0.1", 8788)),
        (8789, ("127.0.0.1", 8789)),
        ("[::1]:8000", ("::1", 8000)),
        ("http://localhost:9000/", ("localhost", 9000)),
        (None, None),
        ("", None),
        (False, None),
    ],
)
def test_parse_dashboard_address(address, expected):
    assert parse_dashboard_address(address) == expected


@pytest.mark.parametrize("address", [":http", "host:99999", "host:-1", 3.5, "[::1]x"])
def test_parse_dashboard_address_rejects_nonsense(address):
    with pytest.raises((ValueError, TypeError)):
        parse_dashboard_address(address)


def test_disabled_address_cannot_make_a_server():
    with pytest.raises(ValueError, match="disabled"):
        DashboardServer(None, dict, dict)


def test_wildcard_host_link_uses_loopback():
    engine = Engine()
    with DashboardServer("0.0.0.0:0", engine.snapshot, engine.logs, prefix="/x") as server:
        assert server.link == f"http://127.0.0.1:{server.port}/x/status"
        with urllib.request.urlopen(server.link, timeout=10) as response:
            assert response.status == 200


def test_repr_html_summarises_the_cluster_and_links_the_dashboard():
    from minidist.dashboard.pages import repr_html

    html = repr_html("LocalCluster <x>", make_snapshot(), "http://127.0.0.1:8787/foo/status")
    assert "LocalCluster &lt;x&gt;" in html and "<x>" not in html
    assert '<a href="http://127.0.0.1:8787/foo/status"' in html
    assert "inproc://127.0.0.1/4242/0" in html and "210.0" in html  # 200 MiB + 10 MiB in use
    assert "href" not in repr_html("Client", {"cluster": {}, "workers": []})
