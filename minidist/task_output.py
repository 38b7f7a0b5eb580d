"""``minidist.print`` and ``minidist.warn``: output of tasks that reaches the clients (dask.distributed's
``print``/``warn``).

In a task they print (or warn) where the task runs and log a "print" (or "warn") event through the
task's client; every listening client shows it (``client_events.py``). Outside a task they are the
builtin ``print`` and ``warnings.warn``.
"""

from __future__ import annotations

import builtins
import os
import pickle
import sys
import warnings

from .client_events import task_runtime


def print(*args, sep: str = " ", end: str = "\n", file=None, flush: bool = False) -> None:
    """``print`` for tasks: prints where the task runs and on the stdout (or stderr) of every client
    of the cluster. Outside a task it is the builtin ``print``."""
    builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
    if task_runtime() is None:
        return
    from .context import get_client

    if file not in (None, sys.stdout, sys.stderr):
        return  # printed to a file of the task's own: nothing to forward
    message = {
        "args": tuple(a if _picklable(a) else str(a) for a in args),
        "sep": sep,
        "end": end,
        "file": 2 if file is sys.stderr else 1,
        "pid": os.getpid(),
    }
    get_client().log_event("print", message)


def warn(message, category=UserWarning, stacklevel: int = 1, source=None) -> None:
    """``warnings.warn`` for tasks: warns where the task runs and in every client of the cluster."""
    warnings.warn(message, category, stacklevel + 1, source)
    if task_runtime() is None:
        return
    from .context import get_client

    try:
        blob = pickle.dumps(message)
    except Exception:
        blob = pickle.dumps(str(message))
    get_client().log_event(
        "warn", {"message": blob, "category": pickle.dumps(category), "pid": os.getpid()}
    )


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True
