"""Which client and worker are "current": the default-client stack and the task-side helpers.

Outside tasks, the newest ``Client`` created with ``set_as_default=True`` is the default; closing it
brings back the previous one. Inside a task, ``get_client()`` returns a client connected to the same
cluster (the worker's own), ``get_worker()`` the worker running the task, and ``secede()``/``rejoin()``
let a task that waits on other tasks give its thread slot away meanwhile.
"""

from __future__ import annotations

import contextlib
from typing import Optional

from .worker.runtime import current_key, current_runtime

_clients: list = []  # default-client stack, newest last


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
    runtime = current_runtime()
    if runtime is None or current_key() is None:
        return None
    factory = getattr(runtime, "client_factory", None)
    if factory is None:
        return None
    return factory()


def get_client(address=None, timeout=None, resolve_address: bool = True):
    """The client of the current task's worker, or else the default client."""
    client = current_client_for_task()
    if client is not None:
        return client
    try:
        return default_client()
    except ValueError:
        if address is not None:
            from .client import Client

            return Client(address, timeout=timeout)
        raise


class WorkerInfo:
    """What ``get_worker()`` returns: the running worker's identity and local data."""

    def __init__(self, runtime):
        self._runtime = runtime

    @property
    def address(self) -> str:
        return self._runtime.address

    @property
    def name(self):
        return self._runtime.name

    @property
    def nthreads(self) -> int:
        return self._runtime.nthreads

    @property
    def data(self) -> dict:
        return self._runtime.data

    @property
    def executing_count(self) -> int:
        return len(self._runtime.executing)

    @property
    def client(self):
        return get_client()

    def __repr__(self) -> str:
        return f"<Worker {self.address!r}, name: {self.name}, threads: {self.nthreads}>"


def get_worker() -> WorkerInfo:
    """The worker running the current task; ValueError outside a task."""
    runtime = current_runtime()
    if runtime is None:
        raise ValueError("No worker found: get_worker() only works inside a task")
    worker = getattr(runtime, "worker_object", None)
    return worker if worker is not None else WorkerInfo(runtime)


def secede() -> None:
    """Leave the worker's thread pool (for a task that will wait on other tasks)."""
    runtime = current_runtime()
    if runtime is None or current_key() is None:
        raise ValueError("secede() only works inside a task")
    runtime.secede_current()


def rejoin() -> None:
    """Come back into the worker's thread pool after ``secede()``."""
    runtime = current_runtime()
    if runtime is None or current_key() is None:
        raise ValueError("rejoin() only works inside a task")
    runtime.rejoin_current()


@contextlib.contextmanager
def worker_client(timeout: Optional[float] = None, separate_thread: bool = True):
    """A client for use inside a task; the task secedes for the duration so waiting is safe."""
    client = get_client(timeout=timeout)
    if separate_thread:
        secede()
    try:
        yield client
    finally:
        if separate_thread:
            rejoin()
