"""Held results end to end: a large result that no client wants stays in the worker that made it.

A dependent on the same worker gets the object itself (nothing written to /dev/shm); a dependent on
another worker, a client that comes to want the key, or the holder's retirement makes the holder publish
it once; a holder's death makes the scheduler compute it again from its kept lineage; cancelling frees
it on its worker. Tasks report what they see from inside the worker (``/proc/self/maps``), and tasks
that must stay pending wait on a FIFO that the test opens (no sleeps).
"""

from __future__ import annotations

import errno
import os
import signal

import dask
import numpy as np
import pytest

from conftest import two_process_workers, wait_until
from minidist import Client, LocalCluster
from minidist.comm.shm import list_segments
from minidist.testing import backing_file

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


# ------------------------------------------------------------------------------------------ helpers


def filled(nbytes: int, value: float, log: str = ""):
    """A large result; each run adds a line to ``log``."""
    if log:
        with open(log, "a") as f:
            f.write("run\n")
    return np.full(nbytes // 8, value)


def lines(path) -> int:
    try:
        with open(path) as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


def where(array, *_ignored) -> tuple:
    """Inside a task: (writeable, file behind the array's memory, worker pid, first value)."""
    return array.flags.writeable, backing_file(array), os.getpid(), float(array[0])


def where_with_segments(array, cluster_id: str) -> tuple:
    return (*where(array), [info.name for info in list_segments(cluster_id)])


def gate(started: str, fifo: str) -> int:
    """Notes that it started, then waits until the test opens ``fifo`` for writing."""
    with open(started, "a") as f:
        f.write("started\n")
    with open(fifo) as f:
        f.read()
    return 0


def gated_where(array, started: str, fifo: str) -> tuple:
    gate(started, fifo)
    return where(array)


def open_gate(fifo) -> None:
    """Let the task blocked on ``fifo`` go (once it has opened it)."""

    def try_open() -> bool:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return False
            raise
        os.close(fd)
        return True

    assert wait_until(try_open, timeout=20)


def cached_keys(dask_worker) -> list:
    return [str(key) for key in (*dask_worker.data, *dask_worker.encoded)]


def held_bytes(dask_worker) -> int:
    return dask_worker.holding.held_bytes


def holders(client, key) -> list:
    return [a for a, keys in client.run(cached_keys).items() if str(key) in keys]


def segment_writer(path: str) -> int:
    """'/dev/shm/minidist_<owner>_<writer pid>_<n>-<random> (deleted)' -> the writer's pid."""
    assert path.startswith("/dev/shm/minidist_"), path
    return int(path.split()[0].rsplit("/", 1)[1].split("_")[2])


@pytest.fixture(scope="module")
def client():
    with two_process_workers() as c:
        yield c


@pytest.fixture
def workers(client) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


@pytest.fixture
def gate_files(tmp_path):
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    return str(tmp_path / "started"), str(fifo)


def pids(client) -> dict:
    return {a: w["pid"] for a, w in client.scheduler_info()["workers"].items()}


# -------------------------------------------------------------------------------------------- tests


def test_a_dependent_on_the_same_worker_gets_the_object_and_nothing_is_written(client):
    cluster_id = client.cluster.cluster_id
    graph = {
        "same-a": (filled, 4 * MiB, 2.0),
        "same-b": (where_with_segments, "same-a", cluster_id),
    }
    # free segments of the module's earlier publications may stay in their writer's pool; a write,
    # into a new file or a recycled one (renamed at each reuse), would show a name not among these
    before = {info.name for info in list_segments(cluster_id)}
    writeable, backing, _, first, segments = client.get(graph, "same-b")
    assert first == 2.0
    assert writeable and not backing.startswith("/dev/shm")  # the producer's own array
    assert set(segments) <= before  # never written to shared memory
    # the graph is done: the worker lets go of it
    assert wait_until(lambda: holders(client, "same-a") == [], timeout=10)
    assert set(client.run(held_bytes).values()) == {0}


def test_a_held_result_needed_on_another_worker_is_published_once(client, workers):
    before = pids(client)
    with dask.annotate(workers=[workers[0]]):
        made = dask.delayed(filled, pure=True)(4 * MiB, 3.0)
    with dask.annotate(workers=[workers[1]]):
        readers = [dask.delayed(where, pure=True)(made, i) for i in range(2)]
    results = [f.result(timeout=20) for f in client.compute(readers, optimize_graph=False)]
    backings = set()
    for writeable, backing, pid, first in results:
        assert pid == before[workers[1]] and first == 3.0
        assert not writeable  # the published copy, mapped from shared memory
        assert segment_writer(backing) == before[workers[0]]
        backings.add(backing)
    assert len(backings) == 1  # one segment for both readers: written once


def test_a_client_that_comes_to_want_a_held_result_gets_it(client, gate_files, tmp_path):
    started, fifo = gate_files
    log = str(tmp_path / "runs")
    made = dask.delayed(filled, pure=True)(4 * MiB, 4.0, log)
    waiting = client.compute(dask.delayed(gated_where)(made, started, fifo), optimize_graph=False)
    assert wait_until(lambda: lines(started) == 1, timeout=20)
    wanted = client.compute(made, optimize_graph=False)  # the same key: shared, then published
    value = wanted.result(timeout=20)
    assert value[0] == 4.0 and len(value) == 4 * MiB // 8
    open_gate(fifo)
    writeable, _, _, first = waiting.result(timeout=20)
    assert writeable and first == 4.0  # the dependent had read the held object itself
    assert lines(log) == 1  # computed once


def test_cancelling_frees_a_held_result_on_its_worker(client, gate_files):
    started, fifo = gate_files
    made = dask.delayed(filled, pure=True)(4 * MiB, 5.0)
    blocker = dask.delayed(gate)(started, fifo)
    future = client.compute(dask.delayed(where)(made, blocker), optimize_graph=False)
    assert wait_until(lambda: lines(started) == 1 and holders(client, made.key), timeout=20)
    assert sum(client.run(held_bytes).values()) == 4 * MiB
    client.cancel(future)
    assert wait_until(lambda: holders(client, made.key) == [], timeout=10)
    assert set(client.run(held_bytes).values()) == {0}
    open_gate(fifo)  # the cancelled gate task may finish now


def test_a_worker_killed_while_holding_a_needed_result_loses_nothing(gate_files, tmp_path):
    started, fifo = gate_files
    log = str(tmp_path / "runs")
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        made = dask.delayed(filled, pure=True)(4 * MiB, 6.0, log)
        future = client.compute(dask.delayed(gated_where)(made, started, fifo))
        assert wait_until(lambda: lines(started) == 1, timeout=20)
        victim = next(iter(pids(client).values()))
        os.kill(victim, signal.SIGKILL)
        # the replacement computes the lost result again from its kept lineage, then the dependent
        assert wait_until(lambda: lines(started) == 2, timeout=30)
        open_gate(fifo)
        writeable, _, pid, first = future.result(timeout=20)
        assert first == 6.0 and pid != victim
        assert lines(log) == 2
        assert list_segments(cluster.cluster_id) == []  # the dead holder wrote nothing


def test_a_retiring_worker_publishes_what_it_holds_before_it_goes(gate_files, tmp_path):
    started, fifo = gate_files
    log = str(tmp_path / "runs")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=20)
        first_worker, second_worker = sorted(client.scheduler_info()["workers"])
        before = pids(client)
        with dask.annotate(workers=[first_worker]):
            made = dask.delayed(filled, pure=True)(4 * MiB, 7.0, log)
        with dask.annotate(workers=[second_worker]):
            blocker = dask.delayed(gate)(started, fifo)
        future = client.compute(dask.delayed(where)(made, blocker), optimize_graph=False)
        assert wait_until(lambda: lines(started) == 1 and holders(client, made.key), timeout=20)
        client.retire_workers([first_worker])
        assert list(client.scheduler_info()["workers"]) == [second_worker]
        open_gate(fifo)
        writeable, backing, pid, first = future.result(timeout=20)
        assert first == 7.0 and pid == before[second_worker]
        assert not writeable and segment_writer(backing) == before[first_worker]
        assert lines(log) == 1  # published, not computed again
