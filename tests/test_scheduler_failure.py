"""The scheduler thread never dies silently: if its loop fails, every waiting future errs with a clear
``SchedulerError`` naming the cause, the failure is in the Scheduler log, and closing still works. Nor
does it doze: a post interrupted by Ctrl-C leaves later posts waking it at once."""

from __future__ import annotations

import os

import pytest

from conftest import wait_until
from minidist import Client, LocalCluster, SchedulerError, Status
from minidist.messages import Wake

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def die():
    os._exit(3)


@pytest.fixture
def cluster():
    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=False
    ) as cluster:
        yield cluster


def test_a_failing_scheduler_loop_errs_every_waiting_future_and_closes_cleanly(
    cluster, monkeypatch
):
    client = Client(cluster)
    done = client.submit(inc, 1)
    assert done.result(timeout=30) == 2

    # There is no public way to provoke a bug in the scheduler, so plant one: handling a worker's death
    # raises, on the scheduler thread, outside any per-message error handling.
    def remove_worker(*args, **kwargs):
        raise ZeroDivisionError("planted bug in remove_worker")

    monkeypatch.setattr(cluster.scheduler.state, "remove_worker", remove_worker)
    doomed = client.submit(die, pure=False)
    with pytest.raises(SchedulerError, match="ZeroDivisionError: planted bug") as info:
        doomed.result(timeout=30)
    assert "cluster.get_logs()" in str(info.value)  # says where to look

    # work submitted later errs at once instead of waiting forever; finished results stay readable
    with pytest.raises(SchedulerError, match="planted bug"):
        client.submit(inc, 10).result(timeout=10)
    assert done.result(timeout=10) == 2
    with pytest.raises(SchedulerError):
        client.scheduler_info()

    log = cluster.get_logs()["Scheduler"]
    assert "The scheduler thread failed" in log and "ZeroDivisionError" in log
    client.close()
    cluster.close()
    assert cluster.status is Status.closed


def test_a_post_interrupted_before_its_wake_up_does_not_slow_every_later_one(cluster):
    # Ctrl-C can land in Scheduler.post between "a wake-up is on its way" and writing it; the flag it
    # leaves set would make every later post skip its wake-up (each message then waits for the loop's
    # 0.25 s idle turn). The loop's next quiet turn clears it.
    scheduler = cluster.scheduler
    with Client(cluster) as client:
        assert client.submit(inc, 1).result(timeout=10) == 2
        scheduler._wake_pending = True  # what an interrupted post leaves behind
        assert wait_until(lambda: not scheduler._wake_pending, timeout=5)
        assert client.submit(inc, 2).result(timeout=10) == 3


def test_ctrl_c_inside_post_leaves_the_wake_up_flag_clear(cluster, monkeypatch):
    scheduler = cluster.scheduler
    with Client(cluster) as client:
        assert client.submit(inc, 1).result(timeout=10) == 2

        def interrupted_write(fd, data):
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(os, "write", interrupted_write)
            with pytest.raises(KeyboardInterrupt):
                scheduler.post(Wake())
        assert not scheduler._wake_pending
        assert client.submit(inc, 2).result(timeout=10) == 3
