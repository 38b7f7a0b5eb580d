"""Scheduler files: how ``minidist serve`` tells other processes where its cluster is.

A scheduler file is JSON in the shape dask's ``Client(scheduler_file=...)`` reads (``address`` is the
key it uses; ``type``, ``id``, ``services``, ``started`` and ``workers`` are there as dask writes them),
plus ``pid`` (the serving process) and ``dashboard_link``::

    minidist serve --scheduler-file F ──► write_scheduler_file(F, cluster)   (atomic: temp file + rename)
                                     ◄── remove_scheduler_file(F, id) on Ctrl-C / SIGTERM
    Client(scheduler_file=F) ──► connect_scheduler_file(F) ──► read ──► live? ──► connect_cluster(address)

A file whose serving process has gone is stale: connecting says "no cluster at ...", and a new
``serve`` may take it over; a file whose cluster is alive is never overwritten (``live_cluster``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import psutil

from ..comm.addressing import parse_address

_POLL = 0.05  # seconds between looks for a scheduler file that does not exist yet


def scheduler_identity(cluster) -> dict:
    """What ``serve`` writes for ``cluster`` (a LocalCluster listening on TCP)."""
    link = cluster.dashboard_link
    services = {}
    dashboard = cluster.services.dashboard if getattr(cluster, "services", None) else None
    if dashboard is not None:
        services["dashboard"] = dashboard.port
    return {
        "type": "Scheduler",
        "id": f"Scheduler-{cluster.cluster_id}",
        "address": cluster.scheduler_address,
        "services": services,
        "started": time.time(),
        "workers": {},
        "pid": os.getpid(),
        "dashboard_link": link,
    }


def check_writable(path: str) -> None:
    """Raise OSError now (before a cluster starts) if ``path`` cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    probe = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.probe")
    with open(probe, "w"):
        pass
    os.unlink(probe)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory")


def write_scheduler_file(path: str, identity: dict) -> None:
    """Write atomically: a reader sees the old file, no file, or the whole new one."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(identity, f, indent=2)
    os.replace(temporary, path)


def read_scheduler_file(path: str) -> dict:
    with open(path) as f:
        try:
            identity = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{path} is not a scheduler file (not JSON: {exc})") from None
    if not isinstance(identity, dict) or not isinstance(identity.get("address"), str):
        raise ValueError(f"{path} is not a scheduler file (no scheduler address in it)")
    return identity


def remove_scheduler_file(path: str, identity_id: str) -> None:
    """Remove ``path`` if it still describes this cluster (another serve may have replaced it)."""
    try:
        if read_scheduler_file(path).get("id") != identity_id:
            return
        os.unlink(path)
    except (OSError, ValueError):
        pass


def why_not_live(identity: dict) -> Optional[str]:
    """None if the cluster the file names is up; else why it is not.

    Looked up, not probed: the serving process must be alive and listening on the file's port (a
    connection that then says nothing would only leave a "refused a connection" line in its logs).
    """
    try:
        _, _, port = parse_address(identity["address"])
    except ValueError as exc:
        return f"its address is not one minidist can reach ({exc})"
    pid = identity.get("pid")
    if not isinstance(pid, int):
        return None  # not written by minidist serve: let the connection attempt tell
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
        connections = getattr(process, "net_connections", None) or process.connections  # psutil < 6
        listening = {c.laddr.port for c in connections(kind="tcp") if c.status == "LISTEN"}
    except psutil.NoSuchProcess:
        return f"the process that served it (pid {pid}) has exited"
    except psutil.Error as exc:
        return f"its process (pid {pid}) cannot be inspected ({exc})"
    if port not in listening:
        return f"its process (pid {pid}) no longer listens on port {port}"
    return None


def live_cluster(path: str) -> Optional[dict]:
    """The identity in ``path`` if a live cluster wrote it; None for no file or a stale one."""
    try:
        identity = read_scheduler_file(path)
    except (OSError, ValueError):
        return None  # no file, an unreadable one (serve then says why) or junk (serve replaces it)
    return identity if why_not_live(identity) is None else None


def connect_scheduler_file(path, security=None, timeout=None, **kwargs):
    """``Client(scheduler_file=path)``: the RemoteCluster of the cluster the file names.

    Waits up to ``timeout`` seconds (default 10) for the file to appear, as dask does, so a script may
    start ``minidist serve`` and a client at the same time.
    """
    from .remote_cluster import connect_cluster

    path = os.fspath(path)
    wait = 10.0 if timeout is None else float(timeout)
    deadline = time.monotonic() + wait
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise FileNotFoundError(
                f"No scheduler file at {path} after {wait:g} s. Start a cluster that writes it: "
                f"minidist serve --scheduler-file {path}"
            )
        time.sleep(_POLL)
    identity = read_scheduler_file(path)
    address = identity["address"]
    reason = why_not_live(identity)
    if reason is None:
        try:
            return connect_cluster(address, security=security, timeout=timeout, **kwargs)
        except ConnectionRefusedError as exc:
            reason = f"nothing listens there ({exc})"
    raise ConnectionRefusedError(
        f"No cluster at {address}: the scheduler file {path} is stale, {reason}. "
        f"Start a new one with: minidist serve --scheduler-file {path}"
    )
