"""Freed segments are unlinked by the cluster's janitor thread, not by the scheduler thread.

Unlinking the last name of a tmpfs file gives its pages back, about 1 ms per 8 MB; array graphs free
hundreds of chunks per compute, so the scheduler thread only hands the names over (``SegmentJanitor``
in ``comm/shm_sweep.py``). These tests check the hand-over through the public API: the values go, the
janitor is what runs, and closing the cluster leaves neither a name nor the thread behind.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import wait_until
from minidist import Client, LocalCluster, wait
from minidist.comm.shm import list_segments

pytestmark = pytest.mark.timeout(60)

MiB = 2**20
JANITOR = "minidist-shm-janitor"


def filled(nbytes: int, value: float):
    return np.full(nbytes // 8, value)


def threads_named(name: str) -> list:
    return [t for t in threading.enumerate() if t.name == name]


def test_released_values_are_unlinked_by_the_janitor_and_close_leaves_nothing():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            futures = [client.submit(filled, 8 * MiB, i) for i in range(12)]
            wait(futures)
            assert len(list_segments(cluster.cluster_id)) == 12
            assert threads_named(JANITOR) == []  # started on first use only
            del futures
            assert wait_until(lambda: list_segments(cluster.cluster_id) == [])
            assert len(threads_named(JANITOR)) == 1  # the one that unlinked them
            kept = client.submit(filled, 8 * MiB, -1.0)
            assert float(kept.result()[0]) == -1.0
            gathered = kept.result()
    assert threads_named(JANITOR) == []  # closing the cluster stopped it ...
    assert list_segments(cluster.cluster_id) == []  # ... and nothing was left
    # a gathered array stays readable: unlinking a name does not unmap it
    assert float(gathered[-1]) == -1.0
    del gathered


def test_a_thread_cluster_never_starts_a_janitor():
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        c.gather([c.submit(filled, 8 * MiB, i) for i in range(3)])
        assert threads_named(JANITOR) == []
