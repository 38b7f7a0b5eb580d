"""dask.distributed's bridging names, forwarded by ``Client`` to its ``ClientBridge``: ``get_executor`` (a
standard executor over the client, ``executor.py``), ``sync`` (running a coroutine function from
blocking code), ``as_current``/``Client.current()`` (the client of a block) and ``write_scheduler_file``
(how another process finds this client's cluster: ``Client(scheduler_file=...)``).

minidist has no event loop of its own (futures resolve on the scheduler thread), so ``sync`` runs the
coroutine on a fresh loop: in the calling thread, or, when that thread already runs a loop, in a
short-lived thread of its own (a blocking call must not nest loops). Inside the coroutine, futures can
be awaited: waking them needs only ``call_soon_threadsafe`` on whatever loop awaits.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading

from .asynchronous import in_event_loop
from .default_clients import _clients, default_client

# the client of the innermost as_current() block in this thread or task (asyncio tasks each see their own)
_block_client: contextvars.ContextVar = contextvars.ContextVar("minidist_as_current", default=None)


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
        import inspect  # here: its import (ast, dis, tokenize) is not on the way to `import minidist`

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

    def write_scheduler_file(self, scheduler_file) -> None:
        """Write where this client's cluster listens, as JSON, so another process can connect with
        ``Client(scheduler_file=...)``. ValueError if the client has a scheduler file already, or if
        its cluster listens to no other process (thread workers stay in-process unless given
        ``scheduler_port=``/``protocol="tcp"``)."""
        from .deploy.remote_cluster import RemoteCluster
        from .deploy.scheduler_file import scheduler_identity, write_scheduler_file

        client = self._client
        client._check_open()
        if client.scheduler_file:
            raise ValueError(f"Scheduler file already set: {client.scheduler_file}")
        cluster = client.cluster
        address = cluster.scheduler_address or ""
        if not address.startswith(("tcp://", "tls://")):
            raise ValueError(
                f"This client's cluster listens to no other process (its address is {address!r}): "
                "start it with LocalCluster(scheduler_port=0) or protocol='tcp' to share it"
            )
        identity = scheduler_identity(cluster)
        if isinstance(cluster, RemoteCluster):
            identity.pop("pid")  # served by another process: its liveness is checked by connecting
        write_scheduler_file(os.fspath(scheduler_file), identity)
        client.scheduler_file = scheduler_file


def current_client(allow_global: bool = True):
    """The client of the innermost ``as_current()`` block; outside one, the default client if
    ``allow_global`` (dask's ``Client.current``). ValueError if there is none."""
    client = _block_client.get()
    if client is not None and not client._closed:
        return client
    if allow_global:
        return default_client()
    raise ValueError("Not running inside the `as_current` context manager")


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
    token = _block_client.set(client)
    try:
        yield client
    finally:
        _block_client.reset(token)
        for i in range(len(_clients) - 1, -1, -1):  # this block's entry: the newest one of client
            if _clients[i] is client:
                del _clients[i]
                break
