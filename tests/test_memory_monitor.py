"""memory_limit through a real cluster: each form reported per worker, workers paused above 80% of it and
terminated above 95%, the cluster healed, a task that always blows the limit ending in KilledWorker."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import wait_until
from minidist import Client, KilledWorker, LocalCluster, get_worker
from minidist.deploy.memory import process_memory, system_memory
from minidist.errors import WorkerStartError

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


# quiet clusters without a dashboard (any keyword may be given again)
cluster = functools.partial(
    LocalCluster, dashboard_address=None, silence_logs=False, threads_per_worker=1
)


def limits(c) -> list:
    return [w["memory_limit"] for w in c.scheduler_info["workers"].values()]


def status_of(c, address) -> str:
    return c.scheduler_info["workers"][address]["status"]


# -------------------------------------------------------------------------------------------- forms


@pytest.mark.parametrize(
    "memory_limit, expected",
    [
        ("auto", system_memory() // 2),
        (0.25, system_memory() // 4),
        ("0.25", system_memory() // 4),
        ("300MiB", 300 * MiB),
        ("500MB", 500_000_000),
        (2**30, 2**30),
        (None, 0),  # scheduler_info says 0 for "no limit", as dask does
        (0, 0),
    ],
)
def test_each_memory_limit_form_is_reported_per_worker(memory_limit, expected):
    with cluster(n_workers=2, processes=False, memory_limit=memory_limit) as c:
        assert limits(c) == [expected, expected]


@pytest.mark.parametrize("memory_limit, expected", [("300MiB", 300 * MiB), (None, 0)])
def test_process_workers_report_their_limit_too(memory_limit, expected):
    with cluster(n_workers=2, memory_limit=memory_limit) as c:
        assert limits(c) == [expected, expected]
        assert {w["pid"] for w in c.scheduler_info["workers"].values()} != {os.getpid()}


def test_the_default_limit_shares_the_system_memory_among_the_workers():
    with cluster(n_workers=2, processes=False) as c:
        assert limits(c) == [system_memory() // 2] * 2


# ------------------------------------------------------------------------------------ pause/resume


def hold_memory(fraction, limit, release_file, timeout=30.0):
    """Grow this worker's private memory to ``fraction`` of ``limit`` and hold it until a file appears."""
    extra = int(fraction * limit) - process_memory(os.getpid())
    block = b"x" * max(extra, 0)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release_file) and time.monotonic() < deadline:
        time.sleep(0.02)
    del block
    return "released"


def where_am_i(_):
    return get_worker().address


def test_a_worker_above_80_percent_is_paused_gets_no_new_tasks_and_resumes_below(tmp_path):
    with cluster(n_workers=2, memory_limit="400MiB") as c, Client(c) as client:
        full, other = list(c.scheduler_info["workers"])
        release = tmp_path / "release"
        holder = client.submit(hold_memory, 0.87, 400 * MiB, str(release), workers=[full])
        assert wait_until(lambda: status_of(c, full) == "paused", timeout=20)
        placed = client.gather(client.map(where_am_i, range(8)))
        assert set(placed) == {other}  # the paused worker took none
        release.touch()
        assert holder.result(timeout=20) == "released"
        assert wait_until(lambda: status_of(c, full) == "running", timeout=10)
        assert len(c.scheduler_info["workers"]) == 2  # paused, never killed
        cluster_log = c.get_logs()["Cluster"]
        assert (
            f"Worker {full} is using" in cluster_log and "pausing it (no new tasks)" in cluster_log
        )
        assert "resuming it" in cluster_log
        assert "pausing it" in c.get_logs()[full]  # the worker's own log says so too


# ------------------------------------------------------------------------------------ termination


def hog_once(marker, mib):
    """Allocate and touch ``mib`` MiB the first time (marker missing) and hold it; then just answer."""
    if os.path.exists(marker):
        return "done"
    open(marker, "w").close()
    block = b"x" * (mib * MiB)
    time.sleep(20)  # the monitor kills us long before this ends
    return len(block)


def hog_always(mib):
    block = b"x" * (mib * MiB)
    time.sleep(20)
    return len(block)


def test_a_memory_hog_is_terminated_its_task_retried_and_the_worker_replaced(tmp_path):
    with cluster(n_workers=2, memory_limit="300MiB") as c, Client(c) as client:
        before = {w["pid"] for w in c.scheduler_info["workers"].values()}
        start = time.monotonic()
        assert client.submit(hog_once, str(tmp_path / "marker"), 400).result(timeout=30) == "done"
        assert time.monotonic() - start < 15  # killed at once, not after the task's 20 s sleep
        client.wait_for_workers(2, timeout=30)
        after = {w["pid"] for w in c.scheduler_info["workers"].values()}
        assert len(before - after) == 1  # exactly the hog's worker was replaced
        logs = c.get_logs()
        assert (
            "Terminating worker" in logs["Cluster"]
            and "exceeding its memory limit" in logs["Cluster"]
        )
        assert "died: terminated by minidist for exceeding its memory limit" in logs["Scheduler"]
        assert "Starting a replacement" in logs["Cluster"]
        [dead] = [
            a for a, text in logs.items() if a.startswith("ipc://") and "Terminating worker" in text
        ]
        assert dead not in c.scheduler_info["workers"]


def test_a_task_that_always_exceeds_the_limit_ends_in_killed_worker_after_bounded_retries():
    with cluster(n_workers=2, memory_limit="300MiB", scheduler_kwargs={"allowed_failures": 2}) as c:
        with Client(c) as client:
            poison = client.submit(hog_always, 400)
            others = client.map(lambda x: x * 10, range(5))
            with pytest.raises(KilledWorker) as info:
                poison.result(timeout=45)
            message = str(info.value)
            assert poison.key in message and "exceeding its memory limit" in message
            assert "300.00 MiB" in message
            deaths = c.get_logs()["Scheduler"].count(" died: terminated by minidist")
            assert deaths == 3  # allowed_failures + 1 deaths, then it gave up
            assert client.gather(others) == [0, 10, 20, 30, 40]
            client.wait_for_workers(2, timeout=30)
            assert client.submit(sum, [1, 2]).result(timeout=10) == 3


def test_results_in_shared_memory_do_not_count_against_the_limit():
    with cluster(n_workers=1, memory_limit="300MiB") as c, Client(c) as client:
        import numpy as np

        # 400 MiB of results written to /dev/shm by the worker: mapped, not private, so not its memory
        futures = [client.submit(np.ones, 25 * MiB // 8, pure=False) for _ in range(16)]
        client.gather(futures)
        time.sleep(0.3)  # several monitor checks with all of it alive
        assert len(c.scheduler_info["workers"]) == 1
        assert "Terminating worker" not in c.get_logs()["Cluster"]


def test_thresholds_can_be_turned_off():
    with cluster(
        n_workers=1,
        memory_limit="300MiB",
        memory_pause_fraction=False,
        memory_terminate_fraction=False,
    ) as c:
        assert c.memory_monitor is None
    with cluster(n_workers=1, memory_limit="300MiB", memory_terminate_fraction=False) as c:
        assert c.memory_monitor is not None


def test_thread_workers_report_their_limit_but_are_not_monitored():
    with cluster(n_workers=2, processes=False, memory_limit="1GiB") as c:
        assert limits(c) == [2**30] * 2
        assert c.memory_monitor is None
        assert not [t for t in threading.enumerate() if t.name == "minidist-memory-monitor"]


def test_process_workers_with_a_limit_are_watched_by_one_monitor_thread():
    with cluster(n_workers=2, memory_limit="1GiB"):
        monitors = [t for t in threading.enumerate() if t.name == "minidist-memory-monitor"]
        assert len(monitors) == 1
    assert wait_until(lambda: not monitors[0].is_alive())


def test_a_limit_below_what_an_idle_worker_needs_stops_the_replacements_and_says_what_to_do():
    # every worker is killed right after it starts: the cluster gives up after five in a row instead of
    # replacing them for ever, and tasks err at once with the advice instead of waiting for a worker
    with cluster(n_workers=1, memory_limit="4MiB") as c, Client(c) as client:
        assert wait_until(lambda: "keep dying" in c.get_logs()["Cluster"], timeout=30)
        log = c.get_logs()["Cluster"]
        # the monitor's first check may come before or after a worker's hello: either is said
        assert re.search(r"keep dying (as soon as|before) they start", log), log
        assert "give the cluster a larger memory_limit" in log
        with pytest.raises(WorkerStartError, match="larger memory_limit"):
            client.submit(sum, [1, 2]).result(timeout=10)
        started = log.count("Started worker")
        time.sleep(0.5)  # the monitor checks every 0.1 s: a replacement would have come and gone
        assert c.get_logs()["Cluster"].count("Started worker") == started
        assert not c.scheduler_info["workers"]


# --------------------------------------------------------------------------- its import, at start

PSUTIL_AT_START = """
import sys
from minidist import Client
with Client(n_workers=1, threads_per_worker=1, memory_limit="1GiB", dashboard_address=None):
    print("psutil" in sys.modules)
"""


def test_the_monitors_psutil_is_loaded_while_the_cluster_starts_not_in_the_first_run(tmp_path):
    # Loaded at the monitor's first look instead, in the middle of the user's first large run, psutil's
    # thousands of long-lived objects sat among the run's own and kept ~15-25 MiB of the client's
    # memory from going back after the run was released (a fresh process: nothing imported it before)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", PSUTIL_AT_START],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=root),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
