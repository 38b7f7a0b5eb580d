"""Turning values into Payloads (a small pickle + buffer handles) and back.

A value with no out-of-band buffer (most task calls and results) is packed as its pickle alone, a
plain ``bytes``; only values with buffers get a ``Payload`` object. Every reader takes both forms
(``deserialize``, ``payload_nbytes``, ``payload_segments``): a ``bytes`` is one object fewer per task
for the garbage collector to walk while a large run is in flight, and pickles natively.

Data flow::

    serialize(obj, store)                                              deserialize(payload)
      pickle protocol 5 ──► header bytes ──────────── Payload ─────────► pickle.loads(header, buffers=...)
        │ out-of-band buffers                       (travels through                 ▲
        ├─ smaller than store.threshold: back in-band  pipes)                        │ read-only
        └─ large: SegmentStore.write ──► SharedBuffer handles ──────────► open_segment ┘ zero-copy views

Plain pickle is tried first (fastest); a value made only of builtin scalars in short tuples, lists and
dicts (most task calls) goes straight to ``pickle.dumps``, since nothing else here can apply to it. Lambdas, closures and functions or classes defined in ``__main__``
(which a worker process cannot import) make us start again with cloudpickle, which sends them by value.
Buffers written during a failed first attempt are re-used by the second one, never written twice.

If shared memory cannot take a buffer (``/dev/shm`` full or too small, as in many containers), the buffer
goes inline with the header instead, and one SharedMemoryFallbackWarning per process says so.

``serialize_with_token`` also returns a content token of the value (for pure task keys) from the same
pickling pass; each large buffer is read once (its checksum is taken while it is written or compared).

Nothing here unlinks a segment a returned Payload refers to: whoever keeps the Payload owns its segments
(see ``minidist.comm.shm``).
"""

from __future__ import annotations

import copyreg
import io
import pickle
import threading
import types
import warnings
from typing import TYPE_CHECKING

import cloudpickle

from minidist.comm.shm import SegmentStore, SharedBuffer, open_segment, unlink_segments
from minidist.keys import blake2b

if TYPE_CHECKING:
    from minidist.comm.shm_pool import SegmentPool

# Containers this short are looked into for large bytes/bytearray (see _expose_large_bytes).
_SHALLOW_LIMIT = 64


class SerializationError(TypeError):
    """A value could be pickled neither by pickle nor by cloudpickle."""


class SharedMemoryFallbackWarning(RuntimeWarning):
    """Shared memory was unavailable, so large buffers travel inline (slower, still correct)."""


class Payload:
    """A serialized value with out-of-band buffers: what travels through pipes. Small, and picklable
    with plain pickle. (A value without buffers travels as its pickle alone: see the module docstring.)

    Treat it as immutable. A plain slotted class rather than a frozen dataclass: one is made for every
    task's arguments and every result (and again where each is unpickled), and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, 2.5x the cost of this one."""

    __slots__ = ("header", "buffers", "nbytes")

    header: bytes  # the pickle (protocol 5) stream
    buffers: tuple  # out-of-band buffers, in order: bytes or SharedBuffer
    nbytes: int  # size of the data it stands for (header + buffers), for memory accounting

    def __init__(self, header: bytes, buffers: tuple, nbytes: int):
        self.header = header
        self.buffers = buffers
        self.nbytes = nbytes

    def segments(self) -> tuple[str, ...]:
        """Names of the shared-memory segments this payload refers to."""
        return tuple(b.name for b in self.buffers if isinstance(b, SharedBuffer))

    def __reduce__(self):
        return (Payload, (self.header, self.buffers, self.nbytes))

    def __eq__(self, other) -> bool:
        if type(other) is not Payload:
            return NotImplemented
        return (self.header, self.buffers, self.nbytes) == (
            other.header,
            other.buffers,
            other.nbytes,
        )

    def __hash__(self) -> int:
        return hash((self.header, self.buffers, self.nbytes))

    def __repr__(self) -> str:
        return f"Payload(header={self.header!r}, buffers={self.buffers!r}, nbytes={self.nbytes!r})"


# Pickle names Payload by an extension code (copyreg's registry, which exists for this): a frame then
# loads it with one dict lookup by a small int. By module and class name instead, the loader decodes a
# fresh "Payload" string for every frame and looks it up on the module, and CPython's type attribute
# cache keeps that string (up to 4,096 of them, placed by address) after the frame is gone: after a run
# of 100,000 tasks such strings alone kept ~25 of the client's allocator arenas (1 MiB each) alive.
# Every process of a cluster runs this module, so both ends agree on the code. If the code is taken in
# this process (by someone else's registration), Payload pickles by name: slower, still correct.
PAYLOAD_PICKLE_CODE = 0x6D640001  # "md" + 1: far from the small codes others use
try:
    copyreg.add_extension(Payload.__module__, Payload.__qualname__, PAYLOAD_PICKLE_CODE)
except ValueError:
    pass


def payload_nbytes(payload: Payload | bytes) -> int:
    """The size of the data a payload stands for (its pickle and its buffers)."""
    return len(payload) if isinstance(payload, bytes) else payload.nbytes


def payload_segments(payload: Payload | bytes) -> tuple[str, ...]:
    """Names of the shared-memory segments a payload refers to."""
    return () if isinstance(payload, bytes) else payload.segments()


_fallback_lock = threading.Lock()
_fallback_warned = False


def _warn_fallback(nbytes: int, exc: OSError) -> None:
    global _fallback_warned
    with _fallback_lock:
        if _fallback_warned:
            return
        _fallback_warned = True
    warnings.warn(
        f"minidist could not put a {nbytes}-byte buffer in shared memory ({exc}). /dev/shm is probably "
        "full or too small (containers often get 64 MB; give more with e.g. `docker run --shm-size=2g`). "
        "Large values now travel inline through pipes, which is slower but correct. "
        "This warning is shown once per process.",
        SharedMemoryFallbackWarning,
        stacklevel=3,
    )


class _BufferSink:
    """The buffer_callback: decides in-band or shared memory for each buffer pickle hands out."""

    def __init__(self, store: SegmentStore | SegmentPool | None, checksums: bool = False):
        self.store = store
        self.checksums = checksums
        self.sums: dict[str, int] = {}  # segment name -> checksum of its data (with checksums=True)
        self.buffers: list[SharedBuffer] = []
        # id(source of a buffer) -> its handle; survives a restart so that nothing is written twice
        self.written: dict[int, SharedBuffer] = {}
        self._keep_alive: list[object] = []  # so that ids in `written` stay unique while we pickle

    def __call__(self, pickle_buffer: pickle.PickleBuffer) -> bool:
        """Return True to keep the buffer in-band, False once it is safely in shared memory."""
        store = self.store
        if store is None:
            return True
        try:
            raw = pickle_buffer.raw()
        except BufferError:  # not contiguous: only pickle's in-band copy can handle it
            return True
        if raw.nbytes == 0 or raw.nbytes < store.threshold:
            return True
        source = raw.obj
        handle = self.written.get(id(source))
        if handle is None or handle.nbytes != raw.nbytes:
            try:
                if self.checksums:
                    handle, crc = store.write_summed(raw)
                    self.sums[handle.name] = crc
                else:
                    handle = store.write(raw)
            except OSError as exc:
                _warn_fallback(raw.nbytes, exc)
                return True
            self.written[id(source)] = handle
            self._keep_alive.append(source)
        self.buffers.append(handle)
        return False

    def restart(self) -> None:
        """A new pickling attempt begins: forget the order, keep what was written for re-use."""
        self.buffers = []

    def drop_unused(self) -> None:
        """Unlink segments written by an abandoned attempt that the final payload does not use."""
        if not self.written:
            return  # nothing went to shared memory (the common case): nothing to unlink
        used = {b.name for b in self.buffers}
        unused = [h.name for h in self.written.values() if h.name not in used]
        if unused:  # the common case: the one attempt used all it wrote
            getattr(self.store, "discard", unlink_segments)(unused)  # a pool forgets them too


class _MainAwarePickler(pickle.Pickler):
    """Plain pickle, but gives up on functions/classes from __main__ so that cloudpickle takes over."""

    def reducer_override(self, obj):
        if (
            isinstance(obj, (type, types.FunctionType))
            and getattr(obj, "__module__", None) == "__main__"
        ):
            raise _NeedsCloudpickle(obj)
        if type(obj) is memoryview:
            return _reduce_memoryview(obj)
        return NotImplemented


class _CloudPickler(cloudpickle.Pickler):
    def reducer_override(self, obj):
        if type(obj) is memoryview:
            return _reduce_memoryview(obj)
        return super().reducer_override(obj)


class _NeedsCloudpickle(pickle.PicklingError):
    pass


def _reduce_memoryview(view: memoryview):
    fmt, shape, readonly = view.format, view.shape, view.readonly
    if not view.c_contiguous:
        view = memoryview(view.tobytes())  # C-order copy: PickleBuffer needs contiguous memory
    return (_load_memoryview, (pickle.PickleBuffer(view), fmt, shape, readonly))


def _load_memoryview(buffer, fmt: str, shape: tuple, readonly: bool) -> memoryview:
    view = memoryview(buffer)
    if readonly and not view.readonly:
        view = view.toreadonly()
    flat = view.cast("B") if (view.format != "B" or view.ndim != 1) else view
    if fmt == "B" and len(shape) == 1:
        return flat
    # typeshed lists only literal formats; the format string comes from the writer's own memoryview
    return flat.cast(fmt, shape)  # type: ignore[call-overload]


class _LargeBytes:
    """Stands in for a large bytes/bytearray so that its data can go out-of-band (pickle never offers it)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return (type(self.data), (pickle.PickleBuffer(self.data),))


def _has_large_bytes(value, threshold: int, depth: int) -> bool:
    # on every task's path (``(args, kwargs)``): plain loops, and no call for items that cannot hold
    # bytes (other types, empty containers), so small scalar arguments cost a call or two
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value) >= threshold and len(value) > 0
    if kind is dict:
        value = value.values()
    elif kind is not tuple and kind is not list:
        return False
    if not depth or len(value) > _SHALLOW_LIMIT:
        return False
    for item in value:
        if type(item) in _MAY_HOLD_BYTES and item and _has_large_bytes(item, threshold, depth - 1):
            return True
    return False


_MAY_HOLD_BYTES = frozenset((bytes, bytearray, tuple, list, dict))


def _expose_large_bytes(obj, threshold: int):
    """Wrap large bytes/bytearray found up to two short tuples/lists/dicts deep, e.g. ``(args, kwargs)``.

    pickle writes bytes and bytearray in-band without asking buffer_callback, so a 100 MB bytes argument
    would otherwise travel through the pipe. Deeper nesting is left alone (it still works, inline).
    Containers are rebuilt (same exact type) only when something inside them was wrapped.
    """
    if not _has_large_bytes(obj, threshold, 2):
        return obj  # the common case, checked without building anything
    wrapped: dict[int, _LargeBytes] = {}  # one wrapper per object, so pickle's memo still shares it

    def visit(value, depth: int):
        kind = type(value)
        if kind is bytes or kind is bytearray:
            if len(value) < threshold or not value:
                return value
            if id(value) not in wrapped:
                wrapped[id(value)] = _LargeBytes(value)
            return wrapped[id(value)]
        if kind not in (tuple, list, dict) or depth == 0 or len(value) > _SHALLOW_LIMIT:
            return value
        if kind is dict:
            entries = {k: visit(v, depth - 1) for k, v in value.items()}
            changed = any(entries[k] is not v for k, v in value.items())
            return entries if changed else value
        items = [visit(v, depth - 1) for v in value]
        changed = any(a is not b for a, b in zip(items, value))
        return kind(items) if changed else value

    return visit(obj, 2)


def _pickle_with(pickler_class, obj, sink: _BufferSink) -> bytes:
    out = io.BytesIO()
    pickler_class(out, protocol=5, buffer_callback=sink).dump(obj)
    return out.getvalue()


def _serialization_error(obj, exc: BaseException) -> SerializationError:
    kind = type(obj)
    return SerializationError(
        f"Could not serialize an object of type {kind.__module__}.{kind.__qualname__} to send it to "
        f"another process: {type(exc).__name__}: {exc}. Make it picklable (e.g. define __reduce__ or "
        "__getstate__), create it inside the task instead of passing it in, or use processes=False."
    )


def serialize(obj, store: SegmentStore | SegmentPool | None = None) -> Payload | bytes:
    """Pickle ``obj`` (protocol 5); buffers of at least ``store.threshold`` bytes go to shared memory.

    Without a store everything is inline. Raises SerializationError if neither pickle nor cloudpickle
    can handle the value; never fails because shared memory is short (see SharedMemoryFallbackWarning).
    """
    if _holds_only_scalars(obj, 2):
        return _plain_payload(obj)
    return _serialize(obj, store, _BufferSink(store))


def serialize_call(args: tuple, kwargs: dict, store: SegmentStore | SegmentPool | None = None):
    """:func:`serialize` of a task call ``(args, kwargs)``. The common call, positional builtin
    scalars and no keywords (``map(f, range(n))``), is checked here in one loop rather than by the
    general walk: it is made once per task."""
    if not kwargs:
        for item in args:
            if type(item) not in _SCALARS:
                break
        else:
            return pickle.dumps((args, kwargs), protocol=5)
    return serialize((args, kwargs), store)


def serialize_with_token(
    obj, store: SegmentStore | SegmentPool | None, salt: bytes = b""
) -> tuple[Payload | bytes, str]:
    """:func:`serialize`, plus a hex token of the value's content (for pure task keys) from the same pass.

    Equal values give equal tokens within a process; ``salt`` (e.g. the function's id) is hashed first.
    The token hashes the pickle stream and, for each buffer in shared memory, its length and 64-bit checksum (``keys.buffer_checksum``),
    as ``keys.tokenize_call`` does for large buffers. Each buffer is read once: the store hashes each
    chunk right after writing it (or comparing it, when it re-uses a segment holding the same bytes),
    and a re-used segment's checksum, once known, is remembered.
    """
    payload: Payload | bytes
    if _holds_only_scalars(obj, 2):
        payload, sums = _plain_payload(obj), {}
    else:
        sink = _BufferSink(store, checksums=True)
        payload, sums = _serialize(obj, store, sink), sink.sums
    digest = blake2b(salt, digest_size=16)
    if isinstance(payload, bytes):
        digest.update(payload)
        return payload, digest.hexdigest()
    digest.update(payload.header)
    for buffer in payload.buffers:
        digest.update(b"|%d:%d" % (buffer.nbytes, sums[buffer.name]))
    return payload, digest.hexdigest()


def _holds_only_scalars(value, depth: int) -> bool:
    """True if ``value`` is a builtin scalar or a short tuple/list/dict of those, ``depth`` deep."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if not depth:
        return False
    if kind is tuple or kind is list:
        if len(value) > _SHALLOW_LIMIT:
            return False
        for item in value:
            if type(item) not in _SCALARS and not _holds_only_scalars(item, depth - 1):
                return False
        return True
    if kind is dict and len(value) <= _SHALLOW_LIMIT:
        for key, item in value.items():
            if type(key) not in _SCALARS:
                return False
            if type(item) not in _SCALARS and not _holds_only_scalars(item, depth - 1):
                return False
        return True
    return False


# exact types only: a subclass (e.g. an IntEnum defined in __main__) takes the general path
_SCALARS = frozenset((int, float, str, bool, type(None), complex))


def _plain_payload(obj) -> bytes:
    """The payload of a value ``_holds_only_scalars`` accepted, e.g. the common task call ``((i,), {})``.

    None of what ``_serialize`` adds can apply to it (no buffers, no __main__ functions or classes,
    no memoryviews), so plain pickle writes the same stream without a pickler object, a stream
    object and a buffer sink."""
    return pickle.dumps(obj, protocol=5)


def _serialize(obj, store: SegmentStore | SegmentPool | None, sink: _BufferSink) -> Payload | bytes:
    target = _expose_large_bytes(obj, store.threshold) if store is not None else obj
    try:
        try:
            header = _pickle_with(_MainAwarePickler, target, sink)
        except Exception:
            sink.restart()
            try:
                header = _pickle_with(_CloudPickler, target, sink)
            except Exception as exc:
                raise _serialization_error(obj, exc) from exc
    except BaseException:
        sink.restart()  # nothing will refer to what was written: unlink it all
        sink.drop_unused()
        raise
    sink.drop_unused()  # what a failed first attempt wrote and the second did not use
    if not sink.buffers:
        return header
    buffers = tuple(sink.buffers)
    return Payload(header, buffers, len(header) + sum(b.nbytes for b in buffers))


def deserialize(payload: Payload | bytes, open_buffer=open_segment):
    """Rebuild the value; shared-memory buffers are mapped read-only without copying.

    NumPy arrays backed by shared memory are therefore read-only; copy one to modify it.
    ``open_buffer``: how a segment is mapped (a worker passes its ``MappingCache.open``).
    """
    if isinstance(payload, bytes):  # most payloads (a task's small arguments): the pickle alone
        return pickle.loads(payload)
    if not payload.buffers:  # one made by hand
        return pickle.loads(payload.header)
    buffers = [
        open_buffer(b.name, b.nbytes, b.offset, b.pooled) if isinstance(b, SharedBuffer) else b
        for b in payload.buffers
    ]
    return pickle.loads(payload.header, buffers=buffers)


def dumps_function(func) -> bytes:
    """Pickle a callable with cloudpickle (by value when it comes from __main__, by reference otherwise)."""
    try:
        return cloudpickle.dumps(func, protocol=5)
    except Exception as exc:
        raise _serialization_error(func, exc) from exc


def loads_function(data: bytes):
    """The callable pickled by :func:`dumps_function`."""
    return pickle.loads(data)
