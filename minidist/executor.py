"""``client.get_executor()``: a ``concurrent.futures.Executor`` that runs calls on the cluster.

Code written against the standard executor interface (``submit``, ``map``, ``shutdown``, ``with``) runs
on minidist unchanged. Each call is a task (``pure=False``, so equal calls run again, as an executor
promises); its standard ``concurrent.futures.Future`` is resolved from the minidist future's
done-callback (the client's callback thread)::

    executor.submit(fn, x) ──► client.submit(fn, x, pure=False, **submit_kwargs) ──► minidist Future
                                                          │ add_done_callback
    concurrent.futures.Future ◄── set_result / set_exception ◄┘

The standard future counts as *running* from the moment its task finishes, so ``cancel()`` (or
``shutdown(cancel_futures=True)``) succeeds for anything not yet finished and cancels the task too.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Optional

from .errors import CancelledError


class ClientExecutor(concurrent.futures.Executor):
    """Runs calls as tasks of ``client`` with the given ``submit`` options (workers=, resources=...)."""

    def __init__(self, client, **submit_kwargs):
        self._client = client
        self._submit_kwargs = {"pure": False, **submit_kwargs}
        self._futures: set = set()  # standard futures not finished yet
        self._lock = threading.Lock()
        self._shutdown = False

    def _wrap(self, task) -> concurrent.futures.Future:
        result: concurrent.futures.Future = concurrent.futures.Future()
        result.task = task  # type: ignore[attr-defined]  # (the minidist Future, for cancel)

        def cancel_task(done: concurrent.futures.Future) -> None:
            if done.cancelled():
                task.cancel()

        def resolve(finished) -> None:
            with self._lock:
                self._futures.discard(result)
            if not result.set_running_or_notify_cancel():
                return  # cancelled meanwhile
            try:
                result.set_result(finished._result(None))
            except CancelledError as exc:
                result.set_exception(concurrent.futures.CancelledError(str(exc)))
            except BaseException as exc:  # noqa: B036 - the call's own error goes to its future
                result.set_exception(exc)

        with self._lock:
            self._futures.add(result)
        result.add_done_callback(cancel_task)
        task.add_done_callback(resolve)
        return result

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        """Run ``fn(*args, **kwargs)`` as a task; a ``concurrent.futures.Future`` for its result."""
        with self._lock:
            self._check_open()
        return self._wrap(self._client.submit(fn, *args, **{**self._submit_kwargs, **kwargs}))

    def map(self, fn, *iterables, timeout: Optional[float] = None, chunksize: int = 1):
        """Results of ``fn`` over ``iterables``, in order; ``TimeoutError`` if one is not ready within
        ``timeout`` seconds of this call. ``chunksize`` is accepted for compatibility: every call is
        its own task, and the whole map is sent in one message."""
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        with self._lock:
            self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [
            self._wrap(task) for task in self._client.map(fn, *iterables, **self._submit_kwargs)
        ]

        def results():
            try:
                futures.reverse()
                while futures:
                    future = futures.pop()
                    if deadline is None:
                        yield future.result()
                    else:
                        yield future.result(max(0.0, deadline - time.monotonic()))
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures``, cancel what has not finished; with ``wait``, wait
        for the rest."""
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            concurrent.futures.wait(pending)
