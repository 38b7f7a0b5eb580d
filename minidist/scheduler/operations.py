"""Named scheduler operations: the one table that clients call, locally or over a connection.

Everything a client asks of the cluster beyond submitting work and reading results (``run``,
``who_has``, ``scheduler_info``, ``restart``, logs ...) is a method here. A local ``Client`` calls them
directly; a remote client (TCP, or a client inside a worker process) sends ``(name, args)`` and the
server side calls the same method, so both paths share one implementation and one list of names for
``blocked_handlers``. Methods block and are thread-safe: anything that reads scheduler state runs on
the scheduler thread through ``scheduler.call``; anything that waits (restart) runs on the caller's
thread so the scheduler thread never waits on itself.

Arguments and results are plain data (or ``Payload`` objects in process mode), so they can cross a wire.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from ..messages import RunOnWorkers
from . import queries
from .actor_ops import ACTOR_HANDLER_NAMES, ActorOperations
from .admin import ADMIN_HANDLER_NAMES, AdminOperations
from .coordination_ops import COORDINATION_HANDLERS, CoordinationOperations
from .plugin_ops import PLUGIN_HANDLER_NAMES, PluginOperations
from .task_stream import as_dicts, select

_CALL_TIMEOUT = 60.0

# Operation name -> the handler name that blocked_handlers refers to (dask's names where they exist).
HANDLER_NAMES = {
    "run": "run_function",
    "run_on_scheduler": "run_function",
    "restart": "restart",
    "who_has": "who_has",
    "has_what": "has_what",
    "processing": "processing",
    "nthreads": "ncores",
    "ready_workers": "identity",
    "scheduler_info": "identity",
    "get_logs": "get_logs",
    "scheduler_logs": "get_logs",
    "worker_logs": "get_logs",
    "task_stream": "get_task_stream",
    "workers_matching": "identity",
    "scale": "scale",
    "terminate": "terminate",
    **ADMIN_HANDLER_NAMES,
    **COORDINATION_HANDLERS,
    **PLUGIN_HANDLER_NAMES,
    **ACTOR_HANDLER_NAMES,
}


def accepts(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


class SchedulerOperations:
    """The operations of one cluster. ``cluster`` owns ``scheduler`` (``deploy/local.py``)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.scheduler = cluster.scheduler
        self.admin = AdminOperations(self)  # retire, replicate, versions... (scheduler/admin.py)
        # locks, queues, variables, datasets, events (scheduler/coordination_ops.py)
        self.coordination = CoordinationOperations(self.scheduler)
        self.plugins = PluginOperations(
            self
        )  # worker and scheduler plugins (scheduler/plugin_ops.py)
        self.actors = ActorOperations(self)  # actor method calls (scheduler/actor_ops.py)

    def invoke(self, name: str, *args, **kwargs):
        """Call an operation by name, as a remote client does; refuses blocked and unknown names."""
        if name not in HANDLER_NAMES or name.startswith("_"):
            raise ValueError(f"Unknown scheduler operation {name!r}")
        self.scheduler.check_handler(HANDLER_NAMES[name])
        target: Any
        if name in ADMIN_HANDLER_NAMES:
            target = self.admin
        elif name in COORDINATION_HANDLERS:
            target = self.coordination
        elif name in PLUGIN_HANDLER_NAMES:
            target = self.plugins
        elif name in ACTOR_HANDLER_NAMES:
            target = self.actors
        else:
            target = self
        return getattr(target, name)(*args, **kwargs)

    def on_scheduler(self, function, *args):
        return self.scheduler.call(function, *args).result(_CALL_TIMEOUT)

    def query(self, view, *args):
        return self.scheduler.query(view, *args).result(_CALL_TIMEOUT)

    # ------------------------------------------------------------------------------------- workers

    def workers_matching(self, workers=None) -> list:
        """Addresses for worker addresses or names (every worker when None)."""
        handles = list(self.scheduler.workers.values())
        if workers is None:
            return [h.address for h in handles]
        if isinstance(workers, (str, int)):
            workers = [workers]
        wanted = {str(w) for w in workers}
        return [h.address for h in handles if h.address in wanted or str(h.name) in wanted]

    def ready_workers(self) -> int:
        """How many workers can run tasks now (a process worker counts once it said hello)."""
        return sum(1 for handle in list(self.scheduler.workers.values()) if handle.started)

    def nthreads(self, workers=None) -> dict:
        addresses = set(self.workers_matching(workers))
        return {a: h.nthreads for a, h in list(self.scheduler.workers.items()) if a in addresses}

    def scheduler_info(self, n_workers: int = -1) -> dict:
        return self.cluster.identity(n_workers)

    def who_has(self, keys=None) -> dict:
        return self.query(queries.who_has, keys)

    def has_what(self, workers=None) -> dict:
        return self.query(queries.has_what, self.workers_matching(workers))

    def processing(self, workers=None) -> dict:
        return self.query(queries.processing, self.workers_matching(workers))

    def task_stream(self, start=None, stop=None, count=None) -> list:
        """dask-shaped records of tasks that ended at/after ``start`` (timestamps), newest ``count``."""
        records = self.on_scheduler(lambda s: select(s.task_stream, start, stop, count))
        return as_dicts(records)

    # ----------------------------------------------------------------------------------------- run

    def run(self, function_blob, args_payload, workers=None) -> dict:
        """Run a function on workers outside the task system.

        ``function_blob``/``args_payload`` are what ``pack_call`` made. Returns ``{address: (ok, value)}``
        where value is the encoded result, or ``(exception, traceback)`` when ``ok`` is false.
        """
        targets = tuple(self.workers_matching(workers))
        answer = self.scheduler.ask(RunOnWorkers, function_blob, args_payload, targets)
        return answer.result(_CALL_TIMEOUT)

    def run_on_scheduler(self, function_blob, args_payload):
        """Run a function on the scheduler thread; ``dask_scheduler=`` is passed if it takes one."""
        plane = self.scheduler.data_plane
        function, args, kwargs = plane.unpack_call(function_blob, args_payload)
        if accepts(function, "dask_scheduler"):
            kwargs["dask_scheduler"] = self.scheduler
        result = self.on_scheduler(lambda s: function(*args, **kwargs))
        return plane.pack_result(result)

    # ------------------------------------------------------------------------------ cluster-wide

    def restart(self, timeout=None, wait_for_workers: bool = True) -> None:
        self.cluster.restart(timeout, wait_for_workers)

    def scale(self, n: int) -> None:
        self.cluster.scale(n)

    def terminate(self) -> None:
        """Close the cluster: workers, scheduler, listener (``Client.shutdown``, dask's "terminate").
        A remote caller's connection closes with it, which is how it learns the close is done."""
        self.cluster.close()

    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> dict:
        return self.cluster.get_logs(cluster=cluster, scheduler=scheduler, workers=workers)

    def scheduler_logs(self, n: Optional[int] = None) -> list:
        return self.cluster.logs.scheduler_lines(n)

    def worker_logs(self, n: Optional[int] = None, workers=None) -> dict:
        addresses = self.workers_matching(workers)
        return {a: self.cluster.logs.worker_lines(a, n) for a in addresses}
