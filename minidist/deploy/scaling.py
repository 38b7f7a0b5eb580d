"""Scaling helpers that run on the scheduler thread: who counts as a worker, who retires, what adapt sees.

``LocalCluster.scale``/``adapt``/``restart`` and supervision (``deploy/local.py``) use these. Reads run on the
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

from ..messages import RemoveWorkers, Restart, RetireWorkers
from ..utils import parse_timedelta
from .adaptive import ClusterObservation, WorkerObservation


def retire_workers(
    scheduler, count: int = 0, addresses: Optional[Iterable[str]] = None, by_scaling: bool = True
) -> list:
    """Retire ``addresses`` (or the ``count`` least busy workers); returns those chosen, which
    scheduler plugins may have narrowed when ``by_scaling``. Not on the scheduler thread (it waits
    for the answer)."""
    chosen = tuple(addresses) if addresses is not None else None
    return scheduler.ask(RetireWorkers, count, chosen, by_scaling).result(30)


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
    # heap entries of tasks no longer queued are dropped lazily: skip them
    for entry in state.ready:
        key = entry[-1]  # (priority fields..., key): placement.ready_entry
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
        handle.stop(timeout=2 if timeout is None else parse_timedelta(timeout))
        cluster.logs.close_worker(address)
        cluster.logger.info("Restarted worker %s (name %s)", address, handle.name)
        cluster._start_worker(name=handle.name, restarted=True)


def restart_cluster(cluster, timeout=None, wait_for_workers: bool = True) -> None:
    """Stop every worker of ``cluster``, forget every task, start as many fresh workers
    (``client.restart``); with ``wait_for_workers``, return once they can run tasks. TimeoutError past
    ``timeout`` (seconds or "20s"; default 30 s). Not on the scheduler thread."""
    seconds = 30.0 if timeout is None else parse_timedelta(timeout)
    deadline = time.monotonic() + seconds
    with cluster._scale_lock:
        with cluster._lock:
            old = list(cluster.handles.values())
            cluster.handles.clear()
            count = cluster.target_workers
        # every task is forgotten and the old workers leave the books, without being sent anything more
        cluster.scheduler.ask(Restart, tuple(old)).result(30)
        for handle in old:
            handle.stop(timeout=2)
            cluster.logs.close_worker(handle.address, "stopped: the cluster restarted")
        cluster.logger.info("Restarting cluster: stopped %d workers, starting %d", len(old), count)
        started = [cluster._start_worker() for _ in range(count)]
    if not wait_for_workers:
        return
    # as dask's restart(wait_for_workers=True): return once the new workers can run tasks (one that
    # dies meanwhile is replaced as any other; the deadline still holds)
    new = [handle for handle in started if handle is not None]
    late = [h for h in new if not h.wait_ready(max(0.0, deadline - time.monotonic()))]
    if late and time.monotonic() >= deadline:
        raise TimeoutError(
            f"restart: {len(late)} of {len(new)} new workers could not run tasks within "
            f"{seconds:g} s; they may still arrive (client.wait_for_workers waits for them)"
        )
