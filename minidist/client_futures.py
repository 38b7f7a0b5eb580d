"""The client's book of futures: states, reference counts, batched releases, waiting, callbacks.

Mixed into ``Client``. Every ``Future`` of one key shares a ``FutureState`` here and counts one
reference. The scheduler thread resolves states in batches through ``report`` (one lock, one
``notify_all`` per batch); waiters sleep on the client's condition variable. When a key's last future
goes, the key joins the open batch of releases and one ``ReleasePending`` message tells the scheduler
to collect the batch with ``take_releases``. Done-callbacks run on one lazily started thread per client;
an exception in one is logged and the thread carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from .asynchronous import LoopWaker
from .futures import Future, FutureState
from .messages import FIRE_AND_FORGET, ReleasePending, UpdateGraph

logger = logging.getLogger("minidist.client")


class FutureBook:
    """Expects ``self.scheduler``, ``self.id``, ``self._closed``, ``self._lock``/``self._condition``,
    ``self._states``, ``self._refcounts``, ``self._releases``, ``self._open_releases``, ``self._callbacks``."""

    # ------------------------------------------------------------------------------------ reporting

    def _report(self, items: list) -> None:
        """Called on the scheduler thread with ``TaskStatus`` items (key, status, exception, traceback)."""
        fire = []
        with self._condition:
            states = self._states
            for key, status, exception, tb in items:
                state = states.get(key)
                if state is None:
                    continue
                if status == "memory":
                    state.status = "finished"
                elif status == "erred":
                    state.status = "error"
                    state.exception = exception
                    state.traceback = tb
                    if isinstance(tb, str) and tb and isinstance(exception, BaseException):
                        state.remote_traceback = tb
                        if hasattr(exception, "add_note") and tb not in getattr(
                            exception, "__notes__", ()
                        ):
                            exception.add_note(
                                "Traceback from the worker (most recent call last):\n" + tb
                            )
                else:
                    state.status = "cancelled" if status == "cancelled" else "lost"
                if state.callbacks:
                    fire.append((key, state.callbacks))
                    state.callbacks = None
            self._condition.notify_all()
        if fire:
            for _key, callbacks in fire:
                for fn in callbacks:
                    if type(fn) is LoopWaker:
                        fn()  # an awaiting coroutine: wake its loop now (asynchronous.py)
                    else:
                        self._callback_queue().put(fn)

    report = _report  # the scheduler calls sessions' .report

    def _wait_for(self, state: FutureState, timeout: Optional[float]) -> bool:
        with self._condition:
            return (
                self._condition.wait_for(lambda: state.status != "pending" or self._closed, timeout)
                and state.status != "pending"
            )

    def _wait_until(self, predicate, deadline: Optional[float]) -> bool:
        with self._condition:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._condition.wait_for(lambda: predicate() or self._closed, timeout)

    # ------------------------------------------------------------------------------------ references

    def _acquire(self, key) -> FutureState:
        """A new Future for ``key`` exists: count it, tell the scheduler if it is the first one."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = FutureState()
                self._refcounts[key] = 1
                first = True
                self._cut_releases()
            else:
                self._refcounts[key] += 1
                first = False
        if first and not self._closed:
            self.scheduler.post(UpdateGraph(self.id, (), (key,)))
        return state

    def _new_future(self, key) -> Future:
        """A Future for a key this call is about to submit (no separate 'wants' message needed)."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = FutureState()
                self._refcounts[key] = 1
            else:
                self._refcounts[key] += 1
            self._cut_releases()
        return Future(key, self, state=state)

    def _cut_releases(self) -> None:
        """(Lock held.) A message that makes the scheduler want keys is about to be posted: releases
        from now on go in a new batch, whose message follows it. Otherwise a release could join a batch
        whose message was posted earlier and reach the scheduler before the task it releases."""
        self._open_releases = None

    def _release_key(self, key) -> None:
        with self._lock:
            count = self._refcounts.get(key, 0) - 1
            if count > 0:
                self._refcounts[key] = count
                return
            self._refcounts.pop(key, None)
            self._states.pop(key, None)
            batch = self._open_releases
            if batch is None:
                batch = self._open_releases = []
                self._releases.append(batch)
            batch.append(key)
            first = len(batch) == 1
        if first and not self._closed:
            # one message for a whole burst of releases (e.g. a list of 10,000 futures dropped at once):
            # the scheduler collects them with take_releases() when it gets to this message
            self.scheduler.post(ReleasePending(self.id))

    def take_releases(self) -> list:
        """Called once per ``ReleasePending`` message: the oldest batch of released keys."""
        with self._lock:
            if not self._releases:
                return []
            keys = self._releases.popleft()
            if keys is self._open_releases:
                self._open_releases = None
        return keys

    def _fire_and_forget(self, key) -> None:
        # a pseudo-client wants the key until it is done (see scheduler.server.FireAndForget)
        with self._lock:
            self._cut_releases()
        self.scheduler.post(UpdateGraph(FIRE_AND_FORGET, (), (key,)))

    # ------------------------------------------------------------------------------ callbacks

    def _callback_queue(self):
        if self._callbacks is None:
            import queue

            with self._lock:
                if self._callbacks is None:
                    self._callbacks = queue.SimpleQueue()
                    threading.Thread(
                        target=self._callback_loop,
                        args=(self._callbacks,),
                        name="minidist-callbacks",
                        daemon=True,
                    ).start()
        return self._callbacks

    def _callback_loop(self, callbacks) -> None:
        while True:
            fn = callbacks.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:
                logger.exception("a done-callback raised; the client carries on")
            # the closure holds its future: waiting for the next callback must not keep it alive
            del fn

    def _add_callback(self, future: Future, fn) -> None:
        def call() -> None:
            fn(future)

        with self._lock:
            state = future._state
            if state.status == "pending":
                if state.callbacks is None:
                    state.callbacks = []
                state.callbacks.append(call)
                return
        self._callback_queue().put(call)
