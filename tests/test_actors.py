"""Actors through the public API: a stateful object on one worker, its method calls in order and one at
a time (from several clients and from tasks), attribute reads, errors, and its death with its worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from tcp_cluster_fixtures import tcp_client, tcp_cluster, tcp_remote  # noqa: F401 (fixtures by name)

from conftest import wait_until
from minidist import Actor, ActorFuture, ActorLost, Client, LocalCluster

pytestmark = pytest.mark.timeout(90)


class Counter:
    n = 0  # declared on the class: readable through the proxy (as in dask)
    inside = 0
    overlaps = 0

    def __init__(self, start=0):
        self.n = start
        self.seen: list = []

    def increment(self, k=1):
        self.n += k
        return self.n

    def append(self, item):
        self.seen.append(item)
        return len(self.seen)

    def items(self):
        return list(self.seen)

    def critical(self):
        """Notes whether another call was inside at the same time."""
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0.001)
        self.inside -= 1
        return self.overlaps

    def fail(self):
        raise ValueError("the actor method failed on purpose")


def use_actor(counter, k):
    """A task that calls an actor it received as an argument."""
    return counter.increment(k).result()


def actors_held(dask_worker):
    return len(getattr(dask_worker, "actors", {}) or {})


def test_methods_return_actor_futures_and_attributes_read_through(client):
    future = client.submit(Counter, 10, actor=True)
    counter = future.result()
    assert isinstance(counter, Actor)
    assert counter._address in client.scheduler_info()["workers"]
    call = counter.increment(5)
    assert isinstance(call, ActorFuture)
    assert call.result(timeout=10) == 15
    assert counter.n == 15  # an attribute read waits for the value
    with pytest.raises(AttributeError, match="declares no attribute 'missing'"):
        counter.missing  # noqa: B018


def test_calls_run_in_order_one_at_a_time(client):
    counter = client.submit(Counter, actor=True).result()
    calls = [counter.append(i) for i in range(50)]  # fired without waiting
    assert [c.result(timeout=20) for c in calls] == list(range(1, 51))
    assert counter.items().result() == list(range(50))


def test_calls_from_several_clients_and_tasks_are_serialised(client, remote):
    counter = client.submit(Counter, actor=True).result()
    from_remote = remote.submit(
        lambda c: c, counter
    ).result()  # the proxy travels to another client
    assert isinstance(from_remote, Actor)
    results: list = []

    def hammer(proxy):
        results.extend(proxy.critical().result(timeout=30) for _ in range(20))

    threads = [threading.Thread(target=hammer, args=(p,)) for p in (counter, from_remote)]
    for thread in threads:
        thread.start()
    from_tasks = client.map(use_actor, [counter] * 5, range(1, 6), pure=False)
    for thread in threads:
        thread.join(60)
    assert sum(client.gather(from_tasks)) > 0
    assert len(results) == 40
    assert counter.overlaps == 0
    assert counter.n == 15  # 1 + 2 + 3 + 4 + 5 from the tasks


def test_a_method_that_raises_names_the_actor_and_the_actor_goes_on(client):
    counter = client.submit(Counter, actor=True).result()
    with pytest.raises(ValueError, match="failed on purpose") as info:
        counter.fail().result(timeout=10)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Counter.fail" in notes and counter._key in notes
    assert isinstance(counter.fail().exception(timeout=10), ValueError)
    assert counter.increment().result(timeout=10) == 1


def test_a_released_actor_leaves_its_worker(client):
    future = client.submit(Counter, actor=True)
    counter = future.result()
    address = counter._address
    assert client.run(actors_held, workers=[address])[address] >= 1
    before = client.run(actors_held, workers=[address])[address]
    del future, counter
    assert wait_until(lambda: client.run(actors_held, workers=[address])[address] == before - 1)


def test_the_actor_dies_with_its_worker_and_says_so(tmp_path):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        counter = client.submit(Counter, actor=True).result()
        assert counter.increment().result() == 1
        pid = client.scheduler_info()["workers"][counter._address]["pid"]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: counter._address not in client.nthreads(), timeout=30)
        with pytest.raises(ActorLost, match=f"{counter._key}.*{counter._address}.*state is lost"):
            counter.increment().result(timeout=10)
        assert client.submit(Counter, actor=True).result().increment(2).result() == 2


def test_a_restarted_thread_worker_loses_its_actor():
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        counter = client.submit(Counter, actor=True).result()
        client.restart_workers([counter._address])
        with pytest.raises(ActorLost, match="state is lost"):
            counter.increment().result(timeout=10)


def test_actor_needs_a_class(client):
    with pytest.raises(TypeError, match="needs a class"):
        client.submit(len, actor=True)
