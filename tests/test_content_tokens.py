"""Content tokens of pure tasks: the key follows the arguments' content, and a large array is read once.

``serialize_with_token`` makes a task's argument payload and its content token in one pass; an array
already in a linked segment reuses that segment's checksum instead of reading its bytes again.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from minidist.comm.serialize import deserialize, serialize_with_token
from minidist.comm.shm import (
    SegmentStore,
    list_segments,
    new_cluster_id,
    sweep_cluster,
    unlink_segments,
)

pytestmark = pytest.mark.timeout(60)

MiB = 2**20


def cluster_segments(cluster_id: str) -> list[str]:
    """Names of the cluster's segments in /dev/shm."""
    return sorted(info.name for info in list_segments(cluster_id))


@pytest.fixture
def store():
    cluster_id = new_cluster_id()
    yield SegmentStore(cluster_id)
    leftovers = cluster_segments(cluster_id)
    sweep_cluster(cluster_id)
    assert leftovers == []


def test_token_follows_content_and_reuses_the_checksum_of_a_linked_segment(store, monkeypatch):
    array = np.random.default_rng(2).random(MiB // 8)
    first, token = serialize_with_token(((array, 1), {}), store, b"f")
    assert serialize_with_token(((array.copy(), 1), {}), store, b"f")[1] == token  # equal content
    assert serialize_with_token(((array, 1), {}), store, b"g")[1] != token  # another function
    assert serialize_with_token(((array, 2), {}), store, b"f")[1] != token  # another argument
    # the same array again: a hard link to the first segment, and its checksum is not computed again
    crc32 = zlib.crc32
    calls = []
    monkeypatch.setattr(zlib, "crc32", lambda *a: calls.append(1) or crc32(*a))
    again, same = serialize_with_token(((array, 1), {}), store, b"f")
    assert same == token and calls == []
    assert (
        os.stat(f"/dev/shm/{again.segments()[0]}").st_ino
        == os.stat(f"/dev/shm/{first.segments()[0]}").st_ino
    )
    array[0] += 1  # changed in place: written afresh, new token
    changed, other = serialize_with_token(((array, 1), {}), store, b"f")
    assert other != token and calls == [1]
    assert float(deserialize(changed)[0][0][0]) == float(array[0])
    unlink_segments(n for p in (first, again, changed) for n in p.segments())
    sweep_cluster(store.cluster_id)


def test_token_without_shared_memory_is_content_based_too():
    array = np.arange(100_000.0)
    payload, token = serialize_with_token(array, None)
    assert payload.segments() == ()
    assert serialize_with_token(array.copy(), None)[1] == token
    assert serialize_with_token(array + 1, None)[1] != token


def test_each_large_buffer_is_hashed_once_whether_written_afresh_or_compared(store, monkeypatch):
    """The checksum is taken chunk by chunk during the write (or the comparison): every byte once."""
    array = np.random.default_rng(3).random(5 * MiB // 8)  # several chunks
    crc32 = zlib.crc32
    hashed: list[int] = []
    monkeypatch.setattr(zlib, "crc32", lambda data, *a: hashed.append(len(data)) or crc32(data, *a))
    plain = store.write(array)  # an impure task's argument: no checksum needed, none taken
    assert hashed == []
    # a pure task passes the same array: re-used (hard link), hashed while it is compared
    linked, token = serialize_with_token(array, store)
    assert sum(hashed) == array.nbytes
    assert (
        os.stat(f"/dev/shm/{linked.segments()[0]}").st_ino
        == os.stat(f"/dev/shm/{plain.name}").st_ino
    )
    hashed.clear()
    copy = array.copy()  # another address: written afresh, hashed while it is written
    fresh, same = serialize_with_token(copy, store)
    assert sum(hashed) == array.nbytes
    assert same == token  # the chunked checksums of both paths agree
    copy[-1] += 1
    assert serialize_with_token(copy, store)[1] != token  # a change in the last chunk counts
    sweep_cluster(store.cluster_id)
