"""Turning ``LocalCluster(...)`` keywords into a plan, with dask's defaults and dask's deprecations.

``ClusterOptions.from_arguments`` is the one place that knows how ``n_workers``, ``threads_per_worker``
and ``processes`` default from each other and from the machine's cores, how ``memory_limit`` is read,
and which worker keywords exist. Everything else reads the resulting frozen plan.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from .memory import parse_memory_limit

# Worker keywords that minidist's workers understand (dask's Worker takes many more; those that would
# silently do nothing here are refused rather than ignored).
WORKER_KEYWORDS = {"memory_limit", "resources", "nthreads", "env", "name", "local_directory",
                   "memory_target_fraction", "memory_spill_fraction", "memory_pause_fraction",
                   "memory_terminate_fraction", "lifetime", "death_timeout"}  # fmt: skip


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
    silence_logs: Any
    host: Optional[str]
    scheduler_port: int
    dashboard_address: Optional[str]
    worker_dashboard_address: Optional[str]
    service_kwargs: dict
    security: Any
    protocol: Optional[str]
    interface: Optional[str]
    blocked_handlers: tuple
    worker_class: Any
    scheduler_kwargs: dict
    worker_env: Optional[dict]
    memory_fractions: dict = field(default_factory=dict)

    @classmethod
    def from_arguments(cls, *, name, n_workers, threads_per_worker, processes, host, ip, scheduler_port,
                       silence_logs, dashboard_address, worker_dashboard_address, diagnostics_port,
                       service_kwargs, security, protocol, blocked_handlers, interface, worker_class,
                       scheduler_kwargs, worker_kwargs) -> ClusterOptions:  # fmt: skip
        unknown = set(worker_kwargs) - WORKER_KEYWORDS
        if unknown:
            raise TypeError(
                f"LocalCluster got unexpected keyword argument(s) {sorted(unknown)}. It accepts dask's "
                f"LocalCluster arguments and these worker arguments: {sorted(WORKER_KEYWORDS)}"
            )
        if ip is not None:
            warnings.warn("The ip keyword has been moved to host; use host=...", FutureWarning,
                          stacklevel=4)  # fmt: skip
            host = host or ip
        if diagnostics_port is not None:
            warnings.warn("diagnostics_port has been deprecated; use dashboard_address=...",
                          FutureWarning, stacklevel=4)  # fmt: skip
            dashboard_address = f":{diagnostics_port}" if isinstance(diagnostics_port, int) else diagnostics_port
        if "nthreads" in worker_kwargs:
            nthreads = worker_kwargs.pop("nthreads")
            if threads_per_worker is not None and threads_per_worker != nthreads:
                raise ValueError("Give threads_per_worker or nthreads, not both with different values")
            threads_per_worker = nthreads
        if processes is None:
            processes = not _is_thread_worker_class(worker_class)
        for label, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{label} must be a non-negative int, not {value!r}")
        if threads_per_worker == 0:
            raise ValueError("threads_per_worker must be at least 1")
        cores = cpu_count()
        if n_workers is None and threads_per_worker is None:
            if processes:
                n_workers, threads_per_worker = split_cores(cores)
            else:
                n_workers, threads_per_worker = 1, cores
        elif n_workers is None:
            n_workers = max(1, cores // threads_per_worker)
        elif threads_per_worker is None:
            threads_per_worker = max(1, cores // n_workers) if n_workers else 1
        memory_limit = parse_memory_limit(worker_kwargs.get("memory_limit", "auto"), max(n_workers, 1))
        level = silence_logs
        if isinstance(level, str):
            level = logging.getLevelName(level.upper())
        fractions = {k: worker_kwargs[k] for k in
                     ("memory_pause_fraction", "memory_terminate_fraction") if k in worker_kwargs}  # fmt: skip
        if dashboard_address == "":
            dashboard_address = None
        return cls(
            name=name if name is not None else worker_kwargs.get("name"),
            n_workers=n_workers, threads_per_worker=threads_per_worker, processes=bool(processes),
            memory_limit=memory_limit, resources=worker_kwargs.get("resources"),
            silence_logs=level, host=host, scheduler_port=scheduler_port or 0,
            dashboard_address=dashboard_address, worker_dashboard_address=worker_dashboard_address,
            service_kwargs=dict(service_kwargs or {}), security=security, protocol=protocol,
            interface=interface, blocked_handlers=tuple(blocked_handlers or ()),
            worker_class=worker_class, scheduler_kwargs=dict(scheduler_kwargs or {}),
            worker_env=worker_kwargs.get("env"), memory_fractions=fractions,
        )  # fmt: skip


def _is_thread_worker_class(worker_class) -> bool:
    if worker_class is None:
        return False
    return getattr(worker_class, "runs_in_threads", False)
