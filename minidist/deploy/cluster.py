"""Cluster: the base every cluster manager shares (``LocalCluster``, ``RemoteCluster``, ``SubprocessCluster``).

What ``Client`` uses of any cluster, and what each kind provides::

    Client(cluster) ──► cluster.scheduler   post / fetch / sessions (local, or a remote proxy)
                   ──► cluster.operations  named operations (scheduler/operations.py)
                   ──► cluster.segment_store, cluster.scheduler_address, cluster.dashboard_link
    repr, _summary, _repr_html_, with / async with  ◄── here, from _worker_facts() and _snapshot()

A kind only says how it learns about its workers (``_worker_facts``: from the scheduler's handles in this
process, or from ``identity()`` over a connection) and, if it can show more than the summary, what
its HTML summary draws (``_snapshot``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from ..asynchronous import AsyncContext, awaitable_in_loop
from ..errors import FutureTimeoutError
from ..status import Status
from ..utils import parse_timedelta
from .memory import format_bytes

WorkerFacts = list  # [(threads, memory limit or None), ...], one per worker

# How ``Cluster.get_client`` finds or makes a client: the client layer registers it when it is imported
# (the package imports it with any cluster class), so this layer never imports the one above it.
_client_finder: Optional[Callable[[Any], Any]] = None


def register_client_finder(find_or_make: Callable[[Any], Any]) -> None:
    global _client_finder
    _client_finder = find_or_make


def wait_for_ready_workers(operations, n_workers: int, timeout=None) -> None:
    """Block until at least ``n_workers`` workers of the cluster behind ``operations`` can run tasks
    (a process worker counts once it has said hello, not when its process exists)."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 0:
        raise ValueError(f"n_workers must be a non-negative int, not {n_workers!r}")
    deadline = None if timeout is None else time.monotonic() + parse_timedelta(timeout)
    while True:
        count = operations.invoke("ready_workers")
        if count >= n_workers:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise FutureTimeoutError(
                f"Only {count} of {n_workers} workers arrived within {timeout} s"
            )
        time.sleep(0.01)  # the count lives on the scheduler thread: asked again shortly


class Cluster(AsyncContext):
    """A cluster manager: what ``Client`` talks to, with dask's repr and a notebook summary."""

    name: Any = None
    scheduler_address: Optional[str] = None
    status: Status = Status.created
    asynchronous: bool = False  # inside a running loop, blocking calls return awaitables
    operations: Any  # named operations: SchedulerOperations here, a remote proxy for RemoteCluster

    @property
    def dashboard_link(self) -> Optional[str]:
        """The dashboard's status page, if the cluster serves one."""
        return None

    def identity(self, n_workers: int = -1) -> dict:
        """The scheduler's identity and its workers, as ``Client.scheduler_info(n_workers)`` returns."""
        raise NotImplementedError

    @property
    def scheduler_info(self) -> dict:
        """dask's attribute: the scheduler's identity and its workers (``["workers"]``), read now."""
        return self.identity()

    @awaitable_in_loop
    def wait_for_workers(self, n_workers: int, timeout=None) -> None:
        """Block until ``n_workers`` workers can run tasks (dask's ``Cluster.wait_for_workers``);
        TimeoutError after ``timeout`` (seconds or "10s")."""
        wait_for_ready_workers(self.operations, n_workers, timeout)

    def get_client(self):
        """The default client if it is connected to this cluster, else a new ``Client(cluster)``
        (dask's ``Cluster.get_client``)."""
        if _client_finder is None:
            raise RuntimeError("Cluster.get_client needs minidist's Client: import minidist.Client")
        return _client_finder(self)

    def _terminate(self) -> None:
        """Stop the cluster itself, whoever made it (``Client.shutdown``)."""
        self.close()

    def _worker_facts(self) -> Optional[WorkerFacts]:
        """(threads, memory limit or None) of each worker; None when that cannot be told now."""
        raise NotImplementedError

    def _summary(self) -> dict:
        """Workers, threads and memory (as dask: a total only if every worker has a limit)."""
        facts = self._worker_facts()
        if facts is None:
            return {"workers": 0, "threads": 0, "memory": None, "memory_text": "unknown"}
        limits = [limit for _, limit in facts if limit]
        total = sum(limits) if limits and len(limits) == len(facts) else None
        return {
            "workers": len(facts),
            "threads": sum(threads for threads, _ in facts),
            "memory": total,
            "memory_text": format_bytes(total) if total else "no limit",
        }

    def _snapshot(self) -> dict:
        """What the HTML summary draws (``dashboard/snapshot.py``'s shape): the summary, no workers."""
        summary = self._summary()
        return {
            "cluster": {
                "scheduler_address": self.scheduler_address,
                "status": self.status.name,
                "n_workers": summary["workers"],
                "threads": summary["threads"],
                "memory_limit": summary["memory"],
            },
            "workers": [],
        }

    def _repr_html_(self) -> str:
        from ..dashboard.pages import repr_html

        title = (
            f"{type(self).__name__} {self.name}" if self.name is not None else type(self).__name__
        )
        return repr_html(title, self._snapshot(), self.dashboard_link)

    def __repr__(self) -> str:
        """As dask: ``LocalCluster(<name>, '<address>', workers=2, threads=4, memory=23.5 GiB)``."""
        if self.status in (Status.closing, Status.closed):
            return f"{type(self).__name__}({self.name}, {self.scheduler_address!r}, {self.status.name})"
        info = self._summary()
        memory = f", memory={info['memory_text']}" if info["memory"] else ""
        return (
            f"{type(self).__name__}({self.name}, {self.scheduler_address!r}, "
            f"workers={info['workers']}, threads={info['threads']}{memory})"
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
