"""hypothesis: random scatter / submit / release / worker-death sequences on a real two-worker cluster.

Each example starts a cluster, replays the operations without waiting between them (so kills land while
values are being written, read and reported), then checks that

- every future still held gives the value a plain NumPy evaluation gives;
- once those futures are released, the running cluster holds no segment any more (reference counts);
- once the cluster closes, /dev/shm holds nothing of it.

Arrays are just above the shared-memory threshold (64 KiB), so every value takes the shared-memory path
while examples stay cheap.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import wait_until
from minidist import Client, LocalCluster
from minidist.comm.shm import list_segments

pytestmark = pytest.mark.timeout(120)

MAX_KILLS = (
    2  # per example; a task survives up to allowed_failures=3 deaths, so none may err for it
)

elements = st.integers(8_200, 12_000)  # float64: 64 KiB and a little more
operations = st.lists(
    st.one_of(
        st.tuples(st.just("scatter"), elements, st.integers(0, 2**16)),
        st.tuples(st.just("submit"), elements, st.integers(0, 2**16)),
        st.tuples(st.just("derive"), st.integers(0, 63), st.integers(-3, 3)),
        st.tuples(st.just("release"), st.integers(0, 63)),
        st.tuples(st.just("kill"), st.integers(0, 1)),
    ),
    min_size=1,
    max_size=10,
)


def scaled(array, factor):
    return array * factor


def segments_of(cluster_id: str) -> list[str]:
    return sorted(info.name for info in list_segments(cluster_id))


def kill_worker(client, index: int) -> None:
    pids = sorted(w["pid"] for w in client.scheduler_info()["workers"].values())
    if pids:
        try:
            os.kill(pids[index % len(pids)], signal.SIGKILL)
        except ProcessLookupError:
            pass  # already dead and about to be replaced


def replay(client, ops) -> list:
    """Run ``ops``; return the live (future, expected value) pairs."""
    live: list = []
    kills = 0
    for op in ops:
        kind = op[0]
        if kind == "scatter":
            array = np.random.default_rng(op[2]).random(op[1])
            live.append((client.scatter(array, hash=False), array))
        elif kind == "submit":
            array = np.random.default_rng(op[2]).random(op[1])
            live.append((client.submit(scaled, array, 2.0, pure=False), array * 2.0))
        elif kind == "derive" and live:
            future, expected = live[op[1] % len(live)]
            live.append((client.submit(scaled, future, op[2], pure=False), expected * op[2]))
        elif kind == "release" and live:
            del live[op[1] % len(live)]
        elif kind == "kill" and kills < MAX_KILLS:
            kills += 1
            kill_worker(client, op[1])
    return live


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=operations)
def test_random_data_plane_traffic_keeps_values_and_leaves_no_segment(ops):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        cluster_id = cluster.cluster_id
        live = replay(client, ops)
        for future, expected in live:
            value = future.result(timeout=30)
            assert value.shape == expected.shape and np.array_equal(value, expected), future.key
        future = value = None
        live.clear()
        assert wait_until(lambda: segments_of(cluster_id) == []), (
            f"segments still held with no future left: {segments_of(cluster_id)}"
        )
        # new traffic after all that still works
        assert client.submit(np.sum, client.scatter(np.ones(9_000))).result(timeout=30) == 9_000
    assert segments_of(cluster_id) == []
