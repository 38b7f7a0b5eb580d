"""The task-side helpers: ``get_client``, ``worker_client``, ``get_worker``, ``secede``, ``rejoin``.

Inside a task, ``get_client()`` returns a client connected to the same cluster (the worker's own, made
from what its runtime hands over: ``worker/task_client.py``), ``get_worker()`` the worker running the
task, and ``secede()``/``rejoin()`` let a task that waits on other tasks give its thread slot away
meanwhile. Outside tasks ``get_client()`` returns the default client (``default_clients.py``). The top of
the client API: it may import ``Client``, and nothing below imports it.
"""

from __future__ import annotations

import contextlib
from typing import Optional

from .default_clients import _clients, current_client_for_task, default_client
from .deploy.cluster import register_client_finder
from .worker.runtime import current_key, current_runtime

__all__ = [
    "WorkerInfo",
    "default_client",
    "get_client",
    "get_worker",
    "rejoin",
    "secede",
    "worker_client",
]


def get_client(address=None, timeout=None, resolve_address: bool = True):
    """The client of the current task's worker, or else the default client."""
    # imported here, not at the top: tasks that only call get_worker() or secede() should not load
    # the client; importing it also registers how task clients are made (worker/task_client.py)
    from .client import Client

    client = current_client_for_task()
    if client is not None:
        return client
    try:
        return default_client()
    except ValueError:
        if address is not None:
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
    def plugins(self) -> dict:
        """``{name: plugin}`` of the worker plugins installed here (``client.register_plugin``)."""
        installed = getattr(self._runtime, "plugins", None)
        return dict(installed.items()) if installed is not None else {}

    @property
    def local_directory(self) -> str:
        """A directory of this worker's own (uploaded files and directories land here)."""
        from .worker.plugins import plugins_of

        return plugins_of(self._runtime).local_directory

    @property
    def client(self):
        return get_client()

    def log_event(self, topic, msg) -> None:
        """Record an event on the scheduler (``client.get_events``/``subscribe_topic`` see it)."""
        get_client().log_event(topic, msg)

    def get_current_task(self):
        """The key of the task running on this thread (None outside a task)."""
        return current_key()

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


def _client_of_cluster(cluster):
    """``cluster.get_client()``: the newest open default client of ``cluster``, or a new one."""
    from .client import Client

    for client in reversed(_clients):
        if not client._closed and client.cluster is cluster:
            return client
    return Client(cluster)


register_client_finder(_client_of_cluster)
