"""Cluster operations through the public API: retire/restart workers, replicate, rebalance, nbytes,
call_stack, get_versions and metadata; on process and thread workers, and from a remote client."""

from __future__ import annotations

import pytest
from tcp_cluster_fixtures import tcp_client, tcp_cluster, tcp_remote  # noqa: F401 (fixtures by name)

from conftest import wait_for_file, wait_until
from minidist import Client, LocalCluster

pytestmark = pytest.mark.timeout(90)


def inc(x):
    return x + 1


def worker_address(dask_worker):
    return dask_worker.address


@pytest.fixture(params=[True, False], ids=["processes", "threads"])
def small_cluster(request):
    """A cluster of its own, for tests that retire or restart workers."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=request.param, dashboard_address=None
    ) as c:
        yield c


def test_run_passes_dask_worker_to_functions_that_ask(client):
    addresses = client.run(worker_address)
    assert sorted(addresses) == sorted(addresses.values())
    assert len(addresses) == 2


def test_nbytes_by_key_and_by_prefix(client):
    futures = client.map(inc, range(3))
    client.gather(futures)
    sizes = client.nbytes(summary=False)
    assert {f.key for f in futures} <= set(sizes)
    assert all(sizes[f.key] > 0 for f in futures)
    by_prefix = client.nbytes()
    assert by_prefix["inc"] >= sum(sizes[f.key] for f in futures)
    assert client.nbytes(keys=[futures[0]], summary=False) == {
        futures[0].key: sizes[futures[0].key]
    }


def test_call_stack_shows_the_running_task(client, tmp_path):
    flag = tmp_path / "go"
    future = client.submit(wait_for_file, str(flag), 7)
    stacks = {}

    def in_the_function() -> bool:
        # the task's thread may first be loading its function (a fresh worker imports conftest)
        nonlocal stacks
        stacks = client.call_stack(future)
        frames = [line for by_key in stacks.values() for line in by_key.get(future.key, ())]
        return any("wait_for_file" in line for line in frames)

    assert wait_until(in_the_function, timeout=30), stacks
    [(worker, by_key)] = stacks.items()
    assert worker in client.scheduler_info()["workers"]
    assert list(by_key) == [future.key]
    flag.touch()
    assert future.result(timeout=10) == 7
    assert client.call_stack(future) == {}


def test_get_versions_covers_scheduler_workers_and_client(client):
    versions = client.get_versions(check=True)
    assert set(versions) == {"scheduler", "workers", "client"}
    assert len(versions["workers"]) == 2
    for info in [versions["scheduler"], versions["client"], *versions["workers"].values()]:
        assert info["packages"]["minidist"]
        assert info["packages"]["python"]
        assert "OS" in info["host"]
    assert "numpy" in client.get_versions(packages=["numpy"])["client"]["packages"]


def test_metadata_nested_paths_and_defaults(client, remote):
    client.set_metadata("x", 123)
    assert client.get_metadata("x") == 123
    client.set_metadata(["a", "b", "c"], 1)
    remote.set_metadata(["a", "w"], {"z": 2})
    assert client.get_metadata("a") == {"b": {"c": 1}, "w": {"z": 2}}
    assert remote.get_metadata(["a", "b", "c"]) == 1
    assert client.get_metadata("missing", default=None) is None
    with pytest.raises(KeyError, match="missing"):
        remote.get_metadata(["missing"])


def test_replicate_fills_worker_caches(client):
    [future] = client.scatter([list(range(100))])
    client.replicate([future], n=2)
    assert len(client.who_has([future])[future.key]) == 2
    # tasks on either worker use the cached copy
    assert client.submit(sum, future, workers=list(client.nthreads())[0]).result() == 4950
    client.rebalance([future])
    with pytest.raises(ValueError, match="n >= 1"):
        client.replicate([future], n=0)


def test_remote_client_replicates_and_reads_sizes(client, remote):
    future = remote.submit(inc, 41)
    assert future.result() == 42
    remote.replicate(future, n=1)
    assert len(remote.who_has(future)[future.key]) >= 1
    assert remote.nbytes(summary=False)[future.key] > 0
    assert remote.get_versions()["workers"].keys() == client.get_versions()["workers"].keys()


def test_retire_workers_keeps_results_and_does_not_replace(small_cluster):
    with Client(small_cluster) as client:
        futures = client.map(inc, range(20))
        assert client.gather(futures) == list(range(1, 21))
        workers = sorted(client.nthreads())
        info = client.retire_workers(workers=[workers[0]])
        assert list(info) == [workers[0]]
        assert info[workers[0]]["nthreads"] == 1
        assert sorted(client.nthreads()) == workers[1:]
        assert client.gather(futures) == list(range(1, 21))  # nothing lost
        assert client.submit(inc, 100).result(timeout=10) == 101
        assert client.retire_workers(workers=["no-such-worker"]) == {}
        assert len(client.nthreads()) == 1  # not replaced


def test_retire_waits_for_the_running_task(small_cluster, tmp_path):
    flag = tmp_path / "go"
    with Client(small_cluster) as client:
        future = client.submit(wait_for_file, str(flag), "done")
        assert wait_until(lambda: any(client.processing().values()))
        [busy] = [a for a, keys in client.processing().items() if keys]
        info = client.retire_workers(workers=[busy], close_workers=False)
        assert list(info) == [busy]
        assert busy in client.nthreads()  # still finishing its task
        flag.touch()
        assert future.result(timeout=10) == "done"
        assert wait_until(lambda: busy not in client.nthreads())


def test_restart_workers_keeps_names_and_reruns_running_tasks(small_cluster, tmp_path):
    flag = tmp_path / "go"
    with Client(small_cluster) as client:
        done = client.submit(inc, 1)
        assert done.result() == 2
        running = client.submit(wait_for_file, str(flag), "again")
        assert wait_until(lambda: any(client.processing().values()))
        [busy] = [a for a, keys in client.processing().items() if keys]
        name = client.scheduler_info()["workers"][busy]["name"]
        assert client.restart_workers([busy]) == {busy: "OK"}
        names = {w["name"] for w in client.scheduler_info()["workers"].values()}
        assert busy not in client.nthreads()
        assert name in names and len(names) == 2
        flag.touch()
        assert running.result(timeout=20) == "again"
        assert done.result() == 2
        assert client.restart_workers(["no-such-worker"]) == {"no-such-worker": "removed"}
