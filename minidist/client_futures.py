"""The client's book of futures: states, reference counts, batched releases, waiting, callbacks.

One ``FutureBook`` per ``Client`` (built by its constructor with the client's id and the scheduler's
``post``). Every ``Future`` of one key shares a ``FutureState`` here and counts one
reference. The scheduler thread resolves states in batches through ``report`` (one lock per batch): a
thread waiting for one future (``result()``) sleeps on a lock of its own, kept in the state, which the
report releases, so a result wakes its waiter and nobody else; threads waiting for a predicate over
several (``wait_until``) sleep on the client's condition variable, notified once per batch while any
waits. When a key's last future
goes, the key joins the open batch of releases and one ``ReleasePending`` message tells the scheduler
to collect the batch with ``take_releases``. Done-callbacks run on one lazily started thread per client;
an exception in one is logged and the thread carries on.
"""

from __future__ import annotations

import _thread
import collections
import logging
import queue
import threading
import time
from typing import Any, Callable, Optional

from .asynchronous import LoopWaker
from .futures import Future, FutureState
from .messages import FIRE_AND_FORGET, ReleasePending, UpdateGraph
from .sparse import right_size_in_place

logger = logging.getLogger("minidist.client")

_RELEASES_LOOKED_AT = 8  # batches, and keys a batch, that ``releasing`` reads at most


class FutureBook:
    """The futures of one client: what the scheduler reports resolves them, waiters sleep on
    ``condition``, dropped keys are batched for the scheduler (see the module docstring)."""

    def __init__(self, client_id: str, post: Callable[[Any], None]):
        self.client_id = client_id
        self._post = post  # the scheduler's inbox (local, or a remote link's)
        self.states: dict[Any, FutureState] = {}  # key -> the state its futures share
        self._refcounts: dict[Any, int] = {}  # key -> number of live Future objects
        # keys whose last Future went, not yet told to the scheduler: batches, oldest first, one
        # ``ReleasePending`` message each; a submission closes the open batch (see cut_releases)
        self._releases: collections.deque[list] = collections.deque()
        self._open_releases: Optional[list] = None
        self.lock = threading.Lock()
        self.condition = threading.Condition(self.lock)
        self._waiting_until = 0  # threads in wait_until (report notifies the condition only then)
        self._callbacks: Optional[queue.SimpleQueue] = None  # lazily started callback thread
        self.closed = False

    # ------------------------------------------------------------------------------------ reporting

    def report(self, items: list, wakes: Optional[list] = None) -> None:
        """Called on the scheduler thread with ``TaskStatus`` items (key, status, exception, traceback).

        ``wakes``: a list to put the locks of threads waiting in ``result()`` in, for the caller to
        release once it is about to block (the scheduler thread, right before it polls: a thread woken
        while the caller still runs Python would wake only to wait for the GIL); None: released here."""
        fire = []
        with self.condition:
            states = self.states
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
                if state.waiters:
                    if wakes is None:
                        for waiter in state.waiters:
                            waiter.release()
                    else:
                        wakes.extend(state.waiters)
                    state.waiters = None
            if self._waiting_until:
                self.condition.notify_all()
        if fire:
            for _key, callbacks in fire:
                for fn in callbacks:
                    if type(fn) is LoopWaker:
                        fn()  # an awaiting coroutine: wake its loop now (asynchronous.py)
                    else:
                        self._callback_queue().put(fn)

    def wait_for(self, state: FutureState, timeout: Optional[float]) -> bool:
        """Wait until ``state`` is resolved (True) or ``timeout`` passes or the client closes."""
        waiter = _thread.allocate_lock()
        waiter.acquire()
        with self.lock:
            if state.status != "pending" or self.closed:
                return state.status != "pending"
            if state.waiters is None:
                state.waiters = []
            state.waiters.append(waiter)
        try:
            waiter.acquire(True, -1 if timeout is None else max(timeout, 0.0))
        finally:  # timed out or interrupted: report() must not keep our lock
            if state.status == "pending":
                with self.lock:
                    if state.waiters is not None and waiter in state.waiters:
                        state.waiters.remove(waiter)
        return state.status != "pending"

    def wait_until(self, predicate, deadline: Optional[float]) -> bool:
        with self.condition:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._waiting_until += 1
            try:
                return self.condition.wait_for(lambda: predicate() or self.closed, timeout)
            finally:
                self._waiting_until -= 1

    # ------------------------------------------------------------------------------------ references

    def acquire(self, key) -> FutureState:
        """A new Future for ``key`` exists: count it, tell the scheduler if it is the first one."""
        with self.lock:
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = FutureState()
                self._refcounts[key] = 1
                first = True
                self.cut_releases()
            else:
                self._refcounts[key] += 1
                first = False
        if first and not self.closed:
            self._post(UpdateGraph(self.client_id, (), (key,)))
        return state

    def share(self, key) -> FutureState:
        """The state for a new Future of a key this call is about to submit (no separate 'wants'
        message needed)."""
        with self.lock:
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = FutureState()
                self._refcounts[key] = 1
            else:
                self._refcounts[key] += 1
            self._open_releases = None  # cut_releases(), without a call: once per task of a map
        return state

    def cut_releases(self) -> None:
        """(Lock held.) A message that makes the scheduler want keys is about to be posted: releases
        from now on go in a new batch, whose message follows it. Otherwise a release could join a batch
        whose message was posted earlier and reach the scheduler before the task it releases."""
        self._open_releases = None

    def release_key(self, key) -> None:
        with self.lock:
            count = self._refcounts.get(key, 0) - 1
            if count > 0:
                self._refcounts[key] = count
                return
            self._refcounts.pop(key, None)
            self.states.pop(key, None)
            batch = self._open_releases
            if batch is None:
                batch = self._open_releases = []
                self._releases.append(batch)
            batch.append(key)
            first = len(batch) == 1
        if first and not self.closed:
            # one message for a whole burst of releases (e.g. a list of 10,000 futures dropped at once):
            # the scheduler collects them with take_releases() when it gets to this message
            self._post(ReleasePending(self.client_id))

    def releasing(self, key) -> bool:
        """Whether ``key`` may be among the released keys the scheduler has not collected yet (then
        a new task under that key must follow the release through the inbox, not overtake it on the
        direct lane). True too when there are too many to look through."""
        with self.lock:
            releases = self._releases
            if not releases:
                return False
            if len(releases) > _RELEASES_LOOKED_AT:
                return True
            for batch in releases:
                if len(batch) > _RELEASES_LOOKED_AT or key in batch:
                    return True
        return False

    def take_releases(self) -> list:
        """Called once per ``ReleasePending`` message: the oldest batch of released keys."""
        with self.lock:
            if not self._releases:
                return []
            keys = self._releases.popleft()
            if keys is self._open_releases:
                self._open_releases = None
            # after a large run is released, give back the tables it grew (sparse.py), once the last
            # batch of a burst of releases is taken. In place: a copy would be a new dict object that
            # stays wherever the run's memory placed it, keeping that arena alive. Every reader holds
            # this lock but two membership tests (prepare's "already submitted?" and _holds), which
            # may then miss a key for a moment: the task is then submitted again, and the scheduler
            # shares the one it has, as this client would have done
            if not self._releases:
                right_size_in_place(self.states)
                right_size_in_place(self._refcounts)
        return keys

    def fire_and_forget(self, key) -> None:
        # a pseudo-client wants the key until it is done (see scheduler.server.FireAndForget)
        with self.lock:
            self.cut_releases()
        self._post(UpdateGraph(FIRE_AND_FORGET, (), (key,)))

    # ------------------------------------------------------------------------------ callbacks

    def _callback_queue(self) -> queue.SimpleQueue:
        if self._callbacks is None:
            with self.lock:
                if self._callbacks is None:
                    self._callbacks = queue.SimpleQueue()
                    threading.Thread(
                        target=self._callback_loop,
                        args=(self._callbacks,),
                        name="minidist-callbacks",
                        daemon=True,
                    ).start()
        return self._callbacks

    def _callback_loop(self, callbacks: queue.SimpleQueue) -> None:
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

    def add_callback(self, future: Future, fn) -> None:
        def call() -> None:
            fn(future)

        with self.lock:
            state = future._state
            if state.status == "pending":
                if state.callbacks is None:
                    state.callbacks = []
                state.callbacks.append(call)
                return
        self._callback_queue().put(call)

    # ------------------------------------------------------------------------------------- closing

    def pending_keys(self) -> list:
        """Keys whose futures are still waiting (a lost connection errs them)."""
        with self.lock:
            return [key for key, state in self.states.items() if state.status == "pending"]

    def close(self) -> list:
        """The client is closing: wake every waiter (threads and coroutines), forget every key and
        stop the callback thread. Returns the keys the scheduler should release."""
        with self.condition:
            self.closed = True
            self.condition.notify_all()
            states = list(self.states.values())
            keys = list(self.states)
            self.states.clear()
            self._refcounts.clear()
            for state in states:  # threads waiting for one future (wait_for)
                for waiter in state.waiters or ():
                    waiter.release()
                state.waiters = None
        for state in states:
            for callback in state.callbacks or ():
                if type(callback) is LoopWaker:
                    callback()  # a coroutine awaiting this key (asynchronous.py)
        if self._callbacks is not None:
            self._callbacks.put(None)
        return keys
