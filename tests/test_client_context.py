"""Client lifecycle, the default client, tasks that use the cluster, and placement options."""

from __future__ import annotations

import threading
import time

import pytest

from minidist import (
    Client,
    LocalCluster,
    Status,
    default_client,
    get_client,
    get_worker,
    rejoin,
    secede,
    worker_client,
)

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def where_am_i():
    return get_worker().address


def current_task():
    return get_worker().get_current_task()


def fib(n):
    if n < 2:
        return n
    with worker_client() as client:
        a = client.submit(fib, n - 1)
        b = client.submit(fib, n - 2)
        return a.result() + b.result()


def test_client_builds_and_owns_a_cluster_and_closing_twice_is_fine():
    client = Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None)
    cluster = client.cluster
    assert isinstance(cluster, LocalCluster)
    assert client.submit(inc, 1).result() == 2
    client.close()
    client.close()
    assert cluster.status is Status.closed
    with pytest.raises(RuntimeError, match="closed"):
        client.submit(inc, 1)


def test_client_of_an_explicit_cluster_leaves_it_running():
    with LocalCluster(processes=False, n_workers=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert client.cluster is cluster
            assert client.submit(inc, 1).result() == 2
        assert cluster.status is Status.running
        with Client(cluster) as again:
            assert again.submit(inc, 2).result() == 3


def test_newest_client_is_the_default_and_closing_restores_the_previous():
    with LocalCluster(processes=False, n_workers=1, dashboard_address=None) as cluster:
        first = Client(cluster)
        second = Client(cluster)
        assert default_client() is second
        assert get_client() is second
        second.close()
        assert default_client() is first
        hidden = Client(cluster, set_as_default=False)
        assert default_client() is first
        hidden.close()
        first.close()
        with pytest.raises(ValueError, match="No clients found"):
            default_client()


def test_unknown_cluster_keyword_is_a_clear_type_error():
    with pytest.raises(TypeError, match="unexpected keyword"):
        LocalCluster(processes=False, dashboard_address=None, n_wrokers=2)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_get_worker_inside_a_task_and_worker_restrictions(processes):
    with Client(
        processes=processes, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        for address in addresses:
            futures = [client.submit(where_am_i, workers=[address], pure=False) for _ in range(4)]
            assert {f.result() for f in futures} == {address}
        # by name too
        name = client.scheduler_info()["workers"][addresses[1]]["name"]
        assert client.submit(where_am_i, workers=name, pure=False).result() == addresses[1]
        # the running task's key, as dask's Worker.get_current_task() gives it
        assert client.submit(current_task, key="mine-1").result() == "mine-1"
        tuple_key = ("mine-2", 0)
        assert client.submit(current_task, key=tuple_key).result() == tuple_key


def test_allow_other_workers_runs_elsewhere_when_the_named_worker_does_not_exist():
    with Client(processes=False, n_workers=1, dashboard_address=None) as client:
        future = client.submit(inc, 1, workers=["no-such-worker"], allow_other_workers=True)
        assert future.result(timeout=10) == 2
        stuck = client.submit(inc, 2, workers=["no-such-worker"])
        with pytest.raises(TimeoutError):
            stuck.result(timeout=0.3)


def test_resources_limit_concurrency_and_unmet_needs_wait():
    running = []
    peak = []
    lock = threading.Lock()

    def uses_gpu(i):
        with lock:
            running.append(i)
            peak.append(len(running))
        time.sleep(0.05)
        with lock:
            running.remove(i)
        return i

    with Client(
        processes=False,
        n_workers=2,
        threads_per_worker=4,
        resources={"GPU": 1},
        dashboard_address=None,
    ) as client:
        futures = client.map(uses_gpu, range(8), resources={"GPU": 1})
        assert client.gather(futures) == list(range(8))
        assert max(peak) <= 2  # one GPU per worker, two workers
        greedy = client.submit(inc, 1, resources={"GPU": 2})
        with pytest.raises(TimeoutError):
            greedy.result(timeout=0.3)


@pytest.mark.parametrize("processes", [False], ids=["threads"])
def test_tasks_that_submit_tasks_with_worker_client(processes):
    with Client(
        processes=processes, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as client:
        # one thread only: without secede inside worker_client this would deadlock
        assert client.submit(fib, 6).result(timeout=30) == 8


def test_secede_and_rejoin_inside_a_task():
    def waits_for_other_work(x):
        client = get_client()
        secede()
        inner = client.submit(inc, x, pure=False).result()
        rejoin()
        return inner * 10

    with Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as client:
        assert client.submit(waits_for_other_work, 1).result(timeout=20) == 20


def test_get_worker_outside_a_task_is_a_clear_error():
    with pytest.raises(ValueError, match="inside a task"):
        get_worker()
    with pytest.raises(ValueError, match="inside a task"):
        secede()


def test_restart_with_thread_workers():
    with Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        future = client.submit(inc, 1)
        future.result()
        client.restart()
        assert future.status == "cancelled"
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(inc, 5).result(timeout=10) == 6


def test_wait_for_workers():
    with Client(processes=False, n_workers=2, dashboard_address=None) as client:
        client.wait_for_workers(2, timeout=5)
        with pytest.raises(TimeoutError):
            client.wait_for_workers(3, timeout=0.2)


def test_repr_shows_workers_and_threads():
    with LocalCluster(
        processes=False, n_workers=2, threads_per_worker=3, dashboard_address=None, name="demo"
    ) as cluster:
        text = repr(cluster)
        assert text.startswith("LocalCluster(demo, ")
        assert "workers=2" in text and "threads=6" in text
        with Client(cluster) as client:
            assert "threads=6" in repr(client)


def test_cluster_status_is_dasks_status_enum_through_the_lifecycle():
    # dask.distributed's clusters hold members of its Status enum, never strings: a program comparing
    # with Status.running must behave the same on both (the members' names and values are dask's)
    from distributed.core import Status as DaskStatus

    assert all(DaskStatus[member.name].value == member.value for member in Status)
    cluster = LocalCluster(processes=False, n_workers=1, dashboard_address=None)
    try:
        assert cluster.status is Status.running
        assert cluster.status != "running"  # as in dask: an Enum, not a str
        assert "workers=1" in repr(cluster)
    finally:
        cluster.close()
    assert cluster.status is Status.closed
    assert repr(cluster).endswith(", closed)")


def test_scheduler_info_has_dasks_totals_and_the_cluster_attribute_form():
    with LocalCluster(
        processes=False,
        n_workers=2,
        threads_per_worker=2,
        memory_limit="1GB",
        dashboard_address=None,
    ) as cluster:
        with Client(cluster) as client:
            info = client.scheduler_info()
            assert (info["n_workers"], info["total_threads"]) == (2, 4)
            assert (
                info["total_memory"]
                == 2 * 10**9
                == sum(w["memory_limit"] for w in info["workers"].values())
            )
            first = client.scheduler_info(n_workers=1)
            assert len(first["workers"]) == 1 and first["n_workers"] == 2
            with pytest.raises(ValueError, match="n_workers"):
                client.scheduler_info(n_workers=-2)
            # dask's cluster managers hold it as an attribute, not a method
            assert set(cluster.scheduler_info["workers"]) == set(info["workers"])
