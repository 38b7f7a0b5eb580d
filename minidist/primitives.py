"""Named coordination primitives shared by every client of a cluster (dask.distributed's API).

``Lock``, ``MultiLock``, ``Semaphore``, ``Event``, ``Queue`` and ``Variable`` are thin handles: a name
and a client. Each call is a named scheduler operation (``scheduler/coordination_ops.py``) on the
cluster's one coordination state, so two handles with the same name, in any client (local, remote,
inside a task), see the same object::

    Lock("x").acquire() ──► client._invoke("semaphore_acquire", "lock", "x", 1, lease id, ...)
                        ──► parked on the scheduler until granted (the scheduler thread never waits)

The client is bound lazily (``get_client()`` when first needed), so a handle made in the client can be
passed to a task and works there with the task's client. Long waits are asked for in slices of
``_SLICE`` seconds: a remote client that disappears mid-wait leaves nothing waiting for long on the
scheduler side. Values and futures travel through ``packing.py``; a future put in a queue or variable
keeps its result alive until it is taken or overwritten.
"""

from __future__ import annotations

import collections
import functools
import time
import uuid
from typing import Any, Optional

from .asynchronous import in_event_loop
from .utils import parse_timedelta

_SLICE = 5.0


def _seconds(timeout) -> Optional[float]:
    return None if timeout is None else parse_timedelta(timeout)


def _in_slices(call, timeout: Optional[float], timed_out):
    """``call(seconds)`` until it answers something other than ``timed_out`` or time runs out."""
    if timeout is not None and timeout <= 0:
        return call(0)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return timed_out
        answer = call(_SLICE if remaining is None else min(_SLICE, remaining))
        if answer is not timed_out:
            return answer


def _in_executor(function, *args):
    import asyncio

    return asyncio.get_running_loop().run_in_executor(None, function, *args)


def _task_worker() -> Optional[str]:
    """The address of the worker running the current task, if any (its leases die with it)."""
    from .worker.runtime import current_key, current_runtime

    runtime = current_runtime()
    if runtime is None or current_key() is None:
        return None
    return runtime.address


def _awaitable(method):
    """For a client made with ``asynchronous=True``, called inside its event loop, the call runs in
    the loop's executor and an awaitable is returned (``await lock.acquire()``), as in dask."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.client.asynchronous and in_event_loop():
            import asyncio

            blocking = functools.partial(method, self, *args, **kwargs)
            return asyncio.get_running_loop().run_in_executor(None, blocking)
        return method(self, *args, **kwargs)

    call.blocking = method  # type: ignore[attr-defined]
    return call


class _Named:
    """A name and a lazily found client."""

    _kind = "object"

    def __init__(self, name=None, client=None):
        self.name = name if name is not None else f"{self._kind}-{uuid.uuid4().hex}"
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from .context import get_client

            try:
                self._client = get_client()
            except ValueError:
                raise ValueError(
                    f"{type(self).__name__} {self.name!r} needs a client: create a Client first "
                    "or pass client="
                ) from None
        return self._client

    def _invoke(self, operation: str, *args):
        client = self.client
        client._check_open()
        return client.operations.invoke(operation, *args)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


class Semaphore(_Named):
    """At most ``max_leases`` holders at a time, across every client; a lease held by a task is given
    back when its worker dies or leaves."""

    _kind = "semaphore"

    def __init__(
        self, max_leases: int = 1, name=None, register: bool = True, client=None, **kwargs
    ):
        if not isinstance(max_leases, int) or isinstance(max_leases, bool) or max_leases < 1:
            raise ValueError(f"max_leases must be a positive int, not {max_leases!r}")
        super().__init__(name, client)
        self.max_leases = max_leases
        self._leases: collections.deque = collections.deque()  # lease ids this handle holds

    @_awaitable
    def acquire(self, timeout=None) -> bool:
        """Take a lease; wait up to ``timeout`` seconds (forever if None). False if none came."""
        lease_id = uuid.uuid4().hex
        owner = (self.client.id, _task_worker())  # the lease goes back if either goes away
        granted = _in_slices(
            lambda seconds: self._invoke(
                "semaphore_acquire",
                self._kind,
                self.name,
                self.max_leases,
                lease_id,
                owner,
                seconds,
            ),
            _seconds(timeout),
            False,
        )
        if granted:
            self._leases.append(lease_id)
        return bool(granted)

    @_awaitable
    def release(self) -> bool:
        """Give back the oldest lease this handle holds."""
        if not self._leases:
            raise RuntimeError(
                f"{type(self).__name__} {self.name!r} released too often: this handle holds no lease"
            )
        lease_id = self._leases.popleft()
        return self._invoke("semaphore_release", self._kind, self.name, lease_id)

    @_awaitable
    def get_value(self) -> int:
        """How many leases are held now, by anyone."""
        return self._invoke("semaphore_value", self._kind, self.name)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()

    async def __aenter__(self):
        await _in_executor(type(self).acquire.blocking, self)
        return self

    async def __aexit__(self, *exc_info):
        await _in_executor(type(self).release.blocking, self)

    def __reduce__(self):
        return (type(self), (self.max_leases, self.name))

    def close(self) -> None:
        pass  # leases go with release() or with their worker; nothing else is held


class Lock(Semaphore):
    """A named lock shared by every client of the cluster (one holder at a time)."""

    _kind = "lock"

    def __init__(self, name=None, client=None, **kwargs):
        super().__init__(1, name, client=client)

    # dask's Lock is a Semaphore whose acquire also takes ``blocking`` first
    @_awaitable
    def acquire(self, blocking: bool = True, timeout=None) -> bool:
        """Take the lock; with ``timeout``, give up after that many seconds and return False."""
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        return super().acquire(timeout)

    @_awaitable
    def release(self) -> bool:
        if not self._leases:
            raise RuntimeError(f"Lock {self.name!r} is not acquired by this handle; cannot release")
        return super().release()

    @_awaitable
    def locked(self) -> bool:
        """Is the lock held by anyone?"""
        return self.get_value() == 1

    def __reduce__(self):
        return (type(self), (self.name,))


class MultiLock(_Named):
    """Several named locks taken together (all of them, or ``num_locks`` of them), atomically."""

    _kind = "multilock"

    def __init__(self, names=None, client=None):
        super().__init__(None, client)
        self.names = list(names or [])
        self.id = uuid.uuid4().hex
        self._locked = False

    @_awaitable
    def acquire(self, blocking: bool = True, timeout=None, num_locks=None) -> bool:
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        count = len(self.names) if num_locks is None else num_locks
        if not 0 <= count <= len(self.names):
            raise ValueError(f"num_locks must be between 0 and {len(self.names)}, not {num_locks}")
        owner = (self.client.id, _task_worker())
        granted = _in_slices(
            lambda seconds: self._invoke(
                "multilock_acquire", self.id, owner, tuple(self.names), count, seconds
            ),
            _seconds(timeout),
            False,
        )
        self._locked = bool(granted)
        return self._locked

    @_awaitable
    def release(self) -> bool:
        if not self._locked:
            raise ValueError(f"MultiLock {self.names!r} is not acquired by this handle")
        self._locked = False
        return self._invoke("multilock_release", self.id)

    def locked(self) -> bool:
        return self._locked

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc_info):
        self.release()

    async def __aenter__(self):
        await _in_executor(MultiLock.acquire.blocking, self)
        return self

    async def __aexit__(self, *exc_info):
        await _in_executor(MultiLock.release.blocking, self)

    def __reduce__(self):
        return (type(self), (self.names,))


class Event(_Named):
    """A named flag: ``wait()`` blocks until some client calls ``set()``."""

    _kind = "event"

    @_awaitable
    def wait(self, timeout=None) -> bool:
        """True once the event is set; False if ``timeout`` seconds passed first."""
        return _in_slices(
            lambda seconds: self._invoke("event_wait", self.name, seconds),
            _seconds(timeout),
            False,
        )

    @_awaitable
    def set(self) -> None:
        self._invoke("event_set", self.name)

    @_awaitable
    def clear(self) -> None:
        self._invoke("event_clear", self.name)

    @_awaitable
    def is_set(self) -> bool:
        return self._invoke("event_is_set", self.name)

    def __reduce__(self):
        return (type(self), (self.name,))


class Queue(_Named):
    """A named FIFO queue shared by every client; items may be futures (or hold futures)."""

    _kind = "queue"

    def __init__(self, name=None, client=None, maxsize: int = 0):
        super().__init__(name, client)
        self.maxsize = maxsize

    @_awaitable
    def put(self, value, timeout=None, **kwargs) -> None:
        """Add ``value``; if the queue is full, wait up to ``timeout`` seconds for room."""
        from .packing import pack

        item = pack(value, self.client)
        seconds = _seconds(timeout)
        done = _in_slices(
            lambda s: self._invoke("queue_put", self.name, self.maxsize, item, s), seconds, False
        )
        if not done:
            raise TimeoutError(
                f"Queue {self.name!r} stayed full (maxsize={self.maxsize}) for {seconds} s; "
                "nothing was put"
            )

    @_awaitable
    def get(self, timeout=None, batch=False, **kwargs):
        """The next item; ``batch=True`` every item there is now, ``batch=n`` a list of ``n`` items.
        Raises TimeoutError if nothing came within ``timeout`` seconds."""
        from .packing import handoff_owner, received, unpack

        owner = handoff_owner()
        if batch is True:
            count: Any = True
        elif batch is False or batch is None:
            count = None
        elif isinstance(batch, int) and batch >= 0:
            count = batch
        else:
            raise ValueError(f"batch must be True, False or a non-negative int, not {batch!r}")
        client = self.client
        seconds = _seconds(timeout)
        answer = _in_slices(
            lambda s: self._invoke("queue_get", self.name, self.maxsize, owner, count, s),
            seconds,
            None,
        )
        if answer is None:
            wanted = "an item" if count is None else f"{count} items"
            raise TimeoutError(f"Queue {self.name!r}: {wanted} did not arrive within {seconds} s")
        items = [answer] if count is None else answer
        values = [unpack(item, client) for item in items]
        received(items, owner, client)
        return values[0] if count is None else values

    @_awaitable
    def qsize(self, **kwargs) -> int:
        return self._invoke("queue_size", self.name)

    def close(self) -> None:
        """Drop the queue's items (and the futures they keep alive)."""
        if self._client is not None and not self._client._closed:
            self._invoke("queue_release", self.name)

    def __reduce__(self):
        return (type(self), (self.name, None, self.maxsize))


class Variable(_Named):
    """A named value shared by every client; setting a future keeps its result alive."""

    _kind = "variable"

    @_awaitable
    def set(self, value, timeout="30 s", **kwargs) -> None:
        from .packing import pack

        self._invoke("variable_set", self.name, pack(value, self.client))

    @_awaitable
    def get(self, timeout=None, **kwargs):
        """The value; waits until one is set. Raises TimeoutError after ``timeout`` seconds."""
        from .packing import handoff_owner, received, unpack

        client = self.client
        owner = handoff_owner()
        seconds = _seconds(timeout)
        answer = _in_slices(
            lambda s: self._invoke("variable_get", self.name, owner, s), seconds, None
        )
        if answer is None:
            raise TimeoutError(f"Variable {self.name!r} was not set within {seconds} s")
        value = unpack(answer, client)
        received([answer], owner, client)
        return value

    @_awaitable
    def delete(self) -> None:
        """Remove the value (for every client) and let go of the futures it kept."""
        self._invoke("variable_delete", self.name)

    def __reduce__(self):
        return (type(self), (self.name,))
