"""The dashboard on real clusters: dashboard_address forms, the prefix, snapshots of real work, logs,
and worker dashboards that follow the workers (scale, crash) and close with the cluster.

Thread workers (processes=False) wherever the mode does not matter, for speed; worker processes where the
pages show what only processes have (pids, memory, CPU) or where workers can crash.
"""

from __future__ import annotations

import html
import json
import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from urllib.parse import quote, urlsplit

import pytest

from conftest import wait_until
from minidist import Client, LocalCluster
from minidist.keys import key_split

pytestmark = pytest.mark.timeout(60)


def fetch(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body); HTTP errors are answers here, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def fetch_json(url: str):
    status, body = fetch(url)
    assert status == 200, body[:500]
    return json.loads(body)


def base(link: str) -> str:
    """The dashboard's root (with its prefix) from a /status link."""
    assert link.endswith("/status"), link
    return link[: -len("/status")]


def refuses(link: str) -> bool:
    """True when nothing listens on the link's port any more."""
    parts = urlsplit(link)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # e.g. reset: the server was closing its socket just then
        return False
    return False


def dashboard_threads() -> int:
    return sum(t.name == "minidist-dashboard" for t in threading.enumerate())


def inc(x):
    return x + 1


def fail(x):
    raise ValueError(f"bad input {x}")


def slow_square(x, delay=0.01):
    time.sleep(delay)
    return x * x


def thread_cluster(**kwargs) -> LocalCluster:
    options = dict(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0")
    options.update(kwargs)
    return LocalCluster(**options)


# ---- dashboard_address ----------------------------------------------------------------------------


def test_default_address_is_8787_and_a_second_cluster_moves_with_one_warning():
    with warnings.catch_warnings(record=True) as first_warnings:
        warnings.simplefilter("always")
        first = LocalCluster(processes=False, n_workers=1)  # dashboard_address=":8787" by default
    try:
        with warnings.catch_warnings(record=True) as second_warnings:
            warnings.simplefilter("always")
            second = LocalCluster(processes=False, n_workers=1)
        try:
            ports = [urlsplit(c.dashboard_link).port for c in (first, second)]
            for cluster, port, caught in zip(
                (first, second), ports, (first_warnings, second_warnings)
            ):
                # 8787 may belong to someone else on this machine: then the first one moves too
                messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
                if port == 8787:
                    assert messages == []
                else:
                    assert len(messages) == 1 and "8787" in messages[0], messages
                    assert cluster.dashboard_link in messages[0]
                assert fetch(cluster.dashboard_link)[0] == 200
            assert ports[0] != ports[1] and ports[1] != 8787
        finally:
            second.close()
    finally:
        first.close()


def test_a_taken_port_falls_back_to_a_free_one_with_one_warning():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with thread_cluster(dashboard_address=f":{port}") as cluster:
                link = cluster.dashboard_link
                assert urlsplit(link).port not in (port, None)
                assert fetch(link)[0] == 200
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert len(messages) == 1 and str(port) in messages[0] and link in messages[0]


@pytest.mark.parametrize("address", [":0", "127.0.0.1:0", 0])
def test_port_zero_and_host_port_forms(address):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a free port
        with thread_cluster(dashboard_address=address) as cluster:
            link = cluster.dashboard_link
            parts = urlsplit(link)
            assert parts.hostname == "127.0.0.1" and parts.port not in (0, 8787)
            assert fetch(link)[0] == 200
    assert refuses(link)


@pytest.mark.parametrize("address", [None, ""])
def test_none_or_empty_address_disables_the_dashboard(address):
    before = dashboard_threads()
    with Client(processes=False, n_workers=1, dashboard_address=address) as client:
        assert client.dashboard_link is None and client.cluster.dashboard_link is None
        assert dashboard_threads() == before
        assert client.submit(inc, 1).result(timeout=10) == 2
        assert "Dashboard" not in client._repr_html_()


def test_prefix_moves_everything_and_the_link_includes_it():
    with (
        thread_cluster(service_kwargs={"dashboard": {"prefix": "/foo"}}) as cluster,
        Client(cluster) as client,
    ):
        link = client.dashboard_link
        assert link.endswith("/foo/status") and link == cluster.dashboard_link
        root = link[: -len("/foo/status")]
        future = client.submit(inc, 1)
        assert future.result(timeout=10) == 2
        status, page = fetch(link)
        assert status == 200 and b'href="/foo/static/dashboard.css"' in page
        snap = fetch_json(f"{root}/foo/json/status.json")
        assert snap["tasks"]["by_prefix"]["inc"]["memory"] == 1
        assert b'href="/foo/logs/Cluster"' in fetch(f"{root}/foo/info")[1]
        assert fetch(f"{root}/status")[0] == 404
        assert fetch(f"{root}/json/status.json")[0] == 404
        assert f'href="{html.escape(link)}"' in client._repr_html_()


# ---- what the pages show ----------------------------------------------------------------------------


def test_status_json_shows_real_work_by_prefix_with_tidy_thread_rows():
    with thread_cluster(n_workers=2, threads_per_worker=2) as cluster, Client(cluster) as client:
        root = base(client.dashboard_link)
        good = client.map(slow_square, range(40))
        bad = client.map(fail, range(3))
        client.gather(good)
        assert wait_until(lambda: all(f.status == "error" for f in bad))
        snap = fetch_json(f"{root}/json/status.json")
        by_prefix = snap["tasks"]["by_prefix"]
        assert by_prefix["slow_square"]["memory"] == 40 and by_prefix["fail"]["erred"] == 3
        assert snap["tasks"]["totals"]["memory"] == 40 and snap["tasks"]["totals"]["erred"] == 3
        assert snap["cluster"]["n_workers"] == 2 and snap["cluster"]["threads"] == 4
        # thread workers share this process: no pid, no memory of their own (the page shows "–")
        assert all(w["pid"] is None and w["memory"] is None for w in snap["workers"])
        addresses = {w["address"] for w in snap["workers"]}
        stream = snap["task_stream"]
        assert len(stream) == 43
        assert {t["prefix"] for t in stream} == {"slow_square", "fail"}
        assert all(t["prefix"] == key_split(t["key"]) for t in stream)
        assert sum(t["status"] == "error" for t in stream) == 3
        assert {t["worker"] for t in stream} <= addresses
        assert {t["thread"] for t in stream} <= {0, 1}  # row numbers, not raw thread idents
        assert all(t["start"] <= t["stop"] <= snap["time"] for t in stream)
        # ?since= sends only what ended since then, with the same row numbers
        cut = sorted(t["stop"] for t in stream)[30]
        newer = fetch_json(f"{root}/json/status.json?since={cut!r}")["task_stream"]
        assert newer == [t for t in stream if t["stop"] >= cut]


def test_one_answer_carries_at_most_the_newest_500_task_stream_entries():
    with thread_cluster(n_workers=1, threads_per_worker=1) as cluster, Client(cluster) as client:
        futures = client.map(inc, range(700))
        client.gather(futures)
        stream = fetch_json(f"{base(client.dashboard_link)}/json/status.json")["task_stream"]
        assert len(stream) == 500
        stops = [t["stop"] for t in stream]
        assert stops == sorted(
            stops
        )  # one thread: tasks ended in order, and these are the last ones
        assert stream[-1]["key"] == futures[-1].key and stream[0]["key"] == futures[200].key


def test_worker_pages_on_process_workers_show_pid_memory_and_own_tasks():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=":0", memory_limit="1GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        root = base(client.dashboard_link)
        futures = client.map(slow_square, range(20), delay=0.02)
        client.gather(futures)
        snap = fetch_json(f"{root}/json/status.json")
        assert len(snap["workers"]) == 2
        for worker in snap["workers"]:
            assert worker["pid"] in {
                c.pid for c in __import__("psutil").Process().children(recursive=True)
            }
            assert 0 < worker["memory"] < worker["memory_limit"] == 2**30
            assert worker["cpu"] >= 0
        worker = snap["workers"][0]
        address = worker["address"]
        for ident in (address, worker["name"]):
            assert fetch(f"{root}/worker/{quote(ident, safe='')}")[0] == 200
            data = fetch_json(f"{root}/json/worker/{quote(ident, safe='')}.json")
            assert data["worker"]["address"] == address and data["worker"]["pid"] == worker["pid"]
        assert data["task_stream"] and {t["worker"] for t in data["task_stream"]} == {address}
        assert {t["state"] for t in data["tasks"]} <= {"processing", "memory"}
        assert {t["prefix"] for t in data["tasks"]} <= {"slow_square"}
        assert data["logs"] == cluster.get_logs().get(address, "")
        assert fetch(f"{root}/worker/nobody")[0] == 404


def log_from_a_task(x):
    logging.getLogger("minidist.worker").warning("task <%s> & friends", x)
    return x


def test_info_and_log_pages_show_the_same_texts_as_get_logs():
    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=False
    ) as cluster:
        with Client(cluster) as client:
            assert client.submit(log_from_a_task, 1).result(timeout=30) == 1
        cluster.logger.warning("a <script>alert('line')</script> in the cluster's log")
        root = base(cluster.dashboard_link)
        # logs only grow while something happens: read them after the work, then compare
        assert wait_until(lambda: fetch_json(f"{root}/json/logs.json") == cluster.get_logs())
        logs = cluster.get_logs()
        assert {"Cluster", "Scheduler"} <= set(logs) and "<script>" in logs["Cluster"]
        info = fetch(f"{root}/info")[1].decode()
        for component, text in logs.items():
            assert f'href="/logs/{quote(component, safe="")}"' in info
            status, page = fetch(f"{root}/logs/{quote(component, safe='')}")
            assert status == 200
            assert (
                html.escape(text) in page.decode()
            )  # every line, escaped, nothing else in between
        assert "<script>alert" not in fetch(f"{root}/logs/Cluster")[1].decode()
        assert fetch(f"{root}/logs/no-such-component")[0] == 404


def test_repr_html_of_client_and_cluster_link_the_dashboard():
    with thread_cluster() as cluster, Client(cluster) as client:
        for obj in (client, cluster):
            text = obj._repr_html_()
            assert html.escape(cluster.dashboard_link) in text and "Workers" in text


# ---- worker_dashboard_address -----------------------------------------------------------------------


def worker_links(root: str) -> dict:
    return {w["address"]: w["dashboard"] for w in fetch_json(f"{root}/json/status.json")["workers"]}


def test_worker_dashboards_follow_scaling_and_close_with_the_cluster():
    with thread_cluster(
        n_workers=2, worker_dashboard_address=":0", service_kwargs={"dashboard": {"prefix": "/foo"}}
    ) as cluster:
        root = base(cluster.dashboard_link)
        with Client(cluster) as client:
            client.gather(client.map(inc, range(10)))
        links = worker_links(root)
        assert len(links) == 2 and len(set(links.values())) == 2
        for address, link in links.items():
            assert link.endswith("/foo/status") and urlsplit(link).port != urlsplit(root).port
            status, page = fetch(link)
            assert status == 200 and json.dumps(address) in page.decode()  # its own page
            assert cluster.dashboard_link in page.decode()  # and a way home
            data = fetch_json(f"{base(link)}/json/worker/{quote(address, safe='')}.json")
            assert data["worker"]["address"] == address
            assert fetch(f"{base(link)}/json/status.json")[0] == 404  # nothing about the others
            other = next(a for a in links if a != address)
            assert fetch(f"{base(link)}/worker/{quote(other, safe='')}")[0] == 404
            assert fetch(f"{base(link)}/info")[0] == 200
        # the main pages link each worker's own dashboard
        assert all(
            html.escape(link) in fetch(f"{root}/info")[1].decode() for link in links.values()
        )

        cluster.scale(3)
        assert wait_until(lambda: len(worker_links(root)) == 3)
        grown = worker_links(root)
        assert {a: grown[a] for a in links} == links and all(
            fetch(x)[0] == 200 for x in grown.values()
        )

        cluster.scale(1)
        assert wait_until(lambda: len(worker_links(root)) == 1)
        (kept,) = worker_links(root).values()
        assert all(refuses(x) for x in grown.values() if x != kept)
        assert fetch(kept)[0] == 200
    assert refuses(kept) and refuses(cluster.dashboard_link)
    assert dashboard_threads() == 0


@pytest.mark.timeout(90)
def test_worker_dashboards_follow_a_crashed_worker():
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=":0",
        worker_dashboard_address="127.0.0.1:0",
    ) as cluster:
        root = base(cluster.dashboard_link)
        before = worker_links(root)
        victim = next(iter(before))
        (pid,) = [
            w["pid"]
            for w in fetch_json(f"{root}/json/status.json")["workers"]
            if w["address"] == victim
        ]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(
            lambda: victim not in (links := worker_links(root)) and len(links) == 2, timeout=30
        )
        after = worker_links(root)
        assert refuses(before[victim])
        (new,) = set(after) - set(before)
        assert fetch(after[new])[0] == 200 and after[new] != before[victim]
    assert all(refuses(link) for link in after.values())


def test_a_worker_server_whose_worker_left_answers_404_and_closes():
    with thread_cluster(n_workers=2, worker_dashboard_address=":0") as cluster:
        root = base(cluster.dashboard_link)
        links = worker_links(root)
        cluster.scale(1)
        # nobody polls the main page: the departed worker's own server notices on its next request
        assert wait_until(lambda: len(cluster.scheduler_info["workers"]) == 1)
        (gone,) = set(links) - set(cluster.scheduler_info["workers"])
        status, body = fetch(f"{base(links[gone])}/json/worker/{quote(gone, safe='')}.json")
        assert status == 404 and "error" in json.loads(body)
        assert wait_until(lambda: refuses(links[gone]))
