"""asyncio: awaitable futures, gather, scatter, as_completed, async clusters; the loop is never blocked."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from minidist import Client, LocalCluster, Status, SubprocessCluster, as_completed
from minidist.errors import FutureTimeoutError

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def slow_inc(x, delay=0.3):
    time.sleep(delay)
    return x + 1


def fail(x):
    raise ValueError(f"bad {x}")


async def exercise(client) -> None:
    """The asynchronous client API, against whatever cluster ``client`` is on."""
    future = client.submit(inc, 1)
    assert await future == 2
    assert await client.gather(client.map(inc, range(5))) == [1, 2, 3, 4, 5]
    assert await client.gather({"a": client.submit(inc, 10), "b": 3}) == {"a": 11, "b": 3}
    [data] = await client.scatter([41])
    assert await client.submit(inc, data) == 42
    scattered = await client.scatter({"x": 1, "y": 2})
    assert await client.gather(scattered) == {"x": 1, "y": 2}
    with pytest.raises(ValueError, match="bad 3"):
        await client.submit(fail, 3)
    seen = []
    async for done in as_completed(client.map(slow_inc, [3, 1, 2], delay=0.05)):
        seen.append(await done)
    assert sorted(seen) == [2, 3, 4]
    pairs = [
        pair
        async for pair in as_completed(
            [client.submit(fail, 9), client.submit(inc, 0)], with_results=True, raise_errors=False
        )
    ]
    assert sorted(repr(value) for _, value in pairs) == ["1", "ValueError('bad 9')"]


def test_async_with_cluster_and_client_on_threads():
    async def main():
        async with LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=False,
            asynchronous=True,
            dashboard_address=None,
        ) as cluster:
            assert cluster.asynchronous is True
            async with Client(cluster, asynchronous=True) as client:
                assert client.asynchronous
                await exercise(client)
        assert cluster.status is Status.closed

    asyncio.run(main())


def test_awaited_cluster_and_remote_async_client():
    async def main():
        cluster = await LocalCluster(
            n_workers=2, threads_per_worker=1, asynchronous=True, dashboard_address=None
        )
        try:
            client = await Client(cluster.scheduler_address, asynchronous=True)
            await exercise(client)
            await client.close()
            assert client.status == "closed"
        finally:
            await cluster.close()
        assert cluster.status is Status.closed

    asyncio.run(main())


def test_subprocess_cluster_is_asynchronous_too():
    async def main():
        async with SubprocessCluster(
            n_workers=1, threads_per_worker=1, asynchronous=True, dashboard_address=None
        ) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                assert await client.submit(inc, 5) == 6
        assert cluster.status is Status.closed

    asyncio.run(main())


def test_the_event_loop_keeps_running_while_tasks_are_awaited():
    async def main(client):
        gaps = []
        stop = False

        async def heartbeat():
            last = time.monotonic()
            while not stop:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        beat = asyncio.ensure_future(heartbeat())
        threads_before = threading.active_count()
        await asyncio.sleep(0)  # the heartbeat's first sleep has begun
        futures = client.map(slow_inc, range(100), delay=0.01)
        beats_before = len(gaps)
        results = await asyncio.gather(*futures)  # a hundred coroutines wait at once (>= 0.25 s)
        beats_while_gathering = len(gaps) - beats_before
        threads_during = threading.active_count()
        assert results == list(range(1, 101))
        beats_before = len(gaps)
        assert await client.gather(client.submit(slow_inc, 1, delay=1.0)) == 2
        beats_while_waiting = len(gaps) - beats_before
        stop = True
        await beat
        return beats_while_gathering, beats_while_waiting, threads_during - threads_before

    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        with Client(cluster, asynchronous=True) as client:
            gathering, waiting, extra_threads = asyncio.run(main(client))
    # a wait that blocked the loop would hold it for the whole wait and let it beat once at most
    # (every 5 ms otherwise); counts, not a bound on the longest gap: a loaded machine (or a full
    # garbage collection of a long run's heap) may stall any thread for a second now and then
    assert gathering >= 3, f"the loop ran {gathering} times while 100 futures were awaited"
    assert waiting >= 10, f"the loop ran {waiting} times while a 1 s task was awaited"
    assert extra_threads <= 2  # no thread per waiting coroutine


def test_timeouts_and_closing_without_awaiting():
    async def main(cluster):
        client = Client(cluster, asynchronous=True)
        with pytest.raises(FutureTimeoutError):
            async for _ in as_completed([client.submit(slow_inc, 1, delay=0.5)], timeout=0.1):
                pass
        [data] = await client.scatter([1], timeout=5)
        assert await data == 1
        client.close()  # not awaited: closing still happens
        return client

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        client = asyncio.run(main(cluster))
        assert client.status == "closed"


def test_synchronous_calls_from_other_threads_still_work():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        client = Client(cluster, asynchronous=True)
        try:
            # outside an event loop an asynchronous client answers synchronously
            assert client.gather(client.map(inc, range(3))) == [1, 2, 3]
            assert client.gather(client.scatter([7])) == [7]
        finally:
            client.close()
