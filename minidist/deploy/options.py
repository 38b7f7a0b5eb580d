"""Turning ``LocalCluster(...)`` keywords into a plan, with dask's defaults and dask's deprecations.

``ClusterOptions.from_arguments`` is the one place that knows how ``n_workers``, ``threads_per_worker``
and ``processes`` default from each other and from the machine's cores, how ``memory_limit`` is read,
which worker class runs tasks, and which worker and scheduler keywords exist. Everything else reads the
resulting frozen plan::

    LocalCluster(**keywords) ──► from_arguments ──► ClusterOptions (frozen)
                                   │ TypeError: unknown keyword     ├─► deploy/local.py (workers, scale)
                                   │ ValueError: nonsense value     ├─► scheduler (scheduler_kwargs)
                                   │ FutureWarning: ip, diagnostics_port
                                   └────────────────────────────────└─► remote/, services.py (network)
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from .dask_config import dask_setting
from .memory import parse_memory_limit

# Worker keywords that minidist's workers understand. dask's Worker takes many more; those that would
# change behaviour here without being honoured (``lifetime`` ...) are refused rather than ignored. The
# few accepted without effect have nothing to do in minidist: results live in the client process, so
# there is no spilling (``memory_target_fraction``/``memory_spill_fraction``) and no scratch directory
# (``local_directory``), and workers never wait for a scheduler (``death_timeout``).
WORKER_KEYWORDS = {
    "memory_limit",
    "resources",
    "nthreads",
    "env",
    "local_directory",
    "death_timeout",
    "memory_target_fraction",
    "memory_spill_fraction",
    "memory_pause_fraction",
    "memory_terminate_fraction",
}

# scheduler_kwargs= that minidist's scheduler understands.
SCHEDULER_KEYWORDS = {"allowed_failures"}

# dask's memory thresholds (distributed.worker.memory.pause / .terminate)
DEFAULT_PAUSE_FRACTION = 0.8
DEFAULT_TERMINATE_FRACTION = 0.95


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_cores(cores: int) -> tuple[int, int]:
    """dask's default mixture: up to 4 cores one process each; beyond, a factor near the square root."""
    if cores <= 4:
        return cores, 1
    processes = min(f for f in range(1, cores + 1) if cores % f == 0 and f >= math.sqrt(cores))
    return processes, cores // processes


@dataclass(frozen=True)
class ClusterOptions:
    name: Any
    n_workers: int
    threads_per_worker: int
    processes: bool
    memory_limit: Optional[int]
    resources: Optional[dict]
    silence_logs: Any  # as given; ClusterLogs reads (and validates) it
    host: Optional[str]
    scheduler_port: int
    dashboard_address: Optional[str]
    worker_dashboard_address: Optional[str]
    service_kwargs: dict
    security: Any
    protocol: Optional[str]
    interface: Optional[str]
    blocked_handlers: tuple
    worker_class: Any  # a WorkerRuntime subclass, or None for the plain runtime
    scheduler_kwargs: dict
    worker_env: Optional[dict]
    memory_fractions: dict = field(
        default_factory=dict
    )  # "pause"/"terminate" -> fraction or None (off)
    dashboard_token: Optional[str] = (
        None  # every dashboard request must present it (None: no token)
    )

    @property
    def serves_dashboards(self) -> bool:
        """Whether a dashboard is asked for, the cluster's or one per worker: neither address has one of
        the forms that turn it off (``dashboard/server.py``'s ``parse_dashboard_address``), so a cluster
        without a dashboard does not import the HTTP server."""
        addresses = (self.dashboard_address, self.worker_dashboard_address)
        return not all(a is None or a is False or a == "" for a in addresses)

    @classmethod
    def from_arguments(
        cls,
        *,
        name,
        n_workers,
        threads_per_worker,
        processes,
        host,
        ip,
        scheduler_port,
        silence_logs,
        dashboard_address,
        worker_dashboard_address,
        diagnostics_port,
        service_kwargs,
        dashboard_token=None,
        security,
        protocol,
        blocked_handlers,
        interface,
        worker_class,
        scheduler_kwargs,
        worker_kwargs,
    ) -> ClusterOptions:
        worker_kwargs = dict(worker_kwargs)
        unknown = set(worker_kwargs) - WORKER_KEYWORDS
        if unknown:
            raise TypeError(
                f"LocalCluster got unexpected keyword argument(s) {sorted(unknown)}. It accepts dask's "
                f"LocalCluster arguments and these worker arguments: {sorted(WORKER_KEYWORDS)}"
            )
        scheduler_kwargs = dict(scheduler_kwargs or {})
        unknown = set(scheduler_kwargs) - SCHEDULER_KEYWORDS
        if unknown:
            raise TypeError(
                f"scheduler_kwargs got unexpected keyword argument(s) {sorted(unknown)}; "
                f"minidist's scheduler accepts {sorted(SCHEDULER_KEYWORDS)}"
            )
        scheduler_kwargs.setdefault(
            "allowed_failures", dask_setting("distributed.scheduler.allowed-failures", 3)
        )
        _check_count("allowed_failures", scheduler_kwargs["allowed_failures"])
        scheduler_kwargs["work_stealing"] = bool(
            dask_setting("distributed.scheduler.work-stealing", True)
        )
        if ip is not None:
            warnings.warn(
                "The ip keyword has been moved to host; use host=...", FutureWarning, stacklevel=4
            )
            host = host or ip
        if diagnostics_port is not None:
            warnings.warn(
                "diagnostics_port has been deprecated; use dashboard_address=...",
                FutureWarning,
                stacklevel=4,
            )
            dashboard_address = (
                f":{diagnostics_port}" if isinstance(diagnostics_port, int) else diagnostics_port
            )
        if "nthreads" in worker_kwargs:
            nthreads = worker_kwargs.pop("nthreads")
            if threads_per_worker is not None and threads_per_worker != nthreads:
                raise ValueError(
                    "Give threads_per_worker or nthreads, not both with different values"
                )
            threads_per_worker = nthreads
        runtime_class, runs_in_threads = resolve_worker_class(worker_class)
        if processes is None:
            processes = not runs_in_threads
        for label, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
            if value is not None:
                _check_count(label, value)
        if threads_per_worker == 0:
            raise ValueError("threads_per_worker must be at least 1")
        n_workers, threads_per_worker = default_sizes(
            n_workers, threads_per_worker, bool(processes)
        )
        memory_limit = parse_memory_limit(
            worker_kwargs.get("memory_limit", "auto"), max(n_workers, 1)
        )
        resources = worker_kwargs.get("resources")
        if resources is not None and not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict such as {{'GPU': 2}}, not {resources!r}")
        if dashboard_address == "":
            dashboard_address = None
        return cls(
            name=name,
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=bool(processes),
            memory_limit=memory_limit,
            resources=resources,
            silence_logs=silence_logs,
            host=host,
            scheduler_port=scheduler_port or 0,
            dashboard_address=dashboard_address,
            worker_dashboard_address=worker_dashboard_address,
            service_kwargs=dict(service_kwargs or {}),
            security=security,
            protocol=protocol,
            interface=interface,
            blocked_handlers=tuple(blocked_handlers or ()),
            worker_class=runtime_class,
            scheduler_kwargs=scheduler_kwargs,
            worker_env=worker_kwargs.get("env"),
            memory_fractions=memory_fractions(worker_kwargs),
            dashboard_token=_dashboard_token(dashboard_token),
        )


def _dashboard_token(token) -> Optional[str]:
    if token is None or token is False:
        return None
    # the dashboard's module (and http.server) only when a token is asked for: a cluster's start does
    # not wait for its import
    from ..dashboard.access import make_token

    return make_token(token)


def default_sizes(n_workers, threads_per_worker, processes: bool) -> tuple[int, int]:
    """dask's rules for whichever of ``n_workers`` and ``threads_per_worker`` is missing."""
    cores = cpu_count()
    if n_workers is None and threads_per_worker is None:
        return split_cores(cores) if processes else (1, cores)
    if n_workers is None:
        return (max(1, cores // threads_per_worker) if processes else 1), threads_per_worker
    if threads_per_worker is None:
        # overcommit rather than undercommit; with no workers yet, later ones get every core (as dask)
        return n_workers, max(1, math.ceil(cores / n_workers)) if n_workers else cores
    return n_workers, threads_per_worker


def memory_fractions(worker_kwargs: dict) -> dict:
    """``{"pause": f, "terminate": f}`` from memory_pause_fraction/memory_terminate_fraction, else dask's
    configuration (``dask_config.py``); None is off."""
    fractions: dict[str, Optional[float]] = {}
    for what, default in (
        ("pause", DEFAULT_PAUSE_FRACTION),
        ("terminate", DEFAULT_TERMINATE_FRACTION),
    ):
        keyword = f"memory_{what}_fraction"
        if keyword in worker_kwargs:
            value = worker_kwargs[keyword]
        else:
            value = dask_setting(f"distributed.worker.memory.{what}", default)
            keyword = f"dask's distributed.worker.memory.{what}"
        if value is None or value is False:
            fractions[what] = None
        elif (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not 0 < float(value) <= 1
        ):
            raise ValueError(
                f"{keyword} must be a fraction in (0, 1], or False to turn it off; got {value!r}"
            )
        else:
            fractions[what] = float(value)
    return fractions


def resolve_worker_class(worker_class) -> tuple[Any, bool]:
    """(the runtime class to instantiate or None for the default, whether it runs in threads by default).

    minidist runs tasks in a ``WorkerRuntime``; ``worker_class`` may be a subclass of it (usually of
    ``minidist.deploy.worker_hooks.Worker``, whose hooks are documented there). A class sets
    ``runs_in_threads = True`` to make ``processes`` default to False. dask's own ``distributed.Worker`` and
    ``distributed.Nanny`` are understood as dask means them (a worker in threads of this process, a worker
    in its own process), with minidist's runtime doing the work.
    """
    if worker_class is None:
        return None, False
    from ..worker.runtime import WorkerRuntime

    if isinstance(worker_class, type) and issubclass(worker_class, WorkerRuntime):
        return worker_class, bool(getattr(worker_class, "runs_in_threads", False))
    module = getattr(worker_class, "__module__", "") or ""
    if module.split(".")[0] == "distributed" and getattr(worker_class, "__name__", "") in (
        "Worker",
        "Nanny",
    ):
        return None, worker_class.__name__ == "Worker"
    raise TypeError(
        f"worker_class={worker_class!r} is not a minidist worker class. Subclass "
        "minidist.deploy.worker_hooks.Worker (hooks: setup, teardown, before_task, after_task)."
    )


def _check_count(label: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{label} must be a non-negative int, not {value!r}")
