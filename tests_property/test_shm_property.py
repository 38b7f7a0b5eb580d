"""Random sequences of writes, serializations, in-place mutations, unlinks and sweeps.

Invariants: /dev/shm holds exactly the segments not yet unlinked; every live payload still reads back the
value it was made from (even after the source array changed, and after other payloads sharing its data were
released); and once the cluster is swept, /dev/shm is as it was found.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from minidist.comm.serialize import deserialize, payload_segments, serialize
from minidist.comm.shm import (
    SegmentStore,
    list_segments,
    new_cluster_id,
    open_segment,
    sweep_cluster,
    sweep_process,
    unlink_segments,
)


def our_entries() -> set[str]:
    """Entries in /dev/shm written by this process (other test runs may share the machine)."""
    marker = f"_{os.getpid()}_"
    return {
        name for name in os.listdir("/dev/shm") if name.startswith("minidist_") and marker in name
    }


class SegmentLifecycle(RuleBasedStateMachine):
    payloads = Bundle("payloads")

    def __init__(self):
        super().__init__()
        self.found = our_entries()
        self.store = SegmentStore(new_cluster_id(), threshold=1024)
        self.arrays = [np.arange(n, dtype=np.int64) for n in (200, 5_000, 40_000)]
        self.expected: dict[int, tuple] = {}  # id(payload) -> (payload, value it must read back)
        self.live: set[str] = set()  # segment names not yet unlinked

    @rule(target=payloads, index=st.integers(0, 2))
    def serialize_array(self, index):
        payload = serialize(self.arrays[index], self.store)
        self.live.update(payload_segments(payload))
        self.expected[id(payload)] = (payload, self.arrays[index].copy())
        return payload

    @rule(target=payloads, size=st.integers(0, 100_000), seed=st.integers(0, 2**32 - 1))
    def serialize_bytes(self, size, seed):
        data = np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes()
        payload = serialize({"blob": data}, self.store)
        self.live.update(payload_segments(payload))
        self.expected[id(payload)] = (payload, {"blob": data})
        return payload

    @rule(index=st.integers(0, 2), position=st.integers(0, 199), value=st.integers())
    def mutate_in_place(self, index, position, value):
        self.arrays[index][position] = value % 2**62

    @rule(payload=consumes(payloads))
    def release(self, payload):
        unlink_segments(payload_segments(payload))
        unlink_segments(payload_segments(payload))  # twice: must be harmless
        self.live.difference_update(payload_segments(payload))
        del self.expected[id(payload)]

    @rule(size=st.integers(1, 50_000))
    def write_and_drop_a_raw_segment(self, size):
        handle = self.store.write(os.urandom(size))
        assert bytes(open_segment(handle.name, handle.nbytes)) != b"" and handle.nbytes == size
        unlink_segments([handle.name])

    @precondition(lambda self: self.expected)
    @rule()
    def writer_died_but_keys_are_kept(self):
        # What the scheduler does when a worker dies: drop that writer's segments except referenced ones.
        sweep_process(self.store.cluster_id, os.getpid(), keep=self.live)

    @invariant()
    def shm_holds_exactly_the_live_segments(self):
        assert {i.name for i in list_segments(self.store.cluster_id)} == self.live

    @invariant()
    def every_live_payload_reads_back_its_value(self):
        for payload, value in self.expected.values():
            result = deserialize(payload)
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(result, value)
            else:
                assert result == value

    def teardown(self):
        sweep_cluster(self.store.cluster_id)
        assert our_entries() == self.found


SegmentLifecycle.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, derandomize=False
)
test_segment_lifecycle = pytest.mark.timeout(300)(SegmentLifecycle.TestCase)
