"""The cluster's HTTP services: the dashboard, and, when asked, one small dashboard per worker.

::

    LocalCluster ──► ClusterServices ──► DashboardServer (dashboard_address, prefix)   /status, /info ...
                          │                     │ snapshot()
                          │                     ▼
                          ├──────────► ClusterSnapshots (dashboard/snapshot.py) ──► scheduler.call(...)
                          │                     │ worker rows of every status snapshot
                          │                     ▼
                          └── _sync_workers: one DashboardServer per worker (worker_dashboard_address,
                              ":0" = a free port each), started for new workers, closed for gone ones

``ClusterServices(cluster)`` starts what ``dashboard_address`` / ``worker_dashboard_address`` /
``service_kwargs={"dashboard": {"prefix": ..., "allowed_hosts": [...]}}`` and ``dashboard_token`` ask for
and nothing else (every worker server shares the cluster's token and allowed hosts); ``close()`` stops every server.
Workers come and go (scale, restart, crash): the set of worker servers follows the scheduler's workers at
start, at every status snapshot (the status page polls twice a second) and at every ``refresh()``; a
worker server whose worker has gone closes itself on its next request. Each worker row of a snapshot
carries its server's URL in ``"dashboard"``, which the status page links.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from ..dashboard.server import DashboardServer, parse_dashboard_address
from ..dashboard.snapshot import ClusterSnapshots
from .dask_config import dashboard_link

logger = logging.getLogger("minidist.cluster")


def _worker_names(scheduler) -> list:
    """Scheduler thread: the current workers as the minimal rows ``_sync_workers`` needs."""
    return [{"address": a, "name": str(h.name)} for a, h in scheduler.workers.items()]


class ClusterServices:
    def __init__(self, cluster):
        options = cluster.options
        self.cluster = cluster
        dashboard_kwargs = options.service_kwargs.get("dashboard") or {}
        self.prefix = dashboard_kwargs.get("prefix", "")
        self.access = {
            "token": options.dashboard_token,
            "allowed_hosts": tuple(dashboard_kwargs.get("allowed_hosts", ())),
        }
        self.worker_address = options.worker_dashboard_address
        per_worker = parse_dashboard_address(self.worker_address) is not None
        self.snapshots = ClusterSnapshots(cluster, on_workers=self._on_workers)
        self.dashboard: Optional[DashboardServer] = None
        self.worker_servers: dict[str, DashboardServer] = {}  # worker address -> its own server
        self._per_worker = per_worker
        self._failed: set = set()  # workers whose server could not start (said once in the logs)
        self._lock = threading.Lock()
        self._closed = False
        try:
            if parse_dashboard_address(options.dashboard_address) is not None:
                self.dashboard = DashboardServer(
                    options.dashboard_address,
                    snapshot=self.snapshots.status,
                    logs=cluster.get_logs,
                    prefix=self.prefix,
                    worker_snapshot=self.snapshots.worker,
                    name=type(cluster).__name__,
                    **self.access,
                )
                self.dashboard.start()
            if per_worker:
                self.refresh()
        except BaseException:  # e.g. a host that is not this machine's: leave no server behind
            self.close()
            raise

    @property
    def dashboard_link(self) -> Optional[str]:
        """The status page's URL, through ``distributed.dashboard.link`` if dask's config sets one."""
        return dashboard_link(self.dashboard.link) if self.dashboard is not None else None

    # ---- per-worker dashboards --------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the worker servers in line with the scheduler's workers now (not from its thread)."""
        if self._per_worker and not self._closed:
            self._sync_workers(self.cluster.scheduler.call(_worker_names).result(10))

    def _on_workers(self, rows: list, complete: bool) -> None:
        """Every snapshot's worker rows: sync (when the list is complete) and fill in the links."""
        if not self._per_worker:
            return
        if complete:
            self._sync_workers(rows)
        else:
            with self._lock:
                for row in rows:
                    server = self.worker_servers.get(row["address"])
                    row["dashboard"] = server.link if server is not None else None

    def _sync_workers(self, rows: list) -> None:
        gone = []
        with self._lock:
            if self._closed:
                return
            current = {row["address"] for row in rows}
            for address in [a for a in self.worker_servers if a not in current]:
                gone.append(self.worker_servers.pop(address))
            self._failed &= current
            for row in rows:
                address = row["address"]
                server = self.worker_servers.get(address)
                if server is None and address not in self._failed:
                    server = self._start_worker_server(address, row["name"])
                row["dashboard"] = server.link if server is not None else None
        for server in gone:
            server.close()

    def _start_worker_server(self, address: str, name: str) -> Optional[DashboardServer]:
        """Under the lock: start one worker's server on its own port (a taken port falls back quietly)."""
        server = DashboardServer(
            self.worker_address,
            snapshot=lambda: self._worker_status(address),
            logs=lambda: self._worker_logs(address),
            prefix=self.prefix,
            worker_snapshot=lambda ident: self._worker_data(address, ident),
            name=f"Worker {name}",
            worker=address,
            home=self.dashboard_link,
            warn_on_fallback=False,
            **self.access,
        )
        try:
            server.start()
        except OSError as error:
            self._failed.add(address)
            logger.warning("Could not start the dashboard of worker %s: %s", address, error)
            return None
        self.worker_servers[address] = server
        return server

    def _worker_data(self, address: str, ident: str) -> Optional[dict]:
        data = self.snapshots.worker(address) if ident == address else None
        if data is None and ident == address:  # the worker has left: this server goes too
            threading.Thread(
                target=self._retire, args=(address,), name="minidist-dashboard-retire", daemon=True
            ).start()
        return data

    def _retire(self, address: str) -> None:
        with self._lock:
            server = self.worker_servers.pop(address, None)
        if server is not None:
            server.close()

    def _worker_status(self, address: str) -> dict:
        """A worker server's /info: the cluster picture narrowed to its one worker."""
        data = self._worker_data(address, address)
        if data is None:
            raise LookupError(f"worker {address} has left the cluster")
        worker = data["worker"]
        return {
            "time": data["time"],
            "cluster": {
                "name": f"Worker {worker['name']}",
                "status": worker["status"],
                "scheduler_address": self.cluster.scheduler_address,
                "n_workers": 1,
                "threads": worker["nthreads"],
                "memory_limit": worker["memory_limit"],
            },
            "workers": [worker],
            "tasks": {"by_prefix": {}, "totals": {}},
            "task_stream": data["task_stream"],
        }

    def _worker_logs(self, address: str) -> dict:
        logs = self.cluster.get_logs(cluster=False, scheduler=False, workers=True)
        return {address: logs.get(address, "")}

    # ---- close ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every server (the cluster's and each worker's); idempotent."""
        with self._lock:
            self._closed = True
            servers = list(self.worker_servers.values())
            self.worker_servers.clear()
        if self.dashboard is not None:
            servers.append(self.dashboard)
        for server in servers:
            server.close()
