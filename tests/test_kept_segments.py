"""An array passed to tasks again and again is copied into /dev/shm once, and each worker maps it once.

The client's store keeps the segment of an array that is watched for writes (passed twice, 16 MiB
or more: ``comm/shm_kept.py``) by a name of its own, so a later ``submit`` finds it even after the
earlier tasks were released; a worker keeps its mapping of a large segment (``comm/shm_mappings.py``),
so a second task reading the same file does not set up its page tables again. These tests check
both through the public API, and above all that neither ever serves stale bytes or leaves memory
behind: an array changed in place is sent anew, a dead array's segment goes, and so does the
worker's mapping of it.
"""

from __future__ import annotations

import mmap
import os
import platform

import numpy as np
import pytest

from conftest import wait_until
from minidist import Client, LocalCluster
from minidist.comm.shm import SegmentStore, list_segments, new_cluster_id, open_segment

pytestmark = pytest.mark.timeout(60)

MiB = 2**20
# the write watch (userfaultfd's asynchronous write-protect, PAGEMAP_SCAN) came with Linux 6.7;
# without it nothing is watched, so nothing is kept either: every pass compares and links
KERNEL = tuple(int(part) for part in platform.release().split(".")[:2] if part.isdigit())
WATCHED = platform.system() == "Linux" and KERNEL >= (6, 7)


def total(array, i):
    return float(array.sum()) + i


def where(array, i):
    """Inside a task: (worker pid, address of the array's data)."""
    return os.getpid(), array.__array_interface__["data"][0]


def names(cluster_id: str) -> list[str]:
    return sorted(info.name for info in list_segments(cluster_id))


def inodes(cluster_id: str) -> set[int]:
    found = set()
    for name in names(cluster_id):
        try:
            found.add(os.stat(f"/dev/shm/{name}").st_ino)
        except FileNotFoundError:
            pass  # unlinked while we looked
    return found


def mapped_segments(pid: int, cluster_id: str) -> list[str]:
    """The lines of a process's memory map that map a segment of the cluster."""
    with open(f"/proc/{pid}/maps") as maps:
        return [line for line in maps if f"/dev/shm/minidist_{cluster_id}_" in line]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=20)
        yield client
    assert wait_until(lambda: names(cluster.cluster_id) == [])


def test_an_array_passed_again_after_its_tasks_were_released_is_not_copied_again(client):
    cluster_id = client.cluster.cluster_id
    array = np.random.default_rng(0).random(24 * MiB // 8)
    futures = [client.submit(total, array, i, pure=False) for i in range(3)]
    assert client.gather(futures) == [pytest.approx(array.sum() + i) for i in range(3)]
    (first,) = inodes(cluster_id)
    del futures
    if not WATCHED:
        assert wait_until(lambda: names(cluster_id) == [])
        return
    # the tasks' names are gone; the one the cluster keeps for the array remains
    assert wait_until(lambda: len(names(cluster_id)) == 1)
    again = [client.submit(total, array, i, pure=False) for i in range(3)]
    assert inodes(cluster_id) == {first}  # linked to the same file, not written afresh
    assert client.gather(again) == [pytest.approx(array.sum() + i) for i in range(3)]
    del again, array  # the array is gone: so is what was kept for it
    assert wait_until(lambda: names(cluster_id) == [])


def change_one_element(array):
    array[len(array) // 3] += 1000.0


def sort(array):
    array.sort()


@pytest.mark.parametrize("change", [change_one_element, sort])
def test_tasks_read_the_new_values_of_a_kept_array_changed_in_place(client, change):
    cluster_id = client.cluster.cluster_id
    array = np.random.default_rng(1).random(24 * MiB // 8)
    for _ in range(2):  # kept (where watched) after the first round, and released in between
        futures = [client.submit(total, array, i, pure=False) for i in range(3)]
        assert client.gather(futures) == [pytest.approx(array.sum() + i) for i in range(3)]
        del futures
    before = inodes(cluster_id)
    change(array)
    futures = [client.submit(total, array, i, pure=False) for i in range(3)]
    assert client.gather(futures) == [pytest.approx(array.sum() + i) for i in range(3)]
    assert not inodes(cluster_id) & before  # a new file; the stale one is no longer kept
    change(array)  # and changed while its tasks' futures live
    changed = [client.submit(total, array, i, pure=False) for i in range(3)]
    assert client.gather(changed) == [pytest.approx(array.sum() + i) for i in range(3)]
    del futures, changed, array


def test_a_worker_maps_an_array_read_again_once_and_lets_go_when_it_is_freed(client):
    cluster_id = client.cluster.cluster_id
    (worker, *_) = client.scheduler_info()["workers"]
    array = np.random.default_rng(2).random(24 * MiB // 8)

    def run(array, count: int) -> list:
        calls = [client.submit(where, array, i, workers=[worker], pure=False) for i in range(count)]
        return client.gather(calls)

    run(
        array, 2
    )  # the array is passed twice: from now on its file stays (where the kernel can watch it)
    seen = run(array, 4)
    assert len({pid for pid, _ in seen}) == 1
    (pid,) = {pid for pid, _ in seen}
    if WATCHED:  # four tasks, four names of one file: one mapping
        assert len({address for _, address in seen}) == 1
        assert run(array, 1) == seen[:1]  # and again once those tasks were released
    del array  # every name of the file goes: the worker lets go of its mapping soon after
    assert wait_until(lambda: names(cluster_id) == [])
    assert wait_until(lambda: mapped_segments(pid, cluster_id) == [])


def test_a_submit_after_the_cluster_closed_leaves_nothing_kept():
    array = np.random.default_rng(3).random(24 * MiB // 8)
    with Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        cluster_id = client.cluster.cluster_id
        assert client.gather([client.submit(total, array, i) for i in range(3)]) == [
            pytest.approx(array.sum() + i) for i in range(3)
        ]
    assert names(cluster_id) == []  # the array lives on; what was kept for it went with the cluster


# -------------------------------------------------------------------------------- the store's bounds


def kept_names(store: SegmentStore, handles) -> set[str]:
    return {info.name for info in list_segments(store.cluster_id)} - {h.name for h in handles}


@pytest.fixture
def make_store():
    stores = []

    def make(fraction: float) -> SegmentStore:
        stores.append(SegmentStore(new_cluster_id(), keep_fraction=fraction))
        return stores[-1]

    yield make
    for store in stores:
        store.close()
        assert list_segments(store.cluster_id) == []  # close unlinked what it kept


def array_of_its_own(seed: int):
    """24 MiB in a mapping of their own: a heap block may be memory an earlier test's store still
    watches (a watch ends when its owner is next looked at), which no other store can then watch."""
    region = mmap.mmap(-1, 24 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    array = np.frombuffer(region, np.float64)
    array[:] = np.random.default_rng(seed).random(array.size)
    return array


def free(*handles) -> None:
    for handle in handles:
        os.unlink(f"/dev/shm/{handle.name}")


@pytest.mark.skipif(not WATCHED, reason="nothing is kept without the kernel's write watch")
def test_a_store_keeps_no_more_than_its_fraction_of_memory(make_store):
    shm = os.statvfs("/dev/shm")
    room = min(
        shm.f_bavail * shm.f_frsize, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    )
    store = make_store(40 * MiB / room)  # room for one 24 MiB array, not two
    first, second = array_of_its_own(4), array_of_its_own(5)
    handles = [store.write(a) for a in (first, first, second, second)]
    assert len(kept_names(store, handles)) == 1
    assert store.kept.nbytes == first.nbytes
    free(*handles)
    del first  # gives its room back ...
    assert wait_until(lambda: store.kept.nbytes == 0)
    later = [store.write(second) for _ in range(2)]  # ... to the next pass that may keep
    assert len(kept_names(store, later)) == 1
    free(*later)
    assert make_store(0.0).kept.budget() == 0  # a store made without a fraction keeps nothing


@pytest.mark.skipif(not WATCHED, reason="nothing is kept without the kernel's write watch")
def test_a_store_short_of_dev_shm_lets_go_of_what_it_keeps_and_writes(make_store, monkeypatch):
    store = make_store(1.0)
    first, second = array_of_its_own(6), array_of_its_own(7)
    handles = [store.write(first) for _ in range(2)]
    free(*handles)
    assert len(list_segments(store.cluster_id)) == 1  # kept for `first`
    real_statvfs = os.statvfs

    def dev_shm_of_30_mib(path):
        # /dev/shm as a 30 MiB tmpfs would report it: what this store's segments leave free
        stats = real_statvfs(path)
        used = sum(os.stat(f"/dev/shm/{i.name}").st_size for i in list_segments(store.cluster_id))
        free_blocks = max(0, 30 * MiB - used) // stats.f_frsize
        return os.statvfs_result((*stats[:4], free_blocks, *stats[5:]))

    monkeypatch.setattr(os, "statvfs", dev_shm_of_30_mib)
    handle = store.write(second)  # 6 MiB free: the kept segment goes, then it fits
    assert np.array_equal(np.frombuffer(open_segment(handle.name, handle.nbytes)), second)
    assert [i.name for i in list_segments(store.cluster_id)] == [handle.name]
    monkeypatch.undo()
    free(handle)
