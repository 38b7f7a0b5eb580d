"""minidist.testing, the kit for libraries that embed minidist: its leak check names each kind of leak,
its fixtures and graph strategies work as a pytest plugin in another project, and hypothesis stays
optional."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from minidist import LocalCluster
from minidist.testing import LeakError, TaskGraph, TaskNode, no_leaks

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leave_a_thread(cleanups):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="minidist-left-behind", daemon=True)
    thread.start()
    cleanups.append(lambda: (stop.set(), thread.join()))


def leave_a_process(cleanups):
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    cleanups.append(lambda: (child.stdin.close(), child.wait()))


def leave_a_descriptor(cleanups):
    r, w = os.pipe()
    cleanups.append(lambda: (os.close(r), os.close(w)))


def leave_a_port(cleanups):
    listener = socket.create_server(("127.0.0.1", 0))
    cleanups.append(listener.close)


def leave_a_segment(cleanups):
    path = f"/dev/shm/minidist_{os.getpid()}-0123456789ab_{os.getpid()}_0-deadbeef"
    open(path, "wb").close()
    cleanups.append(lambda: os.unlink(path))


def leave_a_cluster(cleanups):
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
    cleanups.append(cluster.close)


@pytest.mark.parametrize(
    "leave, named",
    [
        (leave_a_thread, r"threads \['minidist-left-behind'\]"),
        (leave_a_process, r"processes \[\d+\] \(.*sys.stdin.read"),
        (leave_a_descriptor, r"2 file descriptors \(new: .*pipe:"),
        (leave_a_port, r"listening ports \[\('127.0.0.1', \d+\)\]"),
        (leave_a_segment, r"shared-memory segments \['minidist_\d+-0123456789ab_"),
        (leave_a_cluster, r"processes .*minidist.worker.*threads \['minidist-"),
    ],
)
def test_no_leaks_names_what_was_left_behind(leave, named):
    cleanups: list = []
    try:
        with pytest.raises(LeakError, match=named):
            with no_leaks(timeout=0.3):
                leave(cleanups)
    finally:
        for cleanup in cleanups:
            cleanup()


def test_no_leaks_leaves_alone_the_pools_libraries_keep_for_the_whole_process():
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(2)  # as dask's threaded scheduler keeps one
    try:
        with no_leaks(timeout=0.3):
            assert list(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]
    finally:
        pool.shutdown()


def test_no_leaks_passes_when_everything_is_closed():
    with no_leaks(timeout=10):
        cleanups: list = []
        for leave in (leave_a_thread, leave_a_descriptor, leave_a_port, leave_a_cluster):
            leave(cleanups)
        for cleanup in cleanups:
            cleanup()


def test_a_task_graph_knows_its_sequential_answer():
    graph = TaskGraph(
        [
            TaskNode("add", (), 7),
            TaskNode("fail", (0,), 0),  # refuses a multiple of 7
            TaskNode("mul", (0,), 3),
            TaskNode("add", (1, 2), 0),  # fails with its first failed dependency
        ]
    )
    expected = graph.expected()
    assert expected[0] == 7 and expected[2] == 21
    assert str(expected[1]) == str(expected[3]) == "refusing 7"
    # a node whose dependencies 1 and 3 both failed may end with either error; it says so
    two = TaskGraph(
        [
            TaskNode("add", (), 7),
            TaskNode("fail", (0,), 0),
            TaskNode("add", (), 14),
            TaskNode("fail", (2,), 0),
            TaskNode("add", (1, 3), 0),
        ]
    )
    assert str(two.expected()[4]) == "refusing 7"  # the first, for a plain loop
    assert {str(e) for e in two.outcomes()[4].errors} == {"refusing 7", "refusing 14"}
    with pytest.raises(ValueError, match="only depend on earlier nodes"):
        TaskGraph([TaskNode("add", (0,), 1)])


DOWNSTREAM = {
    "conftest.py": 'pytest_plugins = ["minidist.testing"]\n',
    "test_downstream.py": """
        import threading
        import pytest
        from hypothesis import HealthCheck, given, settings
        from minidist.testing import task_graphs

        def inc(x):
            return x + 1

        def test_process_client(client, cluster):
            assert client.submit(inc, 1).result(timeout=30) == 2
            assert len(cluster.scheduler_info["workers"]) == 2
            assert cluster.processes

        def test_thread_client(thread_client, thread_cluster):
            assert thread_client.submit(inc, 1).result(timeout=30) == 2
            assert not thread_cluster.processes

        @settings(max_examples=5, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(graph=task_graphs(max_tasks=8))
        def test_graphs(thread_client, graph):
            graph.check(graph.submit(thread_client), timeout=30)

        def test_leaky(leak_check):
            threading.Thread(target=threading.Event().wait, name="minidist-mine", daemon=True).start()
        """,
    "test_options.py": """
        import pytest

        @pytest.fixture
        def minidist_cluster_options():
            return {"n_workers": 1, "threads_per_worker": 3, "dashboard_address": None}

        def test_sized(thread_client):
            (worker,) = thread_client.scheduler_info()["workers"].values()
            assert worker["nthreads"] == 3
        """,
}


def test_the_fixtures_work_as_a_plugin_in_another_project(tmp_path):
    for name, text in DOWNSTREAM.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    summary = done.stdout.strip().splitlines()[-1]
    # test_leaky passes, then its leak_check fixture errs at teardown
    assert "5 passed, 1 error" in summary, done.stdout + done.stderr
    assert "LeakError: left behind: threads ['minidist-mine']" in done.stdout


def test_import_minidist_needs_neither_hypothesis_nor_pytest():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["hypothesis"] = None  # makes "import hypothesis" fail
        sys.modules["pytest"] = None
        import minidist
        from minidist import Client
        from minidist.testing import no_leaks, task_graphs
        with no_leaks(timeout=10):
            with Client(processes=False, n_workers=1, dashboard_address=None) as client:
                assert client.submit(abs, -2).result() == 2
        try:
            task_graphs()
        except ImportError:
            print("graphs need hypothesis")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "graphs need hypothesis"
