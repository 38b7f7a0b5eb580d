"""Dropping many futures at once: every key nobody holds any more is forgotten by the scheduler, every
key still held (by another Future object, another client, a fire-and-forget) stays, and a key released
and submitted again is computed again and kept. Through the public API only; no timing is asserted."""

from __future__ import annotations

import sys

import pytest

from conftest import calls, count_call, in_threads, wait_for_file, wait_until
from minidist import Client, Future, LocalCluster, fire_and_forget

MANY = 3000  # more futures than one batch of releases wakes the scheduler for (client_futures.py)


def inc(x):
    return x + 1


def wait_then_count(go, path, value):
    wait_for_file(go)
    return count_call(path, value)


@pytest.fixture(scope="module")
def client():
    # process workers: a single submission may take the direct lane (scheduler/lane.py)
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        c.wait_for_workers(2, timeout=20)
        yield c


@pytest.fixture(autouse=True)
def nothing_held_between_tests(client):
    yield
    assert wait_until(lambda: not client.who_has(), timeout=20)


@pytest.fixture
def frequent_thread_switches():
    """Threads take turns with the GIL every 10 us rather than 5 ms: the client's threads and the
    scheduler's interleave in the middle of a release far more often (a race shows, where it is)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def test_dropping_a_list_of_futures_forgets_every_key(client, frequent_thread_switches):
    # several sizes: the scheduler thread takes the releases while the list is still being dropped,
    # and the last drops come before, during or after its take
    for size in (20_000, 1500, 4000, 7000, 2500, 5000, 3000, 6000):
        futures = client.map(inc, range(size), pure=False)
        assert client.gather(futures)[-1] == size
        del futures
        assert wait_until(lambda: not client.who_has())
    # the client goes on as before
    assert client.gather(client.map(inc, range(10), pure=False)) == list(range(1, 11))


def test_futures_dropped_right_after_their_submission_are_released(client):
    # a release still waiting for the scheduler when new tasks are submitted, and the new futures
    # dropped at once: their release must reach the scheduler after their tasks, not with the
    # earlier ones (the scheduler would then keep tasks nobody holds for ever)
    for _ in range(10):
        first = client.map(inc, range(500), pure=False)
        client.gather(first)
        del first
        second = client.map(inc, range(3), pure=False)
        del second
        assert wait_until(lambda: not client.who_has())


def test_futures_kept_from_a_dropped_list_keep_their_keys(client):
    futures = client.map(inc, range(MANY), pure=False)
    client.gather(futures)
    same_objects = futures[::3]
    other_objects = [Future(future.key, client) for future in futures[1::3]]
    kept = {future.key for future in same_objects + other_objects}
    del futures
    assert wait_until(lambda: set(client.who_has()) == kept)
    assert client.gather(same_objects) == list(range(1, MANY + 1, 3))
    assert client.gather(other_objects) == list(range(2, MANY + 1, 3))
    other_keys = {future.key for future in other_objects}
    del same_objects
    assert wait_until(lambda: set(client.who_has()) == other_keys)


def test_two_lists_of_the_same_pure_keys_share_them_until_both_go(client):
    first = client.map(inc, range(MANY))
    second = client.map(inc, range(MANY))
    keys = {future.key for future in second}
    assert {future.key for future in first} == keys
    client.gather(first)
    del first
    # the release of the first list reaches the scheduler before this question does
    assert set(client.who_has()) == keys
    assert client.gather(second) == list(range(1, MANY + 1))
    del second
    assert wait_until(lambda: not client.who_has())


def test_another_clients_futures_keep_their_keys_through_a_bulk_release(client):
    with Client(client.cluster) as other:
        mine = client.map(inc, range(MANY))
        theirs = other.map(inc, range(MANY))
        client.gather(mine)
        keys = {future.key for future in theirs}
        del mine
        assert set(client.who_has()) == keys  # after this client's release
        assert other.gather(theirs) == list(range(1, MANY + 1))
        del theirs
        assert wait_until(lambda: not client.who_has())


def test_pure_keys_dropped_in_bulk_and_submitted_again_run_again(client, tmp_path):
    counter = str(tmp_path / "runs")
    futures = client.map(count_call, [counter] * MANY, range(MANY))
    assert client.gather(futures) == list(range(MANY))
    keys = [future.key for future in futures]
    client.submit(inc, 0, pure=False).result(timeout=10)  # a worker is idle and offered
    del futures
    # the releases are still on their way: the new tasks must follow them, not be released by them
    one = client.submit(count_call, counter, 7)
    assert one.key == keys[7]
    assert one.result(timeout=20) == 7
    again = client.map(count_call, [counter] * MANY, range(MANY))
    assert [future.key for future in again] == keys
    assert client.gather(again) == list(range(MANY))
    assert calls(counter) == 2 * MANY  # forgotten, then computed again, as dask does
    assert wait_until(lambda: set(client.who_has()) == set(keys))
    del one, again


def test_explicit_releases_cancels_and_drops_mixed(client):
    futures = client.map(inc, range(MANY), pure=False)
    client.gather(futures)
    for future in futures[:100]:
        future.release()
        future.release()  # a second release of the same handle does nothing
    client.cancel(futures[100:200])
    assert all(future.cancelled() for future in futures[100:200])
    kept = futures[-1]
    kept_key = kept.key
    del futures
    assert wait_until(lambda: set(client.who_has()) == {kept_key})
    assert kept.result(timeout=10) == MANY


def test_fire_and_forget_tasks_run_after_their_futures_are_dropped_in_bulk(client, tmp_path):
    counter, go = str(tmp_path / "runs"), str(tmp_path / "go")
    futures = client.map(wait_then_count, [go] * 50, [counter] * 50, range(50), pure=False)
    fire_and_forget(futures)
    del futures
    client.who_has()  # the release has reached the scheduler
    open(go, "w").close()
    assert wait_until(lambda: calls(counter) == 50, timeout=30)


def test_futures_dropped_from_many_threads_leave_exactly_the_held_keys(
    client, frequent_thread_switches
):
    # threads submit and drop overlapping pure keys at once (shared states, releases racing
    # submissions); at the end only the keys of the futures still held remain
    held = client.map(inc, range(0, 600, 2))

    def churn(start: int) -> None:
        for round in range(15):
            futures = client.map(inc, range(start, start + 400))
            assert client.gather(futures)[0] == start + 1
            del futures
            assert client.submit(inc, start + round).result(timeout=20) == start + round + 1

    in_threads(churn, [0, 100, 200])
    expected = {future.key for future in held}
    assert wait_until(lambda: set(client.who_has()) == expected)
    assert client.gather(held) == list(range(1, 601, 2))
    del held


def test_a_remote_client_releases_what_it_drops_and_keeps_what_it_holds():
    # its releases travel on its connection (remote/client.py), counted off by its sender thread
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as local,
        Client(cluster.scheduler_address) as remote,
    ):
        futures = remote.map(inc, range(MANY), pure=False)
        remote.gather(futures)
        kept = futures[::5]
        kept_keys = {future.key for future in kept}
        del futures
        assert wait_until(lambda: set(local.who_has()) == kept_keys)
        assert remote.gather(kept) == list(range(1, MANY + 1, 5))


def test_a_closing_client_releases_what_it_dropped_just_before(client):
    other = Client(client.cluster)
    futures = other.map(inc, range(MANY), pure=False)
    other.gather(futures)
    del futures
    other.close()
    assert wait_until(lambda: not client.who_has())
