"""The awaitable half of ``Client``: ``await future``, ``await client.gather(...)``, ``await client.scatter(...)``.

Coroutines over the client's parts, passed in explicitly: its ``FutureBook`` (states, lock) and its
``ResultReader``. How a coroutine is woken is in ``asynchronous.py``: a ``LoopWaker`` among its key's
callbacks, called by ``FutureBook.report`` on the scheduler thread, so no thread is started per wait.
"""

from __future__ import annotations

from typing import Optional

from .asynchronous import LoopWaker, _asyncio, in_event_loop
from .client_futures import FutureBook
from .client_results import ResultReader
from .errors import ClientClosedError, FutureTimeoutError
from .futures import Future, futures_in, shaped_like


def wants_awaitable(default: bool, asynchronous: Optional[bool]) -> bool:
    """Should a call return an awaitable? Only inside a running loop, and only if asked."""
    wanted = default if asynchronous is None else asynchronous
    return bool(wanted) and in_event_loop()


async def wait_async(book: FutureBook, future: Future, timeout: Optional[float] = None) -> None:
    """Wait for ``future`` to be done without blocking the event loop."""
    state = future._state
    if state.status != "pending":
        return
    loop = _asyncio().get_running_loop()
    waiter = loop.create_future()
    with book.lock:
        if state.status == "pending" and not book.closed:
            if state.callbacks is None:
                state.callbacks = []
            state.callbacks.append(LoopWaker(loop, waiter))
        else:
            waiter.set_result(None)
    try:
        await _asyncio().wait_for(waiter, timeout)
    except _asyncio().TimeoutError:
        raise FutureTimeoutError(
            f"Future {future.key!r} did not finish within {timeout} s"
        ) from None
    if state.status == "pending":
        raise ClientClosedError(f"The client closed while waiting for {future.key!r}")


async def await_future(
    book: FutureBook, results: ResultReader, future: Future, timeout=None, outcome=None
):
    """``await future`` (or ``await future.result(timeout)``): its value, or the task's exception.
    With ``outcome``, what ``outcome()`` returns once the future is done (``await future.exception()``)."""
    await wait_async(book, future, timeout)
    if outcome is not None:
        return outcome()
    if future._state.status != "finished":
        return future._result(None)  # raises the error or CancelledError without waiting
    fetching = results.fetch_async(future.key)
    if fetching is None:
        return results.value(future.key)  # a local dict lookup
    try:
        await _asyncio().wrap_future(fetching)
    except Exception:
        pass  # value() raises it, as the synchronous path does
    return results.value(future.key, fetching)


async def gather_async(book: FutureBook, results: ResultReader, futures, errors: str):
    """``await client.gather(futures)``."""
    if not isinstance(futures, (list, tuple, set, frozenset, dict, Future)):
        futures = list(futures)
    for future in futures_in(futures):
        await wait_async(book, future)
    prefetched = results.prefetch(futures)
    if prefetched:
        await _asyncio().wait([_asyncio().wrap_future(f) for f in prefetched.values()])
    return results.fill(futures, errors, prefetched)


async def scatter_wait_async(book: FutureBook, futures: list, timeout, data):
    """``await client.scatter(data)``: the futures once the scheduler holds every value."""
    for future in futures:
        await wait_async(book, future, timeout)
    return shaped_like(data, futures)
