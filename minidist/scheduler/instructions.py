"""The scheduler's instructions: what ``SchedulerState`` returns for the shell (``scheduler/server.py``) to
carry out. Plain named tuples: cheap to build on the hot path and easy to assert on in tests. The events'
payloads (``NewTask``, ``RunSpec``) and the messages between processes live in ``minidist/messages.py``."""

from __future__ import annotations

from typing import Any, Hashable, NamedTuple

from ..messages import NewTask  # noqa: F401 (re-exported: the state's input)

Key = Hashable

# ---------------------------------------------------------------------------------------- instructions


class Execute(NamedTuple):
    """Send ``key`` to ``worker``; ``missing_deps`` are dependencies the worker does not hold yet."""

    worker: str
    key: Key
    run_spec: Any
    dependencies: tuple
    missing_deps: tuple
    attempt: int = 0  # which assignment of the key this is; the worker's report names it
    may_hold: bool = False  # the worker may keep a large result to itself (scheduler/lineage.py)


class Publish(NamedTuple):
    """``worker`` holds ``keys`` only in its own memory: it should publish them (serialise them, large
    buffers into shared memory, and report them as results) because a client or another worker needs
    them."""

    worker: str
    keys: tuple


class FreeOnWorker(NamedTuple):
    """The worker should drop these keys: cached values, queued or running copies (result discarded)."""

    worker: str
    keys: tuple


class AskToRelease(NamedTuple):
    """Ask ``worker`` to give back those of ``keys`` it has not started (for an idle worker to take);
    it answers with ``QueuedReleased`` and the state moves only what it gave back."""

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
    """These arguments will never be needed again: their task finished (results are never recomputed),
    or was dropped because an equal task exists. The shell frees them (and the shared memory behind
    them) now rather than when the key goes."""

    run_spec: Any
