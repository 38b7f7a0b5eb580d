"""A worker's idle mappings of recycled segments (comm/shm_pool_readers.py): a segment read again under
a new name is served from the mapping kept from its last read, only once no view of it lived (so its
writer could write it again), and never shows other data than the value the name stands for.

Readers here are this process (a second open file description conflicts with the writer's lock as a
second process would).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from minidist.comm.shm_pool_readers import PooledMappings
from minidist.testing import backing_file

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


@pytest.fixture
def readers():
    readers = PooledMappings(entries=4)
    yield readers
    readers.close()


def payload(value: int, nbytes: int = MiB) -> np.ndarray:
    return np.full(nbytes // 8, value, dtype=np.int64)


def read(readers: PooledMappings, handle) -> np.ndarray:
    return np.frombuffer(readers.open(handle.name, handle.nbytes, handle.offset), np.int64)


def test_a_recycled_segment_is_read_through_the_mapping_kept_from_its_last_value(pool, readers):
    first = pool.write(payload(1))
    view = read(readers, first)
    assert (view == 1).all() and not view.flags.writeable
    assert backing_file(view).startswith(f"/dev/shm/{first.name}")  # mapped, not copied
    address = view.ctypes.data
    del view
    gc.collect()  # the last view is gone: the mapping is kept, unlocked
    pool.give_back([first.name])
    second = pool.write(payload(2))
    assert pool.reused == 1  # the kept mapping did not stop the writer
    view = read(readers, second)
    assert (view == 2).all()
    assert view.ctypes.data == address and readers.hits == 1  # no new mapping
    assert backing_file(view).startswith(f"/dev/shm/{second.name}")


def test_a_live_view_keeps_the_lock_so_its_segment_is_not_written_again(pool, readers):
    first = pool.write(payload(1))
    view = read(readers, first)
    pool.give_back([first.name])
    second = pool.write(payload(2))
    assert (pool.created, pool.reused) == (2, 0)  # the view of `first` lives: a new file
    assert (view == 1).all()
    again = read(readers, first)  # a second reader of the same value while the first lives
    assert (again == 1).all()
    del view
    gc.collect()
    pool.give_back([second.name])
    third = pool.write(payload(3))  # `first` is still read (again): only `second` may be rewritten
    assert (again == 1).all() and (read(readers, third) == 3).all()


def test_a_stale_name_never_reads_the_new_value(pool, readers):
    first = pool.write(payload(1))
    view = read(readers, first)
    del view
    gc.collect()
    pool.give_back([first.name])
    pool.write(payload(2))
    with pytest.raises(FileNotFoundError, match="recycled|no longer exists"):
        read(readers, first)


def test_idle_mappings_are_bounded_and_let_go_once_their_file_is_unlinked(pool, readers):
    handles = [pool.write(payload(i)) for i in range(6)]
    for handle in handles:
        view = read(readers, handle)
        del view
    gc.collect()
    assert len(readers) == 4  # entries=4: the oldest went
    pool.give_back([handle.name for handle in handles])
    pool.close()  # unlinks its free segments
    assert readers.drop_unlinked() == 4
    assert len(readers) == 0
