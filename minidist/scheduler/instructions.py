"""The scheduler's vocabulary: the event payload ``NewTask`` and the instructions ``SchedulerState``
returns for the shell (``scheduler/server.py``) to carry out. Plain named tuples: cheap to build on the
hot path and easy to assert on in tests."""

from __future__ import annotations

from typing import Any, Hashable, NamedTuple, Optional

Key = Hashable

# ---------------------------------------------------------------------------------------------- inputs


class NewTask(NamedTuple):
    """One task of an ``update_graph`` event."""

    key: Key
    dependencies: tuple = ()
    run_spec: Any = None  # opaque to the state: the shell's description of what to call
    priority: int = 0  # user priority: higher runs first
    retries: int = 0
    workers: Optional[frozenset] = None  # addresses or names this task may run on
    allow_other_workers: bool = False
    resources: Optional[dict] = None  # abstract resources needed, e.g. {"GPU": 1}
    prefix: str = ""


# ---------------------------------------------------------------------------------------- instructions


class Execute(NamedTuple):
    """Send ``key`` to ``worker``; ``missing_deps`` are dependencies the worker does not hold yet."""

    worker: str
    key: Key
    run_spec: Any
    dependencies: tuple
    missing_deps: tuple


class FreeOnWorker(NamedTuple):
    """The worker should drop these keys: cached values, queued or running copies (result discarded)."""

    worker: str
    keys: tuple


class Report(NamedTuple):
    """Tell the clients in ``clients`` that ``key`` reached ``status``: memory, erred or cancelled."""

    key: Key
    clients: tuple
    status: str
    exception: Any = None
    traceback: Any = None


class Forget(NamedTuple):
    """The key is gone: the shell drops its stored value and its run_spec (and shared memory behind them)."""

    key: Key
    run_spec: Any = None


class RetireWorker(NamedTuple):
    """A retiring worker has finished its work and can now be shut down."""

    worker: str


class ReleaseArguments(NamedTuple):
    """A task finished: its arguments will never be needed again (results are never recomputed), so
    the shell may free them (and the shared memory behind them) now rather than when the key goes."""

    run_spec: Any
