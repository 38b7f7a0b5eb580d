"""Fault suites: random task graphs while workers are killed at random moments, and random sequences of
submit / cancel / release / scale / worker death, on real process clusters.

Kills come in three kinds, each the way it happens for real: SIGKILL from outside, ``os._exit`` from
inside the worker, and the memory monitor terminating a worker over its ``memory_limit``. A moment is
"after the k-th task of the graph finished", so kills land while the graph is running (its tasks take a
few milliseconds each). Every example must give the sequential answer or a clear ``KilledWorker``, never
hang (every wait is bounded), and leave no key, segment or process behind once its futures are dropped.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from minidist import CancelledError, Client, KilledWorker, LocalCluster
from minidist.testing import combine, no_leaks, task_graphs, wait_until

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
HELPERS: dict = {}  # cluster id -> pids of its processes that are not workers (e.g. a fork template)
KILLS = ("sigkill", "os._exit", "memory")


def hog(mib: int) -> int:
    block = bytearray(mib * MiB)  # zeroed pages are touched: they count as the worker's memory
    threading.Event().wait(30)  # the memory monitor ends this process long before
    return len(block)


def kill(client, kind: str, address: str, pid: int) -> None:
    if kind == "sigkill":
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it died already (an earlier kill in the same run): the cluster still replaces it
        return
    try:
        if kind == "os._exit":
            client.run(os._exit, 1, workers=[address])
        else:
            client.run(hog, 400, workers=[address])
    except Exception:
        pass  # the worker died answering: that was the point


@pytest.fixture(scope="module")
def cluster():
    with no_leaks(timeout=20):
        with LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            memory_limit="250MiB",
            dashboard_address=None,
            silence_logs=False,
            scheduler_kwargs={"allowed_failures": 1},
        ) as cluster:
            yield cluster


def descendants() -> set:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def worker_pids(client) -> set:
    return {w["pid"] for w in client.scheduler_info()["workers"].values()}


def settle(client, cluster, workers: int) -> None:
    """Back to a clean cluster of ``workers`` workers: no key, no segment, no dead process (besides the
    workers, only the helper processes the cluster had when it started)."""
    assert wait_until(lambda: not client.who_has(), timeout=20), client.who_has()
    client.wait_for_workers(workers, timeout=30)
    helpers = HELPERS.setdefault(cluster.cluster_id, descendants() - worker_pids(client))

    def only_live_workers() -> bool:
        pids = worker_pids(client)
        return len(pids) == workers and descendants() - pids <= helpers

    assert wait_until(only_live_workers, timeout=30), (worker_pids(client), descendants(), helpers)
    prefix = f"minidist_{cluster.cluster_id}_"
    assert wait_until(
        lambda: not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)], timeout=20
    )


def submit_chain(client, first, n: int) -> list:
    chain = [first]
    for _ in range(n):
        chain.append(client.submit(combine, "add", [chain[-1]], 1, 0.005, pure=False))
    return chain[1:]


def settle_futures(futures: list) -> None:
    for future in futures:
        try:
            future.result(timeout=60)
        except (KilledWorker, CancelledError):
            pass


kills = st.lists(
    st.tuples(st.integers(0, 25), st.integers(0, 1), st.sampled_from(KILLS)), max_size=2
)


@settings(
    max_examples=10,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: it would take minutes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(graph=task_graphs(max_tasks=25, delay=0.005), schedule=kills)
def test_graphs_give_the_sequential_answer_or_killed_worker_while_workers_die(
    cluster, graph, schedule
):
    with Client(cluster, set_as_default=False) as client:
        futures = graph.submit(client)
        total = len(futures)
        finished = threading.Semaphore(0)
        for future in futures:
            future.add_done_callback(lambda _: finished.release())
        del future  # only the list holds the futures: dropping it releases every key

        def killer() -> None:
            done = 0
            for after, which, kind in sorted(schedule):
                while done < min(after, total):
                    if not finished.acquire(timeout=30):
                        return
                    done += 1
                workers = sorted(client.scheduler_info()["workers"].items())
                if workers:
                    address, info = workers[which % len(workers)]
                    kill(client, kind, address, info["pid"])

        thread = threading.Thread(target=killer, name="test-killer")
        thread.start()
        graph.check(futures, timeout=60, tolerate=(KilledWorker,))
        thread.join(60)
        assert not thread.is_alive()
        del futures
        settle(client, cluster, 2)


# ------------------------------------------------------------------------- random client operations

operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 12)),
        st.tuples(st.just("cancel"), st.integers(0, 99)),
        st.tuples(st.just("release"), st.integers(0, 99)),
        st.tuples(st.just("scatter"), st.booleans()),
        st.tuples(st.just("scale"), st.integers(1, 3)),
        st.tuples(st.just("kill"), st.integers(0, 2)),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=12,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: it would take minutes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=operations)
def test_random_submit_cancel_release_scale_and_deaths_leave_nothing_behind(cluster, steps):
    with Client(cluster, set_as_default=False) as client:
        held: list = []
        for step, n in steps:
            if step == "submit":  # a chain of n small tasks, each on the previous one
                held.extend(submit_chain(client, held[-1] if held else 0, n))
            elif step in ("cancel", "release") and held:
                dropped = held.pop(n % len(held))
                if step == "cancel":
                    dropped.cancel()
                del dropped
            elif step == "scatter":  # a large array lives in shared memory (chains add to it)
                held.append(client.scatter(np.arange(1 << 17) if n else 5))
            elif step == "scale":
                cluster.scale(n)
            elif step == "kill":
                workers = sorted(client.scheduler_info()["workers"].items())
                if workers:
                    address, info = workers[n % len(workers)]
                    kill(client, "sigkill", address, info["pid"])
        settle_futures(held)  # every future settles within bounds, whatever happened
        held.clear()
        cluster.scale(2)
        settle(client, cluster, 2)
