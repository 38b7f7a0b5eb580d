"""Named coordination primitives (Lock, MultiLock, Semaphore, Event, Queue, Variable), shared by the
client, a second client connected by address, and tasks, on both worker kinds."""

from __future__ import annotations

import os
import re
import signal
import threading

import pytest

from conftest import parked, wait_until
from minidist import (
    Client,
    Event,
    KilledWorker,
    LocalCluster,
    Lock,
    MultiLock,
    Queue,
    Semaphore,
    Variable,
    get_worker,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=[False, True], ids=["threads", "processes"])
def cluster(request):
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=request.param, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster) as c:
        yield c


@pytest.fixture
def other(cluster):
    """A second client of the same cluster, by address (inproc:// for thread workers, tcp:// else)."""
    with Client(cluster.scheduler_address) as c:
        yield c


def counted_increment(name: str) -> int:
    """Read-modify-write a shared Variable under a Lock: only correct if the lock excludes."""
    with Lock(name):
        counter = Variable(name)
        value = counter.get(timeout=5) + 1
        counter.set(value)
    return value


def wait_for_event(name: str, timeout):
    return Event(name).wait(timeout)


def consume(name: str, n: int) -> list:
    queue = Queue(name)
    return [queue.get(timeout=10) for _ in range(n)]


def produce(name: str, values: list) -> None:
    queue = Queue(name)
    for value in values:
        queue.put(value)


def add_one_to_future_in_variable(name: str) -> int:
    return Variable(name).get(timeout=5).result() + 1


# ------------------------------------------------------------------------------------------ locks


def test_lock_excludes_across_clients_and_times_out(client, other):
    mine, theirs = Lock("shared", client=client), Lock("shared", client=other)
    assert mine.acquire()
    assert mine.locked() and theirs.locked()
    assert theirs.acquire(timeout=0.1) is False
    assert theirs.acquire(blocking=False) is False
    with pytest.raises(RuntimeError, match="'shared' is not acquired"):
        theirs.release()
    mine.release()
    assert not theirs.locked()
    with theirs:
        assert mine.acquire(blocking=False) is False
    assert mine.acquire(timeout=10)
    mine.release()


def test_lock_serialises_tasks_that_update_a_shared_variable(client):
    Variable("counter", client=client).set(0)
    # unpinned: work stealing moves only tasks not yet started, so each increments exactly once
    values = client.gather(client.map(counted_increment, ["counter"] * 12, pure=False))
    assert sorted(values) == list(range(1, 13))
    assert Variable("counter", client=client).get() == 12


def test_lock_passed_to_a_task_is_the_same_lock(client):
    lock = Lock("handed-over", client=client)
    lock.acquire()
    try:
        future = client.submit(lambda lk: lk.acquire(timeout=0.2), lock, pure=False)
        assert future.result() is False
    finally:
        lock.release()
    assert client.submit(lambda lk: lk.acquire(timeout=5) and lk.release(), lock).result()


def test_non_blocking_acquire_with_timeout_is_refused(client):
    with pytest.raises(ValueError, match="non-blocking"):
        Lock("x", client=client).acquire(blocking=False, timeout=1)


def test_multilock_takes_all_names_or_waits(client, other):
    both = MultiLock(["a", "b"], client=client)
    assert both.acquire()
    just_b = MultiLock(["b", "c"], client=other)
    assert just_b.acquire(timeout=0.1) is False
    assert just_b.acquire(timeout=0.1, num_locks=1)  # "c" is free
    just_b.release()
    both.release()
    assert just_b.acquire(timeout=10)
    just_b.release()
    with pytest.raises(ValueError, match="not acquired"):
        just_b.release()


# ------------------------------------------------------------------------------------- semaphores


def test_semaphore_limits_concurrent_holders(client, other):
    first = Semaphore(max_leases=2, name="pool", client=client)
    second = Semaphore(max_leases=2, name="pool", client=other)
    assert first.acquire() and second.acquire()
    assert first.get_value() == 2
    assert second.acquire(timeout=0.1) is False
    first.release()
    assert second.acquire(timeout=10)
    second.release()
    second.release()
    with pytest.raises(RuntimeError, match="released too often"):
        second.release()
    with pytest.raises(ValueError, match="max_leases=2"):
        Semaphore(max_leases=3, name="pool", client=client).acquire()


def hold_semaphore_forever(name: str) -> None:
    Semaphore(max_leases=1, name=name).acquire()
    Variable(f"{name}-pid").set(os.getpid())
    Event(f"{name}-never").wait()


def test_lease_of_a_killed_worker_is_released():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"allowed_failures": 0},
        ) as cluster,
        Client(cluster) as client,
    ):
        holder = client.submit(hold_semaphore_forever, "leased")
        pid = Variable("leased-pid", client=client).get(timeout=30)
        semaphore = Semaphore(max_leases=1, name="leased", client=client)
        assert semaphore.acquire(timeout=0.1) is False
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(KilledWorker):
            holder.result(timeout=30)
        assert semaphore.acquire(timeout=10)
        semaphore.release()


# ----------------------------------------------------------------------------------------- events


def test_event_wakes_a_waiting_task_and_wait_times_out(client, other):
    name = f"go-{client.id}"
    event = Event(name, client=client)
    assert event.wait(timeout=0.05) is False
    waiting = client.submit(wait_for_event, name, 10, pure=False)
    assert not event.is_set()
    Event(name, client=other).set()
    assert waiting.result() is True
    assert event.is_set() and event.wait(0)
    event.clear()
    assert not Event(name, client=other).is_set()


# ----------------------------------------------------------------------------------------- queues


def test_queue_carries_values_and_futures_between_clients_and_tasks(client, other):
    name = f"q-{client.id}"
    queue = Queue(name, client=client)
    future = client.submit(sum, [1, 2, 3])
    queue.put("text")
    queue.put(future)
    queue.put({"nested": [future]})
    del future  # the queue keeps the result alive
    theirs = Queue(name, client=other)
    assert theirs.qsize() == 3
    assert theirs.get() == "text"
    assert theirs.get().result() == 6
    assert theirs.get(timeout=10)["nested"][0].result() == 6
    consumer = client.submit(consume, name, 2, pure=False)
    client.submit(produce, name, [1, 2], pure=False).result()
    assert consumer.result() == [1, 2]


def test_queue_batches_and_clear_timeouts(client):
    queue = Queue(f"b-{client.id}", client=client, maxsize=2)
    queue.put(1)
    queue.put(2)
    with pytest.raises(TimeoutError, match="stayed full"):
        queue.put(3, timeout=0.05)
    assert queue.get(batch=True) == [1, 2]
    assert queue.get(batch=True) == []
    with pytest.raises(TimeoutError, match=rf"Queue 'b-{client.id}'.*within 0.05 s"):
        queue.get(timeout=0.05)
    producer = client.submit(produce, queue.name, [7, 8, 9], pure=False)
    assert queue.get(batch=2, timeout=10) == [7, 8]
    assert queue.get(timeout=10) == 9
    producer.result()
    assert client.submit(lambda: 1).result() == 1  # still usable after the time-outs


# -------------------------------------------------------------------------------------- variables


def test_variable_shares_values_and_keeps_a_future_alive(cluster, client):
    name = f"v-{client.id}"
    with Client(cluster.scheduler_address) as setter:
        Variable(name, client=setter).set(setter.submit(lambda: 41))
    # the client that set it is gone; the variable still holds the result
    value = Variable(name, client=client).get(timeout=5)
    assert value.result() == 41
    assert client.submit(add_one_to_future_in_variable, name).result() == 42
    Variable(name, client=client).set("replaced")
    assert Variable(name, client=client).get() == "replaced"
    Variable(name, client=client).delete()
    with pytest.raises(TimeoutError, match=rf"Variable '{name}' was not set within 0.05 s"):
        Variable(name, client=client).get(timeout=0.05)


def test_variable_get_waits_for_a_task_to_set_it(client):
    name = f"later-{client.id}"
    waiting = client.submit(lambda n: Variable(n).get(timeout=10), name, pure=False)
    assert wait_until(lambda: waiting.status == "pending")
    client.submit(lambda n: Variable(n).set(get_worker().address), name, pure=False).result()
    assert waiting.result() in client.scheduler_info()["workers"]


def test_a_wait_without_timeout_ends_with_a_clear_error_when_the_cluster_closes():
    # nothing but the close wakes the waiter: it has no timeout of its own to look again
    cluster = LocalCluster(n_workers=1, processes=False, dashboard_address=None)
    client = Client(cluster, set_as_default=False)
    ended: list = []

    def wait_forever() -> None:
        try:
            Queue("never-filled", client=client).get()
        except Exception as exc:  # noqa: BLE001 - the test looks at what it is
            ended.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    try:
        assert wait_until(lambda: parked(waiter))
    finally:
        cluster.close()
        waiter.join(10)
        client.close()
    assert not waiter.is_alive()
    assert len(ended) == 1 and isinstance(ended[0], RuntimeError)
    assert re.search("scheduler (is )?closed", str(ended[0]))


def test_primitive_without_any_client_is_a_clear_error():
    with pytest.raises(ValueError, match="Lock 'orphan' needs a client"):
        Lock("orphan").acquire()


def test_inproc_address_of_another_process_is_refused():
    with pytest.raises(ValueError, match="inproc://nowhere"):
        Client("inproc://nowhere")


def test_tcp_client_of_a_thread_cluster_shares_queues_and_variables():
    with (
        LocalCluster(
            n_workers=1, processes=False, protocol="tcp", dashboard_address=None
        ) as cluster,
        Client(cluster) as local,
        Client(cluster.scheduler_address) as remote,
    ):
        assert cluster.scheduler_address.startswith("tcp://")
        Queue("tq", client=remote).put(remote.submit(sum, [4, 5]))
        assert Queue("tq", client=local).get(timeout=5).result() == 9
        Variable("tv", client=local).set({"from": "local"})
        assert Variable("tv", client=remote).get(timeout=5) == {"from": "local"}
        with Lock("tl", client=remote):
            assert Lock("tl", client=local).acquire(timeout=0.05) is False


def test_locks_and_leases_of_a_closed_client_go_back(cluster, client):
    with Client(cluster.scheduler_address) as leaving:
        assert Lock("left-behind", client=leaving).acquire()
        assert Semaphore(1, "sem-left-behind", client=leaving).acquire()
        assert MultiLock(["m1", "m2"], client=leaving).acquire()
        assert Lock("left-behind", client=client).acquire(timeout=0.05) is False
    assert Lock("left-behind", client=client).acquire(timeout=5)
    assert Semaphore(1, "sem-left-behind", client=client).acquire(timeout=5)
    assert MultiLock(["m2"], client=client).acquire(timeout=5)


def test_primitives_are_awaitable_for_asynchronous_clients(cluster):
    import asyncio

    async def main():
        async with Client(cluster, asynchronous=True) as client:
            lock = Lock("async-lock", client=client)
            assert await lock.acquire(timeout=10)
            assert await lock.locked()
            await lock.release()
            async with Semaphore(1, "async-sem", client=client):
                assert await Semaphore(1, "async-sem", client=client).get_value() == 1
            queue = Queue("async-q", client=client)
            await queue.put(client.submit(sum, [1, 2]))
            assert await (await queue.get(timeout=5)) == 3
            await Variable("async-v", client=client).set(5)
            assert await Variable("async-v", client=client).get() == 5
            event = Event("async-e", client=client)
            waiter = asyncio.ensure_future(event.wait(5))
            await event.set()
            assert await waiter

    asyncio.run(main())


HOLD_A_LOCK = """
import sys, time
from minidist import Client, Lock
client = Client(sys.argv[1])
assert Lock("held-by-a-killed-process", client=client).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_lock_of_a_killed_client_process_goes_back():
    import subprocess
    import sys

    with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("minidist").__file__)))
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD_A_LOCK, cluster.scheduler_address],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": root},
        )
        try:
            assert child.stdout.readline().strip() == "held"
            with Client(cluster) as client:
                lock = Lock("held-by-a-killed-process", client=client)
                assert lock.acquire(timeout=0.05) is False
                child.kill()
                assert lock.acquire(timeout=10)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
