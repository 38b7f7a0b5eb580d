"""serialize/deserialize: round trips, zero-copy shared memory, cloudpickle fallback, /dev/shm shortage."""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from minidist.comm.serialize import (
    Payload,
    SerializationError,
    SharedMemoryFallbackWarning,
    deserialize,
    dumps_function,
    loads_function,
    payload_nbytes,
    payload_segments,
    serialize,
)
from minidist.comm.shm import (
    SegmentStore,
    list_segments,
    new_cluster_id,
    sweep_cluster,
    unlink_segments,
)
from minidist.testing import backing_file

pytestmark = pytest.mark.timeout(60)

THRESHOLD = 4096


@pytest.fixture
def store():
    """A store for a fresh cluster; the test fails if the cluster still has segments at the end."""
    cluster_id = new_cluster_id()
    yield SegmentStore(cluster_id, threshold=THRESHOLD)
    leftovers = [info.name for info in list_segments(cluster_id)]
    sweep_cluster(cluster_id)
    assert leftovers == [], f"segments left in /dev/shm: {leftovers}"


def round_trip(value, store):
    payload = serialize(value, store)
    assert pickle.loads(pickle.dumps(payload)) == payload  # what crosses a pipe
    result = deserialize(payload)
    return payload, result


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        assert type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == object:
            assert a.tolist() == b.tolist()
        else:
            np.testing.assert_array_equal(a, b)
    elif isinstance(a, memoryview):
        assert (a.format, a.shape, a.tolist()) == (b.format, b.shape, b.tolist())
    else:
        assert type(a) is type(b) and a == b


rng = np.random.default_rng(5)
PLAIN_VALUES = {
    "int": 3,
    "bigint": 2**200,
    "float": 1.5,
    "none": None,
    "str": "héllo ✓",
    "nested": {"a": [1, (2, 3.0)], "b": {"c": {4, 5}}, 7: frozenset("xy")},
    "decimal": decimal.Decimal("1.10"),
    "datetime": datetime.datetime(2024, 5, 1, 12, 30),
    "small bytes": b"abc",
    "large bytes": os.urandom(50_000),
    "small bytearray": bytearray(b"abc"),
    "large bytearray": bytearray(os.urandom(50_000)),
    "large bytes in a dict": {"blob": os.urandom(20_000), "n": 1},
    "large bytes deep inside": [[[os.urandom(20_000)]]],
}
ARRAYS = {
    "int8": rng.integers(-100, 100, 10_000, dtype=np.int8),
    "int64 3-d": rng.integers(0, 10**9, (20, 30, 40)),
    "float32": rng.random(50_000, dtype=np.float32),
    "complex": rng.random(3000) + 1j * rng.random(3000),
    "bool": rng.random(10_000) > 0.5,
    "big-endian": np.arange(5000, dtype=">i4"),
    "datetime64": np.arange(5000).astype("datetime64[s]"),
    "structured": np.zeros(1000, dtype=[("x", "f8"), ("y", "i4"), ("name", "U8")]),
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 7)),
    "small": np.arange(4),
    "fortran": np.asfortranarray(rng.random((300, 200))),
    "strided": rng.random((400, 300))[::3, ::2],
    "transposed": rng.random((300, 200)).T,
    "reversed": np.arange(20_000)[::-1],
    "object": np.array([{"a": 1}, "x", None, 3.5] * 2000, dtype=object),
}


@pytest.mark.parametrize("use_store", [True, False], ids=["shm", "inline"])
@pytest.mark.parametrize(
    "value",
    list(PLAIN_VALUES.values()) + list(ARRAYS.values()),
    ids=list(PLAIN_VALUES) + list(ARRAYS),
)
def test_round_trip(value, use_store, store):
    payload, result = round_trip(value, store if use_store else None)
    if isinstance(value, (dict, list)) and not isinstance(value, np.ndarray):
        assert result == value and type(result) is type(value)
    else:
        assert_same(value, result)
    header = payload if type(payload) is bytes else payload.header
    assert payload_nbytes(payload) >= len(header)
    if not use_store:  # no buffers to place: the payload is the pickle alone
        assert type(payload) is bytes and payload_segments(payload) == ()
    unlink_segments(payload_segments(payload))


@pytest.mark.parametrize(
    "view",
    [
        memoryview(np.arange(10_000, dtype=np.int32)),
        memoryview(np.arange(12, dtype=np.int64).reshape(3, 4)),
        memoryview(np.arange(10_000, dtype=np.float64).reshape(100, 100))[::2],
        memoryview(b"x" * 10_000),
    ],
    ids=["int32", "2-d", "non-contiguous", "bytes"],
)
def test_memoryview_round_trip(view, store):
    payload, result = round_trip(view, store)
    assert_same(view, result)
    unlink_segments(payload_segments(payload))


def test_large_arrays_go_to_shared_memory_and_small_ones_inline(store):
    big = np.ones(THRESHOLD // 8, dtype=np.float64)  # exactly the threshold
    small = np.ones(THRESHOLD // 8 - 1, dtype=np.float64)
    big_payload, small_payload = serialize(big, store), serialize(small, store)
    assert len(big_payload.segments()) == 1 and big_payload.buffers[0].nbytes == THRESHOLD
    assert (
        len(big_payload.header) < 300 and big_payload.nbytes == len(big_payload.header) + THRESHOLD
    )
    assert type(small_payload) is bytes and payload_segments(small_payload) == ()
    assert {i.name for i in list_segments(store.cluster_id)} == set(big_payload.segments())
    unlink_segments(big_payload.segments())


def test_deserialized_array_is_read_in_place_from_the_segment(store):
    array = np.random.default_rng(1).random((1000, 500))
    payload = serialize({"x": array, "tag": "t"}, store)
    (name,) = payload.segments()
    result = deserialize(payload)["x"]
    np.testing.assert_array_equal(result, array)
    assert not result.flags.writeable
    assert backing_file(result) == f"/dev/shm/{name}"
    unlink_segments([name])  # the reader keeps working after the owner unlinks
    assert result.sum() == array.sum()


def test_same_array_passed_again_gets_its_own_segment_and_current_content(store):
    array = np.arange(100_000, dtype=np.int64)
    first = serialize(array, store)
    second = serialize(array, store)
    assert set(first.segments()).isdisjoint(second.segments())
    unlink_segments(first.segments())  # forgetting one key must not break the other
    np.testing.assert_array_equal(deserialize(second), array)
    array[:10] = -7
    third = serialize(array, store)
    assert deserialize(third)[5] == -7 and deserialize(second)[5] == 5
    unlink_segments(second.segments() + third.segments())


def test_lambdas_closures_and_local_classes_use_cloudpickle(store):
    offset = np.arange(10_000)

    def add_offset(x):
        return x + offset

    class Local:
        def __init__(self, v):
            self.v = v

    payload, (fn, closure, local, part) = round_trip(
        (lambda x: x * 2, add_offset, Local(5), functools.partial(add_offset, 1)), store
    )
    assert fn(21) == 42 and closure(1)[-1] == 10_000 and local.v == 5 and part()[0] == 1
    # the array captured by the closure was written once, although pickling was attempted twice
    assert sorted(i.name for i in list_segments(store.cluster_id)) == sorted(payload.segments())
    unlink_segments(payload.segments())


def test_functions_and_classes_from_main_travel_by_value(tmp_path):
    """A script fed on stdin defines them; another process, which cannot import them, runs them."""
    writer = textwrap.dedent(
        f"""
        import enum
        import sys
        from minidist.comm.serialize import serialize, dumps_function
        def square(x):
            return x * x
        class Point:
            def __init__(self, x): self.x = x
            def norm(self): return abs(self.x)
        open({str(tmp_path / "value")!r}, "wb").write(serialize([square, Point(-3)]))
        open({str(tmp_path / "func")!r}, "wb").write(dumps_function(square))
        class Level(enum.IntEnum):  # an int to the eye: a task call holding it is not plain pickle
            HIGH = 3
        call = serialize(((Level.HIGH, 2), {{"level": Level.HIGH}}))
        open({str(tmp_path / "call")!r}, "wb").write(call)
        """
    )
    reader = textwrap.dedent(
        f"""
        import pickle
        from minidist.comm.serialize import deserialize, loads_function
        square, point = deserialize(open({str(tmp_path / "value")!r}, "rb").read())
        func = loads_function(open({str(tmp_path / "func")!r}, "rb").read())
        (level, two), kwargs = deserialize(open({str(tmp_path / "call")!r}, "rb").read())
        assert kwargs["level"] is level and two == 2
        print(square(7), point.norm(), func(5), type(level).__name__, level.name, level + 1)
        """
    )
    subprocess.run([sys.executable, "-"], input=writer, text=True, check=True, timeout=60)
    done = subprocess.run(
        [sys.executable, "-"], input=reader, text=True, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["49", "3", "25", "Level", "HIGH", "4"]


@pytest.mark.parametrize("use_store", [True, False], ids=["shm", "inline"])
def test_calls_of_plain_scalars_are_plain_pickles(use_store, store):
    """Most task calls hold only builtin scalars: their payload is exactly pickle's stream, a plain
    bytes (no Payload object per task for the garbage collector to walk)."""
    calls = [((1,), {}), ((), {"x": 2.5, "y": None}), (("a", [1, 2, (3, True)]), {"z": 1j})]
    for call in calls:
        payload = serialize(call, store if use_store else None)
        assert type(payload) is bytes and payload == pickle.dumps(call, protocol=5)
        assert payload_nbytes(payload) == len(payload) and deserialize(payload) == call


def test_unpicklable_value_raises_serialization_error_and_writes_nothing(store):
    with pytest.raises(SerializationError, match="lock") as info:
        serialize({"data": np.zeros(10_000), "lock": threading.Lock()}, store)
    assert isinstance(info.value, TypeError)
    assert "builtins.dict" in str(info.value) and "picklable" in str(info.value)
    assert list_segments(store.cluster_id) == []


def test_dumps_function_round_trips_callables():
    scale = 3
    for func, expected in [(len, 3), (lambda s: s * scale, "abcabcabc"), (str.upper, "ABC")]:
        assert loads_function(dumps_function(func))("abc") == expected
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="function"):
        dumps_function(lambda: lock)


def test_full_shm_falls_back_inline_without_leaving_segments(store, monkeypatch):
    real_write = os.write

    def full_device(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/"):
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_device)
    array = np.arange(100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SharedMemoryFallbackWarning)
        payload = serialize([array, os.urandom(10_000)], store)
    monkeypatch.undo()
    assert payload_segments(payload) == () and list_segments(store.cluster_id) == []
    np.testing.assert_array_equal(deserialize(payload)[0], array)


def test_small_shm_warns_once_per_process():
    script = textwrap.dedent(
        """
        import json, os, warnings
        import numpy as np
        from minidist.comm.serialize import deserialize, serialize
        from minidist.comm.shm import SegmentStore, new_cluster_id, list_segments

        class TinyDevice:  # what os.statvfs says about a nearly full 64 MB /dev/shm
            f_bavail, f_frsize = 10, 4096
        os.statvfs = lambda path: TinyDevice
        store = SegmentStore(new_cluster_id())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            payloads = [serialize(np.full(1_000_000, i), store) for i in range(3)]
        ok = all(deserialize(p)[0] == i for i, p in enumerate(payloads))
        print(json.dumps({"messages": [str(w.message) for w in caught],
                          "categories": [w.category.__name__ for w in caught],
                          "segments": len(list_segments(store.cluster_id)), "ok": ok}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["categories"] == ["SharedMemoryFallbackWarning"]
    assert "/dev/shm" in report["messages"][0] and "--shm-size" in report["messages"][0]
    assert report["segments"] == 0 and report["ok"]


def test_threads_serializing_through_one_store(store):
    arrays = [np.full(50_000, i, dtype=np.int32) for i in range(8)]
    payloads: list[Payload] = [None] * 8  # type: ignore[list-item]

    def work(i):
        payloads[i] = serialize(arrays[i], store)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    names = [p.segments()[0] for p in payloads]
    assert len(set(names)) == 8
    assert [int(deserialize(p)[0]) for p in payloads] == list(range(8))
    unlink_segments(names)


def test_large_bytes_at_the_top_or_in_a_short_container_go_to_shared_memory(store):
    blob = os.urandom(THRESHOLD)
    args_and_kwargs = ((1, blob), {"data": bytearray(blob)})
    for value in [blob, bytearray(blob), (blob, 1), [1, blob], {"k": blob}, args_and_kwargs]:
        payload = serialize(value, store)
        assert len(payload.segments()) == (2 if value is args_and_kwargs else 1)
        assert deserialize(payload) == value
        unlink_segments(payload.segments())
    same_twice = serialize((blob, blob), store)  # one object: written once
    assert len(same_twice.segments()) == 1
    first, second = deserialize(same_twice)
    assert first == second == blob
    unlink_segments(same_twice.segments())


def test_a_payload_pickles_by_a_code_not_by_its_class_name(store):
    # by module and class name, every frame a worker sends would make the loading process decode a
    # fresh "Payload" string, which CPython's type attribute cache then keeps after the frame: after
    # a 100,000-task run such strings kept ~25 MiB of the client's allocator arenas alive
    array = np.arange(THRESHOLD // 8, dtype=np.float64)  # a buffer in shared memory: a Payload
    payload = serialize({"a": array}, store)
    data = pickle.dumps(payload, protocol=5)
    assert b"Payload" not in data
    loaded = pickle.loads(data)
    assert type(loaded) is Payload and loaded == payload
    np.testing.assert_array_equal(deserialize(loaded)["a"], array)
    unlink_segments(payload.segments())
