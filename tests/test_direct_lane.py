"""A task submitted while a process worker is idle goes straight to it (scheduler/lane.py): results,
the scheduler's books, frees, cancellation, a worker dying under it and concurrent submitters."""

from __future__ import annotations

import os

import pytest

from conftest import calls, count_call, in_threads, wait_for_file, wait_until
from minidist import Client
from minidist.scheduler.state import Execute, NewTask, SchedulerState

pytestmark = pytest.mark.timeout(90)


def inc(x):
    return x + 1


def wait_then_count(release, path, value):
    wait_for_file(release, None)
    return count_call(path, value)


def count_then_fail(path):
    count_call(path, None)
    raise ValueError("failed on purpose")


def submit_when_offered(client, function, *args):
    """``function(*args)`` under its pure key, submitted right after a result, when the scheduler
    has just offered an idle worker: (future, whether it took the lane)."""
    client.submit(inc, 0, pure=False).result(timeout=10)
    before = lane_sent(client)
    future = client.submit(function, *args)
    return future, lane_sent(client) > before


def die_on_first_run(path, value):
    """Counts its runs in ``path``; the first one kills its worker process."""
    first = calls(path) == 0
    count_call(path, None)
    if first:
        os._exit(13)
    return value


def cached_keys(dask_worker):
    return [str(key) for key in (*dask_worker.data, *dask_worker.encoded)]


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        c.wait_for_workers(2, timeout=20)
        yield c


def lane_sent(client) -> int:
    return client.cluster.scheduler.lane.sent


def submit_directly(client, tmp_path, function, *args, pure=False):
    """``function(release_file, *args)`` submitted right after a result, when a worker is idle and
    offered, until it takes the lane (a turn of the scheduler in between withdraws the offer, which a
    loaded machine may cause): (future, release file). An attempt that took the usual way is let go
    and waited for."""
    for attempt in range(10):
        release = str(tmp_path / f"go-{attempt}")
        client.submit(inc, 0, pure=False).result(timeout=10)
        before = lane_sent(client)
        future = client.submit(function, release, *args, pure=pure)
        if lane_sent(client) > before:
            return future, release
        open(release, "w").close()
        future.result(timeout=30)
    pytest.fail("no submission took the direct lane")


def test_the_state_offers_only_an_idle_worker_with_nothing_queued():
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    assert state.direct_worker("A") and state.direct_worker("B")
    assert not state.direct_worker("C")  # unknown
    (execute,) = [i for i in state.update_graph([NewTask("x")], "c", ["x"]) if type(i) is Execute]
    busy, idle = execute.worker, ({"A", "B"} - {execute.worker}).pop()
    assert not state.direct_worker(busy) and state.direct_worker(idle)
    # a task waiting for a worker comes first: no worker is offered
    out = state.update_graph([NewTask("y", workers=frozenset({"C"}))], "c", ["y"])
    assert not [i for i in out if type(i) is Execute]
    assert not state.direct_worker(busy) and not state.direct_worker(idle)


def test_a_task_sent_to_a_worker_is_recorded_as_running_there():
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    out = state.update_graph([NewTask("x")], "c", ["x"], sent_to="B")
    assert not [i for i in out if type(i) is Execute]  # it went already
    ts = state.tasks["x"]
    assert (ts.state, ts.processing_on, ts.attempt) == ("processing", "B", 1)
    assert not state.direct_worker("B") and state.direct_worker("A")
    # its result is taken as the current attempt's; the next task goes to an idle worker as usual
    state.task_finished("x", "B", 8, attempt=1)
    assert state.tasks["x"].state == "memory"
    out = state.update_graph([NewTask("y")], "c", ["y"], sent_to="gone")  # that worker left
    assert [(i.key, i.attempt) for i in out if type(i) is Execute] == [("y", 1)]


def test_a_chain_of_single_tasks_goes_straight_to_idle_workers(client):
    before = lane_sent(client)
    x = 0
    for _ in range(50):
        x = client.submit(inc, x, pure=False).result(timeout=10)
    assert x == 50
    # the scheduler offers an idle worker once it took the previous result: nearly every task of a
    # chain takes the lane (the first may not, and a turn of the scheduler in between withdraws it)
    assert lane_sent(client) - before >= 10
    assert wait_until(lambda: not client.processing() or not any(client.processing().values()))


def test_frees_sent_ahead_of_direct_tasks_reach_the_workers(client):
    futures = []
    x = 0
    for _ in range(20):
        future = client.submit(inc, x, pure=False)
        x = future.result(timeout=10)
        futures.append(future)
    keys = {future.key for future in futures}
    assert any(keys & set(cached) for cached in client.run(cached_keys).values())
    del future, futures
    # released: the scheduler forgets every key and each worker drops its cached copy (the frees
    # travel ahead of the next direct task, or on their own a moment later)
    assert wait_until(lambda: not keys & set(client.who_has()))
    assert wait_until(
        lambda: not any(keys & set(cached) for cached in client.run(cached_keys).values())
    )


def test_the_scheduler_sees_a_direct_task_while_it_runs_and_it_runs_once(client, tmp_path):
    counter = str(tmp_path / "runs")
    blocked, release = submit_directly(client, tmp_path, wait_then_count, counter, 7)
    # any question to the scheduler finds the task recorded first, running on one worker
    assert wait_until(lambda: [blocked.key] in list(client.processing().values()))
    assert blocked.status == "pending"
    open(release, "w").close()
    assert blocked.result(timeout=30) == 7
    assert calls(counter) == 1


def test_cancelling_a_direct_task_right_after_submitting_it(client, tmp_path):
    blocked, release = submit_directly(client, tmp_path, wait_for_file, 7)
    key = blocked.key
    blocked.cancel()
    assert blocked.cancelled()
    open(release, "w").close()  # it ends on its worker, and its result goes nowhere
    assert client.submit(inc, 2, pure=False).result(timeout=10) == 3
    assert wait_until(lambda: not any(client.processing().values()))
    assert blocked.cancelled()
    assert key not in client.who_has()


def test_concurrent_submitters_each_get_their_own_results(client):
    def chain(start: int) -> None:
        x = start
        for _ in range(30):
            x = client.submit(inc, x, pure=False).result(timeout=20)
        assert x == start + 30

    in_threads(chain, [1000 * i for i in range(4)])


def test_a_worker_dying_under_a_direct_task_has_it_run_again(tmp_path):
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        for attempt in range(10):
            counter = str(tmp_path / f"runs-{attempt}")
            c.wait_for_workers(2, timeout=20)
            c.submit(inc, 0, pure=False).result(timeout=10)
            before = lane_sent(c)
            future = c.submit(die_on_first_run, counter, 42, pure=False)
            direct = lane_sent(c) > before
            # direct: the scheduler learns of the task before the death, and requeues it
            assert future.result(timeout=60) == 42
            assert calls(counter) == 2
            if direct:
                break
        else:
            pytest.fail("no submission took the direct lane")
        x = 0
        for _ in range(10):
            x = c.submit(inc, x, pure=False).result(timeout=20)
        assert x == 10


def test_a_chain_of_default_submits_goes_straight_to_idle_workers(client):
    # pure keys (the default): each new key, which the scheduler does not hold, may take the lane
    before = lane_sent(client)
    x = 0
    for _ in range(50):
        x = client.submit(inc, x).result(timeout=10)
    assert x == 50
    assert lane_sent(client) - before >= 10


def test_a_pure_key_running_elsewhere_is_shared_and_runs_once(client, tmp_path):
    counter = str(tmp_path / "runs")
    first, release = submit_directly(client, tmp_path, wait_then_count, counter, 7, pure=True)
    with Client(client.cluster) as other:
        # the other worker is idle and offered: the same key must not go to it
        again, direct = submit_when_offered(other, wait_then_count, release, counter, 7)
        assert again.key == first.key and not direct
        open(release, "w").close()
        assert again.result(timeout=30) == first.result(timeout=30) == 7
    assert calls(counter) == 1


def test_a_pure_key_in_memory_is_shared_and_runs_once(client, tmp_path):
    counter = str(tmp_path / "runs")
    first = client.submit(count_call, counter, 5)
    assert first.result(timeout=10) == 5
    with Client(client.cluster) as other:
        again, direct = submit_when_offered(other, count_call, counter, 5)
        assert again.key == first.key and not direct
        assert again.result(timeout=10) == 5
    assert calls(counter) == 1


def test_an_erred_pure_key_is_shared_and_runs_once(client, tmp_path):
    counter = str(tmp_path / "runs")
    first = client.submit(count_then_fail, counter)
    with pytest.raises(ValueError, match="on purpose"):
        first.result(timeout=10)
    with Client(client.cluster) as other:
        again, direct = submit_when_offered(other, count_then_fail, counter)
        assert again.key == first.key and not direct
        with pytest.raises(ValueError, match="on purpose"):
            again.result(timeout=10)
    assert calls(counter) == 1


def test_a_pure_key_released_and_submitted_again_runs_again(client, tmp_path):
    counter = str(tmp_path / "runs")
    first = client.submit(count_call, counter, 3)
    assert first.result(timeout=10) == 3
    key = first.key
    client.submit(inc, 0, pure=False).result(timeout=10)  # a worker is offered
    del first  # released: the scheduler collects the release on its next turn
    again = client.submit(count_call, counter, 3)
    assert again.key == key
    assert again.result(timeout=10) == 3
    assert calls(counter) == 2  # forgotten, then computed again, as dask does


def test_a_cancelled_pure_key_dropped_and_submitted_again_runs_again(client, tmp_path):
    counter = str(tmp_path / "runs")
    first = client.submit(count_call, counter, 4)
    assert first.result(timeout=10) == 4
    key = first.key
    client.cancel(first)  # the scheduler forgets the key at once, for every client
    assert first.cancelled()
    client.submit(inc, 0, pure=False).result(timeout=10)  # a worker is offered
    # this client's release of the key is not collected yet: the new task under that key must follow
    # the release, not overtake it (it would then be released as soon as it is recorded)
    del first
    again = client.submit(count_call, counter, 4)
    assert again.key == key
    assert again.result(timeout=10) == 4
    assert calls(counter) == 2


def test_two_clients_submitting_the_same_pure_keys_run_each_once(client, tmp_path):
    held = []
    counters = [str(tmp_path / f"runs-{i}") for i in range(30)]

    def submit_all(submitter) -> None:
        for i, counter in enumerate(counters):
            future = submitter.submit(count_call, counter, i)
            assert future.result(timeout=20) == i
            held.append(future)  # kept: a released key may rightly run again

    with Client(client.cluster) as other:
        in_threads(submit_all, [client, other])
        assert [calls(counter) for counter in counters] == [1] * len(counters)
        held.clear()
