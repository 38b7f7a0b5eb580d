"""Shared test fixtures for tests/ and tests_property/, from minidist's own testing kit
(``minidist/testing.py``): the ``cluster``/``client``/``thread_cluster``/``thread_client`` fixtures, and a
leak check around every test module (no child process, thread, file descriptor, listening port or
/dev/shm segment may outlive it)."""

from __future__ import annotations

import contextlib
import gc
import linecache
import os
import sys
import threading
import time

import pytest

# imported here, before pytest loads it as a plugin: let pytest rewrite its asserts all the same
pytest.register_assert_rewrite("minidist.testing")
from minidist.testing import no_leaks, wait_until  # noqa: E402

pytest_plugins = ["minidist.testing"]

__all__ = [
    "in_threads",
    "only_new_objects_collected",
    "parked",
    "process_gone",
    "wake_ups",
    "two_process_workers",
    "wait_until",
]  # tests import them from here


@contextlib.contextmanager
def two_process_workers():
    """A Client of its own LocalCluster of 2 process workers x 1 thread, both ready (the shape the data
    plane's module-scoped fixtures share)."""
    from minidist import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=20)
        yield client


@contextlib.contextmanager
def only_new_objects_collected():
    """Inside, ``gc.collect()`` walks only the objects made inside: those from before (pytest, the
    imports, every earlier test of the run) are frozen (``gc.freeze``). A test that collects after each
    step then costs the same at the end of a full run as alone (each full collection there walked the
    whole run's heap, 0.1-0.5 s of CPU, for hundreds of steps: minutes on a loaded machine)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def process_gone(process) -> bool:
    """The process (a pid or a ``psutil.Process``) has exited: reaped, or a zombie its parent has not
    reaped yet. (Asking whether it exists and then for its status races with the reaping between.)"""
    import psutil

    try:
        if isinstance(process, int):
            process = psutil.Process(process)
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def in_threads(function, arguments: list) -> None:
    """Run ``function(argument)`` in a thread for each argument, all at once; raise what any raised."""
    errors: list = []

    def run(argument) -> None:
        try:
            function(argument)
        except BaseException as exc:  # noqa: B036 - reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(argument,)) for argument in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


def wake_ups(thread) -> int:
    """How often ``thread`` went to sleep and was woken since it started (Linux's count)."""
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def parked(thread) -> bool:
    """``thread`` waits on a lock (its innermost Python frame is a ``threading`` wait), and if it runs a
    coordination operation (``coordination_ops._ask``), on that operation's answer, not on the scheduler
    thread taking it in first."""
    frame = sys._current_frames().get(thread.ident)
    if (
        frame is None
        or frame.f_code.co_name != "wait"
        or "threading" not in frame.f_code.co_filename
    ):
        return False
    while frame is not None:
        if frame.f_code.co_name == "_ask":
            return "token.result" in linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return True


@pytest.fixture(autouse=True, scope="module")
def no_leaks_per_module():
    """Fail the module if it leaves processes, threads, descriptors, ports or segments behind."""
    with no_leaks(timeout=10):
        yield


@pytest.fixture(autouse=True, scope="module")
def private_module_runtime_dir(tmp_path_factory):
    """The same for the clusters a module shares (module-scoped fixtures start before any test's own
    directory exists): autouse fixtures of a scope are set up before that scope's other fixtures."""
    runtime = tmp_path_factory.mktemp("module-runtime")
    runtime.chmod(0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_RUNTIME_DIR", str(runtime))
        yield runtime


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path, monkeypatch):
    """Secret files of every test (and of the processes it starts, which inherit the variable) go to a
    directory of its own: the suite never touches the user's real one."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def count_call(path, value):
    """Append a line to ``path`` and return ``value``: a task whose runs can be counted from any worker
    kind (a file, seen by worker processes too), with ``calls(path)``."""
    with open(path, "a") as f:
        f.write("x\n")
    return value


def calls(path) -> int:
    """How many times ``count_call(path, ...)`` ran."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.readlines())


def wait_for_file(path, value=None, timeout=30.0):
    """A task that runs until ``path`` exists (the test creates it: a condition, not a sleep), at
    most ``timeout`` seconds, then returns ``value``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


@pytest.fixture
def pool():
    """A SegmentPool (64 MiB) of a fresh cluster id; closed, and its segments swept, after the test."""
    from minidist.comm import shm
    from minidist.comm.shm_pool import SegmentPool

    cluster_id = shm.new_cluster_id()
    pool = SegmentPool(shm.SegmentStore(cluster_id), capacity=64 * 2**20)
    yield pool
    pool.close()
    shm.sweep_cluster(cluster_id)
