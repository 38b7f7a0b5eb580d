"""Recycled segments (comm/shm_pool.py): a segment is written again only once it was given back and
no view of it lives anywhere, a stale name never reads other data, and the pool stays bounded.

Readers here are this process (a second open file description conflicts with the writer's lock as a
second process would) and, for the SIGKILL case, a child started with subprocess.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from minidist.comm import shm
from minidist.comm.shm import list_segments, open_segment
from minidist.comm.shm_pool import SegmentPool
from minidist.testing import backing_file

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


def payload(value: int, nbytes: int = MiB) -> np.ndarray:
    return np.full(nbytes // 8, value, dtype=np.int64)


def read(handle) -> np.ndarray:
    return np.frombuffer(open_segment(handle.name, handle.nbytes, handle.offset, True), np.int64)


def test_a_given_back_segment_is_rewritten_only_once_its_last_view_is_gone(pool):
    first = pool.write(payload(1))
    view = read(first)
    assert backing_file(view).startswith(f"/dev/shm/{first.name}")  # mapped, not copied
    pool.give_back([first.name])
    second = pool.write(payload(2))  # the view of `first` lives: a new file
    assert (pool.created, pool.reused) == (2, 0)
    assert (view == 1).all()
    del view
    gc.collect()
    pool.give_back([second.name])
    third = pool.write(payload(3))  # now a free segment is written again, under a new name
    assert pool.reused == 1 and third.name not in (first.name, second.name)
    assert (read(third) == 3).all()
    with pytest.raises(FileNotFoundError, match="recycled|no longer exists"):
        read(first)  # a stale name never reads other data


def test_a_segment_is_never_rewritten_before_it_is_given_back(pool):
    first = pool.write(payload(1))
    read(first)  # mapped and let go at once
    second = pool.write(payload(2))
    assert (pool.created, pool.reused) == (2, 0)
    assert (read(first) == 1).all() and (read(second) == 2).all()


def test_views_of_a_view_keep_the_segment(pool):
    first = pool.write(payload(7))
    part = read(first)[10:20].reshape(2, 5)  # the mapping lives as long as any view on it
    pool.give_back([first.name])
    gc.collect()
    pool.write(payload(8))
    assert pool.reused == 0 and (part == 7).all()


def test_a_killed_reader_does_not_pin_a_segment(pool, tmp_path):
    first = pool.write(payload(5))
    ready = tmp_path / "ready"
    code = (
        "import sys, time, numpy as np\n"
        "from minidist.comm.shm import open_segment\n"
        f"a = np.frombuffer(open_segment({first.name!r}, {first.nbytes}, 0, True), np.int64)\n"
        f"assert (a == 5).all()\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        from conftest import wait_until

        assert wait_until(ready.exists, timeout=30)
        pool.give_back([first.name])
        pool.write(payload(6))
        assert pool.reused == 0  # the child maps it
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
    reused = pool.write(payload(6))  # the kernel dropped the dead reader's lock
    assert pool.reused == 1 and (read(reused) == 6).all()


def test_the_pool_is_bounded_and_close_unlinks_what_it_keeps(pool):
    cluster_id = pool.store.cluster_id
    small = SegmentPool(pool.store, capacity=3 * MiB)
    handles = [small.write(payload(i)) for i in range(5)]
    small.give_back([h.name for h in handles])
    assert len(small.free_names()) == 3  # the oldest went
    assert {s.name for s in list_segments(cluster_id)} == set(small.free_names())
    small.close()
    assert list_segments(cluster_id) == []
    late = pool.write(payload(1))
    pool.close()
    pool.give_back([late.name])  # given back after close: unlinked at once
    assert list_segments(cluster_id) == []


def test_sizes_far_apart_do_not_share_segments(pool):
    big = pool.write(payload(1, 8 * MiB))
    pool.give_back([big.name])
    small = pool.write(payload(2, MiB))  # an 8 MiB file would waste 7 MiB
    assert pool.reused == 0 and (read(small) == 2).all()
    again = pool.write(payload(3, 6 * MiB))
    assert pool.reused == 1 and (read(again) == 3).all()


def test_past_the_mapping_cap_readers_copy_and_hold_no_lock(pool, monkeypatch):
    monkeypatch.setattr(shm, "_POOLED_MAPPINGS_MAX", 0)
    first = pool.write(payload(4))
    copy = read(first)
    assert backing_file(copy) == "" and not copy.flags.writeable and (copy == 4).all()
    pool.give_back([first.name])
    pool.write(payload(9))
    assert pool.reused == 1 and (copy == 4).all()  # the copy is the reader's own


def test_a_pickling_failure_discards_what_it_wrote(pool):
    from minidist.comm.serialize import SerializationError, serialize

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("no")

    with pytest.raises(SerializationError):
        serialize([payload(1), Unpicklable()], pool)
    assert list_segments(pool.store.cluster_id) == []
    assert pool.free_names() == [] and pool.created == 1
