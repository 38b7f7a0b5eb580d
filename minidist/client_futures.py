"""The client's book of futures: states, reference counts, batched releases, waiting, callbacks.

One ``FutureBook`` per ``Client`` (built by its constructor with the client's id and the scheduler's
``post``). Every ``Future`` of one key shares a ``FutureState`` here and counts one
reference. The scheduler thread resolves states in batches through ``report`` (one lock per batch): a
thread waiting for one future (``result()``) sleeps on a lock of its own, kept in the state, which the
report releases, so a result wakes its waiter and nobody else; threads waiting for a predicate over
several (``wait_until``) sleep on the client's condition variable, notified once per batch while any
waits. Done-callbacks run on one lazily started thread per client; an exception in one is logged and
the thread carries on.

Releases are batched, and dropping a future costs its thread one list append::

    Future.__del__ ──► dropped.append(key)          (no lock; the first drop with no batch open
                                                     opens one and posts its ReleasePending;
                                                     the 1,000th drop into it wakes the scheduler)
    scheduler thread, at that ReleasePending ──► take_releases(): count the drops off (a key whose
        count reaches 0 is forgotten and joins the open batch), hand over the oldest batch
    holds(key) / releasing(key) / release() / close() ──► count the drops off first

Counting off late only keeps a count high for a while, never too low, so a key another Future holds is
never released. A batch's ``ReleasePending`` must reach the scheduler after the submissions of its keys:
every message that makes the scheduler want keys goes through ``post``, which closes the open batch
once the message is in the inbox, and a key dropped after that goes into a batch opened later.
"""

from __future__ import annotations

import _thread
import array
import collections
import logging
import queue
import sys
import threading
import time
from typing import Any, Callable, Optional

from .asynchronous import LoopWaker
from .futures import Future, FutureState
from .messages import FIRE_AND_FORGET, ReleasePending, UpdateGraph
from .sparse import right_size_in_place

logger = logging.getLogger("minidist.client")

_RELEASES_LOOKED_AT = 8  # batches, and keys a batch, that ``releasing`` reads at most
_WAKE_AFTER_DROPS = 1000  # drops into one open batch that wake the scheduler (dropped_many)
_BURST_SECONDS = 0.05  # after a batch that large is taken, opening a batch wakes it this long


class FutureBook:
    """The futures of one client: what the scheduler reports resolves them, waiters sleep on
    ``condition``, dropped keys are batched for the scheduler (see the module docstring)."""

    def __init__(
        self,
        client_id: str,
        post: Callable[[Any], None],
        wake: Optional[Callable[[], None]] = None,
    ):
        self.client_id = client_id
        self._post = post  # the scheduler's inbox (local, or a remote link's)
        self._wake = wake  # wakes the scheduler thread (a local scheduler's), or None
        self.states: dict[Any, FutureState] = {}  # key -> the state its futures share
        self._refcounts: dict[Any, int] = {}  # key -> number of live Future objects
        # keys of garbage-collected Futures, not counted off yet: Future.__del__ appends without the
        # lock (one list append each), ``_settle`` counts them off under it (see dropped_many)
        self.dropped: list = []
        # 0, or the length of ``dropped`` at which a drop wakes the scheduler (see dropped_many)
        self.wake_at = _WAKE_AFTER_DROPS if wake is not None else 0
        # [0]: monotonic time until which opening a batch wakes the scheduler. An array, not a float
        # attribute: the float of a large release would live on in one of the run's allocator arenas,
        # and keep that whole arena (1 MiB) in the client's memory
        self._burst_until = array.array("d", (0.0,))
        # keys whose last Future went, not yet told to the scheduler: batches, oldest first, one
        # ``ReleasePending`` message each; a posted submission closes the open batch (``post``)
        self._releases: collections.deque[list] = collections.deque()
        # the batch drops go to (its ReleasePending posted), or None: the next drop opens one
        self.open_releases: Optional[list] = None
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
        """A new Future for ``key`` exists: count it, tell the scheduler if it is the first one.
        (Dropped futures not counted off yet only make the count high for a while: the key stays.)"""
        with self.lock:
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = FutureState()
                self._refcounts[key] = 1
                first = True
            else:
                self._refcounts[key] += 1
                first = False
        if first and not self.closed:
            self.post(UpdateGraph(self.client_id, (), (key,)))
        return state

    def share(self, key) -> FutureState:
        """The state for a new Future of a key this call is about to submit (no separate 'wants'
        message needed: the caller posts the task with ``post``). The futures dropped before are
        counted off first, in the same step: a key dropped and submitted again (a dask graph
        computed twice) is released and runs again, rather than its new Future sharing the old
        one's finished state while the drop waits to be counted."""
        with self.lock:
            if self.dropped:
                self._settle()
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = FutureState()
                self._refcounts[key] = 1
            else:
                self._refcounts[key] += 1
        return state

    def share_if_held(self, key) -> Optional[FutureState]:
        """The state of a key a live Future of this client holds, counted for one more Future; None
        if none does (dropped futures counted off first)."""
        with self.lock:
            self._settle()
            state = self.states.get(key)
            if state is not None:
                self._refcounts[key] += 1
        return state

    def post(self, message) -> None:
        """Post a message that makes the scheduler want keys for this client (a submission, a
        scatter). The futures dropped before it are counted off first, into a batch whose
        ``ReleasePending`` goes ahead of it: a key dropped and then submitted again (a graph's node,
        a scattered value) is released before it comes back, as it would have been at once. Then
        the open batch is closed: a key released from now on goes in a new batch, whose
        ``ReleasePending`` follows this message. Closed after posting, not before: a batch opened
        in between (by another thread, or by the scheduler thread counting off drops) could
        otherwise take this message's keys and reach the scheduler before it."""
        if self.dropped:
            self.settle()
        self._post(message)
        with self.lock:
            if not self.closed:
                self.open_releases = None

    def holds(self, key) -> bool:
        """Whether a live Future of this client holds ``key`` (drops counted off first)."""
        if self.dropped:
            self.settle()
        return key in self.states

    def release_key(self, key) -> None:
        """``Future.release()``: one reference less, now (in order after the drops before it)."""
        with self.lock:
            self.dropped.append(key)
            self._settle()

    def settle(self) -> None:
        """Count off the dropped futures now (from any thread but the scheduler's)."""
        with self.lock:
            self._settle()

    def _settle(self, into: Optional[list] = None) -> None:
        """(Lock held.) Count off the dropped futures: a key whose count reaches 0 is forgotten and
        joins ``into``, or else the open batch (opened here if there is none)."""
        dropped = self.dropped
        if not dropped or self.closed:
            return
        keys = dropped[:]  # one step each (the GIL): drops appended meanwhile stay for later
        del dropped[: len(keys)]
        refcounts = self._refcounts
        states = self.states
        released = []
        for key in keys:
            count = refcounts.get(key)
            if count is None:
                continue  # not this client's any more (closed meanwhile)
            if count > 1:
                refcounts[key] = count - 1
            else:
                del refcounts[key]
                states.pop(key, None)
                released.append(key)
        if not released:
            return
        batch = self.open_releases if into is None else into
        if batch is None:
            self.open_releases = released
            self._releases.append(released)
            self._post_release_pending()
        else:
            batch.extend(released)

    def open_batch(self) -> None:
        """``Future.__del__`` found no batch open: open one and post its ``ReleasePending``; drops from
        now on only join ``dropped`` until the scheduler takes the batch (and counts them off)."""
        if sys.is_finalizing():
            return
        with self.lock:
            if self.open_releases is not None or self.closed:
                return
            self.open_releases = []
            self._releases.append(self.open_releases)
            self._post_release_pending()
        if self._burst_until[0] and time.monotonic() < self._burst_until[0]:
            self.dropped_many()  # the rest of a large release: see take_releases

    def dropped_many(self) -> None:
        """``wake_at`` futures were dropped into the open batch (a large list of futures going at
        once): wake the scheduler thread, which otherwise takes the batch at its next wake-up (up to
        0.25 s later). A single drop does not wake it: in a loop of ``submit(...).result()`` each
        future goes just before the next submission, which wakes it (or needs no scheduler turn at
        all, scheduler/lane.py), and the release is applied in that turn."""
        if self._wake is not None:
            self._wake()

    def _post_release_pending(self) -> None:
        """(Lock held.) Post the ReleasePending of a batch just opened, before the lock goes: from
        then on another thread may find a key of it forgotten and submit it again, and that
        submission must reach the scheduler after the release. (Posting only appends to a queue: it
        never takes this lock, and a scheduler that failed does not answer it.)"""
        if not self.closed:
            try:
                self._post(ReleasePending(self.client_id))
            except Exception:
                pass  # the connection is gone: the scheduler forgets this client's keys anyway

    def releasing(self, key) -> bool:
        """Whether ``key`` may be among the released keys the scheduler has not collected yet (then
        a new task under that key must follow the release through the inbox, not overtake it on the
        direct lane). True too when there are too many to look through."""
        with self.lock:
            self._settle()
            releases = self._releases
            if len(releases) > _RELEASES_LOOKED_AT:
                return True
            for batch in releases:
                if len(batch) > _RELEASES_LOOKED_AT or key in batch:
                    return True
        return False

    def take_releases(self) -> list:
        """Called once per ``ReleasePending`` message: the oldest batch of released keys, once the
        dropped futures are counted off (on the scheduler thread, not the user's)."""
        with self.lock:
            if not self._releases:
                return []
            keys = self._releases.popleft()
            if keys is self.open_releases:
                # closed before the drops are counted off into it: a drop that found it open is in
                # ``dropped`` by now, and a later one opens the next batch
                self.open_releases = None
                self._settle(keys)
            else:
                self._settle()  # into the open batch: it may hold keys submitted later
            # after a large run is released, give back the tables it grew (sparse.py), once the last
            # batch of a burst of releases is taken. In place: a copy would be a new dict object that
            # stays wherever the run's memory placed it, keeping that arena alive. Every reader holds
            # this lock but the membership test of ``holds``, which may then miss a key for a moment:
            # the task is then submitted again, and the scheduler shares the one it has, as this
            # client would have done
            if not self._releases:
                right_size_in_place(self.states)
                right_size_in_place(self._refcounts)
            if self.wake_at and len(keys) >= self.wake_at:
                # a large release, likely still going on (a list of futures being dropped): the
                # batches opened in the next moment wake the scheduler too, so that the last drops
                # of it, fewer than ``wake_at``, do not wait for its next wake-up
                self._burst_until[0] = time.monotonic() + _BURST_SECONDS
        return keys

    def fire_and_forget(self, key) -> None:
        # a pseudo-client wants the key until it is done (see scheduler.server.FireAndForget): this
        # client's release of it must follow
        self.post(UpdateGraph(FIRE_AND_FORGET, (), (key,)))

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
            # the keys still held (dropped futures not counted off among them), and those released
            # in batches the scheduler has not taken yet: the session goes with the client, their
            # ReleasePending messages would find nobody
            keys = list(self.states)
            for batch in self._releases:
                keys.extend(batch)
            self._releases.clear()
            self.open_releases = []  # drops from now on join a batch nobody takes
            self.wake_at = 0
            self.dropped.clear()
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
