"""Cluster snapshots for the dashboard: one consistent picture of the scheduler, taken on its thread.

::

    request thread                              scheduler thread (scheduler.call)
    ClusterSnapshots.status(since) ──call──►   _status_view: copy worker rows, prefix counts and the raw
          │                       ◄─result──    task-stream tuples newer than `since` (nothing else)
          ├─ psutil: memory and CPU of each worker process (outside the scheduler thread: /proc reads)
          ├─ task stream: raw thread idents -> small row numbers per worker, key -> prefix
          └─ on_workers(rows): ClusterServices starts/stops per-worker dashboards, fills "dashboard"

``ClusterSnapshots`` returns the dicts documented in ``dashboard/server.py``: ``status(since)`` for
``/json/status.json`` and ``worker(ident)`` for a worker's page. The scheduler thread only copies small
things (its time is the product); formatting happens in the request thread. The object keeps what must
last from one snapshot to the next: psutil handles (CPU percent is measured between two calls) and the
row number given to each task thread, so the task stream keeps the same rows while the page is open.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import psutil

from ..deploy.memory import process_memory
from ..keys import key_split

STATE_NAMES = ("waiting", "queued", "processing", "memory", "erred", "released")
# rows in a worker page's task table: enough to see what it does, cheap to copy
MAX_WORKER_TASKS = 500
# task-stream entries in one answer (the newest): every task of a run of up to 1,000 tasks a second for a
# page polling twice a second; beyond, a sample (as the scheduler's own record is). Formatting and JSON cost
# about 3 us per entry, taken from the engine's GIL: the cap bounds what watching can cost (~2 ms a poll).
MAX_STREAM_PER_SNAPSHOT = 500


def _worker_row(scheduler, address: str, handle) -> dict:
    """Scheduler thread: the scheduler's facts about one worker (metrics are added later)."""
    ws = scheduler.state.workers.get(address)
    processing = len(ws.processing) if ws else 0
    return {
        "address": address,
        "name": str(handle.name),
        "nthreads": handle.nthreads,
        "processing": processing,
        "executing": min(processing, handle.nthreads),
        "memory_limit": handle.memory_limit,
        "pid": handle.pid,
        "status": ws.status if ws else "closed",
        "in_memory": len(ws.has) if ws else 0,
        "memory": 0,
        "cpu": 0.0,
        "dashboard": None,
    }


def _new_records(scheduler, since: Optional[float], worker: Optional[str] = None) -> list:
    """Scheduler thread: the newest task-stream records that ended at or after ``since`` (of one worker,
    if given), each with its task's prefix appended (a lookup here is far cheaper than ``key_split``
    later; tasks already forgotten get None). The bounded deque makes this at most 2,000 records."""
    tasks = scheduler.state.tasks
    found = []
    for record in reversed(scheduler.task_stream):  # newest first, so the cap keeps the newest
        if since is not None and record[4] < since:
            continue
        if worker is not None and record[1] != worker:
            continue
        ts = tasks.get(record[0])
        found.append((*record[:6], ts.prefix if ts is not None else None))
        if len(found) >= MAX_STREAM_PER_SNAPSHOT:
            break
    found.reverse()
    return found


def _status_view(scheduler, since: Optional[float]) -> dict:
    workers = [_worker_row(scheduler, a, h) for a, h in scheduler.workers.items()]
    return {
        "workers": workers,
        "by_prefix": scheduler.prefix_counts(),
        "stream": _new_records(scheduler, since),
    }


def _worker_view(scheduler, ident: str) -> Optional[dict]:
    handle = scheduler.workers.get(ident)
    if handle is None:
        handle = next((h for h in scheduler.workers.values() if str(h.name) == ident), None)
        if handle is None:
            return None
    address = handle.address
    state = scheduler.state
    ws = state.workers.get(address)
    tasks = []
    if ws is not None:
        for key in list(ws.processing)[:MAX_WORKER_TASKS]:
            ts = state.tasks.get(key)
            tasks.append((key, ts.prefix if ts else key_split(key), "processing"))
        for key in list(ws.has)[: max(0, MAX_WORKER_TASKS - len(tasks))]:
            ts = state.tasks.get(key)
            tasks.append((key, ts.prefix if ts else key_split(key), "memory"))
    stream = _new_records(scheduler, None, address)
    return {"worker": _worker_row(scheduler, address, handle), "tasks": tasks, "stream": stream}


class ClusterSnapshots:
    """Snapshots of one cluster for its dashboards (thread-safe: requests arrive on many threads)."""

    def __init__(self, cluster, on_workers: Optional[Callable[[list, bool], None]] = None):
        self.cluster = cluster
        # on_workers(rows, complete) sees the worker rows of every snapshot (complete: all the cluster's
        # workers, not one) and may fill in their "dashboard" field
        self.on_workers = on_workers
        self._lock = threading.Lock()
        self._processes: dict = {}  # pid -> psutil.Process, kept so cpu_percent() measures between calls
        self._thread_rows: dict[str, dict] = {}  # worker address -> {raw thread ident: row number}

    # ---- the two snapshots ------------------------------------------------------------------------

    def status(self, since: Optional[float] = None) -> dict:
        """The cluster snapshot; with ``since``, only task-stream entries that stopped at or after it."""
        cluster = self.cluster
        view = cluster.scheduler.call(_status_view, since).result(10)
        workers = view["workers"]
        self._add_metrics(workers, complete=True)
        totals = dict.fromkeys(STATE_NAMES, 0)
        for counts in view["by_prefix"].values():
            for name in STATE_NAMES:
                totals[name] += counts.get(name, 0)
        limits = [w["memory_limit"] for w in workers]
        return {
            "time": time.time(),
            "cluster": {
                "name": str(cluster.name),
                "scheduler_address": cluster.scheduler_address,
                "n_workers": len(workers),
                "threads": sum(w["nthreads"] for w in workers),
                "memory_limit": sum(limits) if limits and all(limits) else None,
                "status": cluster.status.name,
            },
            "workers": workers,
            "tasks": {"by_prefix": view["by_prefix"], "totals": totals},
            "task_stream": self._format_stream(view["stream"], workers),
        }

    def worker(self, ident: str) -> Optional[dict]:
        """One worker's page data (by address or name), or None when there is no such worker."""
        view = self.cluster.scheduler.call(_worker_view, ident).result(10)
        if view is None:
            return None
        worker = view["worker"]
        self._add_metrics([worker], complete=False)
        logs = self.cluster.get_logs(cluster=False, scheduler=False, workers=True)
        return {
            "time": time.time(),
            "worker": worker,
            "tasks": [{"key": str(k), "prefix": p, "state": s} for k, p, s in view["tasks"]],
            "task_stream": self._format_stream(view["stream"], None),
            "logs": logs.get(worker["address"], logs.get(worker["name"], "")),
        }

    # ---- helpers ----------------------------------------------------------------------------------

    def _add_metrics(self, workers: list, complete: bool) -> None:
        with self._lock:
            for worker in workers:
                worker["memory"], worker["cpu"] = self._process_metrics(worker["pid"])
            if complete:  # forget the processes of workers that left
                pids = {worker["pid"] for worker in workers}
                for pid in [p for p in self._processes if p not in pids]:
                    del self._processes[pid]
        if self.on_workers is not None:
            self.on_workers(workers, complete)

    def _process_metrics(self, pid) -> tuple:
        if pid is None:  # a thread worker has no memory of its own (it shares this process's): "–"
            return None, 0.0
        proc = self._processes.get(pid)
        try:
            if proc is None:
                proc = self._processes[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first call only starts the measurement
            return process_memory(pid), proc.cpu_percent(None)
        except (psutil.Error, OSError):
            self._processes.pop(pid, None)
            return 0, 0.0

    def _format_stream(self, records: list, workers: Optional[list]) -> list:
        """Raw task-stream tuples -> dicts, thread idents -> row numbers 0, 1, ... per worker."""
        with self._lock:
            rows = self._thread_rows
            if (
                workers is not None
            ):  # forget the threads of workers that left and have no entries left
                keep = {w["address"] for w in workers} | {r[1] for r in records}
                for address in [a for a in rows if a not in keep]:
                    del rows[address]
            out = []
            for key, worker, thread, start, stop, status, prefix in records:
                threads = rows.get(worker)
                if threads is None:
                    threads = rows[worker] = {}
                row = threads.get(thread)
                if row is None:
                    row = threads[thread] = len(threads)
                out.append(
                    {
                        "key": str(key),
                        "prefix": prefix or key_split(key),
                        "worker": worker,
                        "thread": row,
                        "start": start,
                        "stop": stop,
                        "status": status,
                    }
                )
            return out


def cluster_snapshot(cluster, since: Optional[float] = None) -> dict:
    """A status snapshot of ``cluster`` (``_repr_html_`` uses it), through its dashboard's source if any."""
    services = getattr(cluster, "services", None)
    source = getattr(services, "snapshots", None) or ClusterSnapshots(cluster)
    return source.status(since)
