"""RemoteCluster: a cluster in another process, managed through one connection.

What ``Client("tcp://host:port")``, ``Client(scheduler_file=...)`` and ``SubprocessCluster`` hold::

    RemoteCluster ──► RemoteConnection (remote/client.py): link + scheduler/operations proxies
                  ──► identity(), scale(), get_logs(): named operations over the link
    repr / _repr_html_ (deploy/cluster.py) ◄── _worker_facts() from identity()

Closing it closes the connection only; the cluster goes on (``SubprocessCluster`` also stops the
process it started).
"""

from __future__ import annotations

from typing import Optional

from ..asynchronous import awaitable_in_loop
from ..errors import CommClosedError
from ..remote.client import RemoteConnection, open_connection
from ..status import Status
from .cluster import Cluster, WorkerFacts


class RemoteCluster(Cluster):
    """A cluster in another process (or the one that owns this worker), seen through one link."""

    def __init__(self, connection: RemoteConnection):
        info = connection.info
        self.connection = connection
        self.info = info
        self.scheduler = connection.scheduler
        self.operations = connection.operations
        self.segment_store = connection.segment_store
        self.scheduler_address: Optional[str] = info.get("scheduler_address")
        self.name = info.get("name")
        self.cluster_id = info.get("cluster_id")
        self.processes = (
            True  # remote clients always pickle: the server converts for thread workers
        )
        self.status = Status.running

    @property
    def dashboard_link(self) -> Optional[str]:
        return self.info.get("dashboard_link")

    def identity(self, n_workers: int = -1) -> dict:
        return self.operations.invoke("scheduler_info", n_workers)

    @awaitable_in_loop
    def scale(self, n: Optional[int] = None, memory=None, cores=None) -> None:
        if n is None:
            raise ValueError(f"{type(self).__name__}.scale needs a number of workers")
        self.operations.invoke("scale", n)

    @awaitable_in_loop
    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> dict:
        return self.operations.invoke(
            "get_logs", cluster=cluster, scheduler=scheduler, workers=workers
        )

    def _worker_facts(self) -> Optional[WorkerFacts]:
        try:
            workers = list(self.identity()["workers"].values())
        except (ValueError, CommClosedError):  # "identity" blocked, or the connection is gone
            return None
        return [(w["nthreads"], w.get("memory_limit") or None) for w in workers]

    def _terminate(self) -> None:
        """Ask the serving process to close its cluster; its answer is the connection closing."""
        try:
            self.operations.invoke("terminate")
        except CommClosedError:
            pass  # closed under the question: what was asked
        self.close()

    def close(self, timeout: float = 2.0):
        """Close the connection only; the cluster itself goes on."""
        self.status = Status.closed
        self.connection.close(timeout)


def connect_cluster(
    address: str, security=None, timeout=None, secret: Optional[bytes] = None, **kwargs
) -> RemoteCluster:
    """``Client(address)``: the cluster whose scheduler listens at ``address`` (see
    ``remote.client.open_connection`` for the arguments and errors)."""
    return RemoteCluster(
        open_connection(address, security=security, timeout=timeout, secret=secret, **kwargs)
    )
