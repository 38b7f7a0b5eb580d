"""LocalCluster: a scheduler thread plus worker processes (or threads) on this machine.

The cluster owns the pieces and their lifetimes::

    LocalCluster ──creates──► Scheduler (thread)     ◄──posts── Client
         │                         │ on_worker_lost
         ├──starts/stops──► worker handles (deploy/workers.py) ──► processes or thread pools
         ├──► SegmentStore (shared memory written by this process), swept on close
         ├──► ClusterLogs (one buffer per component)
         └──► supervision: a worker that dies is replaced so the cluster keeps its size

Settings follow dask's ``LocalCluster`` signature; ``deploy/options.py`` turns them into a plan.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Optional

from ..comm.shm import SegmentStore, new_cluster_id, sweep_cluster, sweep_orphans
from ..remote.server import route_worker_client, serve_remote_clients
from ..scheduler.operations import SchedulerOperations
from ..scheduler.server import Scheduler
from .memory import format_bytes
from .options import ClusterOptions
from .services import ClusterServices
from .workers import ThreadWorkerHandle, start_process_worker

_MAX_START_FAILURES = 5  # consecutive workers dying before saying hello: stop trying, tell the user


class LocalCluster:
    """Create a scheduler and workers on this machine (dask.distributed's ``LocalCluster``)."""

    def __init__(self, name=None, n_workers=None, threads_per_worker=None, processes=None, loop=None,
                 start=None, host=None, ip=None, scheduler_port=0, silence_logs=logging.WARN,
                 dashboard_address=":8787", worker_dashboard_address=None, diagnostics_port=None,
                 services=None, worker_services=None, service_kwargs=None, asynchronous=False,
                 security=None, protocol=None, blocked_handlers=None, interface=None, worker_class=None,
                 scheduler_kwargs=None, scheduler_sync_interval=1, **worker_kwargs):  # fmt: skip
        options = ClusterOptions.from_arguments(
            name=name, n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
            host=host, ip=ip, scheduler_port=scheduler_port, silence_logs=silence_logs,
            dashboard_address=dashboard_address, worker_dashboard_address=worker_dashboard_address,
            diagnostics_port=diagnostics_port, service_kwargs=service_kwargs, security=security,
            protocol=protocol, blocked_handlers=blocked_handlers, interface=interface,
            worker_class=worker_class, scheduler_kwargs=scheduler_kwargs, worker_kwargs=worker_kwargs,
        )  # fmt: skip
        self.options = options
        self.asynchronous = asynchronous
        self.processes = options.processes
        self.cluster_id = new_cluster_id()  # names this process as the owner of its shared memory
        sweep_orphans()  # segments left by clusters whose processes were all killed
        self.name = options.name if options.name is not None else self.cluster_id
        from ..logs import ClusterLogs

        self.logs = ClusterLogs(str(self.name), options.silence_logs)
        self.logger = self.logs.cluster_logger
        self.status = "starting"
        self._lock = threading.RLock()
        self._closing = False
        self._worker_count = 0  # names handed out so far
        self._start_failures = 0
        self._task_client = None
        self.target_workers = options.n_workers
        self.segment_store = SegmentStore(self.cluster_id) if self.processes else None
        self.scheduler = Scheduler(
            self.cluster_id, self.processes, logger_=self.logs.scheduler_logger,
            blocked_handlers=options.blocked_handlers, **options.scheduler_kwargs,
        )  # fmt: skip
        self.operations = SchedulerOperations(self)
        self.scheduler.on_worker_lost = self._on_worker_lost
        self.scheduler.on_worker_retired = self._on_worker_retired
        self.scheduler_address = f"inproc://{self.cluster_id}"
        self.handles: dict[str, Any] = {}  # every worker we started and have not reaped
        self.logger.info("Starting cluster %s with %d workers x %d threads (%s)", self.name,
                         options.n_workers, options.threads_per_worker,
                         "processes" if self.processes else "threads")  # fmt: skip
        for _ in range(options.n_workers):
            self._start_worker()
        self.scheduler.call(lambda scheduler: None).result(30)  # every worker registered (FIFO inbox)
        self.services = ClusterServices(self)  # the dashboard, if dashboard_address asks for one
        # remote clients: a TCP/TLS listener when the options ask for one (minidist/remote/server.py)
        self.listener = serve_remote_clients(self)
        if self.listener is not None:
            self.scheduler_address = self.listener.address
        self.security = getattr(self.listener, "security", None)  # what remote clients need for tls://
        self.status = "running"

    # ------------------------------------------------------------------------------------- workers

    def _next_name(self) -> int:
        with self._lock:
            name = self._worker_count
            self._worker_count += 1
            return name

    def _start_worker(self):
        options = self.options
        name = self._next_name()
        if self.processes:
            init = {"cluster_id": self.cluster_id, "shm_threshold": self.segment_store.threshold}
            handle = start_process_worker(init, options.threads_per_worker, name, options.memory_limit,
                                          options.resources, options.worker_env)  # fmt: skip
            handle.log_sink = self.logs.add_remote_records
            handle.client_router = functools.partial(route_worker_client, self)  # get_client() in tasks
        else:
            address = f"inproc://{self.cluster_id}/{name}"
            handle = ThreadWorkerHandle(self.scheduler, address, name, options.threads_per_worker,
                                        options.resources)  # fmt: skip
            handle.runtime.client_factory = self._client_for_tasks
        with self._lock:
            self.handles[handle.address] = handle
        self.scheduler.post(("add-worker", handle))
        self.logger.info("Started worker %s (name %s)", handle.address, name)
        return handle

    def _client_for_tasks(self):
        """The client that tasks on thread workers get from ``get_client()``."""
        with self._lock:
            if self._task_client is None or self._task_client._closed:
                from ..client import Client

                self._task_client = Client(self, set_as_default=False)
            return self._task_client

    def _on_worker_lost(self, handle, reason: str) -> None:
        """Scheduler thread: a worker died. Replace it so the cluster keeps its size."""
        with self._lock:
            self.handles.pop(handle.address, None)
            if self._closing:
                return
            if not handle.started:
                self._start_failures += 1
            else:
                self._start_failures = 0
            if self._start_failures >= _MAX_START_FAILURES:
                self.logger.error(
                    "Worker processes keep dying before they start (%s); not starting more. Check that "
                    "minidist imports in a fresh interpreter: python -c 'import minidist.worker.process'",
                    reason,
                )
                self._fail_pending_for_lack_of_workers(reason)
                return
            if len(self.scheduler.workers) >= self.target_workers:
                return
        self.logger.info("Replacing worker %s", handle.address)
        threading.Thread(target=self._reap_and_replace, args=(handle,), daemon=True,
                         name="minidist-replace-worker").start()  # fmt: skip

    def _reap_and_replace(self, handle) -> None:
        handle.stop(timeout=2)
        if not self._closing:
            self._start_worker()

    def _fail_pending_for_lack_of_workers(self, reason: str) -> None:
        from ..errors import WorkerStartError

        error = WorkerStartError(f"minidist could not start worker processes ({reason}).")
        state = self.scheduler.state
        keys = [k for k, ts in state.tasks.items() if ts.state in ("waiting", "queued", "processing")]
        for key in keys:
            ts = state.tasks.get(key)
            if ts is not None and ts.state != "erred":
                out: list = []
                state._leave_state(ts)
                state._set_erred(ts, error, "", out)
                self.scheduler.apply_now(out)

    def _on_worker_retired(self, handle) -> None:
        with self._lock:
            self.handles.pop(handle.address, None)
        threading.Thread(target=handle.stop, daemon=True, name="minidist-stop-worker").start()
        self.logger.info("Retired worker %s", handle.address)

    # --------------------------------------------------------------------------------------- scale

    def scale(self, n: Optional[int] = None, memory=None, cores=None) -> None:
        """Set the number of workers to ``n`` (or enough for ``cores``/``memory``)."""
        if n is None:
            n = self._workers_for(cores=cores, memory=memory)
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"scale() needs a non-negative number of workers, not {n!r}")
        with self._lock:
            self.target_workers = n
            current = [h for a, h in self.handles.items() if a in self.scheduler.workers]
        if n > len(current):
            for _ in range(n - len(current)):
                self._start_worker()
        elif n < len(current):
            self.scheduler.call(_retire_least_busy, len(current) - n).result(30)
        self.logger.info("Scaled cluster to %d workers", n)

    def _workers_for(self, cores=None, memory=None) -> int:
        import math

        from .memory import parse_bytes

        if cores is not None:
            return max(0, math.ceil(cores / self.options.threads_per_worker))
        if memory is not None:
            per_worker = self.options.memory_limit
            if not per_worker:
                raise ValueError("scale(memory=...) needs workers with a memory_limit")
            return max(0, math.ceil(parse_bytes(memory) / per_worker))
        raise ValueError("scale() needs n, cores or memory")

    # ------------------------------------------------------------------------------------ restart

    def restart(self, timeout=None) -> None:
        """Stop every worker, forget every task, start fresh workers."""
        with self._lock:
            old = list(self.handles.values())
            self.handles.clear()
            count = self.target_workers

        def forget_everything(scheduler):
            outgoing: dict = {}
            reports: dict = {}
            scheduler._apply(scheduler.state.restart(), outgoing, reports)
            for handle in old:
                scheduler._remove_worker(handle, "restart", outgoing, reports, expected=True)
            scheduler._deliver({}, reports)  # the old workers are going: send them nothing

        self.scheduler.call(forget_everything).result(30)
        for handle in old:
            handle.stop(timeout=2)
        for _ in range(count):
            self._start_worker()
        self.logger.info("Restarted cluster: %d new workers", count)

    # -------------------------------------------------------------------------------------- close

    def close(self, timeout=None) -> None:
        """Stop workers and the scheduler, free shared memory. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            handles = list(self.handles.values())
            self.handles.clear()
        self.status = "closing"
        if self._task_client is not None:
            self._task_client.close()
        if getattr(self, "listener", None) is not None:
            self.listener.close()
        if getattr(self, "services", None) is not None:
            self.services.close()
        self.scheduler.close()
        for handle in handles:
            handle.close()
        for handle in handles:
            handle.stop(timeout=3)
        sweep_cluster(self.cluster_id)
        self.logger.info("Cluster %s closed", self.name)
        self.logs.close()
        self.status = "closed"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        try:
            if self.status == "running":
                self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------------------------- report

    @property
    def dashboard_link(self) -> Optional[str]:
        services = getattr(self, "services", None)
        return services.dashboard_link if services is not None else None

    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> dict:
        return self.logs.get_logs(cluster=cluster, scheduler=scheduler, workers=workers)

    @property
    def workers(self) -> dict:
        return {h.name: h for h in self.scheduler.workers.values()}

    def _summary(self) -> dict:
        workers = list(self.scheduler.workers.values())
        memory = [h.memory_limit for h in workers if h.memory_limit]
        total = sum(memory) if memory and len(memory) == len(workers) else None
        return {"workers": len(workers), "threads": sum(h.nthreads for h in workers),
                "memory": total, "memory_text": format_bytes(total) if total else "no limit"}  # fmt: skip

    def scheduler_info(self) -> dict:
        def collect(scheduler):
            workers = {}
            for address, handle in scheduler.workers.items():
                ws = scheduler.state.workers.get(address)
                workers[address] = {
                    "type": "Worker", "id": handle.name, "name": handle.name, "host": "127.0.0.1",
                    "nthreads": handle.nthreads, "memory_limit": handle.memory_limit or 0,
                    "pid": handle.pid, "resources": dict(handle.resources or {}),
                    "status": ws.status if ws else "closed",
                    "metrics": {"executing": len(ws.processing) if ws else 0,
                                "in_memory": len(ws.has) if ws else 0},
                }  # fmt: skip
            return {"type": "Scheduler", "id": f"Scheduler-{self.cluster_id}",
                    "address": self.scheduler_address, "services": {}, "started": scheduler.started,
                    "workers": workers}  # fmt: skip

        return self.scheduler.call(collect).result(30)

    def _repr_html_(self) -> str:
        from ..dashboard.pages import repr_html
        from ..dashboard.snapshot import cluster_snapshot

        return repr_html(type(self).__name__, cluster_snapshot(self), self.dashboard_link)

    def __repr__(self) -> str:
        info = self._summary()
        return (f"{type(self).__name__}({self.name!r}, {self.scheduler_address!r}, "
                f"workers={info['workers']}, threads={info['threads']}, memory={info['memory_text']})")  # fmt: skip


def _retire_least_busy(scheduler, count: int) -> list:
    """Scheduler thread: mark ``count`` workers as retiring, idle and data-poor first."""
    state = scheduler.state
    candidates = sorted(state.workers.values(), key=lambda w: (len(w.processing), len(w.has)))
    chosen = [w.address for w in candidates if w.status != "retiring"][:count]
    for address in chosen:
        scheduler.apply_now(state.set_worker_status(address, "retiring"))
    return chosen
