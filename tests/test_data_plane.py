"""The data plane end to end: large values through a real cluster, zero-copy reads, segment lifetimes.

Everything goes through ``Client``/``LocalCluster``; /dev/shm and /proc are read directly to see where
values live. Tasks report what they see (``where`` reads the task's own /proc/self/maps), so a zero-copy
claim is checked inside the worker that makes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import psutil
import pytest

from conftest import two_process_workers, wait_until
from minidist import Client, Event, LocalCluster, wait
from minidist.comm.shm import (
    SegmentStore,
    list_segments,
)
from minidist.deploy.memory import process_memory
from minidist.testing import backing_file

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


# ------------------------------------------------------------------------------------------ helpers


def cluster_segments(cluster_id: str) -> list[str]:
    """Names of the cluster's segments in /dev/shm."""
    return sorted(info.name for info in list_segments(cluster_id))


def where(array, *_ignored) -> tuple:
    """Inside a task: (writeable, backing file of the array's memory, worker pid)."""
    return array.flags.writeable, backing_file(array), os.getpid()


def segment_of(path: str) -> str:
    """'/dev/shm/minidist_x_1_2 (deleted)' -> 'minidist_x_1_2'."""
    assert path.startswith("/dev/shm/minidist_"), path
    return path.split()[0].rsplit("/", 1)[1]


def total(array, *_ignored) -> float:
    return float(array.sum())


def gated_total(array, gate: str, *_ignored) -> float:
    """Finishes only once the test sets the Event ``gate``: every task of a test is still pending
    while the test looks at /dev/shm (a finished task's arguments are freed at once)."""
    assert Event(gate).wait(30), "the test never opened the gate"
    return float(array.sum())


def filled(nbytes: int, value: float = 1.5):
    return np.full(nbytes // 8, value)


def fail_with(array):
    raise ValueError(f"refusing an array of {array.nbytes} bytes")


def add_one_in_place(array):
    array += 1
    return array


# The arrays each data-type test sends around. Built by name so that a worker can build its own copy.
ARRAYS = {
    "float64-1d": lambda: np.random.default_rng(1).random(200_000),
    "int32-2d": lambda: np.arange(300 * 500, dtype=np.int32).reshape(300, 500),
    "int16-big-endian": lambda: np.arange(100_000, dtype=">i2"),
    "complex128-3d": lambda: (np.arange(24_000) * (1 + 2j)).reshape(20, 30, 40),
    "bool": lambda: np.arange(1_000_000) % 3 == 0,
    "float16-fortran": lambda: np.asfortranarray(
        np.arange(400 * 300, dtype=np.float16).reshape(400, 300)
    ),
    "structured": lambda: np.array(
        [(i * 0.5, i) for i in range(50_000)], dtype=[("x", "f4"), ("n", "i8")]
    ),
    "datetime64": lambda: np.arange(100_000).astype("datetime64[s]"),
    "unicode": lambda: np.array([f"s{i:06d}" for i in range(50_000)]),
    "nan-and-inf": lambda: np.tile(np.array([np.nan, np.inf, -np.inf, -0.0]), 50_000),
    "strided-view": lambda: np.arange(600_000, dtype=np.float64)[::3],
    "column-slice": lambda: np.arange(1000 * 200, dtype=np.int64).reshape(1000, 200)[:, 10:150:2],
    "object": lambda: np.array(
        [{"k": i} if i % 3 else f"text{i}" for i in range(20_000)], dtype=object
    ),
    "small-inline": lambda: np.arange(10, dtype=np.float32),
    "zero-d": lambda: np.array(3.25),
    "empty": lambda: np.zeros((0, 5)),
}


def build(name: str):
    return ARRAYS[name]()


def matches(array, name: str) -> bool:
    """Inside a task: the received array equals a fresh local copy (dtype, shape and values)."""
    expected = ARRAYS[name]()
    return (
        type(array) is np.ndarray
        and array.dtype == expected.dtype
        and array.shape == expected.shape
        and bool(np.array_equal(array, expected, equal_nan=expected.dtype.kind in "fc"))
    )


def assert_same_array(actual, expected) -> None:
    assert type(actual) is np.ndarray
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@pytest.fixture(scope="module")
def client():
    with two_process_workers() as c:
        yield c


@pytest.fixture
def workers(client) -> list[str]:
    """The two worker addresses, current at the start of the test."""
    addresses = sorted(client.scheduler_info()["workers"])
    assert len(addresses) == 2
    return addresses


@pytest.fixture
def cluster_id(client) -> str:
    """The module cluster's id; the test must leave no segment of it once its futures are gone."""
    cid = client.cluster.cluster_id
    yield cid
    clean = wait_until(lambda: cluster_segments(cid) == [])
    leftovers = cluster_segments(cid)
    for name in leftovers:  # so that one leak fails one test, not every test after it
        os.unlink(f"/dev/shm/{name}")
    assert clean, f"left behind: {leftovers}"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def worker_pids(client) -> dict:
    return {a: w["pid"] for a, w in client.scheduler_info()["workers"].items()}


# ----------------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_arrives_intact_as_argument_scatter_result_and_dependency(
    client, workers, cluster_id, name
):
    array = build(name)
    produced = client.submit(build, name, workers=[workers[0]])  # a task result, made on worker 0
    scattered = client.scatter(array)
    checks = [
        client.submit(matches, array, name, workers=[workers[1]]),  # as an argument
        client.submit(matches, scattered, name, workers=[workers[1]]),  # scattered data
        client.submit(
            matches, produced, name, workers=[workers[1]]
        ),  # dependency from the other worker
        client.submit(
            matches, produced, name, workers=[workers[0]]
        ),  # dependency on the same worker
    ]
    assert client.gather(checks) == [True] * 4
    assert_same_array(produced.result(), array)
    assert_same_array(scattered.result(), array)


def test_nested_and_keyword_arrays_arrive_intact(client, cluster_id):
    big = ARRAYS["float64-1d"]()
    other = ARRAYS["int32-2d"]()

    def describe(pair, mapping, *, extra):
        return [total(pair[0]), total(pair[1]), total(mapping["a"]), total(extra)]

    future = client.submit(describe, (big, other), {"a": big}, extra=other[::2])
    expected = [total(big), total(other), total(big), total(other[::2])]
    assert future.result() == pytest.approx(expected)


# ----------------------------------------------------------------------------------------- zero copy


def test_large_argument_is_read_in_place_from_shared_memory(client, cluster_id):
    array = filled(8 * MiB)
    writeable, path, _ = client.submit(where, array).result()
    assert not writeable
    assert segment_of(path).startswith(
        f"minidist_{cluster_id}_{os.getpid()}_"
    )  # written by the client


def test_result_of_one_worker_is_read_in_place_by_another(client, workers, cluster_id):
    pids = worker_pids(client)
    produced = client.submit(filled, 8 * MiB, workers=[workers[0]])
    writeable, path, reader = client.submit(where, produced, workers=[workers[1]]).result()
    assert reader == pids[workers[1]] and not writeable
    # the segment was written by the producing worker and mapped, not copied, by the reader
    assert segment_of(path).startswith(f"minidist_{cluster_id}_{pids[workers[0]]}_")


def test_gathered_result_is_a_read_only_view_of_shared_memory(client, cluster_id):
    result = client.submit(filled, 8 * MiB).result()
    assert not result.flags.writeable
    assert backing_file(result).startswith("/dev/shm/minidist_")
    assert float(result[-1]) == 1.5


def test_small_values_travel_inline_and_arrays_that_must_be_copied_stay_correct(client, cluster_id):
    small = np.arange(100.0)  # below the threshold
    strided = np.arange(2_000_000.0)[::2]  # large but not contiguous: pickled in-band
    objects = np.array([[i] for i in range(20_000)] + [None], dtype=object)
    assert (
        not client.submit(where, small).result()[1].startswith("/dev/shm")
    )  # the worker's own memory
    assert not client.submit(where, strided).result()[1].startswith("/dev/shm")
    assert client.submit(lambda a: a[5][0] + len(a), objects).result() == 5 + 20_001
    assert cluster_segments(cluster_id) == []


def test_tasks_that_modify_an_argument_in_place_must_copy_it(client, workers, cluster_id):
    array = filled(1 * MiB)
    with pytest.raises(ValueError, match="read-only"):
        client.submit(add_one_in_place, array).result()
    copied = client.submit(lambda a: add_one_in_place(a.copy())[0], array)
    assert copied.result() == 2.5
    # a result is read-only for dependents on its own worker too, so placement never changes the answer
    produced = client.submit(filled, 1 * MiB, workers=[workers[0]])
    for address in workers:
        with pytest.raises(ValueError, match="read-only"):
            client.submit(add_one_in_place, produced, workers=[address], pure=False).result()
    assert float(produced.result()[0]) == 1.5


def test_scattered_array_is_written_once_for_every_task_on_both_workers(
    client, workers, cluster_id
):
    array = np.random.default_rng(0).random(32 * MiB // 8)
    scattered = client.scatter(array)
    (name,) = cluster_segments(cluster_id)
    assert os.stat(f"/dev/shm/{name}").st_size == array.nbytes
    views = client.gather(
        [client.submit(where, scattered, i, workers=[workers[i % 2]]) for i in range(6)]
    )
    assert {pid for _, _, pid in views} == set(worker_pids(client).values())  # both workers read it
    assert {segment_of(path) for _, path, _ in views} == {name}  # ... from the one segment
    assert not any(writeable for writeable, _, _ in views)
    sums = client.gather([client.submit(total, scattered, i) for i in range(4)])
    assert sums == [pytest.approx(array.sum())] * 4
    assert cluster_segments(cluster_id) == [name]  # still just the one


def test_one_array_passed_to_many_tasks_stores_its_bytes_once(client, cluster_id):
    array = np.random.default_rng(1).random(16 * MiB // 8)
    gate = Event(f"gate-{uuid.uuid4().hex}", client=client)
    futures = [client.submit(gated_total, array, gate.name, i) for i in range(4)]  # four tasks
    names = cluster_segments(cluster_id)
    # one name per task, so each can be freed on its own (and, where the kernel can watch the array
    # for writes, one the cluster keeps while the array lives: tests/test_kept_segments.py) ...
    assert len(names) in (4, 5)
    inodes = {os.stat(f"/dev/shm/{n}").st_ino for n in names}
    assert len(inodes) == 1  # ... but one copy of the data (hard links)
    gate.set()
    assert client.gather(futures) == [pytest.approx(array.sum())] * 4
    del futures, array
    assert wait_until(lambda: cluster_segments(cluster_id) == [])


def test_array_changed_in_place_between_submissions_is_sent_again(client, cluster_id):
    array = np.ones(4 * MiB // 8)
    gate = Event(f"gate-{uuid.uuid4().hex}", client=client)
    first = client.submit(gated_total, array, gate.name)
    array[-1] = 100.0  # same object, same address: the new submission must not re-use the old bytes
    second = client.submit(gated_total, array, gate.name)
    assert first.key != second.key
    inodes = {os.stat(f"/dev/shm/{name}").st_ino for name in cluster_segments(cluster_id)}
    assert len(inodes) == 2
    gate.set()
    assert (first.result(), second.result()) == (array.size, array.size + 99.0)
    del first, second


def test_dependent_runs_where_its_large_input_already_is(client, workers, cluster_id):
    pids = worker_pids(client)
    for producer in workers:
        big = client.submit(filled, 16 * MiB, workers=[producer], pure=False)
        wait([big])
        # one dependent: both workers are free, the one holding its 16 MB input gets it (with more
        # dependents queued there, the idle worker would rightly steal some: the input is only mapped)
        assert client.submit(lambda a: os.getpid(), big).result() == pids[producer]


# ----------------------------------------------------------------------------------------- lifetimes


def test_releasing_futures_frees_their_segments_while_the_cluster_runs(client, cluster_id):
    argument = filled(2 * MiB, 2.0)
    scattered = client.scatter(filled(2 * MiB, 3.0))
    with_argument = client.submit(total, argument)
    produced = client.submit(filled, 2 * MiB, 4.0)
    wait([with_argument, produced])
    # a finished task's arguments are freed at once (results are never recomputed): the scattered
    # value and the produced result remain
    assert wait_until(lambda: len(cluster_segments(cluster_id)) == 2)
    del scattered
    assert wait_until(lambda: len(cluster_segments(cluster_id)) == 1)
    del with_argument, produced
    assert wait_until(lambda: cluster_segments(cluster_id) == [])


def test_released_input_stays_until_its_dependent_has_read_it(client, cluster_id):
    upstream = client.submit(filled, 4 * MiB, 2.0)

    def slow_total(array):
        time.sleep(0.3)
        return float(array.sum())

    downstream = client.submit(slow_total, upstream)
    wait([upstream])
    del upstream  # nobody holds a future for it; the dependent still needs it
    assert downstream.result() == 2.0 * (4 * MiB // 8)


def test_two_clients_submitting_the_same_task_leave_no_extra_segment(client, cluster_id):
    array = filled(4 * MiB)
    with Client(client.cluster, set_as_default=False) as other:
        first, second = client.submit(total, array), other.submit(total, array)
        assert first.key == second.key
        assert first.result() == second.result() == 1.5 * (4 * MiB // 8)
        del first, second
        assert wait_until(lambda: cluster_segments(cluster_id) == [])


def test_failed_tasks_free_their_segments(client, workers, cluster_id):
    with pytest.raises(ValueError, match="refusing"):
        client.submit(fail_with, filled(2 * MiB)).result()
    # the erred future is gone (its exception, kept for other futures of the key, must not hold it)
    assert wait_until(lambda: cluster_segments(cluster_id) == [])
    # a result that cannot be serialized after its array went to shared memory: nothing of it stays
    pids = worker_pids(client)
    unpicklable = client.submit(lambda: (filled(2 * MiB), threading.Lock()), workers=[workers[0]])
    with pytest.raises(Exception, match="(?i)pickle|serializ"):
        unpicklable.result()
    assert not any(f"_{pids[workers[0]]}_" in name for name in cluster_segments(cluster_id))
    del unpicklable


def test_closing_the_cluster_removes_every_segment():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        client = Client(cluster, set_as_default=False)
        kept = [
            client.scatter(filled(MiB)),
            client.submit(total, filled(MiB, 2.0)),
            client.submit(filled, MiB, 3.0),
            client.submit(fail_with, filled(MiB, 4.0)),
        ]
        wait(kept)
        # scattered value, produced result, and the failed task's argument (a finished task's is freed)
        assert wait_until(lambda: len(cluster_segments(cluster.cluster_id)) == 3)
    assert cluster_segments(cluster.cluster_id) == []
    client.close()


def write_unreported_segment(cluster_id: str, marker: str) -> str:
    """Stands for a worker that wrote a result to shared memory and died before reporting it."""

    if os.path.exists(marker):
        return "ran again"
    SegmentStore(cluster_id).write(np.ones(MiB // 8))
    with open(marker, "w"):
        pass
    time.sleep(50)
    return "not killed"


@pytest.mark.timeout(60)
def test_worker_killed_mid_task_leaves_no_unreported_segment_and_keeps_reported_ones(
    client, workers, cluster_id, tmp_path
):
    victim = worker_pids(client)[workers[0]]
    kept = client.submit(
        filled, 2 * MiB, 5.0, workers=[workers[0]]
    )  # reported: the scheduler owns it
    wait([kept])
    marker = str(tmp_path / "started")
    doomed = client.submit(
        write_unreported_segment, cluster_id, marker, workers=[workers[0]], allow_other_workers=True
    )
    assert wait_until(lambda: os.path.exists(marker), timeout=20)
    assert len([n for n in cluster_segments(cluster_id) if f"_{victim}_" in n]) == 2
    os.kill(victim, signal.SIGKILL)
    assert doomed.result(timeout=30) == "ran again"  # retried elsewhere
    left = [n for n in cluster_segments(cluster_id) if f"_{victim}_" in n]
    assert len(left) == 1  # the reported result only
    assert float(kept.result()[-1]) == 5.0
    assert client.submit(total, kept).result() == 5.0 * (2 * MiB // 8)
    del kept, doomed
    client.wait_for_workers(2, timeout=20)


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, os, time
    import numpy as np
    from minidist import Client, wait

    def hold(array):
        time.sleep(60)

    client = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
    scattered = client.scatter(np.full(2**18, 1.0))
    produced = client.submit(np.full, 2**18, 2.0)
    running = client.submit(hold, np.full(2**18, 3.0))
    wait([scattered, produced])
    workers = client.scheduler_info()["workers"]
    while not any(w["metrics"]["executing"] for w in client.scheduler_info()["workers"].values()):
        time.sleep(0.02)
    print(json.dumps({"cluster_id": client.cluster.cluster_id,
                      "workers": [w["pid"] for w in workers.values()]}), flush=True)
    time.sleep(60)
    """
)


@pytest.mark.timeout(60)
def test_client_process_killed_leaves_no_segment_once_its_workers_exit():
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        info = json.loads(process.stdout.readline())
        cluster_id, pids = info["cluster_id"], info["workers"]
        assert len(cluster_segments(cluster_id)) == 3
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        # the workers see their parent gone, sweep the cluster's shared memory and leave
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=30)
        assert cluster_segments(cluster_id) == []
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()


FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, resource, warnings
    import numpy as np

    # files may not grow past 1 MiB: writes into /dev/shm fail with EFBIG, as they would with ENOSPC on a
    # full /dev/shm; workers inherit the limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    from minidist import Client
    from minidist.comm.serialize import SharedMemoryFallbackWarning

    def total(array, i):
        return float(array.sum())

    def make(value):
        return np.full(2**19, value)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
            workers = sorted(client.scheduler_info()["workers"])
            array = np.arange(2**19, dtype=float)  # 4 MiB
            scattered = client.scatter(array)
            sums = client.gather([client.submit(total, array, i) for i in range(2)]
                                 + [client.submit(total, scattered, i) for i in range(2)])
            made = [client.submit(make, float(i), workers=[workers[i % 2]]) for i in range(4)]
            made_ok = [bool((f.result() == float(i)).all()) for i, f in enumerate(made)]
            relayed = client.submit(total, made[1], 0, workers=[workers[0]]).result()
            segments = sorted(n for n in __import__("os").listdir("/dev/shm")
                              if n.startswith("minidist_" + client.cluster.cluster_id))
    print(json.dumps({
        "sums_ok": sums == [float(array.sum())] * 4, "made_ok": made_ok, "relayed": relayed,
        "segments": segments,
        "warnings": [str(w.message) for w in caught if issubclass(w.category, SharedMemoryFallbackWarning)],
    }))
    """
)


@pytest.mark.timeout(60)
def test_full_shared_memory_falls_back_inline_with_one_warning_per_process():
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sums_ok"] and report["made_ok"] == [True] * 4
    assert report["relayed"] == 1.0 * 2**19
    assert report["segments"] == []  # nothing reached /dev/shm, and no partial file stayed
    (message,) = report["warnings"]  # the client process warned once, for its 3 large values
    assert "/dev/shm" in message and "inline" in message
    # each worker process warned once too (on its stderr), however many results it sent inline
    assert done.stderr.count("SharedMemoryFallbackWarning") == 2, done.stderr


# ------------------------------------------------------------------------------------ memory accounting


def resident_in(pid: int, segment: str) -> int:
    """Bytes of ``segment`` resident in process ``pid`` (the Rss of its mappings of it)."""
    resident, inside = 0, False
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if not line[:1].isupper():  # a mapping's header: "low-high perms offset dev inode path"
                inside = segment in line
            elif inside and line.startswith("Rss:"):
                resident += int(line.split()[1]) * 1024
    return resident


def test_worker_memory_leaves_out_shared_pages_it_reads_or_wrote(client, workers, cluster_id):
    pids = worker_pids(client)
    reader, writer = pids[workers[1]], pids[workers[0]]
    size = 64 * MiB
    client.gather(
        [client.submit(total, np.ones(10), i, workers=[w]) for i, w in enumerate(workers)]
    )
    reader_used, writer_used = process_memory(reader), process_memory(writer)

    before = set(cluster_segments(cluster_id))
    scattered = client.scatter(np.ones(size // 8))
    (segment,) = set(cluster_segments(cluster_id)) - before
    assert client.submit(total, scattered, workers=[workers[1]]).result() == size // 8
    produced = client.submit(filled, size, workers=[workers[0]])
    wait([produced])
    # the reader touched every page (and keeps the value cached), so they are resident in it (its
    # whole RSS is no measure: an earlier test's segment it still maps may go meanwhile) ...
    assert resident_in(reader, segment) > 0.9 * size
    # ... but they are shared memory, not the worker's own
    assert process_memory(reader) - reader_used < 0.25 * size
    # the producer keeps only the shared-memory copy of its result, not a private one as well (its
    # task thread drops the original just after reporting it)
    assert wait_until(lambda: process_memory(writer) - writer_used < 0.25 * size)
    del scattered, produced


def test_memory_monitor_lets_a_worker_read_more_shared_data_than_its_limit():
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="150MiB", dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        scattered = client.scatter(np.ones(200 * MiB // 8))

        def read_all_and_linger(array):
            value = float(array.sum())  # every page mapped into this worker
            time.sleep(0.5)  # several monitor checks while the worker holds the mapping
            return value

        assert client.submit(read_all_and_linger, scattered).result(timeout=30) == 200 * MiB // 8
        (worker,) = client.scheduler_info()["workers"].values()
        assert worker["status"] == "running"
        log = cluster.get_logs()["Cluster"]
        assert "pausing" not in log and "Terminating" not in log, log
        del scattered


# ------------------------------------------------------------------------------------------ threads


def test_thread_workers_pass_arrays_by_reference_without_shared_memory():
    array = np.arange(1_000_000.0)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        scattered = client.scatter(array)
        assert client.submit(lambda a: a is array, scattered).result()
        assert client.submit(lambda a: a is array, array).result()
        assert scattered.result() is array
        result = client.submit(lambda a: a + 1, array).result()
        assert result.flags.writeable and float(result[0]) == 1.0
        assert cluster_segments(cluster.cluster_id) == []
