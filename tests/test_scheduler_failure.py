"""The scheduler thread never dies silently: if its loop fails, every waiting future errs with a clear
``SchedulerError`` naming the cause, the failure is in the Scheduler log, and closing still works."""

from __future__ import annotations

import os

import pytest

from minidist import Client, LocalCluster, SchedulerError

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
    assert done.result(timeout=1) == 2
    with pytest.raises(SchedulerError):
        client.scheduler_info()

    log = cluster.get_logs()["Scheduler"]
    assert "The scheduler thread failed" in log and "ZeroDivisionError" in log
    client.close()
    cluster.close()
    assert cluster.status == "closed"
