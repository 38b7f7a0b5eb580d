"""The error vocabulary users see.

Every error raised by minidist itself (as opposed to the user's own exceptions, which are re-raised
unchanged with their remote traceback) is one of these. Messages say what happened and what to do.
"""

from __future__ import annotations

import builtins
import concurrent.futures

# ``minidist.TimeoutError``, as ``distributed.TimeoutError``: the built-in one (timeouts of result(),
# gather(), wait() raise FutureTimeoutError, a subclass, so ``except TimeoutError`` catches them)
TimeoutError = builtins.TimeoutError


class KilledWorker(Exception):
    """A task was running on too many workers that died (``allowed_failures`` deaths).

    The message names the task, the last worker that died and why (exit code, signal, memory).
    """

    def __init__(self, key, last_worker: str = "", reason: str = "", attempts: int = 0):
        self.key = key
        self.last_worker = last_worker
        self.reason = reason
        self.attempts = attempts
        super().__init__(
            f"Attempted to run task {key!r} on {attempts} different workers, but all those workers died "
            f"while running it. The last worker was {last_worker} ({reason}). The task may be crashing "
            "its worker (a segfault, os._exit, or running out of memory); inspect it with "
            "client.get_worker_logs(), or raise allowed_failures if the deaths were unrelated."
        )

    def __reduce__(self):
        return (KilledWorker, (self.key, self.last_worker, self.reason, self.attempts))


class CancelledError(concurrent.futures.CancelledError):
    """The future was cancelled (by ``Future.cancel()``, ``client.cancel`` or ``client.restart``)."""


class FutureTimeoutError(TimeoutError):
    """Raised by ``result(timeout=...)``/``wait(timeout=...)`` when time runs out; the work goes on."""


class CommClosedError(ConnectionError):
    """The connection to the scheduler or a worker closed."""


class WorkerStartError(RuntimeError):
    """Worker processes keep dying before they could start; see the message for their output."""


class ClientClosedError(RuntimeError):
    """The client (or its cluster) was closed; create a new Client to go on."""


class TaskSerializationError(TypeError):
    """A task's function, argument or result could not be pickled."""


class SchedulerError(RuntimeError):
    """The scheduler thread stopped on an unexpected error (a bug in minidist): every future still
    waiting errs with this, naming the cause; finished results stay readable. Close the client and the
    cluster, and start new ones to go on."""


class Reschedule(Exception):
    """Raise it in a task to put the task back in the queue: it runs again (perhaps on another worker),
    as if it had not started; it is not an error and uses none of the task's ``retries``."""


class ActorLost(RuntimeError):
    """The worker an actor lived on is gone (it died, retired or was restarted): so is the actor."""
