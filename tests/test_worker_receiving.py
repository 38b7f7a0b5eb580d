"""Process workers receive on their task threads: an idle thread receives and runs what came, another
receives meanwhile. These tests pin what must hold whatever thread receives: a worker whose slots are
all busy still answers the scheduler, never runs more tasks at once than it has threads, and seceded
tasks free their slot."""

from __future__ import annotations

import os
import threading
import time

import pytest

from conftest import wait_until
from minidist import Client, get_client, rejoin, secede

pytestmark = pytest.mark.timeout(90)

_lock = threading.Lock()
_running = 0  # tasks running now in this worker process (module state lives per process)


def inc(x):
    return x + 1


def counted(delay):
    """Sleep ``delay`` seconds and return how many tasks ran at once in this process meanwhile."""
    global _running
    with _lock:
        _running += 1
        peak = _running
    time.sleep(delay)
    with _lock:
        peak = max(peak, _running)
        _running -= 1
    return peak


def wait_for_file(path, limit=30.0):
    """A long task: runs until ``path`` exists (the test creates it), at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return "long"


def signal_then_wait(started, release):
    """A long task that says when it started."""
    with open(started, "w"):
        pass
    return wait_for_file(release)


def seceding(x):
    """Leave the slot, run a task that needs the slot on this one-thread worker, come back."""
    client = get_client()
    secede()
    inner = client.submit(inc, x, pure=False).result(timeout=30)
    rejoin()
    return inner * 10


@pytest.fixture
def one_thread():
    with Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        yield client


def test_a_worker_with_its_only_thread_busy_still_answers_and_frees(one_thread, tmp_path):
    client = one_thread
    release = tmp_path / "release"
    long = client.submit(wait_for_file, str(release))
    queued = [client.submit(inc, i) for i in range(20)]
    doomed = client.submit(inc, 100)
    # the long task holds the only slot: another thread still receives and answers
    pids = client.run(os.getpid)
    assert len(pids) == 1
    assert long.status == "pending"
    doomed.cancel()
    assert doomed.cancelled()
    release.write_text("go")
    assert long.result(timeout=30) == "long"
    assert client.gather(queued) == [i + 1 for i in range(20)]
    # and the worker keeps taking work after that
    assert client.submit(inc, 41).result(timeout=30) == 42


def test_a_long_task_after_a_stream_of_short_ones_still_lets_the_worker_answer(
    one_thread, tmp_path
):
    # short tasks in a row: the thread that receives each runs it, and an idle thread only watches
    # (runtime.WATCH_INTERVAL); the long task that follows must still find somebody receiving
    client = one_thread
    x = 0
    for _ in range(20):
        x = client.submit(inc, x, pure=False).result(timeout=30)
    started, release = tmp_path / "started", tmp_path / "release"
    long = client.submit(signal_then_wait, str(started), str(release))
    assert wait_until(started.exists)
    assert len(client.run(os.getpid)) == 1  # answered while the long task holds the only slot
    queued = client.submit(inc, x)
    release.write_text("go")
    assert long.result(timeout=30) == "long"
    assert queued.result(timeout=30) == 21


def test_a_worker_never_runs_more_tasks_at_once_than_it_has_threads():
    with Client(n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        peaks = client.gather(client.map(counted, [0.02] * 30, pure=False))
        assert max(peaks) <= 2
        # a chain of single tasks, each received and run by whichever thread was idle
        x = 0
        for _ in range(50):
            x = client.submit(inc, x, pure=False).result(timeout=30)
        assert x == 50
        peaks = client.gather(client.map(counted, [0.02] * 30, pure=False))
        assert max(peaks) <= 2


def test_secede_frees_the_slot_of_a_one_thread_process_worker(one_thread):
    client = one_thread
    assert client.submit(seceding, 1).result(timeout=30) == 20
    assert client.gather(client.map(seceding, [2, 3], pure=False)) == [30, 40]
    # after rejoining, the worker is back at one task at a time
    peaks = client.gather(client.map(counted, [0.01] * 10, pure=False))
    assert max(peaks) == 1
