"""The futures API through a real cluster, on process workers and on thread workers."""

from __future__ import annotations

import contextvars
import datetime
import decimal
import operator
import os
import threading
import time

import pytest

from conftest import wait_for_file, wait_until
from minidist import (
    CancelledError,
    Client,
    Event,
    Future,
    LocalCluster,
    as_completed,
    fire_and_forget,
    wait,
)

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def slow_inc(x, delay=0.05):
    time.sleep(delay)
    return x + 1


def fail(x):
    raise ValueError(f"bad value {x}")


@pytest.fixture(scope="module", params=[True, False], ids=["processes", "threads"])
def client(request):
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=request.param, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def test_submit_returns_the_functions_result(client):
    future = client.submit(inc, 10)
    assert isinstance(future, Future)
    assert future.result(timeout=10) == 11
    assert future.status == "finished"
    assert future.done()


def test_future_type_is_the_results_type_once_finished(client):
    gate = Event(f"gate-{client.id}", client=client)
    waiting = client.submit(gate.wait, 30, pure=False)
    assert waiting.type is None  # not finished yet
    finished = client.submit(str.upper, "y")
    finished.result()
    assert finished.type is str
    failed = client.submit(int, "not a number")
    assert failed.exception() is not None and failed.type is None
    gate.set()
    assert waiting.result() is True and waiting.type is bool


def test_lambdas_and_closures_run(client):
    offset = 5
    assert client.submit(lambda x: x * 2, 21).result() == 42
    assert client.submit(lambda: offset + 1).result() == 6


def test_kwargs_reach_the_function(client):
    assert client.submit(slow_inc, 1, delay=0.001).result() == 2


def test_pure_submissions_share_a_key_impure_ones_do_not(client):
    a, b = client.submit(inc, 1), client.submit(inc, 1)
    assert a.key == b.key
    assert a.key.startswith("inc-")
    c, d = client.submit(inc, 1, pure=False), client.submit(inc, 1, pure=False)
    assert c.key != d.key
    assert [f.result() for f in (a, b, c, d)] == [2, 2, 2, 2]


def test_explicit_key(client):
    future = client.submit(inc, 1, key="my-key")
    assert future.key == "my-key"
    assert future.result() == 2


def test_map_returns_futures_in_order(client):
    futures = client.map(inc, range(100))
    assert client.gather(futures) == list(range(1, 101))


def test_map_over_several_iterables_and_key_prefix(client):
    futures = client.map(add, range(5), range(5, 10), key="adding")
    assert all(f.key.startswith("adding-") for f in futures)
    assert client.gather(futures) == [5, 7, 9, 11, 13]


def mark_done(path, i):
    if i == 0:
        with open(path, "w") as marker:
            marker.write("ran")
    return i


def test_map_with_batch_size_starts_tasks_while_its_iterable_is_still_read(client, tmp_path):
    # map posts its tasks batch_size at a time: the first tasks run while a long or slow iterable is
    # still being consumed, as in dask
    marker = tmp_path / "first-task-ran"
    seen_while_reading = []

    def items():
        for i in range(200):
            if i == 150:
                seen_while_reading.append(wait_until(marker.exists, timeout=20))
            yield i

    futures = client.map(mark_done, [str(marker)] * 200, items(), pure=False, batch_size=5)
    assert seen_while_reading == [True]
    assert client.gather(futures) == list(range(200))


@pytest.mark.parametrize("batch_size", [-1, 2.5, True])
def test_map_refuses_a_batch_size_that_is_not_a_whole_number(client, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        client.map(inc, range(3), batch_size=batch_size)


def test_map_over_futures_with_repeats_and_options(client):
    # map packs its tasks as columns: dependencies, keys it shares with itself, and options that
    # differ from the defaults must all still reach the scheduler
    inputs = client.map(inc, range(3))
    doubled = client.map(add, inputs, inputs)  # each task depends on one future, twice
    assert client.gather(doubled) == [2, 4, 6]
    repeated = client.map(inc, [5, 5, 6])  # pure: equal calls share one key
    assert repeated[0].key == repeated[1].key != repeated[2].key
    assert client.gather(repeated) == [6, 6, 7]
    worker = next(iter(client.scheduler_info()["workers"]))
    placed = client.map(add, inputs, [10] * 3, workers=[worker], retries=1, priority=5)
    assert client.gather(placed) == [11, 12, 13]
    assert all(list(holders) == [worker] for holders in client.who_has(placed).values())


def test_futures_in_arguments_become_dependencies(client):
    x = client.submit(inc, 1)
    y = client.submit(inc, x)
    z = client.submit(add, x, y)
    assert z.result() == 2 + 3
    nested = client.submit(sum, [x, y, z])
    assert nested.result() == 2 + 3 + 5
    in_dict = client.submit(lambda d: d["a"] * 10, {"a": x})
    assert in_dict.result() == 20


def test_gather_nested_containers(client):
    x, y = client.submit(inc, 1), client.submit(inc, 2)
    assert client.gather({"x": x, "rest": [y, (x, 7)]}) == {"x": 2, "rest": [3, (2, 7)]}


def test_gather_keeps_container_types_and_repeated_futures(client):
    x, y = client.submit(inc, 1), client.submit(inc, 2)
    assert client.gather((x, y, x)) == (2, 3, 2)
    assert client.gather([x, [y], 5, x]) == [2, [3], 5, 2]
    assert client.gather(frozenset([x, y])) == frozenset({2, 3})
    y.cancel()
    with pytest.raises(CancelledError):
        client.gather([x, y])


def test_task_exception_is_raised_with_remote_traceback(client):
    future = client.submit(fail, 3)
    with pytest.raises(ValueError, match="bad value 3"):
        future.result()
    assert future.status == "error"
    assert isinstance(future.exception(), ValueError)
    import traceback

    frames = traceback.extract_tb(future.traceback())  # a real traceback object in both modes
    assert frames[-1].name == "fail"
    assert frames[-1].filename == __file__
    assert "raise ValueError" in frames[-1].line


def test_dependents_of_a_failed_task_fail_with_it(client):
    bad = client.submit(fail, 1)
    child = client.submit(inc, bad)
    grandchild = client.submit(inc, child)
    with pytest.raises(ValueError, match="bad value 1"):
        grandchild.result()
    assert child.status == "error"


def test_gather_errors_skip_drops_failed_results(client):
    futures = [client.submit(inc, 1), client.submit(fail, 2), client.submit(inc, 3)]
    wait(futures)
    assert client.gather(futures, errors="skip") == [2, 4]
    with pytest.raises(ValueError):
        client.gather(futures)


def test_other_results_survive_a_failing_task(client):
    futures = client.map(lambda x: 1 / x, [1, 2, 0, 4])
    wait(futures)
    assert [f.status for f in futures] == ["finished", "finished", "error", "finished"]
    assert futures[3].result() == 0.25


def test_result_timeout(client):
    future = client.submit(slow_inc, 1, delay=1.0, pure=False)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    assert future.result(timeout=10) == 2


def test_timeouts_take_dasks_forms(client):
    slow = client.submit(slow_inc, 1, delay=1.0, pure=False)
    with pytest.raises(TimeoutError):
        slow.result(timeout="50ms")
    with pytest.raises(TimeoutError):
        slow.exception(timeout=datetime.timedelta(milliseconds=50))
    with pytest.raises(TimeoutError):
        wait([slow], timeout="50 ms")
    with pytest.raises(TimeoutError):
        for _ in as_completed([slow], timeout="0.05s"):
            pass
    assert slow.result(timeout="10s") == 2
    with pytest.raises(ValueError, match="fortnights"):
        slow.result(timeout="2 fortnights")
    [scattered] = client.scatter([5], timeout="10s")
    assert scattered.result(timeout=datetime.timedelta(seconds=10)) == 5


def test_threads_waiting_for_one_future_each_get_their_own_results(client):
    # each thread sleeps on its own future's waiter (client_futures.wait_for); results that finish
    # in any order wake the right threads, and one that gives up early leaves nothing behind
    futures = [client.submit(slow_inc, i, delay=0.01 * (i % 4), pure=False) for i in range(8)]
    results: dict = {}

    def wait_for_one(i: int) -> None:
        if i == 0:
            try:
                futures[i].result(timeout=0)
            except TimeoutError:
                pass
        results[i] = futures[i].result(timeout=30)

    threads = [threading.Thread(target=wait_for_one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {i: i + 1 for i in range(8)}
    assert futures[0].result(timeout=0) == 1


def test_scatter_single_list_and_dict(client):
    one = client.scatter(41)
    assert client.submit(inc, one).result() == 42
    many = client.scatter([1, 2, 3])
    assert client.gather(many) == [1, 2, 3]
    named = client.scatter({"a": 10, "b": 20})
    assert set(named) == {"a", "b"}
    assert client.submit(add, named["a"], named["b"]).result() == 30
    assert all(f.status == "finished" for f in many)


def test_as_completed_yields_every_future_once(client):
    futures = client.map(slow_inc, [3, 1, 2], delay=0.01, pure=False)
    seen = list(as_completed(futures))
    assert sorted(f.key for f in seen) == sorted(f.key for f in futures)


def test_as_completed_with_results_and_add(client):
    ac = as_completed([client.submit(inc, 1)], with_results=True)
    results = []
    for _future, result in ac:
        results.append(result)
        if result < 4:
            ac.add(client.submit(inc, result))
    assert results == [2, 3, 4]


def test_wait_first_completed(client, tmp_path):
    release = tmp_path / "release"
    fast = client.submit(inc, 0, pure=False)
    slow = client.submit(wait_for_file, str(release), 0, pure=False)  # ends only when told
    done, not_done = wait([fast, slow], return_when="FIRST_COMPLETED", timeout=30)
    assert fast in done
    assert slow in not_done
    slow.cancel()
    release.touch()


def test_wait_timeout_raises(client, tmp_path):
    release = tmp_path / "release"
    slow = client.submit(wait_for_file, str(release), 0, pure=False)
    with pytest.raises(TimeoutError):
        wait([slow], timeout=0.05)
    slow.cancel()
    release.touch()  # its thread is free for the next tests at once


def test_cancel_marks_future_cancelled(client, tmp_path):
    release = tmp_path / "release"
    slow = client.submit(wait_for_file, str(release), 0, pure=False)
    dependent = client.submit(inc, slow)
    slow.cancel()
    assert slow.cancelled()
    with pytest.raises(CancelledError):
        slow.result(timeout=5)
    with pytest.raises(CancelledError):
        dependent.result(timeout=5)
    release.touch()


def test_a_task_on_a_cancelled_future_is_cancelled_as_in_dask(client, tmp_path):
    """dask cancels tasks whose dependencies are gone ("lost dependencies"), with their dependents in
    the same graph; the client stays usable."""
    release = tmp_path / "release"
    first = client.submit(wait_for_file, str(release), 0, pure=False)
    first.cancel()
    late = client.submit(inc, first)
    after_late = client.submit(inc, late)
    for future in (late, after_late):
        with pytest.raises(CancelledError):
            future.result(timeout=10)
    release.touch()
    assert client.submit(inc, 1).result(timeout=10) == 2


def test_done_callback_runs_and_a_raising_one_does_not_break_the_client(client):
    called = threading.Event()
    seen = []

    def good(future):
        seen.append(future.key)
        called.set()

    def bad(future):
        raise RuntimeError("callback failure")

    future = client.submit(inc, 100)
    future.add_done_callback(bad)
    future.add_done_callback(good)
    assert called.wait(10)
    assert seen == [future.key]
    assert client.submit(inc, 200).result() == 201


def test_release_frees_the_key_on_the_scheduler(client):
    future = client.submit(inc, 12345, pure=False)
    key = future.key
    future.result()
    future.release()
    assert wait_until(lambda: key not in client.who_has())


def _cached_keys(dask_worker):
    return [str(key) for key in (*dask_worker.data, *dask_worker.encoded)]


def test_a_released_result_leaves_the_workers_cache_too(client):
    # a free with nothing else for its worker waits a little for company (scheduler/delivery.py),
    # never for ever
    future = client.submit(inc, 54321, pure=False)
    key = future.key
    assert future.result(timeout=10) == 54322
    assert any(key in keys for keys in client.run(_cached_keys).values())
    future.release()
    assert wait_until(
        lambda: not any(key in keys for keys in client.run(_cached_keys).values()), timeout=10
    )


def _announce_then_wait(started, go, value):
    open(started, "w").close()
    return wait_for_file(go, value)


def _busy_threads(dask_worker) -> int:
    # task threads inside a run: one leaves the count only after the run's entry left the books
    return dask_worker._busy


def test_a_key_run_again_while_its_released_run_goes_on_is_cancelled_by_its_own_release(
    client, tmp_path
):
    # one worker, two threads: a released run still going when its key is submitted again
    address = sorted(client.nthreads())[0]
    path = {name: str(tmp_path / name) for name in ("started-1", "go-1", "started-2", "go-2")}
    first = client.submit(
        _announce_then_wait, path["started-1"], path["go-1"], 1, key="twice", workers=[address]
    )
    assert wait_until(lambda: os.path.exists(path["started-1"]), timeout=20)
    first.release()
    second = client.submit(
        _announce_then_wait, path["started-2"], path["go-2"], 2, key="twice", workers=[address]
    )
    assert wait_until(lambda: os.path.exists(path["started-2"]), timeout=20)
    open(path["go-1"], "w").close()  # the released run ends first...
    # ... and leaves the new run its place in the worker's books
    assert wait_until(lambda: client.run(_busy_threads, workers=[address])[address] == 1)
    second.release()  # a release of the new run must find it and cancel it
    open(path["go-2"], "w").close()
    assert wait_until(lambda: client.run(_busy_threads, workers=[address])[address] == 0)
    assert "twice" not in client.run(_cached_keys, workers=[address])[address]


def test_a_chain_of_submit_and_result_releases_each_step(client):
    # each future is dropped just before the next submission: the scheduler applies the release
    # after sending the new task (scheduler/server.py), unless they name the same key
    keys = set()
    x = 0
    for _ in range(50):
        future = client.submit(inc, x, pure=False)
        keys.add(future.key)
        x = future.result(timeout=10)
        del future
    assert x == 50
    for _ in range(50):  # the same pure key, released and submitted again each time
        future = client.submit(inc, 7)
        keys.add(future.key)
        assert future.result(timeout=10) == 8
        del future
    assert len(keys) == 51
    assert wait_until(lambda: not keys.intersection(client.who_has()), timeout=10)


def set_event(name, marker):
    Event(name).set()
    return marker


def test_fire_and_forget_runs_without_a_future(client):
    marker = client.scatter(0)
    name = f"forgotten-{client.id}-{marker.key}"
    fire_and_forget(client.submit(set_event, name, marker, pure=False))
    # the task runs even though its future was dropped (and the module's cluster ran tasks before:
    # the task's own effect, not a counter, tells)
    assert Event(name, client=client).wait(30)


def test_priority_orders_queued_work(client, tmp_path):
    # a cluster of one thread, so the order of execution is the order of dispatch
    release = tmp_path / "release"
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=client.processes, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):
        # fill the thread and prefetch until both maps are on the scheduler (however slow the
        # machine is between the two calls)
        blockers = c.map(wait_for_file, [str(release)] * 3, pure=False)
        low = c.map(slow_inc, range(4), delay=0.01, priority=-10, pure=False)
        high = c.map(slow_inc, range(4), delay=0.01, priority=10, pure=False)
        c.run_on_scheduler(len, ())  # a round trip: the scheduler has read both maps
        release.touch()
        order = [f.key for f in as_completed(low + high)]
        assert set(order[:4]) == {f.key for f in high}
        wait(blockers)


def test_retries_rerun_a_flaky_task(client):
    def flaky(path_marker):
        import os

        marker = f"/tmp/minidist-flaky-{path_marker}"
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        os.unlink(marker)
        return "ok"

    import uuid

    assert client.submit(flaky, uuid.uuid4().hex, retries=1).result(timeout=10) == "ok"


def test_retry_reruns_an_erred_future_and_its_erred_dependencies(client):
    import uuid

    def fails_once(marker):
        import os

        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        os.unlink(marker)
        return 10

    marker = f"/tmp/minidist-retry-{uuid.uuid4().hex}"
    upstream = client.submit(fails_once, marker)
    downstream = client.submit(inc, upstream)
    with pytest.raises(RuntimeError):
        downstream.result(timeout=10)
    downstream.retry()
    assert downstream.result(timeout=10) == 11
    assert upstream.result() == 10


def test_run_returns_a_result_per_worker(client):
    results = client.run(operator.add, 1, 2)
    assert set(results) == set(client.scheduler_info()["workers"])
    assert set(results.values()) == {3}


def test_nthreads_and_scheduler_info(client):
    assert sorted(client.nthreads().values()) == [2, 2]
    info = client.scheduler_info()
    assert info["type"] == "Scheduler"
    for worker in info["workers"].values():
        assert worker["nthreads"] == 2
        assert "memory_limit" in worker and "name" in worker


def test_run_on_scheduler(client):
    assert client.run_on_scheduler(lambda: 7) == 7
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.workers)) == 2


def test_sys_exit_in_a_task_errs_the_future_and_the_cluster_carries_on(client):
    import sys

    future = client.submit(sys.exit, 3, pure=False)
    with pytest.raises(SystemExit):
        future.result(timeout=10)
    assert client.submit(inc, 1, pure=False).result(timeout=10) == 2


def test_many_small_tasks(client):
    futures = client.map(inc, range(2000))
    assert sum(client.gather(futures)) == sum(range(1, 2001))


_request_id: contextvars.ContextVar = contextvars.ContextVar("request_id", default="unset")


def _one_seventh(_=None):
    return decimal.Decimal(1) / decimal.Decimal(7)


def _set_request_id(value):
    _request_id.set(value)


def test_thread_workers_run_tasks_in_the_context_the_cluster_was_made_in():
    # as on dask.distributed's thread workers: a program's context variables (decimal's context
    # among them, which pandas' decimal arrays compare by identity) reach its tasks, each task
    # starting from them afresh
    def made_in_a_context_of_its_own():
        _request_id.set("request-7")
        decimal.setcontext(decimal.Context(prec=6))
        with Client(
            processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
        ) as c:
            assert c.submit(_request_id.get, key="read-var").result() == "request-7"
            c.submit(_set_request_id, "set-by-a-task").result()  # on the same (only) thread
            assert c.submit(_request_id.get, key="read-var-again").result() == "request-7"
            assert c.submit(_one_seventh, key="divide").result() == decimal.Decimal("0.142857")
            assert c.submit(decimal.getcontext, key="ctx").result() is decimal.getcontext()
            assert list(c.run(_one_seventh).values()) == [decimal.Decimal("0.142857")]

    contextvars.copy_context().run(made_in_a_context_of_its_own)  # leaves this test's own alone
    assert _request_id.get() == "unset"
