"""Random passes, in-place changes, releases and deaths of large arrays, with kept segments and mappings.

A store that keeps the segments of watched arrays (``comm/shm_kept.py``) and a reader that keeps its
mappings by file (``comm/shm_mappings.py``, with room for only two, so they are often let go and
inode numbers get reused) must never serve stale bytes. Invariants: every handle not yet released
reads back, through the reader's cache, exactly the array as it was when the handle was made; every
kept segment belongs to an array that is still alive, at most one per array, and never more than
the store's budget; /dev/shm holds only the live handles and what is kept; and closing the store
leaves /dev/shm as it was found.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import only_new_objects_collected
from minidist.comm.shm import SegmentStore, list_segments, new_cluster_id, unlink_segments
from minidist.comm.shm_mappings import MappingCache

WATCHED = 16 << 20  # buffers this large passed again are watched, and so may be kept
SLOTS = 3


@pytest.fixture(autouse=True)
def collections_walk_this_tests_objects_only():
    """The machine collects garbage at every step: make each collection cheap (see conftest)."""
    with only_new_objects_collected():
        yield


class KeptSegmentsLifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.store = SegmentStore(new_cluster_id(), keep_fraction=0.25)
        self.reader = MappingCache(minimum=1, entries=2)
        self.arrays: list = [None] * SLOTS
        self.handles: list[tuple] = []  # (handle, the bytes it must read back)

    @rule(slot=st.integers(0, SLOTS - 1), seed=st.integers(0, 2**16))
    def new_array(self, slot, seed):
        # the old one (if any) dies here: its kept segment must go; the new one may take its address
        self.arrays[slot] = np.random.default_rng(seed).random(WATCHED // 8)

    @precondition(lambda self: any(a is not None for a in self.arrays))
    @rule(slot=st.integers(0, SLOTS - 1), times=st.integers(1, 3))
    def pass_array(self, slot, times):
        array = self.arrays[slot]
        if array is None:
            return
        for _ in range(times):
            self.handles.append((self.store.write(array), array.tobytes()))

    @precondition(lambda self: any(a is not None for a in self.arrays))
    @rule(slot=st.integers(0, SLOTS - 1), position=st.integers(0, WATCHED // 8 - 1))
    def change_in_place(self, slot, position):
        if self.arrays[slot] is not None:
            self.arrays[slot][position] += 1.0

    @precondition(lambda self: self.handles)
    @rule(index=st.integers(0, 100))
    def release(self, index):
        handle, _ = self.handles.pop(index % len(self.handles))
        unlink_segments([handle.name])

    @rule()
    def reader_looks_for_unlinked_files(self):
        self.reader.drop_unlinked()

    @invariant()
    def every_live_handle_reads_back_what_was_passed(self):
        for handle, expected in self.handles:
            assert bytes(self.reader.open(handle.name, handle.nbytes)) == expected, handle.name

    @invariant()
    def what_is_kept_belongs_to_live_arrays_within_the_budget(self):
        gc.collect()
        kept = dict(self.store.kept._kept)
        owners = [ref() for _, ref in kept.values()]
        assert all(owner is not None for owner in owners)
        assert len({id(owner) for owner in owners}) == len(owners)  # one per array at most
        assert sum(nbytes for nbytes, _ in kept.values()) <= self.store.kept.budget()
        on_disk = {info.name for info in list_segments(self.store.cluster_id)}
        live = {handle.name for handle, _ in self.handles}
        assert live <= on_disk
        # the janitor-less store unlinks at once: nothing else may remain
        assert on_disk - live <= set(kept)

    def teardown(self):
        unlink_segments([handle.name for handle, _ in self.handles])
        self.reader.close()
        self.store.close()
        assert list_segments(self.store.cluster_id) == []


KeptSegmentsLifecycle.TestCase.settings = settings(
    max_examples=12, stateful_step_count=20, deadline=None, derandomize=False
)
test_kept_segments_lifecycle = pytest.mark.timeout(300)(KeptSegmentsLifecycle.TestCase)
