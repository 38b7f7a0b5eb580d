"""asyncio: the calls dask.distributed makes awaitable on an asynchronous client, cluster and future.

A program written for dask's asynchronous API does ``await client.run(f)``, ``await future.result()``,
``await cluster.scale(2)``. Each such call runs off the event loop and returns an awaitable; the same
calls on a client made without ``asynchronous=True`` (or outside a loop) answer directly.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback

import pytest

from minidist import Client, Event, LocalCluster, WorkerPlugin, wait
from minidist.errors import CancelledError, FutureTimeoutError

pytestmark = pytest.mark.timeout(90)


def inc(x):
    return x + 1


def fail(x):
    raise ValueError(f"bad {x}")


def block_until(event_name):
    Event(event_name).wait(30)
    return event_name


class CountStarts(WorkerPlugin):
    name = "count-starts"

    def setup(self, worker):
        worker.started_by_plugin = True


def has_plugin_mark(dask_worker=None):
    return getattr(dask_worker, "started_by_plugin", False)


async def awaited(value):
    """The value of an awaitable; fails the test if the call answered directly."""
    assert inspect.isawaitable(value), f"expected an awaitable, got {value!r}"
    return await value


def run(main):
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        return asyncio.run(main(cluster))


def test_client_cluster_calls_are_awaited_as_in_dask(tmp_path):
    module = tmp_path / "shipped_module_for_async.py"
    module.write_text("ANSWER = 42\n")

    async def main(cluster):
        async with Client(cluster, asynchronous=True) as client:
            future = client.submit(inc, 1)
            assert await future == 2
            [address] = await awaited(client.nthreads())
            assert await awaited(client.run(inc, 1)) == {address: 2}
            assert await awaited(client.run_on_scheduler(inc, 2)) == 3
            assert await awaited(client.wait_for_workers(1)) is None
            assert await awaited(client.who_has(future)) == {future.key: [address]}
            assert future.key in (await awaited(client.has_what()))[address]
            assert await awaited(client.processing()) == {address: []}
            assert await awaited(client.ncores()) == {address: 1}
            assert (await awaited(client.nbytes(summary=False)))[future.key] > 0

            await awaited(client.publish_dataset(answer=future))
            assert await awaited(client.list_datasets()) == ("answer",)
            published = await awaited(client.get_dataset("answer"))
            assert published.key == future.key  # the Future itself, as dask gives it
            assert await published == 2
            await awaited(client.unpublish_dataset("answer"))
            assert await awaited(client.list_datasets()) == ()

            await awaited(client.set_metadata(["run", "step"], 3))
            assert await awaited(client.get_metadata(["run", "step"])) == 3
            await awaited(client.log_event("async-topic", {"n": 1}))
            [(_, message)] = await awaited(client.get_events("async-topic"))
            assert message == {"n": 1}
            assert "scheduler" in await awaited(client.get_versions())
            assert any(r["key"] == future.key for r in await awaited(client.get_task_stream()))
            assert await awaited(client.get_worker_logs())
            assert await awaited(client.get_scheduler_logs())

            await awaited(client.upload_file(str(module)))
            shipped = await awaited(client.run(lambda: __import__(module.stem).ANSWER))
            assert shipped == {address: 42}
            await awaited(client.register_plugin(CountStarts()))
            assert await awaited(client.run(has_plugin_mark)) == {address: True}
            await awaited(client.unregister_worker_plugin("count-starts"))

            # dask's synchronous attribute-like calls stay synchronous
            assert address in client.scheduler_info()["workers"]
            await awaited(client.restart())
            assert future.status == "cancelled"
            assert await client.submit(inc, 10) == 11

    run(main)


def test_future_calls_are_awaited_as_in_dask():
    async def main(cluster):
        async with Client(cluster, asynchronous=True) as client:
            good, bad = client.submit(inc, 1), client.submit(fail, 2)
            finished = await awaited(wait([good, bad]))
            assert finished.done == {good, bad} and not finished.not_done
            assert await awaited(good.result()) == 2
            error = await awaited(bad.exception())
            assert isinstance(error, ValueError) and str(error) == "bad 2"
            frames = traceback.extract_tb(await awaited(bad.traceback()))
            assert frames[-1].name == "fail"
            assert await awaited(good.exception()) is None
            with pytest.raises(ValueError, match="bad 2"):
                await bad.result()

            await awaited(bad.retry())
            with pytest.raises(ValueError, match="bad 2"):
                await bad  # ran again, failed again

            slow = client.submit(block_until, "async-calls-release")
            with pytest.raises(FutureTimeoutError):
                await slow.result(timeout=0.05)
            first = await awaited(wait([slow, good], return_when="FIRST_COMPLETED"))
            assert first.done == {good} and first.not_done == {slow}
            with pytest.raises(FutureTimeoutError):
                await wait(slow, timeout=0.05)
            await awaited(slow.cancel())
            assert slow.cancelled()
            await Event("async-calls-release", client=client).set()  # the thread may leave
            with pytest.raises(CancelledError):
                await slow.result()
            # gather inside the loop still reads values (it must not get awaitables back)
            assert await client.gather([good, client.submit(inc, 5)]) == [2, 6]

    run(main)


def test_waiting_calls_leave_the_loop_free():
    async def main():
        async with LocalCluster(
            n_workers=1, processes=False, asynchronous=True, dashboard_address=None
        ) as cluster:
            async with Client(cluster, asynchronous=True) as client:
                # if this wait blocked the loop, the scale below could never run and it would
                # time out: both must be in flight together
                waiting = asyncio.ensure_future(client.wait_for_workers(2, timeout=30))
                await asyncio.sleep(0)
                assert not waiting.done()
                assert await awaited(cluster.scale(2)) is None
                await waiting
                await awaited(cluster.wait_for_workers(2, timeout=30))
                assert len(await awaited(client.nthreads())) == 2
                logs = await awaited(cluster.get_logs())
                assert "Cluster" in logs and "Scheduler" in logs
                assert cluster.asynchronous and client.asynchronous

    asyncio.run(main())


def test_the_same_calls_answer_directly_without_asynchronous():
    async def main(cluster):
        with Client(cluster) as client:  # a blocking client used inside a loop: plain values
            future = client.submit(inc, 1)
            assert future.result() == 2
            assert future.exception() is None
            assert len(client.run(inc, 1)) == 1
            assert cluster.get_logs()

    run(main)
