"""Read-only views of ``SchedulerState``: what operations, scaling and the dashboard ask about.

Each function reads the state (``state.tasks``, ``state.workers``) and changes nothing; callers outside
the scheduler thread run them there, through ``Scheduler.query(function, *args)``, so they see one
consistent state. Changes are never made here: they are events of ``SchedulerState``.
"""

from __future__ import annotations

from typing import Iterable, Optional

_STATES = ("waiting", "queued", "processing", "memory", "erred", "released")


def active_workers(state) -> list[str]:
    """Addresses of the workers that count towards the cluster's size (every one not retiring)."""
    return [a for a, ws in state.workers.items() if ws.status != "retiring"]


def retirement_candidates(
    state, count: int = 0, addresses: Optional[Iterable[str]] = None, vet=None
) -> list:
    """``addresses`` that are not retiring yet, or else the ``count`` least busy workers: idle before
    busy, then the smallest cache, then the youngest (the highest name). ``vet(worker states)`` says
    which may go at all (scheduler plugins' ``valid_workers_downscaling``)."""
    candidates = [ws for ws in state.workers.values() if ws.status != "retiring"]
    if vet is not None:
        allowed = {getattr(w, "address", w) for w in vet(list(candidates))}
        candidates = [ws for ws in candidates if ws.address in allowed]
    if addresses is not None:
        wanted = set(addresses)
        return [ws.address for ws in candidates if ws.address in wanted]
    candidates.sort(key=lambda ws: (len(ws.processing), len(ws.has), -_order(ws.name)))
    return [ws.address for ws in candidates[:count]]


def _order(name) -> int:
    try:
        return int(name)
    except (TypeError, ValueError):
        return 0


def who_has(state, keys=None) -> dict:
    """``{key: [worker addresses caching it]}`` for ``keys`` (every key when None)."""
    tasks = state.tasks
    chosen = tasks.keys() if keys is None else [k for k in keys if k in tasks]
    return {k: sorted(tasks[k].who_has) for k in chosen}


def has_what(state, addresses: Iterable[str]) -> dict:
    """``{address: [keys it caches]}``."""
    wanted = set(addresses)
    return {a: sorted(map(str, ws.has)) for a, ws in state.workers.items() if a in wanted}


def processing(state, addresses: Iterable[str]) -> dict:
    """``{address: [keys given to it, running or queued there]}``."""
    wanted = set(addresses)
    return {a: list(ws.processing) for a, ws in state.workers.items() if a in wanted}


def worker_info(state, handles: dict) -> dict:
    """``{address: dask's description of the worker}`` for ``scheduler_info()``."""
    workers = {}
    for address, handle in handles.items():
        ws = state.workers.get(address)
        workers[address] = {
            "type": "Worker",
            "id": handle.name,
            "name": handle.name,
            "host": "127.0.0.1",
            "nthreads": handle.nthreads,
            "memory_limit": handle.memory_limit or 0,
            "pid": handle.pid,
            "resources": dict(handle.resources or {}),
            "status": ws.status if ws else "closed",
            "metrics": {
                "executing": len(ws.processing) if ws else 0,
                "in_memory": len(ws.has) if ws else 0,
            },
        }
    return workers


def scheduler_identity(cluster_id, address, started, workers: dict, n_workers: int = -1) -> dict:
    """dask's ``scheduler_info()`` shape from ``worker_info``'s rows; ``n_workers`` >= 0 lists only that
    many workers (the totals count them all), -1 lists every one."""
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < -1:
        raise ValueError(f"n_workers must be -1 (all workers) or a count >= 0, not {n_workers!r}")
    listed = workers if n_workers == -1 else dict(list(workers.items())[:n_workers])
    return {
        "type": "Scheduler",
        "id": f"Scheduler-{cluster_id}",
        "address": address,
        "services": {},
        "started": started,
        "n_workers": len(workers),
        "total_threads": sum(w["nthreads"] for w in workers.values()),
        "total_memory": sum(w["memory_limit"] for w in workers.values()),
        "workers": listed,
    }


def prefix_counts(state) -> dict:
    """``{task prefix: {state: count}}``, for the dashboard's progress bars."""
    by_prefix: dict = {}
    for ts in state.tasks.values():
        counts = by_prefix.get(ts.prefix)
        if counts is None:
            counts = by_prefix[ts.prefix] = dict.fromkeys(_STATES, 0)
        if ts.state in counts:
            counts[ts.state] += 1
    return by_prefix
