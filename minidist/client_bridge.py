"""``client.get_executor``, ``client.sync`` and ``client.as_current``: a standard executor over the
client (``executor.py``), running a coroutine function from blocking code, and making a client the
default for a block (dask.distributed's names). One ``ClientBridge`` per ``Client``, which forwards
those methods to it.

minidist has no event loop of its own (futures resolve on the scheduler thread), so ``sync`` runs the
coroutine on a fresh loop: in the calling thread, or, when that thread already runs a loop, in a
short-lived thread of its own (a blocking call must not nest loops). Inside the coroutine, futures can
be awaited: waking them needs only ``call_soon_threadsafe`` on whatever loop awaits.
"""

from __future__ import annotations

import contextlib
import inspect
import threading

from .asynchronous import in_event_loop
from .default_clients import _clients


class ClientBridge:
    def __init__(self, client):
        self._client = client

    def get_executor(self, **kwargs):
        """A ``concurrent.futures.Executor`` whose calls run as tasks of this client, with these
        ``submit`` options (``workers=``, ``resources=``, ``retries=``...)."""
        from .executor import ClientExecutor

        return ClientExecutor(self._client, **kwargs)

    def sync(self, func, *args, asynchronous=None, callback_timeout=None, **kwargs):
        """Call ``func(*args, **kwargs)``; if that gives an awaitable (a coroutine function's call),
        run it to completion and return its result; futures can be awaited inside. For an
        asynchronous client inside a running loop, the awaitable itself is returned."""
        client = self._client
        client._check_open()
        result = func(*args, **kwargs)
        if not inspect.isawaitable(result):
            return result
        wanted = client.asynchronous if asynchronous is None else asynchronous
        if wanted and in_event_loop():
            return result  # the caller awaits it on its own loop
        return _run_to_completion(result, callback_timeout)

    def as_current(self):
        """A context manager: this client is the default client inside the block."""
        return _as_current(self._client)


def _run_to_completion(awaitable, timeout):
    import asyncio

    async def main():
        if timeout is None:
            return await awaitable
        return await asyncio.wait_for(awaitable, timeout)

    if not in_event_loop():
        return asyncio.run(main())
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as exc:  # noqa: B036 - handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="minidist-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextlib.contextmanager
def _as_current(client):
    """Within the block, ``client`` is what ``default_client()``/``get_client()`` give (outside tasks)."""
    _clients.append(client)
    try:
        yield client
    finally:
        for i in range(len(_clients) - 1, -1, -1):  # this block's entry: the newest one of client
            if _clients[i] is client:
                del _clients[i]
                break
