"""Cluster snapshots for the dashboard: one consistent picture of the scheduler, taken on its thread.

``cluster_snapshot(cluster)`` returns the dict documented in ``dashboard/server.py``. Task and worker
state is read on the scheduler thread (through ``scheduler.call``) so it is consistent and the state
machine never sees another thread; process metrics (memory, CPU) come from psutil outside that thread,
so the scheduler never waits on /proc.
"""

from __future__ import annotations

import time

import psutil

from ..deploy.memory import process_memory

_TOTAL_KEYS = ("waiting", "queued", "processing", "memory", "erred", "released")
_processes: dict = {}  # pid -> psutil.Process, kept so cpu_percent() measures between calls


def _process_metrics(pid) -> tuple:
    if pid is None:
        return 0, 0.0
    proc = _processes.get(pid)
    try:
        if proc is None:
            proc = _processes[pid] = psutil.Process(pid)
            proc.cpu_percent(None)
        return process_memory(pid), proc.cpu_percent(None)
    except (psutil.Error, OSError):
        _processes.pop(pid, None)
        return 0, 0.0


def _scheduler_view(scheduler) -> dict:
    """Runs on the scheduler thread: copy what the pages need, nothing more."""
    workers = []
    for address, handle in scheduler.workers.items():
        ws = scheduler.state.workers.get(address)
        workers.append({
            "address": address, "name": str(handle.name), "nthreads": handle.nthreads,
            "processing": len(ws.processing) if ws else 0,
            "executing": min(len(ws.processing), ws.nthreads) if ws else 0,
            "memory_limit": handle.memory_limit, "pid": handle.pid,
            "status": ws.status if ws else "closed", "in_memory": len(ws.has) if ws else 0,
            "dashboard": getattr(handle, "dashboard_link", None),
        })  # fmt: skip
    return {"workers": workers, "by_prefix": scheduler.prefix_counts(),
            "task_stream": scheduler.stream_records()}  # fmt: skip


def cluster_snapshot(cluster) -> dict:
    view = cluster.scheduler.call(_scheduler_view).result(10)
    for worker in view["workers"]:
        worker["memory"], worker["cpu"] = _process_metrics(worker["pid"])
    totals = dict.fromkeys(_TOTAL_KEYS, 0)
    for counts in view["by_prefix"].values():
        for name in _TOTAL_KEYS:
            totals[name] += counts.get(name, 0)
    limits = [w["memory_limit"] for w in view["workers"]]
    return {
        "time": time.time(),
        "cluster": {"name": str(cluster.name), "scheduler_address": cluster.scheduler_address,
                    "n_workers": len(view["workers"]), "threads": sum(w["nthreads"] for w in view["workers"]),
                    "memory_limit": sum(limits) if limits and all(limits) else None,
                    "status": cluster.status},  # fmt: skip
        "workers": view["workers"],
        "tasks": {"by_prefix": view["by_prefix"], "totals": totals},
        "task_stream": view["task_stream"],
    }
