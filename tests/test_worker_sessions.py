"""Clients opened inside process workers (``get_client()`` in a task) end with their worker: when the
worker dies, is retired or restarted, its session and everything it held (scattered data, the futures
its tasks kept) are released at once, not when some other worker happens to open a client."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from conftest import wait_until
from minidist import Client, LocalCluster, get_client

pytestmark = pytest.mark.timeout(60)

KEPT: list = []  # lives in the worker process (this module is imported there): futures a task keeps


def scatter_and_keep(nbytes: int) -> tuple:
    """Scatter a large array from inside a task and keep its future (and a submitted one) alive."""
    client = get_client()
    scattered = client.scatter(np.ones(nbytes, dtype=np.uint8))
    submitted = client.submit(np.add, scattered, 1)
    submitted.result()
    KEPT.extend([scattered, submitted])
    return scattered.key, submitted.key, os.getpid()


def own_segments(cluster) -> set:
    prefix = f"minidist_{cluster.cluster_id}_"
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}


@pytest.fixture
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster:
        yield cluster


def test_a_dead_workers_client_releases_its_data_at_once(cluster):
    with Client(cluster) as client:
        before = own_segments(cluster)
        scattered, submitted, pid = client.submit(scatter_and_keep, 1 << 20, pure=False).result(
            timeout=30
        )
        held = client.who_has()
        assert scattered in held and submitted in held  # the task's client holds them
        assert own_segments(cluster) - before  # the scattered array sits in shared memory

        os.kill(pid, signal.SIGKILL)
        # nothing else happens on the cluster (no other worker opens a client): the death alone
        # must release what the dead worker's client held
        assert wait_until(lambda: not {scattered, submitted} & set(client.who_has())), (
            client.who_has()
        )
        assert wait_until(lambda: not (own_segments(cluster) - before), timeout=10)
        # the replacement worker works, and its tasks can open a client of their own
        again, _, new_pid = client.submit(scatter_and_keep, 10, pure=False).result(timeout=30)
        assert new_pid != pid and again in client.who_has()


def test_a_retired_workers_client_releases_its_data(cluster):
    with Client(cluster) as client:
        scattered, _, _ = client.submit(scatter_and_keep, 10, pure=False).result(timeout=30)
        assert scattered in client.who_has()
        cluster.scale(0)
        assert wait_until(lambda: not client.scheduler_info()["workers"], timeout=20)
        assert wait_until(lambda: scattered not in client.who_has(), timeout=10), client.who_has()
