"""hypothesis: random sequences of writes, reads, dropped views and give-backs on a SegmentPool never
change the bytes of a live view, and a name reads its own content or fails, never other data.

A reuse of a segment while a view of it lives would be silent data corruption; this machine plays
writer (the pool), scheduler (give_back once nothing refers to a name) and readers (views kept in
lists, views of views, views dropped in any order) against a model of what each view must show.
Readers map each segment afresh (``open_segment``) or, as workers do, through the mappings they keep
of recycled segments between two values (``PooledMappings``): both must hold the property.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import only_new_objects_collected
from minidist.comm.shm import SegmentStore, new_cluster_id, open_segment, sweep_cluster
from minidist.comm.shm_pool import SegmentPool
from minidist.comm.shm_pool_readers import PooledMappings

pytestmark = pytest.mark.timeout(120)

SIZES = (64 * 1024, 96 * 1024, 256 * 1024)  # bytes; 64 and 96 KiB may share a segment


@pytest.fixture(autouse=True)
def collections_walk_this_tests_objects_only():
    """The machine collects garbage at every step: make each collection cheap (see conftest)."""
    with only_new_objects_collected():
        yield


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.cluster_id = new_cluster_id()
        self.pool = SegmentPool(SegmentStore(self.cluster_id), capacity=1 << 20)
        self.fill = 0
        self.content: dict[str, tuple[int, int]] = {}  # name -> (fill, nbytes), every name written
        self.referenced: list[str] = []  # names not given back yet (the scheduler's ledger)
        self.views: list[tuple[np.ndarray, int]] = []  # live views and the fill they must show
        self.kept = PooledMappings(entries=4)  # a worker's reader: keeps idle mappings

    @rule(size=st.sampled_from(SIZES))
    def write(self, size):
        self.fill += 1
        handle = self.pool.write(np.full(size // 8, self.fill, dtype=np.int64))
        assert handle.name not in self.content  # every write gets a name of its own
        self.content[handle.name] = (self.fill, size)
        self.referenced.append(handle.name)

    @precondition(lambda self: self.content)
    @rule(data=st.data(), part=st.booleans(), kept=st.booleans())
    def read(self, data, part, kept):
        name = data.draw(st.sampled_from(sorted(self.content)))
        fill, size = self.content[name]
        try:
            if kept:
                view = np.frombuffer(self.kept.open(name, size, 0), np.int64)
            else:
                view = np.frombuffer(open_segment(name, size, 0, True), np.int64)
        except FileNotFoundError:
            # only a name nothing refers to any more may be gone (recycled or unlinked)
            assert name not in self.referenced
            return
        assert (view == fill).all()
        self.views.append((view[3:9] if part else view, fill))

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def drop_view(self, data):
        index = data.draw(st.integers(0, len(self.views) - 1))
        del self.views[index]
        if data.draw(st.booleans()):
            gc.collect()

    @precondition(lambda self: self.referenced)
    @rule(data=st.data())
    def give_back(self, data):
        name = self.referenced.pop(data.draw(st.integers(0, len(self.referenced) - 1)))
        self.pool.give_back([name])

    @invariant()
    def live_views_never_change(self):
        for view, fill in self.views:
            assert (view == fill).all()

    def teardown(self):
        self.views.clear()
        gc.collect()
        self.kept.close()
        self.pool.close()
        sweep_cluster(self.cluster_id)


PoolMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_pool_never_rewrites_a_live_view = PoolMachine.TestCase


def test_the_machine_does_reuse_segments():
    """The property above means something only if reuse happens: a plain run of it does."""
    cluster_id = new_cluster_id()
    pool = SegmentPool(SegmentStore(cluster_id), capacity=1 << 20)
    try:
        for fill in range(4):
            handle = pool.write(np.full(SIZES[0] // 8, fill, dtype=np.int64))
            view = np.frombuffer(open_segment(handle.name, handle.nbytes, 0, True), np.int64)
            assert (view == fill).all()
            del view
            pool.give_back([handle.name])
        assert (pool.created, pool.reused) == (1, 3)
        kept = PooledMappings()
        for fill in range(4):  # and a worker's reader maps the segment once for all four values
            handle = pool.write(np.full(SIZES[0] // 8, fill, dtype=np.int64))
            view = np.frombuffer(kept.open(handle.name, handle.nbytes, 0), np.int64)
            assert (view == fill).all()
            del view
            gc.collect()
            pool.give_back([handle.name])
        assert (pool.reused, kept.hits) == (7, 3)
        kept.close()
    finally:
        pool.close()
        sweep_cluster(cluster_id)
