"""The awaitable half of ``Client``: ``await client.gather(...)``, ``await client.scatter(...)``, ``await future``.

Mixed into ``Client`` (see ``asynchronous.py`` for how a coroutine is woken: a ``LoopWaker`` among its
key's callbacks, called by ``Client._report`` on the scheduler thread).
"""

from __future__ import annotations

from typing import Optional

from .asynchronous import AsyncContext, LoopWaker, _asyncio, in_event_loop
from .errors import ClientClosedError, FutureTimeoutError
from .futures import Future, futures_in, shaped_like


class AsyncClientMixin(AsyncContext):
    """The awaitable half of ``Client``; expects the Client's lock, states and scheduler."""

    def _async_call(self, asynchronous: Optional[bool]) -> bool:
        """Should this call return an awaitable? Only inside a running loop, and only if asked."""
        wanted = self.asynchronous if asynchronous is None else asynchronous
        return bool(wanted) and in_event_loop()

    # --------------------------------------------------------------------------------- waiting

    async def _wait_async(self, future, timeout: Optional[float] = None) -> None:
        """Wait for ``future`` to be done without blocking the event loop."""
        state = future._state
        if state.status != "pending":
            return
        loop = _asyncio().get_running_loop()
        waiter = loop.create_future()
        with self._lock:
            if state.status == "pending" and not self._closed:
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

    def _wake_async_waiters(self) -> None:
        """The client is closing: wake every coroutine still waiting on one of its futures."""
        with self._lock:
            states = list(self._states.values())
        for state in states:
            for callback in state.callbacks or ():
                if type(callback) is LoopWaker:
                    callback()

    async def _await_future(self, future):
        """``await future``: its value, or the task's exception."""
        await self._wait_async(future)
        if future._state.status != "finished":
            return future.result()  # raises the error or CancelledError without waiting
        fetch_async = getattr(self.scheduler, "fetch_async", None)
        if fetch_async is None:
            return self._get_value(future.key)  # a local dict lookup
        fetching = fetch_async(future.key)
        try:
            await _asyncio().wrap_future(fetching)
        except Exception:
            pass  # _get_value raises it, as the synchronous path does
        return self._get_value(future.key, fetching)

    async def _gather_async(self, futures, errors: str):
        if not isinstance(futures, (list, tuple, set, frozenset, dict, Future)):
            futures = list(futures)
        for future in futures_in(futures):
            await self._wait_async(future)
        prefetched = self._prefetch(futures)
        if prefetched:
            await _asyncio().wait([_asyncio().wrap_future(f) for f in prefetched.values()])
        return self._fill_results(futures, errors, prefetched)

    async def _scatter_wait_async(self, futures: list, timeout, data):
        for future in futures:
            await self._wait_async(future, timeout)
        return shaped_like(data, futures)
