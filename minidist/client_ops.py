"""Client calls that inspect or steer the cluster rather than submit work.

``run``, ``run_on_scheduler``, ``scheduler_info``, ``who_has``, ``restart``, logs... Each is a named
operation of ``scheduler/operations.py`` (the cluster's ``operations``), which a local cluster serves in
this process and a remote one over its connection; ``blocked_handlers`` are honoured there. One
``ClusterCalls`` per ``Client`` (built by its constructor); ``Client`` forwards the public methods of the
same names to it (``client.run`` is ``ClusterCalls.run``, with its signature and docstring).
"""

from __future__ import annotations

import functools
import pickle
from typing import TYPE_CHECKING, Any, Callable, Optional

from .asynchronous import awaitable_in_loop
from .deploy.cluster import wait_for_ready_workers
from .futures import futures_of

if TYPE_CHECKING:
    from .data_plane import DataPlane


class ClusterCalls:
    """The named operations of one cluster, with their arguments packed and results unpacked."""

    def __init__(self, operations: Any, plane: DataPlane):
        self.operations = operations  # SchedulerOperations, or a remote link's RemoteOperations
        self.plane = plane  # how functions and values travel (data_plane.py)

    def invoke(self, name: str, *args, **kwargs) -> Any:
        return self.operations.invoke(name, *args, **kwargs)

    def run(
        self,
        function,
        *args,
        workers=None,
        wait: bool = True,
        nanny: bool = False,
        on_error: str = "raise",
        **kwargs,
    ) -> Any:
        """Run ``function(*args, **kwargs)`` once on every worker (or on ``workers``), outside the task
        system; returns ``{worker address: result}`` (None with ``wait=False``)."""
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error must be 'raise', 'return' or 'ignore', not {on_error!r}")
        blob, args_payload = self.plane.pack_call(function, args, kwargs)
        raw = self.invoke("run", blob, args_payload, workers)
        if not wait:
            return None
        results = {}
        for address, (ok, value) in raw.items():
            if ok:
                results[address] = self.plane.unpack_result(value)
                continue
            exc = value[0]
            if isinstance(exc, (bytes, bytearray)):
                exc = pickle.loads(exc)
            if on_error == "raise":
                raise exc
            if on_error == "return":
                results[address] = exc
        return results

    def run_on_scheduler(self, function, *args, **kwargs) -> Any:
        """Run ``function`` on the scheduler (it may take a ``dask_scheduler`` argument)."""
        blob, args_payload = self.plane.pack_call(function, args, kwargs)
        result = self.invoke("run_on_scheduler", blob, args_payload)
        return self.plane.unpack_result(result)

    def nthreads(self, workers=None) -> dict:
        return self.invoke("nthreads", workers)

    def scheduler_info(self, n_workers: int = -1, **kwargs) -> dict:
        """dask's shape: ``{"type", "id", "address", "services", "started", "n_workers",
        "total_threads", "total_memory", "workers": {...}}``; ``n_workers`` >= 0 lists only that many
        workers (-1: all)."""
        return self.invoke("scheduler_info", n_workers)

    def who_has(self, futures=None) -> dict:
        """``{key: [worker addresses holding a copy]}`` (values also stay in the client process)."""
        keys = None if futures is None else [f.key for f in futures_of(futures)]
        return self.invoke("who_has", keys)

    def has_what(self, workers=None) -> dict:
        return self.invoke("has_what", workers)

    def processing(self, workers=None) -> dict:
        return self.invoke("processing", workers)

    def wait_for_workers(self, n_workers: int = 0, timeout=None) -> None:
        """Block until at least ``n_workers`` workers can run tasks (a started process worker counts
        once it has said hello, not when its process exists); ``timeout`` in seconds or "10s"."""
        wait_for_ready_workers(self.operations, n_workers, timeout)

    def get_scheduler_logs(self, n: Optional[int] = None) -> list:
        return self.invoke("scheduler_logs", n)

    def get_worker_logs(self, n: Optional[int] = None, workers=None, nanny: bool = False) -> dict:
        return self.invoke("worker_logs", n, workers)

    def restart(self, timeout=None, wait_for_workers: bool = True) -> None:
        """Replace every worker and forget all tasks; this client's futures become cancelled.

        With ``wait_for_workers`` (the default) it returns once the new workers can run tasks, else once
        the old ones are gone. ``TimeoutError`` if that takes longer than ``timeout`` (seconds or a
        string such as ``"20s"``; default 30 s). Returns None, as dask's does.
        """
        self.invoke("restart", timeout, wait_for_workers)

    def get_task_stream(
        self, start=None, stop=None, count=None, plot=False, filename="task-stream.html", **kwargs
    ) -> list:
        """One dask-shaped record per task that ran between ``start`` and ``stop`` (timestamps or
        durations ago, "10 s"), the newest ``count`` only; ``plot="save"`` also writes an HTML file."""
        from .diagnostics import client_task_stream

        return client_task_stream(self.invoke, start, stop, count, plot, filename)


def forward(part: str, method: Callable) -> Callable:
    """A Client method that calls ``method`` on the part held in attribute ``part``, with the same
    name, signature and docstring (composition without writing each signature twice)."""

    @functools.wraps(method)
    def forwarded(self, *args, **kwargs):
        return method(getattr(self, part), *args, **kwargs)

    return forwarded


def forward_awaitable(part: str, method: Callable) -> Callable:
    """``forward`` for the calls dask.distributed makes awaitable on an asynchronous client: inside
    its running event loop they run off the loop and return awaitables (``asynchronous.py``)."""
    return awaitable_in_loop(forward(part, method))
