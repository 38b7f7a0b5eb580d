"""Values that clients share through the scheduler: variables, queue items, published datasets.

``pack(value, client)`` pickles a value (cloudpickle, so lambdas and local classes travel) and notes
every ``Future`` inside it, at any depth, by key; ``unpack(packed, client)`` rebuilds the value with
those futures bound to the receiving client. The scheduler never looks inside ``data``: it only keeps
the noted keys alive while it holds the value (``scheduler/coordination.py``).

A value that cannot be pickled can still be shared between clients of a thread-worker cluster in this
process: it is then kept as the object itself.
"""

from __future__ import annotations

import io
import pickle
import uuid

import cloudpickle

from .futures import Future
from .scheduler.coordination import Packed


class _FuturePickler(cloudpickle.CloudPickler):
    def __init__(self, file, keys: list):
        super().__init__(file, protocol=5)
        self.keys = keys

    def persistent_id(self, obj):
        if type(obj) is Future:
            self.keys.append(obj.key)
            return ("future", obj.key)
        return None


class _FutureUnpickler(pickle.Unpickler):
    def __init__(self, file, client):
        super().__init__(file)
        self.client = client

    def persistent_load(self, pid):
        kind, key = pid
        if kind != "future":
            raise pickle.UnpicklingError(f"unknown reference {kind!r} in a shared value")
        return Future(key, self.client)


def pack(value, client) -> Packed:
    keys: list = []
    buffer = io.BytesIO()
    try:
        _FuturePickler(buffer, keys).dump(value)
    except Exception as exc:
        if client.data_plane.pickles:
            raise TypeError(
                f"Could not pickle a {type(value).__name__} to share it through the scheduler: {exc}"
            ) from exc
        from .futures import futures_in

        # a thread-worker cluster in this process: the object itself can be shared
        return Packed(_Local(value), tuple(dict.fromkeys(f.key for f in futures_in(value))))
    return Packed(buffer.getvalue(), tuple(dict.fromkeys(keys)))


def handoff_owner() -> str:
    """A fresh owner for the keys of a value on its way to a client.

    The scheduler makes this owner want them before the holder lets go; once the client's own futures
    exist (and have told the scheduler so), ``received`` lets this owner go. Wanting them under the
    client's own id instead would race with a pending release of an older future of the same key by
    that client, which could drop them in between.
    """
    return f"handoff-{uuid.uuid4().hex}"


def received(values: list, owner: str, client) -> None:
    """The client made its futures for these values: the hand-off owner lets go of their keys."""
    keys = tuple(dict.fromkeys(k for packed in values for k in packed.keys))
    if keys:
        client.operations.invoke("handoff_done", owner, keys)


def unpack(packed: Packed, client):
    data = packed.data
    if isinstance(data, _Local):
        return data.value
    return _FutureUnpickler(io.BytesIO(data), client).load()


class _Local:
    """An unpicklable value shared by reference inside one process."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value
