"""The cluster's HTTP services: the dashboard (and, when asked, one small page per worker).

``ClusterServices(cluster)`` starts what ``dashboard_address``/``service_kwargs`` ask for and nothing
else; ``close()`` stops it. The pages read the cluster only through ``dashboard/snapshot.py``.
"""

from __future__ import annotations

from typing import Optional

from ..dashboard.server import DashboardServer, parse_dashboard_address
from ..dashboard.snapshot import cluster_snapshot


class ClusterServices:
    def __init__(self, cluster):
        options = cluster.options
        self.dashboard: Optional[DashboardServer] = None
        if parse_dashboard_address(options.dashboard_address) is not None:
            prefix = (options.service_kwargs.get("dashboard") or {}).get("prefix", "")
            self.dashboard = DashboardServer(
                options.dashboard_address, snapshot=lambda: cluster_snapshot(cluster),
                logs=cluster.get_logs, prefix=prefix, name=type(cluster).__name__,
            )  # fmt: skip
            self.dashboard.start()

    @property
    def dashboard_link(self) -> Optional[str]:
        return self.dashboard.link if self.dashboard is not None else None

    def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()
