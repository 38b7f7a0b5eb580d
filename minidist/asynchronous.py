"""asyncio support: ``await future``, ``await client.gather(...)``, ``async with`` clients and clusters.

Futures are resolved on the scheduler thread (local clusters) or a connection's reader thread (remote
ones), never on the event loop. An awaiting coroutine parks on an ``asyncio.Future`` and leaves a
``LoopWaker`` among its key's callbacks; ``Client._report`` calls wakers directly (not through the
callback thread), and a waker only does ``loop.call_soon_threadsafe``::

    await future ──► LoopWaker(loop, waiter) in FutureState.callbacks ──► await waiter
    scheduler thread: Client._report ──► waker() ──call_soon_threadsafe──► waiter done ──► coroutine
    remote values: fetch_async ──► concurrent Future ──asyncio.wrap_future──► awaited, not blocked on

No thread is started per wait. Closing (which joins threads and processes) runs in the loop's default
executor. ``Closing`` is what ``close()`` returns inside a running loop: awaiting it closes in a thread,
and if it is dropped without being awaited it closes synchronously, so nothing is left open by mistake.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


def _asyncio():
    """asyncio, imported on first use: it costs ~40 ms, and most programs never touch it."""
    import asyncio

    return asyncio


def in_event_loop() -> bool:
    """True when called from a thread that is running an asyncio event loop."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False  # nothing can be running a loop if asyncio was never imported
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def awaitable_in_loop(method):
    """Decorate a blocking method of an object with an ``asynchronous`` flag (a client, a cluster):
    called inside a running event loop with the flag set, the call runs in the loop's default
    executor and an awaitable of its result is returned, as dask.distributed's ``sync`` methods do
    (``await client.run(f)``, ``await cluster.scale(4)``); anywhere else it is a plain call."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if getattr(self, "asynchronous", False) and in_event_loop():
            return run_off_loop(functools.partial(method, self, *args, **kwargs))
        return method(self, *args, **kwargs)

    return call


def run_off_loop(blocking):
    """Run ``blocking()`` in the running loop's default executor: an awaitable of its result. The
    call starts at once, awaited or not (a blocking call must not wait for the loop's next turn)."""
    return _asyncio().get_running_loop().run_in_executor(None, blocking)


class LoopWaker:
    """A future-state callback that wakes one coroutine's event loop; safe from any thread."""

    __slots__ = ("loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future):
        self.loop = loop
        self.waiter = waiter

    def __call__(self, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(_resolve, self.waiter)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Closing:
    """What ``close()`` returns inside an event loop (see the module docstring)."""

    def __init__(self, close):
        self._close = close
        self._awaited = False

    def __await__(self):
        self._awaited = True
        return _asyncio().get_running_loop().run_in_executor(None, self._close).__await__()

    def __del__(self):
        if not self._awaited:
            # dropped unawaited, maybe on the loop's own thread, where close() would only hand back
            # another Closing: close from a thread of its own and wait for it
            thread = threading.Thread(target=self._close, name="minidist-closing", daemon=True)
            thread.start()
            thread.join()


class AsyncContext:
    """``async with obj`` and ``await obj`` for clusters and clients (their constructors did the work)."""

    def __await__(self):
        return self._started().__await__()

    async def _started(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await _asyncio().get_running_loop().run_in_executor(None, self.close)

    def close(self, timeout=None):
        raise NotImplementedError
