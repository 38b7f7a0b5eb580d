"""What a worker's task threads take from: a task waiting to run (``PendingTask``), and how its
arguments become values.

A task arrives as a ``ComputeTask`` (``minidist/messages.py``); ``WorkerRuntime.submit``
(``worker/runtime.py``) files it as a ``PendingTask``. When a thread takes it, ``prepare`` gives
``(function, args, kwargs)``: for thread workers ``unpack_run_spec`` (the message holds objects), for
process workers the unpickling ``worker/process.py`` injects. ``substitute`` then puts the dependencies'
values in place of their ``DependencyRef`` markers, and the function is called.
"""

from __future__ import annotations

from typing import Any

from ..messages import ComputeTask, DependencyRef, DependencyValues


def substitute(obj: Any, values: dict) -> Any:
    """Replace every DependencyRef in lists, tuples, dicts and sets (as dask does) with its value, and
    the DEPENDENCY_VALUES marker with ``values`` itself."""
    typ = type(obj)
    if typ is DependencyRef:
        return values[obj.key]
    if typ is DependencyValues:
        return values
    if typ is tuple or typ is list:
        return typ(substitute(item, values) for item in obj)
    if typ is dict:
        return {k: substitute(v, values) for k, v in obj.items()}
    if typ is set or typ is frozenset:
        return typ(substitute(item, values) for item in obj)
    return obj


class PendingTask:
    __slots__ = ("key", "run_spec", "dependencies", "cancelled", "attempt", "may_hold")

    def __init__(self, key, run_spec, dependencies, attempt: int = 0, may_hold: bool = False):
        self.key = key
        self.run_spec = run_spec
        self.dependencies = dependencies
        self.cancelled = False
        self.attempt = attempt  # echoed in the report (see TaskState.attempt)
        self.may_hold = may_hold  # a large result may stay here (worker/holding.py)


def unpack_run_spec(run_spec: ComputeTask) -> tuple:
    """``(function, args, kwargs)`` of a thread worker's task: its message holds them as objects."""
    args, kwargs = run_spec.arguments
    return run_spec.function, args, kwargs
