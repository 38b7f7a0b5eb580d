"""Futures and the functions that wait on them: ``Future``, ``wait``, ``as_completed``, ``fire_and_forget``.

A ``Future`` is a handle on a key; every future of one client for one key shares a ``FutureState``
(status, exception, callbacks). The scheduler thread resolves states in batches through
``Client._report``; a thread waiting for one future sleeps on a lock of its own that the report releases,
one waiting for several (``wait``, ``gather``'s predicates) on the client's condition variable, so
resolving 5,000 futures costs one wake-up per waiting thread, not one event object per future. Dropping the last ``Future`` of a key (garbage
collection or ``release()``) tells the scheduler this client no longer wants it.
"""

from __future__ import annotations

import collections
import copy
import queue
import threading
import time
from typing import Any, Iterable, Optional

from .asynchronous import LoopWaker, in_event_loop, run_off_loop
from .default_clients import default_client
from .errors import CancelledError, FutureTimeoutError
from .utils import timeout_seconds

FINISHED_STATES = ("finished", "error", "cancelled", "lost")


class FutureState:
    __slots__ = ("status", "exception", "traceback", "callbacks", "remote_traceback", "waiters")

    def __init__(self):
        self.status = "pending"
        self.exception: Any = None
        self.traceback: Any = None
        self.remote_traceback: str = ""
        self.callbacks: Optional[list] = None
        self.waiters: Optional[list] = None  # locks of threads in result() etc. (client_futures.py)

    def done(self) -> bool:
        return self.status != "pending"


class Future:
    """A remotely running computation (dask.distributed's ``Future``)."""

    __slots__ = ("key", "client", "_state", "_released", "__weakref__")
    # dask treats objects with this flag as references to their ``key`` inside graphs and delayed
    # arguments, so a graph built on futures (e.g. a persisted collection) depends on their keys
    __dask_future__ = True

    def __init__(self, key, client=None, inform: bool = True, state: Optional[FutureState] = None):
        if client is None:
            client = default_client()
        self.key = key
        self.client = client
        self._state = state if state is not None else client._acquire(key)
        self._released = False  # set last: a future whose state could not be had holds nothing

    # -------------------------------------------------------------------------------------- status

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.status != "pending"

    @property
    def type(self):
        """The type of the result once the task finished, else None (dask's ``Future.type``).

        The value is read to learn it (a mapping of shared memory for process workers, no copy)."""
        if self._state.status != "finished":
            return None
        return type(self.client._get_value(self.key))

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def _wait(self, timeout: Optional[float]) -> None:
        state = self._state
        if state.status != "pending":
            return
        if not self.client._wait_for(state, timeout):
            raise FutureTimeoutError(f"Future {self.key!r} did not finish within {timeout} s")

    def _in_loop(self) -> bool:
        """Should a call return an awaitable? For an asynchronous client inside a running event loop
        (dask's ``await future.result()``, ``await future.exception()``...)."""
        return bool(self.client.asynchronous) and in_event_loop()

    def result(self, timeout=None):
        """Wait for the value and return it; raise the task's exception if it failed. ``timeout`` in
        seconds or as a string (``"10s"``): FutureTimeoutError when it passes."""
        if timeout is not None:
            timeout = timeout_seconds(timeout)
        if self.client.asynchronous and in_event_loop():  # per task in a chain: no calls between
            return self.client._await_future(self, timeout)
        return self._result(timeout)

    def _result(self, timeout: Optional[float]):
        self._wait(timeout)
        status = self._state.status
        if status == "finished":
            return self.client._get_value(self.key)
        if status == "error":
            # Raise a copy: the stored exception is shared by every future of the key and would
            # otherwise collect each caller's frames in its traceback, keeping those frames (and the
            # futures and data they hold) alive as long as the key is.
            error = _fresh_copy(self._state.exception)
            tb = self._state.traceback
            if tb is not None and not isinstance(tb, str):
                error = error.with_traceback(
                    tb
                )  # thread workers: the task's own frames, shared read-only
            try:
                raise error
            finally:
                del self, error  # this frame must not keep the future or the error alive
        raise CancelledError(f"Future {self.key!r} was {status}")

    def exception(self, timeout=None):
        """The exception the task raised, or None if it succeeded."""
        timeout = timeout_seconds(timeout)
        if self._in_loop():
            return self.client._await_future(self, timeout, self._exception)
        self._wait(timeout)
        return self._exception()

    def _exception(self):
        if self._state.status == "cancelled":
            raise CancelledError(f"Future {self.key!r} was cancelled")
        return self._state.exception if self._state.status == "error" else None

    def traceback(self, timeout=None):
        """The task's traceback object (for ``traceback.format_tb``), or None if it did not fail.

        Process workers send their traceback as text; it is rebuilt here into a traceback whose frames
        name the worker's files, lines and functions (``tracebacks.py``).
        """
        timeout = timeout_seconds(timeout)
        if self._in_loop():
            return self.client._await_future(self, timeout, self._traceback)
        self._wait(timeout)
        return self._traceback()

    def _traceback(self):
        if self._state.status != "error":
            return None
        tb = self._state.traceback
        if isinstance(tb, str):
            from .tracebacks import rebuild_traceback

            return rebuild_traceback(tb)
        return tb

    def add_done_callback(self, fn) -> None:
        """Call ``fn(future)`` on the client's callback thread once the future is done."""
        self.client._add_callback(self, fn)

    def cancel(self, **kwargs) -> None:
        return self.client.cancel([self], **kwargs)  # an awaitable inside an asynchronous loop

    def retry(self, **kwargs) -> None:
        """Run this erred future's task again."""
        return self.client.retry([self], **kwargs)

    def release(self) -> None:
        """Drop this handle now rather than at garbage collection."""
        if not self._released:
            self._released = True
            try:
                self.client._book.release_key(self.key)
            except Exception:
                pass

    def __del__(self):
        # no lock and no call for most futures of a large list dropped at once: the key joins the
        # book's dropped keys, which the scheduler thread counts off when it takes the open batch
        # of releases (client_futures.py); only a drop with no batch open opens one
        if not getattr(self, "_released", True):
            try:
                book = self.client._book
                dropped = book.dropped
                dropped.append(self.key)
                if book.open_releases is None:
                    book.open_batch()
                elif len(dropped) == book.wake_at:
                    book.dropped_many()
            except Exception:
                pass

    # ---------------------------------------------------------------------------------------- misc

    def __await__(self):
        return self.client._await_future(self).__await__()

    def __reduce__(self):
        # the client's class says how to rebuild a future where it lands (Client.unpickle_future):
        # a task's unpickled futures belong to its worker's client
        return (self.client.unpickle_future, (self.key,))

    def __repr__(self) -> str:
        status = self._state.status
        if status == "error":
            return f"<Future: {status}, key: {self.key}, exception: {type(self._state.exception).__name__}>"
        return f"<Future: {status}, key: {self.key}>"

    def _repr_html_(self) -> str:
        return f"<b>Future: {self.key}</b> <span>status: {self._state.status}</span>"

    def __hash__(self):
        return hash(self.key)

    def __dask_tokenize__(self):
        return ("minidist.Future", self.key, self.client.id)

    def __eq__(self, other):
        return isinstance(other, Future) and other.key == self.key and other.client is self.client


def _fresh_copy(exc):
    """A copy of an exception without its traceback (same type, args and notes), or itself."""
    if not isinstance(exc, BaseException):
        return exc
    try:
        clone = copy.copy(exc)
    except Exception:
        return exc.with_traceback(None)
    if type(clone) is not type(exc):
        return exc.with_traceback(None)
    clone.__traceback__ = None
    clone.__cause__, clone.__context__ = exc.__cause__, exc.__context__
    notes = getattr(exc, "__notes__", None)  # Python 3.11+
    if isinstance(notes, list):
        # notes a caller adds stay on its copy (__notes__ is 3.11+, unknown to 3.10's stubs)
        clone.__notes__ = list(notes)  # type: ignore[attr-defined]
    return clone


def futures_in(obj) -> list:
    """Every Future inside lists, tuples, dicts and sets (as dask looks for them)."""
    found: list = []
    stack = [obj]
    while stack:
        item = stack.pop()
        typ = type(item)
        if typ is Future:
            found.append(item)
        elif typ in (list, tuple, set, frozenset):
            stack.extend(item)
        elif typ is dict:
            stack.extend(item.values())
    return found


def shaped_like(data, futures: list):
    """What scatter returns: one future, or futures in ``data``'s container type (dict by key)."""
    if isinstance(data, dict):
        return dict(zip(data.keys(), futures))
    if isinstance(data, (list, tuple, set, frozenset)):
        return type(data)(futures) if not isinstance(data, (set, frozenset)) else futures
    return futures[0]


DoneAndNotDoneFutures = collections.namedtuple("DoneAndNotDoneFutures", ["done", "not_done"])


def wait(fs, timeout=None, return_when: str = "ALL_COMPLETED"):
    """Wait until ``fs`` are done (``ALL_COMPLETED``), or any is (``FIRST_COMPLETED``/``FIRST_EXCEPTION``)."""
    if isinstance(fs, Future):
        fs = [fs]
    elif isinstance(fs, (list, tuple, set, frozenset, dict)) or hasattr(fs, "__dask_graph__"):
        fs = futures_of(fs)  # also the futures behind dask collections (what persist returns)
    fs = list(fs)
    timeout = timeout_seconds(timeout)
    if return_when not in ("ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"):
        raise ValueError(
            f"return_when must be ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION, "
            f"not {return_when!r}"
        )
    if fs and fs[0]._in_loop():
        # an asynchronous client inside its event loop: an awaitable, as dask's wait is there
        return run_off_loop(lambda: _wait_blocking(fs, timeout, return_when))
    return _wait_blocking(fs, timeout, return_when)


def _wait_blocking(fs: list, timeout: Optional[float], return_when: str) -> DoneAndNotDoneFutures:
    deadline = None if timeout is None else time.monotonic() + timeout
    if return_when == "ALL_COMPLETED":
        for future in fs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not future.done() and not future.client._wait_for(future._state, left):
                raise FutureTimeoutError(
                    f"{sum(not f.done() for f in fs)} futures not done after {timeout} s"
                )
    else:
        clients = {id(f.client): f.client for f in fs}

        def satisfied() -> bool:
            if return_when == "FIRST_EXCEPTION":
                return any(f.status == "error" for f in fs) or all(f.done() for f in fs)
            return any(f.done() for f in fs) or not fs

        for client in clients.values():
            if not client._wait_until(satisfied, deadline):
                break
    done = {f for f in fs if f.done()}
    return DoneAndNotDoneFutures(done, {f for f in fs if not f.done()})


def futures_of(o, client=None) -> list:
    """Every Future in ``o``, each once, in order: inside lists, tuples, sets and dict values, and in
    the graphs of dask collections (a persisted collection holds a future per output key).

    With ``client`` given, as in dask, a cancelled future among them raises ``CancelledError`` (naming
    the keys): a collection persisted before a ``cancel`` or ``restart`` cannot be computed any more."""
    found: dict = {}
    stack = [o]
    while stack:
        item = stack.pop()
        typ = type(item)
        if typ is Future:
            found.setdefault((item.key, id(item.client)), item)
        elif typ in (list, tuple, set, frozenset):
            stack.extend(reversed(list(item)))
        elif typ is dict:
            stack.extend(reversed(list(item.values())))
        elif hasattr(item, "__dask_graph__") and not isinstance(item, type):
            graph = item.__dask_graph__()
            if graph:
                values = [getattr(v, "value", v) for v in graph.values()]  # dask DataNodes
                stack.extend(reversed(values))
    futures = list(found.values())
    if client is not None:
        cancelled = [f.key for f in futures if f.cancelled()]
        if cancelled:
            raise CancelledError(f"these futures were cancelled: {cancelled}")
    return futures


class as_completed:
    """Iterate over futures in the order they finish; ``add``/``update`` feed it while iterating.

    ``with_results=True`` yields ``(future, result)`` pairs (raising the task's error unless
    ``raise_errors=False``, which yields the exception instead).
    """

    def __init__(
        self,
        futures: Iterable = (),
        loop=None,
        with_results: bool = False,
        raise_errors: bool = True,
        *,
        timeout=None,
    ):
        timeout = timeout_seconds(timeout)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._deadline = None if timeout is None else time.monotonic() + timeout
        # set while a coroutine waits in __anext__ (asynchronous.LoopWaker)
        self._waker: Optional[LoopWaker] = None
        self.update(futures)

    def add(self, future: Future) -> None:
        with self._lock:
            self._pending += 1
        future.add_done_callback(self._arrived)

    def _arrived(self, future: Future) -> None:
        self._queue.put(future)
        waker = self._waker
        if waker is not None:
            waker()

    def update(self, futures: Iterable) -> None:
        for future in futures:
            self.add(future)

    def count(self) -> int:
        with self._lock:
            return self._pending

    def is_empty(self) -> bool:
        return self.count() == 0

    def has_ready(self) -> bool:
        return not self._queue.empty()

    def __iter__(self):
        return self

    def _next_future(self) -> Future:
        with self._lock:
            if self._pending == 0:
                raise StopIteration
        timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            future = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise FutureTimeoutError("as_completed timed out") from None
        with self._lock:
            self._pending -= 1
        return future

    def __next__(self):
        future = self._next_future()
        if not self.with_results:
            return future
        try:
            return future, future.result()
        except BaseException as exc:
            if self.raise_errors:
                raise
            return future, exc

    def next_batch(self, block: bool = True) -> list:
        batch = [self._next_future()] if block else []
        while not self._queue.empty():
            batch.append(self._next_future())
        return batch

    def batches(self):
        while not self.is_empty():
            yield self.next_batch()

    def clear(self) -> None:
        while not self._queue.empty():
            self._queue.get()
        with self._lock:
            self._pending = 0

    def __aiter__(self):
        return self

    async def _arrival(self) -> None:
        """Wait, without a thread, until a future arrives in the queue (or the timeout passes)."""
        import asyncio

        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waker = LoopWaker(loop, waiter)
        try:
            if self.has_ready():  # arrived before the waker was in place
                return
            timeout = (
                None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            )
            try:
                await asyncio.wait_for(waiter, timeout)
            except asyncio.TimeoutError:
                raise FutureTimeoutError("as_completed timed out") from None
        finally:
            self._waker = None

    async def __anext__(self):
        if self.is_empty():
            raise StopAsyncIteration
        while not self.has_ready():
            await self._arrival()
        future = self._next_future()
        if not self.with_results:
            return future
        try:
            return future, await future
        except BaseException as exc:
            if self.raise_errors:
                raise
            return future, exc


def fire_and_forget(obj) -> None:
    """Run the tasks behind ``obj`` (futures, nested in containers, or persisted dask collections)
    even after their futures are gone."""
    for future in futures_of(obj):
        future.client._fire_and_forget(future.key)
