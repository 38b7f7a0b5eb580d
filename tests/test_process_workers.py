"""Process workers: pickling errors, crashes, supervision, and running from stdin or a script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from conftest import process_gone, wait_until
from minidist import Client, KilledWorker, TaskSerializationError

pytestmark = pytest.mark.timeout(90)


def inc(x):
    return x + 1


def slow_inc(x, delay=0.05):
    time.sleep(delay)
    return x + 1


def die():
    os._exit(13)


@pytest.fixture
def client():
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        yield c


def test_unpicklable_argument_fails_at_submit_naming_the_type(client):
    lock = threading.Lock()
    with pytest.raises(TaskSerializationError, match="lock"):
        client.submit(lambda x: x, lock)
    assert client.submit(inc, 1).result() == 2


def test_unpicklable_result_errs_that_future_with_a_clear_message(client):
    futures = [client.submit(threading.Lock, pure=False), client.submit(inc, 1)]
    with pytest.raises(Exception, match="(?i)pickle|serializ"):
        futures[0].result(timeout=10)
    assert futures[1].result(timeout=10) == 2


def test_worker_dying_mid_task_is_replaced_and_other_work_completes(client):
    doomed = client.submit(die, pure=False)
    others = client.map(slow_inc, range(20), delay=0.01)
    with pytest.raises(KilledWorker) as info:
        doomed.result(timeout=60)
    message = str(info.value)
    assert doomed.key in message and "exit code 13" in message
    assert client.gather(others) == list(range(1, 21))
    client.wait_for_workers(2, timeout=30)
    assert len(client.scheduler_info()["workers"]) == 2


def test_a_task_that_crashes_at_once_is_blamed_not_the_one_before_it():
    # one thread, no second chances: whichever task is blamed for the death fails with KilledWorker.
    # The tiny task just before the crasher has finished, but its result may still be held back to
    # share a message when the worker dies; the worker's running board must clear it.
    with Client(
        n_workers=1,
        threads_per_worker=1,
        dashboard_address=None,
        scheduler_kwargs={"allowed_failures": 0},
    ) as client:
        for attempt in range(3):
            before = client.submit(inc, attempt, pure=False)
            doomed = client.submit(die, pure=False)
            with pytest.raises(KilledWorker, match=doomed.key):
                doomed.result(timeout=30)
            assert before.result(timeout=30) == attempt + 1


def test_external_sigkill_during_map_loses_no_result(client):
    futures = client.map(slow_inc, range(40), delay=0.05)
    victim = next(iter(client.scheduler_info()["workers"].values()))["pid"]
    assert wait_until(lambda: sum(f.done() for f in futures) >= 4)  # mid-map: some done, most not
    os.kill(victim, signal.SIGKILL)
    assert not all(f.done() for f in futures)
    assert client.gather(futures) == list(range(1, 41))
    assert wait_until(lambda: process_gone(victim))


def test_restart_replaces_workers_and_cancels_futures(client):
    before = {w["pid"] for w in client.scheduler_info()["workers"].values()}
    future = client.submit(inc, 1)
    future.result()
    client.restart()
    after = {w["pid"] for w in client.scheduler_info()["workers"].values()}
    assert len(after) == 2 and not (before & after)
    assert future.status == "cancelled"
    assert client.submit(inc, 2).result(timeout=10) == 3


SCRIPT = textwrap.dedent(
    """
    from minidist import Client
    client = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
    square = lambda x: x * x
    print(sum(client.gather(client.map(square, range(10)))))
    client.close()
    """
)


def test_runs_from_stdin_without_a_main_guard():
    done = subprocess.run(
        [sys.executable, "-"], input=SCRIPT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "285"
    assert done.stderr == ""  # nothing printed during normal work


def test_runs_from_a_script_without_a_main_guard(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "285"


def test_workers_run_the_clients_minidist_whatever_the_current_folder_holds(tmp_path):
    # a fresh interpreter started with `python -c` looks in the current folder first, where another
    # minidist (a source checkout, a folder of that name) would shadow the one the client runs
    project = tmp_path / "project"
    (project / "minidist").mkdir(parents=True)
    (project / "minidist" / "__init__.py").write_text(
        "raise ImportError('not the client minidist')\n"
    )
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=project,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "285"


def test_workers_exit_when_the_client_process_is_killed():
    code = textwrap.dedent(
        """
        import sys, time
        from minidist import Client
        client = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
        pids = [w["pid"] for w in client.scheduler_info()["workers"].values()]
        print(*pids, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.kill()
        parent.wait(10)
        assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), timeout=30)
    finally:
        parent.kill()
        parent.wait(10)
