"""``raise Reschedule()`` in a task puts it back in the queue: it runs again and its future never errs."""

from __future__ import annotations

import os

import pytest

from minidist import Client, LocalCluster, Reschedule, get_task_stream

pytestmark = pytest.mark.timeout(60)


def once_then(marker, value):
    """Reschedules itself on its first run (noted in a file, seen by every worker process)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise Reschedule()
    return value


def inc(x):
    return x + 1


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_rescheduled_task_runs_again_and_succeeds(processes, tmp_path):
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        with get_task_stream(client) as ts:
            future = client.submit(once_then, str(tmp_path / "seen"), 42, retries=0)
            dependent = client.submit(inc, future)
            assert dependent.result(timeout=20) == 43
        assert future.result() == 42
        assert future.status == "finished"
        # one successful run in the stream; the rescheduled attempt is not an error
        records = [r for r in ts.data if r["key"] == future.key]
        assert [r["status"] for r in records] == ["OK"]
        assert client.submit(inc, 1).result() == 2
