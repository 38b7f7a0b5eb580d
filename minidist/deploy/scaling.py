"""Scaling helpers that run on the scheduler thread: who counts as a worker, who retires, what adapt sees.

``LocalCluster.scale``/``adapt`` and supervision (``deploy/local.py``) use these. Reads run on the
scheduler thread (``scheduler.query``, ``scheduler.call``); changes are messages the scheduler answers
(``RetireWorkers``, ``RemoveWorkers``), so each sees and changes ``SchedulerState`` in one step::

    scale(n) / replacement ─► query(active_workers)  ─► start the missing workers (cluster thread)
    scale(n) down          ─► retire_workers(count=k)         idle and data-poor first
    adapt timer            ─► observe()  ─► Adaptive.recommend() ─► retire_workers(addresses=...)

Retiring marks a worker ``retiring``: it gets no new tasks, finishes what it holds, and the state emits
``RetireWorker`` once it is empty (the cluster then stops its process). Nothing is lost by retiring: every
result is sent to the client process when it finishes, so a worker's cache holds no only copy.
"""

from __future__ import annotations

import time
from typing import Iterable, Optional

from ..messages import RemoveWorkers, RetireWorkers
from .adaptive import ClusterObservation, WorkerObservation


def retire_workers(scheduler, count: int = 0, addresses: Optional[Iterable[str]] = None) -> list:
    """Retire ``addresses`` (or the ``count`` least busy workers); returns those chosen. Not on the
    scheduler thread (it waits for the answer)."""
    chosen = tuple(addresses) if addresses is not None else None
    return scheduler.ask(RetireWorkers, count, chosen).result(30)


def observe(
    scheduler, threads_per_worker: int, memory_per_worker: Optional[int]
) -> ClusterObservation:
    """What the adaptive policy sees: load by task prefix, and every worker that is not retiring."""
    state = scheduler.state
    now = time.time()
    by_prefix: dict = {}
    tasks = state.tasks
    workers = []
    for ws in state.workers.values():
        for key in ws.processing:
            ts = tasks.get(key)
            if ts is not None:
                by_prefix[ts.prefix] = by_prefix.get(ts.prefix, 0) + 1
        if ws.status == "retiring":
            continue
        idle_for = now - ws.idle_since if (ws.idle_since is not None and not ws.processing) else 0.0
        handle = scheduler.workers.get(ws.address)
        workers.append(
            WorkerObservation(
                name=ws.address,
                nthreads=ws.nthreads,
                memory_limit=handle.memory_limit if handle is not None else memory_per_worker,
                processing=len(ws.processing),
                idle_for=max(0.0, idle_for),
                # every result also lives in the client process: a worker's cache is only a copy for
                # locality, so no worker holds data the cluster needs it to keep (nor asks for memory)
                unique_keys=0,
                nbytes=0,
            )
        )
    queued = list(state.restricted.values())
    seen = set(state.restricted)
    for (
        _,
        key,
    ) in state.ready:  # heap entries of tasks no longer queued are dropped lazily: skip them
        ts = tasks.get(key)
        if ts is not None and ts.state == "queued" and key not in seen:
            seen.add(key)
            queued.append(ts)
    for ts in queued:
        by_prefix[ts.prefix] = by_prefix.get(ts.prefix, 0) + 1
    return ClusterObservation(
        now=now,
        workers=tuple(workers),
        queued=state.counts["queued"],
        processing=state.counts["processing"],
        waiting=state.counts["waiting"],
        prefix_durations=dict(state.prefix_durations),
        queued_by_prefix=by_prefix,
        threads_per_worker=threads_per_worker,
        memory_per_worker=memory_per_worker,
    )


def restart_worker(cluster, address: str, timeout=None) -> None:
    """Replace one worker of ``cluster`` by a fresh one of the same name (``client.restart_workers``).

    Its running tasks are requeued without suspicion (a restart is not a crash); results are kept, as
    they live in the client process. Not on the scheduler thread.
    """
    with cluster._scale_lock:
        with cluster._lock:
            handle = cluster.handles.pop(address, None)
        if handle is None or cluster._closing:
            return

        reason = "restarted by restart_workers"
        cluster.scheduler.ask(RemoveWorkers, (handle,), reason).result(30)
        handle.stop(timeout=2 if timeout is None else float(timeout))
        cluster.logs.close_worker(address)
        cluster.logger.info("Restarted worker %s (name %s)", address, handle.name)
        cluster._start_worker(name=handle.name, restarted=True)
