"""client.get_executor() (a concurrent.futures.Executor), client.sync and client.as_current."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from minidist import Client, Event, LocalCluster, default_client, get_worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "processes"])
def client(request):
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=request.param, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def inc(x):
    return x + 1


def fail(x):
    raise ValueError(f"bad {x}")


def wait_for(name):
    return Event(name).wait(30)


def test_executor_runs_calls_with_standard_futures(client):
    with client.get_executor() as executor:
        future = executor.submit(inc, 1)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=10) == 2
        assert list(executor.map(inc, range(5), timeout=10, chunksize=2)) == [1, 2, 3, 4, 5]
        erred = executor.submit(fail, 3)
        with pytest.raises(ValueError, match="bad 3"):
            erred.result(timeout=10)
        done, _ = concurrent.futures.wait([executor.submit(inc, i) for i in range(4)], timeout=10)
        assert sorted(f.result() for f in done) == [1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(inc, 1)


def test_executor_submit_options_and_map_timeout(client):
    address = next(iter(client.scheduler_info()["workers"]))
    executor = client.get_executor(workers=[address])
    assert executor.submit(lambda: get_worker().address).result(timeout=10) == address
    name = f"gate-{client.id}"
    results = executor.map(wait_for, [name])
    with pytest.raises(concurrent.futures.TimeoutError):
        list(executor.map(wait_for, [name], timeout=0.1))
    Event(name, client=client).set()
    assert list(results) == [True]
    executor.shutdown()


def test_shutdown_cancels_what_has_not_finished(client):
    executor = client.get_executor()
    name = f"never-{client.id}"
    waiting = [executor.submit(wait_for, name) for _ in range(2)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in waiting)
    Event(name, client=client).set()  # let the tasks that started finish
    assert client.submit(inc, 1).result() == 2


def test_sync_runs_a_coroutine_function_that_awaits_futures(client):
    async def total(n):
        futures = client.map(inc, range(n))
        values = [await f for f in futures]
        await asyncio.sleep(0)
        return sum(values)

    assert client.sync(total, 4) == 10
    assert client.sync(lambda x: x * 2, 21) == 42  # a plain function: its result


def test_sync_from_inside_a_running_loop_uses_a_thread(client):
    async def inner():
        return await client.submit(inc, 41)

    async def outer():
        return client.sync(inner)  # blocking call from a loop: runs on a loop of its own

    assert asyncio.run(outer()) == 42
    assert not [t for t in threading.enumerate() if t.name == "minidist-sync"]


def test_as_current_makes_the_client_the_default_inside_the_block(client):
    with Client(client.cluster, set_as_default=False) as other:
        assert default_client() is not other
        with other.as_current():
            assert default_client() is other
        assert default_client() is not other


def test_client_current_is_the_block_client_then_the_default(client):
    assert Client.current() is default_client()
    with pytest.raises(ValueError, match="as_current"):
        Client.current(allow_global=False)
    with Client(client.cluster, set_as_default=False) as other:
        with other.as_current():
            assert Client.current() is other
            assert Client.current(allow_global=False) is other
        with pytest.raises(ValueError, match="as_current"):
            Client.current(allow_global=False)


def test_timeouts_are_minidists_timeout_error_which_is_the_built_in_one(client):
    import minidist

    assert minidist.TimeoutError is TimeoutError
    never = Event(client=client)
    waiting = client.submit(never.wait, pure=False)
    with pytest.raises(minidist.TimeoutError):
        waiting.result(timeout=0.1)
    never.set()
    assert waiting.result(timeout=10) is True
