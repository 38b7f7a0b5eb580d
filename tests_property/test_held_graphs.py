"""hypothesis: random graphs of large and small arrays, computed on process workers that keep large
results to themselves (held results), give the sequential answers, even when a task kills its worker.

Every node makes an array (2 MiB, so its worker may hold it, or 8 values) filled with a number derived
from its dependencies; a node may also SIGKILL its worker the first time it runs, while that worker holds
results the graph still needs. The answer of every requested key must equal plain evaluation, and once
the graph is done nothing may stay behind: no segment in /dev/shm but those workers keep for reuse, no
held bytes on any worker.
"""

from __future__ import annotations

import os
import signal
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import wait_until
from minidist import Client
from minidist.comm.shm import list_segments

pytestmark = pytest.mark.timeout(300)

BIG = 2**18  # float64 values: 2 MiB


def make(size: int, seed: float, *deps):
    return np.full(size, seed + sum(float(d[0]) for d in deps))


def crash_once(marker: str, size: int, seed: float, *deps):
    """Kills its own worker the first time it runs (the worker may hold results others need)."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return make(size, seed, *deps)


def held_bytes(dask_worker) -> int:
    return dask_worker.holding.held_bytes


def free_segments(dask_worker) -> list:
    return dask_worker.holding.pool.free_names()


def only_pooled_segments(client, cluster_id: str) -> bool:
    free = set().union(*client.run(free_segments).values())
    return {s.name for s in list_segments(cluster_id)} <= free


@st.composite
def graphs(draw):
    count = draw(st.integers(2, 10))
    nodes = []
    for i in range(count):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        big = draw(st.booleans())
        nodes.append((deps, BIG if big else 8, float(i)))
    crash = draw(st.none() | st.integers(1, count - 1))
    outputs = sorted(set(draw(st.lists(st.integers(0, count - 1), max_size=3))) | {count - 1})
    return nodes, crash, outputs


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        c.wait_for_workers(2, timeout=20)
        yield c


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(graph=graphs())
def test_held_results_give_sequential_answers_through_worker_deaths(client, graph, tmp_path):
    nodes, crash, outputs = graph
    prefix = uuid.uuid4().hex[:8]
    names = [f"{prefix}-{i}" for i in range(len(nodes))]
    dsk: dict = {}
    expected: list = []
    for i, (deps, size, seed) in enumerate(nodes):
        args = (size, seed, *(names[d] for d in deps))
        if i == crash:
            dsk[names[i]] = (crash_once, str(tmp_path / f"{prefix}-crashed"), *args)
        else:
            dsk[names[i]] = (make, *args)
        expected.append(make(size, seed, *(expected[d] for d in deps)))
    results = client.get(dsk, [names[i] for i in outputs])
    for i, value in zip(outputs, results):
        np.testing.assert_array_equal(value, expected[i])
    del results, value
    client.wait_for_workers(2, timeout=20)  # a killed worker's replacement
    cluster_id = client.cluster.cluster_id
    # every segment left is one a worker keeps for reuse (comm/shm_pool.py), nothing in use
    assert wait_until(lambda: only_pooled_segments(client, cluster_id), timeout=10)
    assert wait_until(lambda: set(client.run(held_bytes).values()) == {0}, timeout=10)
