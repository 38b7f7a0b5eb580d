"""The data plane: how one cluster packs calls and values for its workers, unpacks them, and frees them.

Each cluster has one, chosen when it is made (``LocalCluster``: by ``processes``; a remote cluster's
proxy: always pickled) and handed to its scheduler and to every client, which then never ask what kind
of workers run the tasks::

                          PickledPlane (process workers, remote clients)     ObjectPlane (thread workers)
    task function         cloudpickled once; id = hash of the pickle          the callable itself
    task arguments        a Payload of (args, kwargs), pickled at submit      (args, kwargs) as they are
    stored values         Payloads, decoded by whoever reads them             the objects themselves
    run / run_on_scheduler  (function pickle, Payload) out, Payload back      objects both ways
    values sent with a task  only the dependencies the worker lacks           every dependency
    freeing               a ledger of shared-memory segments: the last        nothing to free
                          value or argument payload using one hands it to
                          the janitor thread, which unlinks it

Large buffers of a Payload live in ``/dev/shm`` segments (``comm/shm.py``) when the plane has a store
(the cluster's process, and remote clients on the same machine); several payloads may share a segment,
which ``SegmentLedger`` counts on the scheduler's side.
"""

from __future__ import annotations

import collections
from typing import Any, Optional

from .comm.serialize import (
    SerializationError,
    deserialize,
    dumps_function,
    loads_function,
    payload_nbytes,
    payload_segments,
    serialize,
    serialize_call,
    serialize_with_token,
)
from .comm.shm import SegmentJanitor, SegmentStore, SharedBuffer, unlink_segments
from .comm.write_watch import ChecksumCache
from .errors import TaskSerializationError
from .keys import tokenize_call
from .messages import DEPENDENCY_VALUES, RunSpec
from .utils import sizeof

_NO_KWARGS: dict = {}  # shared by graph nodes' tasks, which take no keywords (never changed)
# a thread worker's graph node is called as node(values of its dependencies), or node() for a root:
# every such task shares one of these (args, kwargs) pairs
_NODE_CALL = ((DEPENDENCY_VALUES,), _NO_KWARGS)
_ROOT_CALL = ((), _NO_KWARGS)


class SegmentLedger:
    """Reference counts of shared-memory segments, which several payloads may share.

    A segment whose count drops to 0 goes to ``unlink`` (the plane's janitor thread: unlinking a large
    tmpfs file frees its pages, which must not hold up the scheduler thread), or, if its writer pools
    its segments (``comm/shm_pool.py``), into ``returned``: the scheduler hands those back to their
    writer (``ReturnSegments``), which writes later values into them.
    """

    def __init__(self, unlink=unlink_segments):
        self.counts: collections.Counter = collections.Counter()
        self.unlink = unlink
        self.returned: list[str] = []  # pooled segments nothing refers to any more

    def retain(self, value: Any) -> None:
        if not getattr(value, "buffers", None):
            return  # inline payloads hold no shared memory
        for name in value.segments():
            self.counts[name] += 1

    def release(self, value: Any) -> None:
        if not getattr(value, "buffers", None):
            return
        doomed = []
        for buffer in value.buffers:
            if type(buffer) is not SharedBuffer:
                continue
            name = buffer.name
            left = self.counts[name] - 1
            if left <= 0:
                self.counts.pop(name, None)
                if buffer.pooled:
                    self.returned.append(name)
                else:
                    doomed.append(name)
            else:
                self.counts[name] = left
        if doomed:
            self.unlink(doomed)

    def take_returned(self) -> list[str]:
        returned = self.returned[:]
        self.returned.clear()  # in place: the plane's ``ledger_returns`` is this list
        return returned


class PickledPlane:
    """Functions, arguments and values travel pickled (process workers, and every remote client)."""

    pickles = True

    def __init__(self, store: Optional[SegmentStore] = None):
        self.store = (
            store  # where large buffers go; None: inline (another machine, or no cluster here)
        )
        # unlinks what the ledger frees, off the scheduler thread (started on first use)
        self.janitor = SegmentJanitor()
        if store is not None:  # what the store stops keeping goes the same way (comm/shm_kept.py)
            store.kept.unlink_with(self.janitor.unlink, self.janitor.start)
        self.ledger = SegmentLedger(self.janitor.unlink)  # used by the scheduler's side only
        # on the scheduler's hot path: the ledger's own methods, without a call in between
        self.retain = self.ledger.retain
        self.release = self.ledger.release
        self.ledger_returns = self.ledger.returned  # non-empty: segments to hand back this turn

    # ----------------------------------------------------------------------------- the client's side

    def function_blob(self, func) -> bytes:
        try:
            return dumps_function(func)
        except Exception as exc:
            raise TaskSerializationError(
                f"Could not pickle the function {func!r} of type {type(func).__name__} to send it to "
                f"worker processes: {exc}. Define it at module level or use Client(processes=False)."
            ) from exc

    @property
    def tokens_while_packing(self) -> bool:
        """True if ``pack_arguments`` can hash the arguments in the same pass (a large array is read once)."""
        return self.store is not None

    def tokenize(self, function_id: bytes, args: tuple, kwargs: dict) -> str:
        """The content token of a pure call whose arguments are not packed with their token."""
        return tokenize_call(function_id, args, kwargs)

    def pack_arguments(self, args, kwargs, key=None, token_salt=None) -> tuple:
        """``(arguments, token or None)``; a clear error if they cannot be pickled."""
        try:
            if token_salt is not None and self.store is not None:
                return serialize_with_token((args, kwargs), self.store, token_salt)
            return serialize_call(args, kwargs, self.store), None
        except SerializationError as exc:
            where = f"task {key!r}" if key is not None else "a task"
            raise TaskSerializationError(
                f"Could not send an argument of {where} to the workers: {exc}"
            ) from exc

    def run_spec(self, function_id: bytes, blob, func, arguments) -> RunSpec:
        return (function_id, blob, arguments)

    def node_run_spec(self, function_id: bytes, blob, func, node, key) -> RunSpec:
        """The task of a graph node (a callable taking ``{dependency: value}``): ``func(node, values)``,
        or ``func(node)`` for a node without dependencies; ``func`` calls the node."""
        args = (node, DEPENDENCY_VALUES) if node.dependencies else (node,)
        arguments, _ = self.pack_arguments(args, _NO_KWARGS, key)
        return (function_id, blob, arguments)

    def discard_arguments(self, arguments) -> None:
        """Arguments packed for a task that will not be sent (the key is shared): free their memory."""
        unlink_segments(payload_segments(arguments))

    def pack_value(self, value) -> tuple:
        """``(stored form, nbytes)`` of a scattered value."""
        try:
            payload = serialize(value, self.store)
        except SerializationError as exc:
            raise TaskSerializationError(
                f"Could not scatter {type(value).__name__}: {exc}"
            ) from exc
        return payload, payload_nbytes(payload)

    def pack_value_with_token(self, value) -> tuple:
        """``(stored form, nbytes, content token)`` of a scattered value (``scatter(hash=True)``).

        With a store the token comes from the same pass that writes the value: a large array is read
        once, not once to hash and once to write.
        """
        if self.store is None:
            payload, nbytes = self.pack_value(value)
            return payload, nbytes, tokenize_call(b"scatter", (value,), {})
        try:
            payload, token = serialize_with_token(value, self.store, b"scatter")
        except SerializationError as exc:
            raise TaskSerializationError(
                f"Could not scatter {type(value).__name__}: {exc}"
            ) from exc
        return payload, payload_nbytes(payload), token

    def unpack_value(self, stored) -> Any:
        return deserialize(stored)

    def pack_call(self, function, args: tuple, kwargs: dict) -> tuple:
        """``(function, arguments)`` for ``run``/``run_on_scheduler``."""
        return dumps_function(function), serialize((args, kwargs), None)

    def unpack_result(self, stored) -> Any:
        """A ``run``/``run_on_scheduler`` result as the caller sees it."""
        return deserialize(stored)

    # -------------------------------------------------------------------------- the scheduler's side

    def unpack_call(self, function, arguments) -> tuple:
        """``(function, args, kwargs)`` of what ``pack_call`` made."""
        args, kwargs = deserialize(arguments)
        return loads_function(function), args, kwargs

    def pack_result(self, value) -> Any:
        return serialize(value, None)

    def dependency_values(self, execute, data: dict) -> dict:
        """The stored values to send with an ``Execute``: the worker caches the others."""
        return {key: data[key] for key in execute.missing_deps}

    def segments_in_use(self):
        return self.ledger.counts.keys()

    def take_returned(self) -> list[str]:
        """Pooled segments nothing refers to any more, for the scheduler to hand back to their
        writers (or to ``janitor`` when their writer is gone)."""
        return self.ledger.take_returned()

    def close(self) -> None:
        """Unlink every segment already freed (the janitor's queue) and stop the janitor's thread;
        the store stops watching the client's buffers for writes."""
        self.janitor.unlink(self.ledger.take_returned())  # their writers are closing too
        self.janitor.close()
        if self.store is not None:
            self.store.close()


class ObjectPlane:
    """Functions, arguments and values stay Python objects (thread workers in the cluster's process)."""

    pickles = False
    store = None
    tokens_while_packing = False
    ledger_returns = ()

    def __init__(self):
        # arguments stay objects, so pure keys are the only reads of a large array: the checksum of
        # one passed again is remembered while the kernel watches it (comm/write_watch.py)
        self.checksums = ChecksumCache()

    def tokenize(self, function_id: bytes, args: tuple, kwargs: dict) -> str:
        return tokenize_call(function_id, args, kwargs, self.checksums.checksum)

    def function_blob(self, func) -> Optional[bytes]:
        try:
            return dumps_function(func)  # for the function's id (equal functions share tokens)
        except Exception:
            return None  # never needed: the function itself is sent

    def pack_arguments(self, args, kwargs, key=None, token_salt=None) -> tuple:
        return (args, kwargs), None

    def run_spec(self, function_id: bytes, blob, func, arguments) -> RunSpec:
        return (function_id, func, arguments)

    def node_run_spec(self, function_id: bytes, blob, func, node, key) -> RunSpec:
        """The task of a graph node: the node is called itself, with a pair of arguments all nodes
        share, so its task is one object (a graph of many small tasks keeps them all at once, and each
        is one more for every full garbage collection to walk). ``func`` (which would call the node)
        is what process workers run; its id stays the task's function id."""
        return (function_id, node, _NODE_CALL if node.dependencies else _ROOT_CALL)

    def discard_arguments(self, arguments) -> None:
        pass

    def pack_value(self, value) -> tuple:
        return value, sizeof(value)

    def pack_value_with_token(self, value) -> tuple:
        return value, sizeof(value), self.tokenize(b"scatter", (value,), {})

    def unpack_value(self, stored) -> Any:
        return stored

    def pack_call(self, function, args: tuple, kwargs: dict) -> tuple:
        return function, (args, kwargs)

    def unpack_result(self, stored) -> Any:
        return stored

    def unpack_call(self, function, arguments) -> tuple:
        args, kwargs = arguments
        return function, args, kwargs

    def pack_result(self, value) -> Any:
        return value

    def dependency_values(self, execute, data: dict) -> dict:
        # a thread worker's cache is the scheduler's store itself: every value goes with the task
        return {key: data[key] for key in execute.dependencies}

    def retain(self, stored) -> None:
        pass

    def release(self, stored) -> None:
        pass

    def segments_in_use(self):
        return ()

    def take_returned(self) -> list:
        return []

    def close(self) -> None:
        self.checksums.close()


DataPlane = PickledPlane | ObjectPlane
