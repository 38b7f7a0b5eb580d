"""WorkerRuntime: runs tasks on a worker's threads; shared by process workers and thread workers.

Data flow::

    scheduler ──ComputeTask/FreeKeys/ReleaseQueued──► submit()/free()/release_queued() ──► pending deque
                                                                      ──► task threads (nthreads)
                                                                                 │ run function
    scheduler ◄──────── report(message) ◄── outbox (batched by whoever sends) ◄──┘

``submit`` and ``free`` run on the thread that receives from the scheduler (for process workers an idle
task thread, see ``receive_with``; for thread workers the scheduler thread itself) and must never block:
they only file work. A process worker's receiving thread that takes the task it received into the last
free slot does not wake another thread to receive in its place: an idle thread *watches* (wakes every
``WATCH_INTERVAL`` while tasks keep coming) and takes over receiving if the task is still running, so a
short task costs one thread wake-up, not three. Task threads take the oldest pending task while fewer than nthreads run, resolve
its dependencies from the local cache, call the function, and report ``TaskDone`` or ``TaskErred``
(``minidist/messages.py``). Reports are batched: a thread that finds the outbox empty becomes the sender
and flushes everything that piled up meanwhile, so bursts of tiny tasks cost one message, not one each.

The transport differs by mode and is injected: ``encode_result``/``decode_value`` serialise values
(process workers) or pass objects through untouched (thread workers); ``send`` writes a list of
messages to the scheduler.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Optional

from ..messages import (
    QueuedReleased,
    Rejoin,
    Secede,
    TaskDone,
    TaskErred,
    TaskHeld,
    TaskTransfer,
)
from ..sparse import right_sized
from ..utils import sizeof
from .pending import PendingTask, substitute, unpack_run_spec
from .running import SLOTS
from .task_client import TaskClientSlot

logger = logging.getLogger("minidist.worker")

REPORT_DELAY = 0.002  # longest a finished result waits to share a message with the next ones
_MAX_BATCH = 256
_COMPACT_AFTER = 1024  # frees between two looks at the cache's table sizes (free())
# Process workers: the longest a message waits to be received while the thread that received last runs a
# task in the worker's last free slot, and how long after the last task started an idle thread keeps
# watching for that (see _next_task). Only control messages wait (frees, steals, client.run, prefetched
# tasks): with every slot busy no task could start anyway.
WATCH_INTERVAL = 0.002
WATCH_LINGER = 0.02

_task_context = threading.local()  # .runtime, .key, .seceded for get_worker()/secede()/get_client()


_RESULTS = (TaskDone, TaskErred)


class WorkerRuntime:
    """Task threads, the local value cache and the batched outbox of one worker."""

    logger = logger  # this worker's log: a thread worker's handle sets the cluster's one for it

    def __init__(
        self,
        address: str,
        name: Any,
        nthreads: int,
        send: Callable[[list], None],
        encode_result: Callable[[Any], tuple] = lambda value: (value, sizeof(value)),
        encode_error: Optional[Callable[[BaseException, Any], tuple]] = None,
        decode_value: Callable[[Any], Any] = lambda value: value,
        prepare: Callable[[Any], tuple] = unpack_run_spec,
        resources: Optional[dict] = None,
        task_clients: Optional[TaskClientSlot] = None,
        context: Optional[contextvars.Context] = None,
    ):
        self.address = address
        # thread workers: the context variables the cluster was made with (decimal's context, ...),
        # each task runs in a copy of them, as on dask.distributed's thread workers
        self.context = context
        self.task_clients = task_clients  # where get_client() in a task finds its client
        self.name = name
        self.nthreads = nthreads
        self.resources = dict(resources or {})
        self._send = send
        self._encode_result = encode_result
        self._encode_error = encode_error or (lambda exc, tb: (exc, tb))
        self._decode_value = decode_value
        # Unpickling runs under one lock per worker: two task threads unpickling the first NumPy array
        # at once would both import numpy, which CPython can answer with ImportError/_DeadlockError;
        # decoding is zero-copy and short, so the lock costs little.
        self.decode_lock = threading.RLock()
        self._prepare = prepare
        self.data: dict = {}  # key -> decoded value: the local cache of results and dependencies
        self.encoded: dict = {}  # key -> encoded value, decoded lazily on first use
        self.holding: Any = None  # process workers: the results kept here only (holding.py)
        self.executing: dict = {}  # key -> start time, for diagnostics
        self._pending: deque[PendingTask] = deque()
        self._running: dict = {}  # key -> PendingTask
        # a plain Lock, not the default RLock: nothing takes it twice, and the hot paths enter it
        # directly (``with self._lock``), which skips Condition.__enter__'s Python frame
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._outbox: list = []
        self._outbox_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._oldest_unsent = 0.0
        self._flush_wanted = threading.Event()
        self._closed = False
        self.running_board = (
            None  # process workers: where task threads note what they run (running.py)
        )
        self._freed = 0  # keys freed since the cache's tables were last right-sized
        self._free_slots = list(reversed(range(SLOTS)))
        self._threads: list[threading.Thread] = []
        self._active_threads = 0  # threads that count against the pool's size (not seceded)
        self._busy = 0  # running tasks that hold one of the nthreads slots (seceded ones do not)
        # process workers: an idle thread receives from the scheduler itself (receive_with)
        self._receive: Optional[Callable[[], bool]] = None
        self._receiving = False  # one thread at a time receives
        self._watching = False  # an idle thread waits with a timeout to take over receiving
        self._last_start = 0.0  # monotonic time a task last started (watchers linger after it)
        self._spare = 0  # the thread beyond nthreads that receives while every slot runs a task
        self.paused = False
        for _ in range(nthreads):
            self._start_thread()
        self._flusher = threading.Thread(
            target=self._flusher_loop, name=f"minidist-flush-{name}", daemon=True
        )
        self._flusher.start()

    # ---------------------------------------------------------------------------------------- intake

    def submit(
        self,
        key,
        run_spec,
        dependencies,
        dep_values: dict,
        attempt: int = 0,
        may_hold: bool = False,
    ) -> None:
        """File a task (never blocks). ``dep_values`` are encoded values the worker did not hold."""
        if dep_values:
            self.encoded.update(dep_values)
        task = PendingTask(key, run_spec, dependencies, attempt, may_hold)
        with self._lock:
            self._pending.append(task)
            # a process worker's receiving thread wakes others once it has filed the whole frame
            if self._receive is None:
                self._condition.notify()

    def receive_with(self, receive: Callable[[], bool]) -> None:
        """Let an idle task thread receive from the scheduler itself, then run what came without
        handing it to another thread (process workers).

        ``receive()`` blocks for one frame, files what it holds (``submit``, ``free``...) and returns
        False once nothing more will come. While the receiving thread runs a task, another thread
        receives in its place: woken at once if another task could start meanwhile, else the watcher
        takes over within ``WATCH_INTERVAL`` (``_next_task``). So someone always receives promptly and
        the thread that receives never blocks on sending: the scheduler can never deadlock against
        this worker. One spare thread joins the pool, so a thread is left to receive while all
        nthreads slots run tasks.
        """
        with self._condition:
            self._receive = receive
            self._spare = 1
            self._start_thread()
            self._condition.notify_all()

    def free(self, keys) -> None:
        """Drop cached values and cancel queued or running copies of ``keys``."""
        actors = getattr(self, "actors", None)  # worker/actors.py: a released actor goes too
        if self.holding is not None and self.holding.held:
            self.holding.forget(keys)
        with self._lock:
            self._freed += len(keys)
            for key in keys:
                self.data.pop(key, None)
                self.encoded.pop(key, None)
                if actors:
                    actors.pop(key, None)
                running = self._running.get(key)
                if running is not None:
                    running.cancelled = True
            if self._pending:
                doomed = set(keys)
                for task in self._pending:
                    if task.key in doomed:
                        task.cancelled = True
            if not self._running and self._freed >= _COMPACT_AFTER:
                # no task thread is inside _execute (the only writer besides this thread): give back
                # the tables a large run left mostly empty (sparse.py); emptying a table large enough
                # to copy takes more frees than _COMPACT_AFTER, so looking that often still finds it
                self._freed = 0
                self.data = right_sized(self.data)
                self.encoded = right_sized(self.encoded)
                self.executing = right_sized(self.executing)
                self._running = right_sized(self._running)

    def cache_encoded(self, values: dict) -> None:
        """Put encoded copies of ``values`` into the local cache unless a decoded value is there."""
        with self._condition:  # free() may be rebinding the cache's dicts meanwhile
            for key, value in values.items():
                if key not in self.data:
                    self.encoded[key] = value

    def replace_cached(self, key, encoded) -> None:
        """A held result was published: dependents here read the published copy from now on (its
        buffers in shared memory rather than this process's private memory)."""
        with self._condition:
            if key in self.data:  # not freed meanwhile
                self.encoded[key] = encoded
                del self.data[key]

    def release_queued(self, keys) -> None:
        """Give back the tasks among ``keys`` that have not started (work stealing); the answer says
        which: a task that started stays here and runs to the end."""
        wanted = set(keys)
        released = []
        with self._condition:
            for task in self._pending:
                if task.key in wanted and not task.cancelled:
                    task.cancelled = True  # skipped by the task threads
                    released.append(task.key)
        kept = tuple(wanted.difference(released))
        # this runs on the thread that receives, which must never block on sending: the flusher
        # thread sends the answer, at once
        with self._outbox_lock:
            self._outbox.append(QueuedReleased(tuple(released), kept))
            self._oldest_unsent = time.monotonic() - REPORT_DELAY
        self._flush_wanted.set()

    # ------------------------------------------------------------------------------------- execution

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._thread_loop,
            name=f"minidist-task-{self.name}-{len(self._threads)}",
            daemon=True,
        )
        self._active_threads += 1
        self._threads.append(thread)
        thread.start()

    def in_context(self, function: Callable[[], None]) -> Callable[[], None]:
        """``function`` as a thread's target (``client.run``): run in its own copy of ``context`` when
        there is one (a context runs on one thread at a time)."""
        if self.context is None:
            return function
        return functools.partial(self.context.copy().run, function)

    def _thread_loop(self) -> None:
        _task_context.runtime = self
        with self._condition:
            # a slot on the running board (running.py), if one is free
            _task_context.slot = self._free_slots.pop() if self._free_slots else None
        try:
            self._serve_tasks()
        finally:
            if _task_context.slot is not None:
                with self._condition:
                    self._free_slots.append(_task_context.slot)

    def _serve_tasks(self) -> None:
        condition = self._condition
        lock = self._lock  # the condition's: entered directly on the hot path
        context = self.context
        while True:
            with lock:
                task = self._next_task()
            if task is None:
                if self._closed:
                    return
                self._receive_once()
                continue
            if context is None:
                self._execute(task)
            else:  # each task from a fresh copy: what one sets is not seen by the next (~20 ns)
                context.copy().run(self._execute, task)
            with lock:  # this run's entry only: a key freed while it ran may run again meanwhile
                if self._running.get(key := task.key) is task:  # (what a later free must cancel)
                    del self._running[key]
                seceded = _task_context.__dict__.pop("seceded", False)
                if not seceded:
                    self._busy -= 1
                if seceded or self._active_threads > self.nthreads + self._spare:
                    # this thread left the pool to wait (or rejoined while its replacement ran): the
                    # pool is back at its size without it, so it retires
                    if not seceded:
                        self._active_threads -= 1
                        if self._pending:  # the slot it frees: another thread runs what waits
                            condition.notify()
                    self._threads.remove(threading.current_thread())
                    return

    def _next_task(self) -> Optional[PendingTask]:
        """The task this thread runs next (a slot is free), or None: receive (a process worker
        with nobody receiving) or leave (closed). Called with the condition held; waits on it.

        Process workers: a thread that takes a task into the last free slot while nobody receives
        leaves the receiving to the watcher, an idle thread waiting with a timeout (``WATCH_INTERVAL``)
        that takes over if the task still runs when it wakes; if no thread watches, or another slot
        is free (a task that comes could start at once), it wakes one to receive now.
        A thread stays the watcher for ``WATCH_LINGER`` after the last task started, so a stream of
        short tasks (a chain of submit -> result) costs no thread wake-up per task; after that it
        waits without a timeout, so an idle worker never wakes."""
        pending = self._pending
        condition = self._condition
        while not self._closed:
            while pending and self._busy < self.nthreads:
                task = pending.popleft()
                if not task.cancelled:
                    self._busy += 1
                    self._running[task.key] = task
                    if self._receive is not None:
                        self._last_start = time.monotonic()
                        if not self._receiving and (
                            not self._watching or self._busy < self.nthreads
                        ):
                            # somebody receives while this task runs: at once if another task
                            # could start meanwhile, else the watcher will in a moment
                            condition.notify()
                    return task
            if self._receive is None:
                condition.wait()
            elif not self._receiving:
                self._receiving = True
                return None
            elif not self._watching and time.monotonic() - self._last_start < WATCH_LINGER:
                self._watching = True
                try:
                    condition.wait(WATCH_INTERVAL)
                finally:
                    self._watching = False
            else:
                condition.wait()
        return None

    def _receive_once(self) -> None:
        receive = self._receive
        more = False
        try:
            more = receive is not None and receive()
        finally:
            with self._lock:
                self._receiving = False
                if not more:
                    self._receive = None
                waiting = len(self._pending)
                if waiting:
                    # this thread takes the first task (if a slot is free, else it receives again):
                    # wake one thread for each other task a free slot can take; receiving in its
                    # place is left to the watcher, or to a thread woken for it (_next_task)
                    others = min(waiting, self.nthreads - self._busy) - 1
                    if others > 0:
                        self._condition.notify(others)

    def _value_of(self, key):
        try:
            return self.data[key]
        except KeyError:
            pass
        with self.decode_lock:  # another task thread may be decoding the same dependency right now
            if key in self.data:
                return self.data[key]
            value = self._decode_value(self.encoded[key])
            self.data[key] = value
            self.encoded.pop(key, None)
            return value

    def _execute(self, task: PendingTask) -> None:
        key = task.key
        thread_id = threading.get_ident()
        _task_context.key = key
        start = time.time()
        self.executing[key] = start
        board, slot = self.running_board, getattr(_task_context, "slot", None)
        if board is not None and slot is not None:
            board.mark(slot, key)
        try:
            function, args, kwargs = self._prepare(task.run_spec)
            if task.dependencies:
                data = self.data
                received = any(dep not in data for dep in task.dependencies)
                fetched = time.time() if received else 0.0
                values = {dep: self._value_of(dep) for dep in task.dependencies}
                if received:  # the task stream's transfer interval (scheduler/task_stream.py)
                    self.report(TaskTransfer(key, fetched, time.time()))
                args = substitute(args, values)
                if kwargs:
                    kwargs = substitute(kwargs, values)
            result = function(*args, **kwargs)
        except BaseException as exc:  # noqa: B036 - SystemExit/KeyboardInterrupt in a task err its future
            stop = time.time()
            if self.executing.get(key) is start:  # this run's entry only (see _serve_tasks)
                del self.executing[key]
            if task.cancelled:
                return
            self._log_error(key, exc)
            exc_value, tb = self._encode_error(exc, exc.__traceback__)
            self.report(TaskErred(key, exc_value, tb, start, stop, thread_id, task.attempt))
            return
        finally:
            _task_context.key = None
            if board is not None and slot is not None:
                board.clear(slot)
        stop = time.time()
        if self.executing.get(key) is start:  # this run's entry only (see _serve_tasks)
            del self.executing[key]
        if task.cancelled:
            return
        if task.may_hold and self.holding is not None:
            held = self.holding.try_hold(key, result)
            if held is not None:  # kept here, as the object itself, until someone outside needs it
                self.encoded.pop(key, None)
                self.data[key] = result
                self.report(TaskHeld(key, held, start, stop, thread_id, task.attempt))
                return
        try:
            encoded, nbytes = self._encode_result(result)
        except BaseException as exc:  # noqa: B036
            self._log_error(key, exc)
            exc_value, tb = self._encode_error(exc, exc.__traceback__)
            self.report(TaskErred(key, exc_value, tb, start, stop, thread_id, task.attempt))
            return
        # Cache what was sent, not the original: a large result then lives once, in shared memory (not
        # again in this process's private memory), and dependents here see the same read-only value as
        # dependents on other workers. It is decoded on first use (_value_of).
        self.encoded[key] = encoded
        self.report(TaskDone(key, encoded, nbytes, start, stop, thread_id, task.attempt))

    def _log_error(self, key, exc: BaseException) -> None:
        # INFO, not dask's WARNING: the caller gets the error from its future; the worker's log keeps
        # a record of it without echoing every failed task to stderr
        try:
            text = traceback.format_exception_only(type(exc), exc)[-1].strip()
        except Exception:
            text = type(exc).__name__
        self.logger.info("Task %r erred: %s", key, text)

    # ---------------------------------------------------------------------------------------- outbox

    def report(self, message) -> None:
        """Queue a message for the scheduler.

        Results are held back briefly while more queued tasks are about to finish, so a burst of tiny
        tasks costs one message per ``REPORT_DELAY`` instead of one each; the flusher thread bounds
        that delay. Anything else, or a result with nothing queued behind it, goes out at once.
        """
        if type(message) is TaskTransfer:  # the task's result follows: let it ride along
            with self._outbox_lock:
                self._outbox.append(message)
                if len(self._outbox) == 1:
                    # held back like a result, so the flusher's timer bounds its wait (a result
                    # queued behind it sees a non-empty outbox and does not arm the timer itself)
                    self._oldest_unsent = time.monotonic()
                    self._flush_wanted.set()
            return
        urgent = type(message) not in _RESULTS or not self._pending
        if urgent and not self._outbox:
            # nothing waits to go before it (a chain of single tasks): out at once, without a turn
            # through the outbox; a message reported meanwhile by another thread goes after it
            with self._send_lock:
                if not self._outbox:
                    try:
                        self._send([message])
                    except Exception:
                        logger.debug("could not report to the scheduler", exc_info=True)
                    return
        with self._outbox_lock:
            self._outbox.append(message)
            if len(self._outbox) == 1:
                self._oldest_unsent = time.monotonic()
                if not urgent:
                    self._flush_wanted.set()  # arm the flusher's timer
                    return
            elif (
                not urgent
                and len(self._outbox) < _MAX_BATCH
                and (time.monotonic() - self._oldest_unsent < REPORT_DELAY)
            ):
                return
        self._flush()

    def _flusher_loop(self) -> None:
        """Send held-back results once they are REPORT_DELAY old (the task after them may be long)."""
        while not self._closed:
            self._flush_wanted.wait()
            self._flush_wanted.clear()
            with self._outbox_lock:
                pending = bool(self._outbox)
                age = time.monotonic() - self._oldest_unsent if pending else 0.0
            if not pending:
                continue
            if age < REPORT_DELAY:
                time.sleep(REPORT_DELAY - age)
            self._flush()

    def _flush(self) -> None:
        with self._send_lock:
            while True:
                with self._outbox_lock:
                    batch = self._outbox
                    if not batch:
                        return
                    self._outbox = []
                try:
                    self._send(batch)
                except Exception:
                    logger.debug("could not report to the scheduler", exc_info=True)
                    return
                if not self._outbox:
                    # looked at without the lock: what is appended after this look is sent by
                    # whoever appends it (report() flushes, or arms the flusher), as after a locked look
                    return

    # ----------------------------------------------------------------------------------- secede/rejoin

    def secede_current(self) -> None:
        """The calling task leaves its thread slot; a new thread keeps the worker at nthreads."""
        if getattr(_task_context, "seceded", False):
            return
        key = _task_context.key
        _task_context.seceded = True
        with self._condition:
            self._active_threads -= 1
            self._busy -= 1  # its slot is free for a queued task
            self._start_thread()
        self.report(Secede(key))

    def rejoin_current(self) -> None:
        if not getattr(_task_context, "seceded", False):
            return
        _task_context.seceded = False
        with self._condition:
            self._active_threads += 1
            self._busy += 1
        self.report(Rejoin(_task_context.key))

    # ----------------------------------------------------------------------------------------- close

    def close(self, timeout: float = 2.0) -> None:
        with self._condition:
            self._closed = True
            for task in self._pending:
                task.cancelled = True
            self._pending.clear()
            self._condition.notify_all()
        self._flush_wanted.set()
        me = threading.current_thread()
        deadline = time.monotonic() + timeout
        for thread in [*self._threads, self._flusher]:
            if thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        plugins = getattr(self, "plugins", None)  # worker/plugins.py, when any were installed
        if plugins is not None:
            plugins.close()
        self.data.clear()
        self.encoded.clear()


def current_runtime() -> Optional[WorkerRuntime]:
    return getattr(_task_context, "runtime", None)


def current_key():
    return getattr(_task_context, "key", None)
