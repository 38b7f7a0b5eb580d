"""``Status``: the states a cluster manager goes through, as named by dask.distributed.

A cluster's ``status`` attribute holds one of these members (``cluster.status is Status.running``),
never a bare string, so a program that compares it with ``Status.running`` runs unchanged on
dask.distributed, where the same comparison is the documented one. Clients keep dask's plain strings
(``client.status == "running"``), as dask's ``Client`` does. The JSON the dashboard serves carries the
member's name.
"""

from __future__ import annotations

from enum import Enum


class Status(Enum):
    """A cluster's lifecycle: created → starting → running → closing → closed (or failed).

    The other members exist because dask.distributed's enum has them and programs may name them;
    minidist's cluster managers move only through the states above.
    """

    undefined = "undefined"
    created = "created"
    init = "init"
    starting = "starting"
    running = "running"
    paused = "paused"
    stopping = "stopping"
    stopped = "stopped"
    closing = "closing"
    closing_gracefully = "closing_gracefully"
    closed = "closed"
    failed = "failed"
    dont_reply = "dont_reply"
