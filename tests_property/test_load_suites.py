"""Load suites on real clusters: 100,000 tasks leave the client's memory flat once released (in batches,
and as one run that gives its memory back), 50 cluster start/close cycles leave nothing growing, and 8
threads submitting at once lose or duplicate nothing."""

from __future__ import annotations

import gc
import operator
import os
import subprocess
import sys
import threading

import psutil
import pytest

import minidist
from minidist import Client, LocalCluster
from minidist.testing import no_leaks, wait_until

pytestmark = pytest.mark.timeout(180)


def inc(x):
    return x + 1


def double(x):
    return 2 * x


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def run_batch(client, start: int, size: int) -> None:
    futures = client.map(inc, range(start, start + size))
    assert sum(client.gather(futures)) == sum(range(start + 1, start + size + 1))
    del futures
    assert wait_until(lambda: not client.who_has(), timeout=30)


def test_100k_tasks_in_batches_leave_the_clients_memory_flat():
    with LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as client:
            # warm up: first-use caches, buffers that fill to their bound (the task stream, logs),
            # and the allocator, whose arenas take ~5 batches to reach their steady state
            for start in range(0, 50_000, 10_000):
                run_batch(client, start, 10_000)
            before = rss()
            for start in range(50_000, 150_000, 10_000):
                run_batch(client, start, 10_000)
            after = rss()
    assert after < before * 1.10, f"client RSS grew from {before >> 20} MiB to {after >> 20} MiB"


def test_a_100k_task_run_gives_the_clients_memory_back_once_released():
    # thread workers: their caches live in this process too. Before, ~90 MiB stayed after release:
    # dicts and sets grown to 100,000 entries never shrink, and the task stream's per-record objects
    # pinned most of the allocator arenas the run had used (minidist/sparse.py, task_stream.py)
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        with Client(cluster, set_as_default=False) as client:
            run_batch(client, 0, 1_000)  # warm up: lazy imports, first-use caches
            before = rss()
            futures = client.map(inc, range(100_000))
            assert sum(client.gather(futures)) == sum(range(1, 100_001))
            peak = rss() - before
            del futures
            assert wait_until(lambda: not client.who_has(), timeout=60)
            # the scheduler thread drops the run's last references just after answering who_has
            if not wait_until(lambda: rss() - before < _GIVEN_BACK, timeout=30, interval=0.2):
                held = client.run_on_scheduler(_books)  # say what still holds the run, if anything
                raise AssertionError(
                    f"client RSS grew by {peak >> 20} MiB during the run and still by "
                    f"{(rss() - before) >> 20} MiB after release; scheduler books: {held}"
                )


def test_a_100k_task_run_on_process_workers_gives_the_clients_memory_back_once_released():
    # only the client and the scheduler thread live in the client's process: what stays after
    # release is allocator arenas kept by the few objects the run made and left behind. Before,
    # ~20-45 MiB stayed: each frame loaded from a worker made a fresh "Payload" string that CPython's
    # type cache kept (comm/serialize.py), and the task stream held the run's last 10,000 key
    # objects. Then 10-16% of the start stayed: the client's event listener woke every half second
    # and kept what each wake made alive in whatever arena the run had just filled (2.7-5.1% since,
    # 2.8-4.8% with both cores busy). Measured in a fresh process: in this one, earlier tests leave
    # its heap fragmented
    out = subprocess.run(
        [sys.executable, "-c", _RUN_AND_RELEASE],
        capture_output=True,
        text=True,
        timeout=150,
        env=dict(os.environ, PYTHONPATH=_SOURCE_ROOT),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = (int(word) for word in out.stdout.split())
    assert after < before * _GIVEN_BACK_PROCESSES, (
        f"client RSS {(after - before) >> 20} MiB above the start ({before >> 20} MiB) after release"
    )


_SOURCE_ROOT = os.path.dirname(os.path.dirname(minidist.__file__))
_GIVEN_BACK_PROCESSES = 1.08  # of the start: the goal is 1.10
# no gc.collect() in the run below, as a user's program has none: minidist's own full collection after a
# large release empties CPython's free lists, whose tuples of the run kept ~40 of its arenas (sparse.py)
_RUN_AND_RELEASE = """
import time
import psutil
from minidist import Client
from minidist.testing import wait_until
def inc(x):
    return x + 1
if __name__ == "__main__":
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        client.gather(client.map(inc, range(1_000)))  # warm up: lazy imports, first-use caches
        assert wait_until(lambda: not client.who_has(), timeout=30)
        # the waits below make nothing that lives through them (no deadline float, no function):
        # an object made after the run and alive when the trim comes holds one of the run's arenas
        looks = iter(range(150))
        me = psutil.Process()
        before = me.memory_info().rss
        futures = client.map(inc, range(100_000), pure=False)
        assert sum(client.gather(futures)) == sum(range(1, 100_001))
        del futures
        while client.who_has():  # the subprocess's own timeout bounds this
            time.sleep(0.05)
        for _ in looks:
            if me.memory_info().rss < before * BOUND:
                break
            time.sleep(0.2)
        print(before, me.memory_info().rss)
""".replace("BOUND", str(_GIVEN_BACK_PROCESSES))


def _books(dask_scheduler) -> dict:
    return {
        "tasks": len(dask_scheduler.state.tasks),
        "results": len(dask_scheduler.data),
        "inbox": len(dask_scheduler.inbox),
    }


_GIVEN_BACK = 48 * 2**20  # ~25 MiB here, idle or loaded; ~90 MiB before the fix


def tree_graph(leaves: int) -> tuple[dict, str]:
    """A plain dask graph: a pairwise sum tree over ``leaves`` negated leaves; and its root key."""
    graph: dict = {f"leaf-{i}": (operator.neg, i) for i in range(leaves)}
    layer, level = list(graph), 0
    while len(layer) > 1:
        pairs = range(0, len(layer) - 1, 2)
        for i in pairs:
            graph[f"add-{level}-{i}"] = (operator.add, layer[i], layer[i + 1])
        layer = [f"add-{level}-{i}" for i in pairs] + layer[len(pairs) * 2 :]
        level += 1
    return graph, layer[0]


def test_a_50k_task_graph_gives_the_clients_memory_back_once_done():
    # intermediate results go as the graph runs, the rest once client.get returns; before, ~100 MiB
    # stayed as free C-heap memory behind a few live blocks (sparse.trim_heap) and unshrunk tables
    dask = pytest.importorskip("dask", reason="dask is a test extra: pip install -e '.[test]'")
    graph, root = tree_graph(25_000)
    # one task per node (dask's switch for low-level fusion off): what is given back is the books of
    # 50,000 tasks, not of the few hundred fused ones (integrations/dask_fusion.py)
    with (
        dask.config.set({"optimization.fuse.active": False}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
    ):
        with Client(cluster, set_as_default=False) as client:
            small, top = tree_graph(100)
            assert client.get(small, top) == -sum(range(100))  # warm up
            before = rss()
            assert client.get(graph, root) == -sum(range(25_000))
            assert wait_until(lambda: not client.who_has(), timeout=60)
            assert wait_until(lambda: rss() - before < _GIVEN_BACK, timeout=30, interval=0.2), (
                f"client RSS still {(rss() - before) >> 20} MiB above the start after the graph"
            )


def cycle(i: int) -> None:
    processes = i % 2 == 0  # both kinds of workers; processes are forked from a template in ms
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=processes, dashboard_address=None
    ) as cluster:
        with Client(cluster, set_as_default=False) as client:
            assert client.submit(inc, i).result(timeout=30) == i + 1


def test_50_cluster_start_close_cycles_leave_nothing_growing():
    cycle(0)  # warm up: lazy imports, first-use caches
    cycle(1)
    with no_leaks(timeout=10):  # no growth in processes, threads, descriptors, ports, segments
        for i in range(50):
            cycle(i)


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_8_threads_submitting_at_once_lose_and_duplicate_nothing(processes):
    per_thread, shared = 200, 100
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=processes, dashboard_address=None
    ) as cluster:
        with Client(cluster, set_as_default=False) as client:
            start = threading.Barrier(8)
            results: dict = {}

            def submitter(t: int) -> None:
                start.wait(30)
                own = [client.submit(double, t * 1000 + i, pure=False) for i in range(per_thread)]
                common = client.map(inc, range(shared))  # the same keys from every thread
                results[t] = (client.gather(own), client.gather(common), [f.key for f in own])

            threads = [threading.Thread(target=submitter, args=(t,)) for t in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert sorted(results) == list(range(8))  # no thread failed or hung
            for t, (values, common, _) in results.items():
                assert values == [2 * (t * 1000 + i) for i in range(per_thread)]
                assert common == list(range(1, shared + 1))
            keys = [key for _, _, own_keys in results.values() for key in own_keys]
            assert len(set(keys)) == 8 * per_thread
            # each task ran exactly once: the shared keys too, however many threads asked for them
            ran = [record["key"] for record in client.get_task_stream()]
            assert len(ran) == len(set(ran)) == 8 * per_thread + shared
