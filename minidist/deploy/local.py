"""LocalCluster: a scheduler thread plus worker processes (or threads) on this machine.

The cluster owns the pieces and their lifetimes::

    LocalCluster ──creates──► Scheduler (thread)     ◄──posts── Client
         │                         │ on_worker_lost
         ├──starts/stops──► worker handles (deploy/workers.py) ──► processes or thread pools
         ├──► SegmentStore (shared memory written by this process), swept on close
         ├──► ClusterLogs (one buffer per component: cluster, scheduler, each worker)
         ├──► MemoryMonitor thread (deploy/supervision.py): pauses/terminates process workers
         ├──► Adaptive timer, when adapt() was called (deploy/adaptive.py)
         └──► supervision: a worker that dies is replaced so the cluster keeps its size

Settings follow dask's ``LocalCluster`` signature; ``deploy/options.py`` turns them into a plan.

Size: ``target_workers`` is what the cluster keeps. ``scale()``, ``adapt()``'s timer and the replacement
of dead workers all go through ``_scale_to``/``_fill_to_target`` under one lock, and count only workers
that are not retiring (``deploy/scaling.py``), so they never start a worker twice for one gap.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import math
import numbers
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Optional

from ..asynchronous import Closing, awaitable_in_loop, in_event_loop
from ..comm.shm import KEEP_FRACTION, SegmentStore, new_cluster_id, sweep_cluster, sweep_orphans
from ..data_plane import ObjectPlane, PickledPlane
from ..errors import WorkerStartError
from ..messages import AddWorker, FailPending
from ..scheduler.operations import SchedulerOperations
from ..scheduler.queries import active_workers, scheduler_identity, worker_info
from ..scheduler.server import Scheduler
from ..status import Status
from ..worker.plugins import install_all
from ..worker.task_client import TaskClientSlot
from .cluster import Cluster, WorkerFacts
from .launcher import WorkerLauncher, take_early_launcher
from .memory import format_bytes
from .options import ClusterOptions
from .scaling import observe, restart_cluster, restart_worker, retire_workers
from .workers import ThreadWorkerHandle, cannot_start_message, start_process_worker

if TYPE_CHECKING:
    from .supervision import MemoryMonitor

_restarts = itertools.count(1)  # tells restarted thread workers' addresses apart

# clusters of this process by their inproc:// address, for Client("inproc://...") (as dask allows)
_inproc_clusters: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def inproc_cluster(address: str):
    """The running cluster of this process at ``address``; ValueError naming the address if none."""
    cluster = _inproc_clusters.get(address)
    if cluster is None or cluster.status not in (Status.starting, Status.running):
        raise ValueError(
            f"No running cluster at {address!r} in this process: an inproc:// address only works "
            "inside the process that made the cluster (use its tcp:// address from elsewhere)"
        )
    return cluster


_MAX_START_FAILURES = 5  # consecutive workers dying before saying hello: stop trying, tell the user


class LocalCluster(Cluster):
    """Create a scheduler and workers on this machine (dask.distributed's ``LocalCluster``)."""

    def __init__(
        self,
        name=None,
        n_workers=None,
        threads_per_worker=None,
        processes=None,
        loop=None,
        start=None,
        host=None,
        ip=None,
        scheduler_port=0,
        silence_logs=logging.WARN,
        dashboard_address=":8787",
        worker_dashboard_address=None,
        dashboard_token=None,
        diagnostics_port=None,
        services=None,
        worker_services=None,
        service_kwargs=None,
        asynchronous=False,
        security=None,
        protocol=None,
        blocked_handlers=None,
        interface=None,
        worker_class=None,
        scheduler_kwargs=None,
        scheduler_sync_interval=1,
        **worker_kwargs,
    ):
        options = ClusterOptions.from_arguments(
            name=name,
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=processes,
            host=host,
            ip=ip,
            scheduler_port=scheduler_port,
            silence_logs=silence_logs,
            dashboard_address=dashboard_address,
            worker_dashboard_address=worker_dashboard_address,
            dashboard_token=dashboard_token,
            diagnostics_port=diagnostics_port,
            service_kwargs=service_kwargs,
            security=security,
            protocol=protocol,
            blocked_handlers=blocked_handlers,
            interface=interface,
            worker_class=worker_class,
            scheduler_kwargs=scheduler_kwargs,
            worker_kwargs=worker_kwargs,
        )
        self.options = options
        self.asynchronous = asynchronous
        self.processes = options.processes
        self.cluster_id = new_cluster_id()  # names this process as the owner of its shared memory
        sweep_orphans()  # segments left by clusters whose processes were all killed
        self.name = options.name if options.name is not None else self.cluster_id
        from ..logs import ClusterLogs

        self.logs = ClusterLogs(str(self.name), options.silence_logs)
        self.logger = self.logs.cluster_logger
        # process workers are forked by a template process (deploy/launcher.py) booting meanwhile;
        # Client() started it already, before importing this module (template_started_early). Taken
        # only after the last check of the settings (silence_logs, by ClusterLogs): a refused cluster
        # leaves no process behind
        early = take_early_launcher()
        if early is not None and not self.processes:
            early.close()
            early = None
        self.launcher = (early or WorkerLauncher()) if self.processes else None
        self.status = Status.starting
        self._lock = threading.RLock()
        # one change of size at a time (scale, adapt, replacement)
        self._scale_lock = threading.RLock()
        self._closing = False
        self._when_closed: list = []  # called once the close is complete (minidist serve's exit)
        self._adaptive = None  # the Adaptive policy adapt() started, if any
        self.memory_monitor: Optional[MemoryMonitor] = None
        self._worker_count = 0  # names handed out so far
        self._start_failures = 0
        # the client tasks on thread workers get from get_client() (made by the client layer), and the
        # context variables they see: the maker's, as with dask.distributed (decimal's context, ...)
        self.task_clients = TaskClientSlot(lambda: self)
        self.task_context = contextvars.copy_context()
        self._said_template_off = False
        self.target_workers = options.n_workers
        self.segment_store = (  # keeps arrays passed again (comm/shm_kept.py)
            SegmentStore(self.cluster_id, keep_fraction=KEEP_FRACTION) if self.processes else None
        )
        # how calls and values are packed, read and freed: pickled for processes, objects for threads
        self.data_plane = PickledPlane(self.segment_store) if self.processes else ObjectPlane()
        self.scheduler = Scheduler(
            self.cluster_id,
            self.data_plane,
            logger_=self.logs.scheduler_logger,
            blocked_handlers=options.blocked_handlers,
            on_worker_lost=self._on_worker_lost,
            on_worker_retired=self._on_worker_retired,
            **options.scheduler_kwargs,
        )
        self.operations = SchedulerOperations(self)
        self.worker_setup = self.operations.plugins.worker_setup  # what new workers install
        self.scheduler_address = f"inproc://{self.cluster_id}"
        _inproc_clusters[self.scheduler_address] = self
        self.handles: dict[str, Any] = {}  # every worker we started and have not reaped
        self.logger.info(
            "Starting cluster %s with %d workers x %d threads (%s)",
            *(self.name, options.n_workers, options.threads_per_worker),
            "processes" if self.processes else "threads",
        )
        self.services = None  # the dashboards, when asked for (deploy/services.py)
        try:
            # imported only now, while the template process (which forks the workers) boots
            from ..remote.server import serve_remote_clients

            if options.serves_dashboards:  # else its HTTP server and psutil are not even imported
                from .services import ClusterServices
            for _ in range(options.n_workers):
                self._start_worker()
            if self.processes and options.memory_limit:  # the memory monitor's, loaded while the
                # workers fork: loaded at its first look, in the user's first run, its thousands of
                # objects would sit among the run's own and keep the run's memory from going back
                import psutil  # noqa: F401
            self.scheduler.call(lambda scheduler: None).result(30)  # every worker registered
            self._start_memory_monitor()
            if options.serves_dashboards:
                self.services = ClusterServices(self)
            # remote clients: a TCP/TLS listener when the options ask for one (minidist/remote/server.py)
            self.listener = serve_remote_clients(self)
        except BaseException:
            self.close()  # a worker_class whose setup() raised, a port in use...: leave nothing behind
            raise
        if self.listener is not None:
            self.scheduler_address = self.scheduler.address = self.listener.address
        # what remote clients need for tls://
        self.security = getattr(self.listener, "security", None)
        self.status = Status.running

    def _start_memory_monitor(self) -> None:
        """Watch process workers' memory when they have a limit (threads share this process: no point)."""
        fractions = self.options.memory_fractions
        if not (self.processes and self.options.memory_limit and any(fractions.values())):
            return

        def process_workers() -> list:
            with self._lock:
                return [h for h in self.handles.values() if h.kind == "process"]

        from .supervision import MemoryMonitor

        self.memory_monitor = MemoryMonitor(
            process_workers,
            self.scheduler,
            self.logger,
            self.logs.worker_logger,
            fractions.get("pause"),
            fractions.get("terminate"),
        ).start()

    # ------------------------------------------------------------------------------------- workers

    def _next_name(self) -> int:
        with self._lock:
            name = self._worker_count
            self._worker_count += 1
            return name

    def _start_worker(self, name=None, restarted: bool = False):
        """Start one worker (``name``: reuse a name, for ``restart_workers``; a restarted thread
        worker gets a new address so late reports of its predecessor are not taken for its own)."""
        with self.worker_setup.lock:  # until the scheduler knows it: see worker/plugins.py
            return self._start_worker_now(name, restarted)

    def _start_worker_now(self, name, restarted: bool):
        options = self.options
        name = self._next_name() if name is None else name
        handle: Any  # a ProcessWorkerHandle or a ThreadWorkerHandle (deploy/workers.py)
        if self.processes:
            assert self.segment_store is not None  # process clusters always have one
            init = {"cluster_id": self.cluster_id, "shm_threshold": self.segment_store.threshold}
            handle = start_process_worker(
                init,
                options.threads_per_worker,
                name,
                options.memory_limit,
                options.resources,
                options.worker_env,
                options.worker_class,
                self.launcher,
                log_sink=self.logs.add_remote_records,  # its shipped records (worker/process.py)
                client_router=functools.partial(_route_worker_client, self),  # get_client()
                worker_setup=self.worker_setup.items(),
            )
            self._say_if_template_is_off()
            self.logs.worker_logger(handle.address)  # get_logs() lists it from the start
        else:
            address = f"inproc://{self.cluster_id}/{name}"
            if restarted:
                address += f"-r{next(_restarts)}"
            worker_log = self.logs.worker_logger(address)
            try:
                handle = ThreadWorkerHandle(
                    self.scheduler,
                    address,
                    name,
                    options.threads_per_worker,
                    options.resources,
                    options.worker_class,
                    options.memory_limit,
                    logger=worker_log,
                    task_clients=self.task_clients,
                    context=self.task_context,
                )
            except BaseException:
                self.logger.exception("Worker %s (name %s) could not start", address, name)
                self.logs.close_worker(address)
                raise
            install_all(handle.runtime, self.worker_setup.items())  # the cluster's plugins
            worker_log.info(
                "Start worker %s (name %s, pid %d, %d threads, memory limit %s; threads of the cluster's process)",
                *(address, name, os.getpid(), options.threads_per_worker),
                format_bytes(options.memory_limit) if options.memory_limit else "none",
            )
        with self._lock:
            closing = self._closing
            if not closing:
                self.handles[handle.address] = handle
        if closing:  # close() ran meanwhile and will not see this one
            handle.stop(timeout=2)
            return None
        self.scheduler.post(AddWorker(handle))
        self.logger.info("Started worker %s (name %s)", handle.address, name)
        return handle

    def _say_if_template_is_off(self) -> None:
        """Log once that workers now start as fresh interpreters (slower, still correct), and why."""
        reason = self.launcher.unavailable_reason if self.launcher is not None else None
        if reason is not None and not self._closing and not self._said_template_off:
            self._said_template_off = True
            self.logger.warning(
                "Worker processes start as fresh interpreters from now on (slower): %s", reason
            )

    def _on_worker_lost(self, handle, reason: str, failed_to_start: bool) -> None:
        """Scheduler thread: a worker died. Replace it so the cluster keeps its size, unless workers
        keep failing to start (``failed_to_start``: see ``Scheduler.__init__``)."""
        self.logs.close_worker(handle.address, f"died: {reason}", logging.WARNING)
        with self._lock:
            self.handles.pop(handle.address, None)
            if self._closing:
                return  # close() stops every handle it took
            self._start_failures = self._start_failures + 1 if failed_to_start else 0
            replace = False
            if self._start_failures >= _MAX_START_FAILURES:
                self._stop_replacing(handle, reason)
            else:
                active = len(active_workers(self.scheduler.state))  # on the scheduler thread
                replace = active < self.target_workers
                if not replace:
                    self.logger.info(
                        "Worker %s (name %s) died: %s. Not replaced: %d of %d workers remain.",
                        *(handle.address, handle.name, reason, active, self.target_workers),
                    )
        if replace:
            self.logger.warning(
                "Worker %s (name %s) died: %s. Starting a replacement.",
                handle.address,
                handle.name,
                reason,
            )
        # reaped in every case: the process, and its running board's descriptor, would otherwise
        # stay until a garbage collection freed the handle
        threading.Thread(
            target=self._reap_and_replace,
            args=(handle, replace),
            daemon=True,
            name="minidist-replace-worker",
        ).start()

    _restart_worker = restart_worker  # client.restart_workers (deploy/scaling.py)

    def _reap_and_replace(self, handle, replace: bool) -> None:
        handle.stop(timeout=2)
        if replace:
            self._fill_to_target()

    def _fill_to_target(self) -> list:
        """Start workers until ``target_workers`` are active (not on the scheduler thread)."""
        with self._scale_lock:
            if self._closing:
                return []
            try:
                active = self.scheduler.query(active_workers).result(30)
            except RuntimeError:  # the scheduler closed: the cluster is going away
                return []
            return [self._start_worker() for _ in range(self.target_workers - len(active))]

    def _stop_replacing(self, handle, reason: str) -> None:
        """Five workers in a row failed to start: say why and what to do, and fail what waits."""
        message = cannot_start_message(handle, reason)
        self.logger.error("%s Not starting more.", message)
        self.scheduler.post(
            FailPending(WorkerStartError(f"minidist could not start workers: {message}"))
        )

    def _on_worker_retired(self, handle) -> None:
        """Scheduler thread: a retiring worker finished its tasks; stop it. A worker that died while
        this one was about to retire was not replaced (this one still counted): start it now."""
        with self._lock:
            self.handles.pop(handle.address, None)
            short = not self._closing and (
                len(active_workers(self.scheduler.state)) < self.target_workers
            )
        threading.Thread(target=handle.stop, daemon=True, name="minidist-stop-worker").start()
        self.logs.close_worker(handle.address, "retired")
        self.logger.info("Retired worker %s (name %s)", handle.address, handle.name)
        if short:
            threading.Thread(
                target=self._fill_to_target, daemon=True, name="minidist-replace-worker"
            ).start()

    # --------------------------------------------------------------------------------------- scale

    @awaitable_in_loop
    def scale(self, n: int = 0, memory=None, cores=None) -> None:
        """Set the number of workers to ``n``, or more if ``cores``/``memory`` ask for more (as dask).

        Up starts workers at once. Down retires the least busy workers: they take no new tasks, finish
        what they hold and then stop. Nothing is lost: every result already lives in the client process.
        Stops ``adapt``.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"scale() needs a non-negative number of workers, not {n!r}")
        n = max(int(n), self._workers_for(cores=cores, memory=memory))
        self._stop_adaptive("scale() was called")
        self._scale_to(n)

    def _scale_to(self, n: int, retire=None, why: str = "Scaling", by_scaling: bool = True) -> None:
        """Make ``n`` the target: start workers, or retire ``retire`` (named) or the least busy ones
        (``by_scaling``: the cluster's own choice, which scheduler plugins may veto)."""
        with self._scale_lock:
            if self._closing:
                return
            active = self.scheduler.query(active_workers).result(30)
            self.target_workers = n
            retire = [a for a in retire or () if a in active]
            if n != len(active) or retire:
                self.logger.info("%s from %d to %d workers", why, len(active), n)
            if retire:
                retiring = retire_workers(self.scheduler, 0, retire, by_scaling)
            elif n < len(active):
                retiring = retire_workers(self.scheduler, len(active) - n, None, by_scaling)
            else:
                retiring = []
            for _ in range(n - len(active) + len(retiring)):
                self._start_worker()

    def _workers_for(self, cores=None, memory=None) -> int:
        """Workers needed for ``cores`` threads and ``memory`` bytes (0 for what is not given)."""
        from .memory import parse_bytes

        needed = 0
        if cores is not None:
            needed = math.ceil(cores / self.options.threads_per_worker)
        if memory is not None:
            per_worker = self.options.memory_limit
            if not per_worker:
                raise ValueError("scale(memory=...) needs workers with a memory_limit")
            needed = max(needed, math.ceil(parse_bytes(memory) / per_worker))
        return max(0, needed)

    # --------------------------------------------------------------------------------------- adapt

    def adapt(
        self,
        Adaptive=None,
        minimum=0,
        maximum=math.inf,
        minimum_cores=None,
        maximum_cores=None,
        minimum_memory=None,
        maximum_memory=None,
        **kwargs,
    ):
        """Scale between ``minimum`` and ``maximum`` workers with the load; returns the policy object.

        Keywords as dask's (``interval``, ``target_duration``, ``wait_count``...; see
        ``deploy/adaptive.py``). ``Adaptive`` may be a subclass of ``minidist.Adaptive``. A second call
        replaces the first policy; ``scale()`` stops it.
        """
        from .adaptive import Adaptive as DefaultAdaptive

        policy_class = Adaptive or DefaultAdaptive
        bounds = dict(
            minimum=minimum,
            maximum=maximum,
            minimum_cores=minimum_cores,
            maximum_cores=maximum_cores,
            minimum_memory=minimum_memory,
            maximum_memory=maximum_memory,
        )
        if isinstance(policy_class, type) and issubclass(policy_class, DefaultAdaptive):
            kwargs.setdefault("logger", self.logger)
        # a bad keyword raises before anything changes
        policy = policy_class(self, **bounds, **kwargs)
        self._stop_adaptive("adapt() was called again")
        with self._lock:
            if self._closing:
                raise RuntimeError("The cluster is closed")
            self._adaptive = policy
        self.logger.info("Adaptive scaling between %s and %s workers", minimum, maximum)
        policy.start()
        return policy

    def _stop_adaptive(self, why: str) -> None:
        with self._lock:
            policy, self._adaptive = self._adaptive, None
        if policy is not None:
            policy.stop()
            self.logger.info("Stopped adaptive scaling: %s", why)

    def _adaptive_observe(self):
        """For the Adaptive timer: the cluster as the policy sees it (None while closing)."""
        if self._closing:
            return None
        try:
            return self.scheduler.call(
                observe, self.options.threads_per_worker, self.options.memory_limit
            ).result(30)
        except RuntimeError:  # the scheduler closed meanwhile
            return None

    def _adaptive_apply(self, decision) -> None:
        """For the Adaptive timer: start workers up to ``decision.target``, retire exactly those named."""
        if self._closing:
            return
        self._scale_to(decision.target, retire=decision.retire, why="Adaptive scaling")

    # ------------------------------------------------------------------------------------ restart

    restart = restart_cluster  # client.restart (deploy/scaling.py)

    # -------------------------------------------------------------------------------------- close

    def close(self, timeout=None) -> Optional[Closing]:
        """Stop workers and the scheduler, free shared memory. Idempotent. (Inside a running event loop
        with ``asynchronous=True``: an awaitable that does it.)"""
        if self.asynchronous and in_event_loop():
            return Closing(lambda: self.close(timeout))  # awaitable: closes in a worker thread
        self._stop_adaptive("the cluster is closing")
        with self._lock:
            if self._closing:
                return None
            self._closing = True
            handles = list(self.handles.values())
            self.handles.clear()
        self.status = Status.closing
        if self.memory_monitor is not None:
            self.memory_monitor.stop()
        self.task_clients.close()
        # either may be missing: close() also cleans up after a constructor that failed half-way
        for service in (getattr(self, "listener", None), getattr(self, "services", None)):
            if service is not None:
                service.close()
        self.scheduler.close()
        for handle in handles:
            handle.close()
        for handle in handles:
            handle.stop(timeout=3)
        if self.launcher is not None:
            self.launcher.close()
        sweep_cluster(self.cluster_id)
        self.logger.info("Cluster %s closed", self.name)
        self.logs.close(workers_ending="stopped: the cluster closed")
        self.status = Status.closed
        for callback in self._when_closed:
            callback()
        return None

    def __del__(self):
        try:
            if self.status is Status.running:
                self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------------------------- report

    @property
    def dashboard_link(self) -> Optional[str]:
        services = getattr(self, "services", None)
        return services.dashboard_link if services is not None else None

    @awaitable_in_loop
    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> dict:
        return self.logs.get_logs(cluster=cluster, scheduler=scheduler, workers=workers)

    @property
    def workers(self) -> dict:
        return {h.name: h for h in self.scheduler.workers.values()}

    def _worker_facts(self) -> WorkerFacts:
        return [(h.nthreads, h.memory_limit) for h in list(self.scheduler.workers.values())]

    def _snapshot(self) -> dict:
        from ..dashboard.snapshot import cluster_snapshot

        return cluster_snapshot(self)  # with a row per worker

    def identity(self, n_workers: int = -1) -> dict:
        """dask's shape: the scheduler's identity and its workers (read on the scheduler thread)."""
        workers = self.scheduler.call(lambda s: worker_info(s.state, s.workers)).result(30)
        started = self.scheduler.started
        return scheduler_identity(
            self.cluster_id, self.scheduler_address, started, workers, n_workers
        )


def _route_worker_client(cluster, scheduler, handle, message) -> None:
    """A client inside a process worker spoke (remote/server.py serves it; imported on first use)."""
    from ..remote.server import route_worker_client

    route_worker_client(cluster, scheduler, handle, message)
