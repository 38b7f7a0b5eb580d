"""minidist: a small, fast local task engine with the API of dask.distributed's Client.

    from minidist import Client
    client = Client()                       # a LocalCluster sized to this machine
    future = client.submit(pow, 2, 10)
    future.result()                         # 1024

Public names only, imported on first use: worker processes import ``minidist.worker.process`` and
should not pay for the client, the cluster manager or the dashboard. See docs/architecture.md.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Client": "client",
    "Future": "futures",
    "as_completed": "futures",
    "wait": "futures",
    "fire_and_forget": "futures",
    "futures_of": "futures",
    "LocalCluster": "deploy.local",
    "SubprocessCluster": "deploy.subprocess",
    "Adaptive": "deploy.adaptive",
    "Worker": "deploy.worker_hooks",
    "default_client": "context",
    "get_client": "context",
    "get_worker": "context",
    "secede": "context",
    "rejoin": "context",
    "worker_client": "context",
    "progress": "progress",
    "Lock": "primitives",
    "MultiLock": "primitives",
    "Semaphore": "primitives",
    "Event": "primitives",
    "Queue": "primitives",
    "Variable": "primitives",
    "print": "task_output",
    "warn": "task_output",
    "WorkerPlugin": "worker.plugins",
    "UploadFile": "worker.shipping",
    "UploadDirectory": "worker.shipping",
    "Environ": "worker.shipping",
    "PipInstall": "worker.shipping",
    "SchedulerPlugin": "scheduler.plugins",
    "performance_report": "diagnostics",
    "get_task_stream": "diagnostics",
    "get_task_metadata": "diagnostics",
    "Security": "security",
    "Status": "status",
    "CancelledError": "errors",
    "CommClosedError": "errors",
    "KilledWorker": "errors",
    "Reschedule": "errors",
    "ActorLost": "errors",
    "Actor": "actors",
    "ActorFuture": "actors",
    "SchedulerError": "errors",
    "TaskSerializationError": "errors",
    "TimeoutError": "errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'minidist' has no attribute {name!r}")
    if name in ("LocalCluster", "SubprocessCluster"):
        importlib.import_module(".context", __name__)  # how cluster.get_client() makes a Client
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    # what a user can import from here: not this module's own helpers (``importlib``, ``annotations``)
    return sorted({*__all__, "__version__"})
