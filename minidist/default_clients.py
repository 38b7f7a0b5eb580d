"""Which client is current: the stack of default clients, and the client of the running task.

Outside tasks, the newest ``Client`` created with ``set_as_default=True`` is the default; closing it
brings back the previous one. Inside a task, the current client is the one its worker's
``TaskClientSlot`` holds (``worker/task_client.py``), made by the client layer on first use. The lowest
module of the client API: futures, the client and ``context.py`` all read it, and it imports none of them.
"""

from __future__ import annotations

from .worker.runtime import current_key, current_runtime

_clients: list = []  # default-client stack, newest last (Client appends and removes itself)


def default_client(c=None):
    """The current default client (``c`` itself if given); ValueError if there is none."""
    if c is not None:
        return c
    for client in reversed(_clients):
        if not client._closed:
            return client
    raise ValueError(
        "No clients found. Start a client and point it to a scheduler: "
        "from minidist import Client; client = Client()"
    )


def current_client_for_task():
    """The client of the task running on this thread, or None outside tasks (or on a worker that
    belongs to no cluster)."""
    runtime = current_runtime()
    if runtime is None or current_key() is None or runtime.task_clients is None:
        return None
    return runtime.task_clients.get()
