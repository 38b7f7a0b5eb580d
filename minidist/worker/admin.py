"""Worker-side helpers for cluster operations that run through ``client.run``: stacks and caches.

The scheduler ships these functions to workers with the ``run`` machinery (a thread per call, outside
the task slots), so they need no message kinds of their own::

    client.call_stack()  ─► run(task_stacks)  on each worker ─► {key: [frame lines]}
    client.replicate()   ─► run(cache_values) on chosen workers ─► values land in the local cache

``call_with_worker`` is how ``run`` calls a function: like dask, a function that takes a ``dask_worker``
argument receives the worker (here the ``WorkerRuntime``).
"""

from __future__ import annotations

import linecache
import sys
import threading
from types import FrameType
from typing import Optional

from .runtime import WorkerRuntime


def takes_worker(function) -> bool:
    """True if ``function`` has a ``dask_worker`` parameter (dask's convention for ``client.run``)."""
    import inspect  # only when a run() call comes: worker start-up stays lean

    try:
        return "dask_worker" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def call_with_worker(function, args: tuple, kwargs: dict, runtime):
    """``function(*args, **kwargs)``, with ``dask_worker=runtime`` when it asks for it."""
    if takes_worker(function) and "dask_worker" not in kwargs:
        kwargs = dict(kwargs, dask_worker=getattr(runtime, "worker_object", None) or runtime)
    return function(*args, **kwargs)


_EXECUTE_CODE = WorkerRuntime._execute.__code__


def task_stacks(keys=None, dask_worker=None) -> dict:
    """``{key: [frame lines]}`` for the tasks running right now on this worker (``keys`` only if given).

    A task thread's stack passes through ``WorkerRuntime._execute``, whose local ``key`` names the task;
    the frames above it are the task's own. Lines are ``traceback``-style, outermost first.
    """
    wanted = None if keys is None else set(keys)
    stacks: dict = {}
    me = threading.get_ident()
    for thread_id, top in sys._current_frames().items():
        if thread_id == me:
            continue
        chain = []
        frame: Optional[FrameType] = top
        while frame is not None and frame.f_code is not _EXECUTE_CODE:
            chain.append(frame)
            frame = frame.f_back
        if frame is None:
            continue  # not a task thread, or between tasks
        local = frame.f_locals
        if dask_worker is not None and local.get("self") is not dask_worker:
            continue  # thread workers share a process: another worker's task
        key = local.get("key")
        if key is None or (wanted is not None and key not in wanted):
            continue
        if dask_worker is not None and key not in dask_worker.executing:
            continue  # its function has returned; the thread is reporting the result
        stacks[key] = [_frame_line(f) for f in reversed(chain)]
    return stacks


def _frame_line(frame) -> str:
    code = frame.f_code
    # None at an instruction without a line (CPython 3.11: a frame that has just begun)
    lineno = frame.f_lineno
    line = linecache.getline(code.co_filename, lineno).strip() if lineno is not None else ""
    text = f'  File "{code.co_filename}", line {"?" if lineno is None else lineno}, in {code.co_name}\n'
    return text + (f"    {line}\n" if line else "")


def cache_values(values: dict, dask_worker=None) -> int:
    """Put copies of ``values`` (encoded as the worker would receive them) into the local cache."""
    dask_worker.cache_encoded(values)
    return len(values)
