"""Re-using the segment of an array passed again: the kernel's write watch, and every way of changing
an array in place that must still be noticed (else a task would read stale bytes).

An array of at least 16 MiB passed a second time is compared with its segment in full and then watched
(``comm/write_watch.py``); later passes compare only the pages written since. These tests change
watched arrays in place in many ways and check that what the next pass sends is the current content.
"""

from __future__ import annotations

import mmap
import os
import platform
import threading

import numpy as np
import pytest

from minidist import Client
from minidist.comm.shm import SegmentStore, list_segments, new_cluster_id, open_segment
from minidist.comm.write_watch import ChecksumCache, WriteWatch
from minidist.keys import buffer_checksum

pytestmark = pytest.mark.timeout(60)

MiB = 2**20
# userfaultfd's asynchronous write-protect and PAGEMAP_SCAN came with Linux 6.7
KERNEL = tuple(int(part) for part in platform.release().split(".")[:2] if part.isdigit())
SUPPORTED = platform.system() == "Linux" and KERNEL >= (6, 7)


@pytest.fixture
def store():
    store = SegmentStore(new_cluster_id())
    yield store
    store.close()
    left = [info.name for info in list_segments(store.cluster_id)]
    for name in left:
        os.unlink(f"/dev/shm/{name}")
    assert left == []


def inode(handle) -> int:
    return os.stat(f"/dev/shm/{handle.name}").st_ino


def content(handle) -> np.ndarray:
    return np.frombuffer(open_segment(handle.name, handle.nbytes))


def holds(handle, array) -> bool:
    """Whether the segment holds exactly the array's bytes (bitwise: random bytes may be NaNs)."""
    return bytes(open_segment(handle.name, handle.nbytes)) == array.tobytes()


def free(*handles) -> None:
    for handle in handles:
        os.unlink(f"/dev/shm/{handle.name}")


def test_the_watch_reports_exactly_the_pages_written_since_it_last_looked():
    watch = WriteWatch()
    # pages of its own: a heap array may share its first and last page with objects other threads write
    region = mmap.mmap(-1, 8 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    array = np.frombuffer(region, np.float64)
    address, nbytes = array.ctypes.data, array.nbytes
    try:
        if not SUPPORTED:
            assert not watch.arm(address, nbytes)  # older kernels: the store compares bytes instead
            return
        assert watch.arm(address, nbytes)
        assert watch.written(address, nbytes) == []
        array[1000] = 1.0
        array[-1] = 2.0
        (first, last) = watch.written(address, nbytes)
        assert first[0] <= address + 8000 < first[1] and last[1] == address + nbytes
        assert watch.written(address, nbytes) == []  # looked at: protected again
        by_the_kernel(array)
        assert watch.written(address, nbytes) != []  # the kernel writing for read() counts too
        watch.disarm(address, nbytes)
        assert watch.written(address, nbytes) is None  # not watched: unknown, never "clean"
    finally:
        watch.close()
    assert not watch.arm(address, nbytes)  # closed for good
    del array
    region.close()


def test_memory_another_mapping_can_change_is_never_watched():
    watch = WriteWatch()
    try:
        shared = mmap.mmap(-1, 4 * MiB)  # MAP_SHARED: another process could write it
        view = np.frombuffer(shared, np.uint8)
        assert not watch.arm(view.ctypes.data, view.nbytes)
        del view
        shared.close()
    finally:
        watch.close()


def change_one_element(array):
    array[len(array) // 2] += 1


def reverse(array):
    array[:] = array[::-1].copy()  # the same values in another order


def sort(array):
    array.sort()


def through_another_view(array):
    np.frombuffer(memoryview(array).cast("B"), np.uint8)[7] ^= 1


def from_another_thread(array):
    worker = threading.Thread(target=change_one_element, args=(array,))
    worker.start()
    worker.join()


def by_the_kernel(array):
    fd = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.readv(fd, [memoryview(array).cast("B")[4096:8192]])
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "change",
    [change_one_element, reverse, sort, through_another_view, from_another_thread, by_the_kernel],
)
def test_a_watched_array_changed_in_place_is_sent_with_its_new_content(store, change):
    array = np.random.default_rng(4).random(24 * MiB // 8)
    first = store.write(array)
    second = store.write(array)  # compared in full, now watched
    third = store.write(array)  # nothing written since: re-used without comparing
    assert inode(first) == inode(second) == inode(third)
    change(array)
    fourth = store.write(array)
    assert inode(fourth) != inode(first)
    assert holds(fourth, array)
    fifth = store.write(array)  # unchanged since: re-used again
    assert inode(fifth) == inode(fourth) and holds(fifth, array)
    free(first, second, third, fourth, fifth)


def test_a_watched_array_whose_segment_was_freed_is_written_again(store):
    array = np.random.default_rng(5).random(24 * MiB // 8)
    handles = [store.write(array) for _ in range(3)]
    free(*handles)  # its tasks were released: the segment is gone
    again = store.write(array)
    assert holds(again, array)
    array[0] = -1.0  # ... and it is still watched: a change after that is seen
    changed = store.write(array)
    assert inode(changed) != inode(again) and content(changed)[0] == -1.0
    free(again, changed)


def test_a_new_array_at_the_address_of_a_dead_one_is_never_taken_for_it(store):
    for seed in range(4):  # freed and allocated again: often at the same address
        array = np.random.default_rng(seed).random(24 * MiB // 8)
        handles = [store.write(array) for _ in range(3)]
        assert all(holds(h, array) for h in handles)
        free(*handles)
        del array


def test_pages_thrown_away_without_a_write_count_as_changed(store):
    memory = mmap.mmap(-1, 24 * MiB, flags=mmap.MAP_PRIVATE)  # private anonymous, like malloc's
    array = np.frombuffer(memory, np.float64)
    array[:] = np.random.default_rng(7).random(array.size)
    handles = [store.write(array) for _ in range(3)]  # the last two re-use the first (watched)
    assert len({inode(h) for h in handles}) == 1
    memory.madvise(mmap.MADV_DONTNEED, 8192, 8192)  # these two pages now read back as zeros
    assert float(array[1024]) == 0.0
    again = store.write(array)
    assert inode(again) != inode(handles[0]) and holds(again, array)
    free(*handles, again)
    del array
    memory.close()


def test_threads_passing_one_array_between_changes_all_send_its_current_content(store):
    """Scans protect pages again as they report them: concurrent passes must not lose a change."""
    array = np.random.default_rng(8).random(24 * MiB // 8)
    rng = np.random.default_rng(9)
    handles: list = []
    sent: list = []
    barrier = threading.Barrier(3, timeout=30)

    def passes():
        try:
            for _ in range(12):
                barrier.wait()  # the array was just changed (or not)
                handles.append(store.write(array))
                handles.append(store.write(array))
                barrier.wait()
        except threading.BrokenBarrierError:
            pass  # the test failed (or timed out): stop

    workers = [threading.Thread(target=passes) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for epoch in range(12):
            if epoch % 3:  # two epochs out of three change a few scattered elements
                array[rng.integers(0, array.size, 5)] = rng.random(5)
            barrier.wait()
            barrier.wait()
            assert len(handles) == 4
            assert all(holds(h, array) for h in handles), f"stale bytes sent in epoch {epoch}"
            sent.extend(handles)  # kept: the next epoch re-uses (or must not re-use) these
            handles.clear()
        assert len({inode(h) for h in sent}) < len(sent)  # unchanged epochs did re-use
    finally:
        barrier.abort()
        for worker in workers:
            worker.join()
        free(*sent, *handles)


def total(array, i):
    return float(array.sum()) + i


def test_tasks_see_an_array_changed_in_place_after_it_was_passed_many_times():
    array = np.random.default_rng(6).random(24 * MiB // 8)
    with Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        sums = client.gather([client.submit(total, array, i) for i in range(4)])
        assert sums == [pytest.approx(array.sum() + i) for i in range(4)]
        array[123] += 1000.0
        assert client.submit(total, array, 0).result() == pytest.approx(array.sum())
        array[:] = 0.5
        assert client.submit(total, array, 0, pure=False).result() == pytest.approx(array.sum())


@pytest.mark.parametrize("change", [change_one_element, sort, by_the_kernel])
def test_remembered_checksums_follow_changes_in_place(change):
    checksums = ChecksumCache()
    array = np.random.default_rng(10).random(24 * MiB // 8)
    view = memoryview(array).cast("B")
    try:
        for _ in range(3):  # hashed, hashed and watched, remembered
            assert checksums.checksum(view) == buffer_checksum(view)
        change(array)
        assert checksums.checksum(view) == buffer_checksum(view)
        for _ in range(3):
            assert checksums.checksum(view) == buffer_checksum(view)
    finally:
        checksums.close()


def test_pure_keys_on_thread_workers_follow_an_array_changed_in_place():
    array = np.random.default_rng(11).random(24 * MiB // 8)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        first = [c.submit(total, array, 0) for _ in range(4)]  # one key: the same call
        assert len({f.key for f in first}) == 1
        assert first[0].result() == pytest.approx(array.sum())
        array[99] += 1000.0  # a new content: a new key, never the old task's result
        changed = c.submit(total, array, 0)
        assert changed.key != first[0].key
        assert changed.result() == pytest.approx(array.sum())
        assert c.submit(total, array, 0).key == changed.key  # and it is stable again
