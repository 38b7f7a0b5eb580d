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
    assert type(payload) is bytes  # no shared memory: the buffer is in the pickle
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


def _with_crc32_of(target: bytes, data: np.ndarray) -> np.ndarray:
    """``data`` with its last 4 bytes changed so that its CRC-32 equals ``target``'s.

    CRC-32 is affine over GF(2) in the message bits: flipping each of the last 32 bits shows the
    matrix, and solving it gives the 4 bytes. (Anyone can do this; a random collision among many
    arrays of one size needs no one to try.)
    """
    forged = data.copy()
    forged[-4:] = 0
    base = zlib.crc32(forged)
    columns = []
    for bit in range(32):
        probe = forged.copy()
        probe[-4 + bit // 8] ^= 1 << (bit % 8)
        columns.append(zlib.crc32(probe) ^ base)
    want = zlib.crc32(target) ^ base
    # Gaussian elimination, top bit first: each row is (its CRC change, the bits that make it)
    rows = [(value, 1 << bit) for bit, value in enumerate(columns)]
    solution = 0
    for pivot in range(31, -1, -1):
        value, bits = rows.pop(next(i for i, (v, _) in enumerate(rows) if v >> pivot & 1))
        rows = [(v ^ value, b ^ bits) if v >> pivot & 1 else (v, b) for v, b in rows]
        if want >> pivot & 1:
            want ^= value
            solution ^= bits
    assert want == 0
    forged[-4:] = np.frombuffer(solution.to_bytes(4, "little"), np.uint8)
    return forged


def first_byte(array) -> int:
    return int(array[0])


@pytest.mark.parametrize("kind", ["client", "thread_client"])
def test_arrays_with_the_same_crc32_are_different_pure_tasks(kind, request):
    """Two different large arrays whose CRC-32s agree must not share a pure key (the second task would
    silently get the first one's result): the key's checksum has more than CRC-32's 32 bits."""
    client = request.getfixturevalue(kind)
    original = np.random.default_rng(7).integers(0, 256, 2 * MiB, dtype=np.uint8)
    other = original.copy()
    other[0] ^= 0xFF
    other = _with_crc32_of(original, other)
    assert zlib.crc32(other) == zlib.crc32(original) and not np.array_equal(other, original)
    first, second = client.submit(first_byte, original), client.submit(first_byte, other)
    assert first.key != second.key
    assert (first.result(), second.result()) == (int(original[0]), int(other[0]))
    assert client.submit(first_byte, original.copy()).key == first.key  # equal content: one task
