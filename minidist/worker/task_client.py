"""Where a task's client comes from: the worker's shell supplies the cluster, the client layer the Client.

``get_client()`` inside a task must return a client of the task's own cluster, but the layers that run
tasks (worker runtime, worker process, cluster manager) may not import ``Client``. So each worker carries
a ``TaskClientSlot``, built by its shell with a ``connect`` callable that returns something ``Client``
accepts as a cluster (the ``LocalCluster`` itself for thread workers; a view over the worker's pipe for
process workers). The client layer makes the client from it::

    shell:         TaskClientSlot(connect)            (deploy/local.py, worker/process.py)
    client layer:  register_client_maker(make)        (client.py, on import)
    in a task:     get_client() ─► runtime.task_clients.get() ─► make(connect()) once, then cached

The client is made on first use and shared by the worker's tasks; if someone closes it, the next call
makes a new one.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

_client_maker: Optional[Callable[[Any], Any]] = None  # set by the client layer (minidist/client.py)


def register_client_maker(make_client: Callable[[Any], Any]) -> None:
    """The client layer says how to make a task's client from a cluster (called once, on import)."""
    global _client_maker
    _client_maker = make_client


class TaskClientSlot:
    """The one client a worker's tasks share, made on first use (see the module docstring)."""

    def __init__(self, connect: Callable[[], Any]):
        self._connect = connect
        self._lock = threading.Lock()
        self._client: Any = None

    def get(self) -> Any:
        """The tasks' client, made now if there is none (or the last one was closed)."""
        with self._lock:
            client = self._client
            if client is None or client.status == "closed":
                if _client_maker is None:
                    raise RuntimeError(
                        "No client can be made here: minidist's client API is not loaded in this "
                        "process. Call minidist.get_client() from the task instead."
                    )
                client = self._client = _client_maker(self._connect())
            return client

    def close(self) -> None:
        """Close the client if one was made (its cluster is going away)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
