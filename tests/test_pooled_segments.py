"""Published results go into segments their worker recycles (comm/shm_pool.py), end to end.

A held result that a dependent on another worker needs is published into a segment; once its key is
forgotten the scheduler hands the segment back and the writer writes later publications into it. A
view of it that outlives the reader's data store (here: a task stashes its argument in a module
global) keeps its bytes: the writer passes the segment over until that view is gone, or until the
process holding it is killed. Whatever the pool keeps is unlinked when its worker dies or the cluster
closes (the module's leak check).
"""

from __future__ import annotations

import os
import signal

import dask
import numpy as np
import pytest

from conftest import two_process_workers, wait_until
from minidist import Client
from minidist.comm.shm import list_segments

pytestmark = pytest.mark.timeout(90)

MiB = 2**20
STASH: list = []  # in a worker process: arrays a task kept beyond its run


def filled(nbytes: int, value: float):
    return np.full(nbytes // 8, value)


def first(array, stash: bool) -> float:
    if stash:
        STASH.append(array[::2])  # a view of the mapped dependency, outliving the task
    return float(array[0])


def stash_intact(value: float) -> bool:
    return bool(STASH) and all((a == value).all() for a in STASH) and not STASH[0].flags.writeable


def clear_stash() -> None:
    STASH.clear()


def pool_counts(dask_worker) -> tuple:
    pool = dask_worker.holding.pool
    return pool.created, pool.reused


def free_segments(dask_worker) -> list:
    return dask_worker.holding.pool.free_names()


@pytest.fixture(scope="module")
def client():
    with two_process_workers() as c:
        yield c


def publish_and_read(client, writer: str, reader: str, value: float, stash: bool = False):
    """A 4 MiB held result made on ``writer`` and read on ``reader`` (so it is published)."""
    with dask.annotate(workers=[writer]):
        made = dask.delayed(filled, pure=False)(4 * MiB, value)
    with dask.annotate(workers=[reader]):
        read = dask.delayed(first, pure=False)(made, stash)
    assert read.compute() == value


def segments_settle(client) -> set:
    """Once the run is released: every segment left is one a worker keeps for reuse."""
    cluster_id = client.cluster.cluster_id

    def only_free() -> bool:
        free = set().union(*client.run(free_segments).values())
        return {s.name for s in list_segments(cluster_id)} == free

    assert wait_until(only_free, timeout=10)
    return {s.name for s in list_segments(cluster_id)}


def test_publications_recycle_segments_and_a_view_that_outlives_the_store_stays_intact(client):
    writer, reader = sorted(client.scheduler_info()["workers"])
    start = client.run(pool_counts, workers=[writer])[writer]
    publish_and_read(client, writer, reader, 1.0, stash=True)
    segments_settle(client)
    for value in (2.0, 3.0, 4.0, 5.0):
        publish_and_read(client, writer, reader, value)
        # the stashed one and the one recycled every run (a third if the reader let go of the
        # last run's view only after the writer looked for a free segment)
        assert len(segments_settle(client)) <= 3
    created, reused = client.run(pool_counts, workers=[writer])[writer]
    assert created - start[0] <= 3 and reused - start[1] >= 2
    assert client.run(stash_intact, 1.0, workers=[reader])[reader]  # never written over
    client.run(clear_stash, workers=[reader])


def test_a_killed_reader_frees_its_segments_and_a_killed_writer_leaves_none(client):
    writer, reader = sorted(client.scheduler_info()["workers"])
    publish_and_read(client, writer, reader, 7.0, stash=True)
    pids = {a: w["pid"] for a, w in client.scheduler_info()["workers"].items()}
    os.kill(pids[reader], signal.SIGKILL)
    assert wait_until(lambda: pids[reader] not in worker_pids(client), timeout=20)
    client.wait_for_workers(2, timeout=20)
    reader = next(a for a in client.scheduler_info()["workers"] if a != writer)
    # the stashed view died with its process: once its segment is back in the writer's pool (the
    # scheduler returns it asynchronously), the next publication writes into it. (Not the one after:
    # the new reader may still hold a view of it, and then the writer rightly passes it over.)
    segments_settle(client)
    created, reused = client.run(pool_counts, workers=[writer])[writer]
    publish_and_read(client, writer, reader, 8.0)
    assert client.run(pool_counts, workers=[writer])[writer] == (created, reused + 1)
    assert segments_settle(client)  # the writer keeps some...
    os.kill(pids[writer], signal.SIGKILL)
    cluster_id = client.cluster.cluster_id
    # ...and they go with it (the scheduler sweeps what a dead worker wrote and nobody refers to)
    assert wait_until(
        lambda: all(s.pid != pids[writer] for s in list_segments(cluster_id)), timeout=20
    )
    client.wait_for_workers(2, timeout=20)


def worker_pids(client) -> set:
    return {w["pid"] for w in client.scheduler_info()["workers"].values()}


def test_results_stay_right_when_many_publications_share_a_pool():
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        import dask.array as da

        x = da.random.default_rng(3).random((2000, 2000), chunks=(1000, 250))  # 2 MB chunks
        expected = x.compute(scheduler="sync")
        # how many results a run publishes depends on placement and timing (a loaded machine
        # publishes other ones): run until there were enough publications to judge, 12 runs at most
        for _ in range(12):
            y = x.rechunk((250, 1000)) + x.T
            np.testing.assert_allclose(y.sum(axis=0).compute(), (expected + expected.T).sum(0))
            # the run's segments went back to their writers (asynchronously)
            segments_settle(client)
            created, reused = map(sum, zip(*client.run(pool_counts).values()))
            if created + reused >= 20:
                break
        assert reused > created  # later runs mostly wrote into recycled segments
