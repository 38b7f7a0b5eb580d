"""The scheduler thread: the I/O shell around ``SchedulerState``.

One thread in the client process runs ``Scheduler._loop``::

            clients (user threads)                      process workers
    post() ──► inbox deque ──► wake-up pipe ──┐       ┌── pipe (one per worker) ◄── batched reports
                                               ▼       ▼
                  poll() over the wake-up pipe + worker pipes
                                               │ drain everything that is ready
                                               ▼
                    one handler per message type (scheduler/handlers.py)
                                               │
                                               ▼
                                     SchedulerState events
                                               │ instructions
               ┌───────────────────────────────┼──────────────────────────────┐
               ▼                               ▼                              ▼
     Report → client sessions        Execute/FreeOnWorker/Publish →   Forget → drop stored data,
     (futures resolve)               one batch per worker per wake-up unlink shared memory

Thread workers post their reports into the same inbox instead of a pipe. Values live in ``self.data``
in the form the cluster's data plane gives them (``data_plane.py``: ``Payload`` for process workers,
plain objects for thread workers); clients in this process read them directly, so ``gather`` costs no
round trip. The data plane also frees what a value or a task's arguments hold (shared-memory segments,
counted across payloads) when the scheduler lets go of them.

Other threads reach the state only through messages (``minidist/messages.py``): ``post(message)``, or
``ask(kind, *fields)`` for one that answers (``RetireWorkers``, ``Restart``...), and read it through
``query(view)`` (``scheduler/queries.py``). ``call(function)`` runs any function on this thread: the
escape hatch (``run_on_scheduler``), and the way to read several things in one step. Each hands back a
``concurrent.futures.Future``.
"""

from __future__ import annotations

import array
import collections
import concurrent.futures
import logging
import os
import select
import threading
import time
from typing import Any, Callable, Optional

from ..comm.frames import FrameReader
from ..comm.shm import parse_segment_name, sweep_process, unlink_segments
from ..data_plane import DataPlane
from ..messages import (
    FIRE_AND_FORGET,
    Call,
    FreeKeys,
    PublishKeys,
    Release,
    ReleasePending,
    ReleaseQueued,
    ReturnSegments,
    TaskStatus,
    Wake,
    decode_batch,
    from_fields,
    new_task,  # noqa: F401 (re-exported)
)
from ..sparse import TRIM_AFTER, prepare_trim, right_sized, trim_heap
from . import queries
from .delivery import FREE_DELAY_MS, Delivery
from .failure import AwaitedAnswers, fail, refuse_inbox
from .handlers import HANDLERS, WORKER_HANDLERS, record_direct_task, release_then_submit
from .instructions import AskToRelease
from .lane import DirectLane
from .plugins import SchedulerPlugins
from .runs import RunBook
from .sessions import SessionTable
from .state import (
    Execute,
    Forget,
    FreeOnWorker,
    Publish,
    ReleaseArguments,
    Report,
    RetireWorker,
    SchedulerState,
)
from .task_stream import TaskStream
from .worker_handle import WorkerHandle

logger = logging.getLogger("minidist.scheduler")


_IDLE_WAKE_MS = 250  # the loop looks at its inbox at least this often, even with nothing to wake it
# keys forgotten between two looks at the books' table sizes (_compact): a table is only worth a
# copy (sparse.right_sized) after thousands of deletions
_COMPACT_AFTER = 256
_TRIM_SETTLE = 0.2  # seconds from a large release to the heap trim (see _compact)
# a worker dying this soon after joining, never given a task, counts as one that failed to start
DIED_YOUNG_SECONDS = 5.0


class FireAndForget:
    """The pseudo-client behind ``fire_and_forget``: it wants keys until they finish, then lets go."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def report(self, items: list, wakes: Optional[list] = None) -> None:
        self.scheduler.post(Release(FIRE_AND_FORGET, tuple(item.key for item in items)))


class Scheduler:
    """Owns the state machine, the stored values, and the thread that drives workers."""

    def __init__(
        self,
        cluster_id: str,
        data_plane: DataPlane,
        allowed_failures: int = 3,
        work_stealing: bool = True,
        logger_: Optional[logging.Logger] = None,
        blocked_handlers=(),
        on_worker_lost: Optional[Callable[[Any, str, bool], None]] = None,
        on_worker_retired: Optional[Callable[[Any], None]] = None,
    ):
        """``on_worker_lost(handle, reason, failed_to_start)`` and ``on_worker_retired(handle)`` are the
        cluster's, called on this thread when a worker died or finished retiring. ``failed_to_start``:
        no task finished since the previous death, and it ended by itself (not killed from outside)
        before its hello, or within ``DIED_YOUNG_SECONDS`` of joining without being given a task."""
        self.cluster_id = cluster_id
        self.address = f"inproc://{cluster_id}"  # dask's scheduler.address; the cluster sets tcp://
        self.data_plane = data_plane  # how values are packed and freed (data_plane.py)
        self.state = SchedulerState(allowed_failures, work_stealing=work_stealing)
        self.data: dict = {}
        self.logger = logger_ or logger
        self.blocked_handlers = frozenset(blocked_handlers or ())
        self.workers: dict[str, WorkerHandle] = {}  # address -> worker handle (worker_handle.py)
        # one persistent poll object over the wake-up pipe and every worker pipe (building a new one
        # per wake-up, as multiprocessing.connection.wait does, costs tens of microseconds each time;
        # selectors' Python layer costs about a microsecond per wake-up), and what each worker pipe's
        # descriptor leads to: (handle, its FrameReader)
        self._poll = select.poll()
        self._readers: dict[int, tuple] = {}
        self.sessions = SessionTable(self.post)  # client id -> session (sessions.py)
        self.sessions[FIRE_AND_FORGET] = FireAndForget(self)
        self.inbox: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._poll.register(self._wake_r, select.POLLIN)
        self._wake_pending = False
        self.delivery = Delivery(self)  # sends each turn's batches and reports (delivery.py)
        # a task submitted while a process worker is idle goes straight to it (lane.py)
        self.lane = DirectLane(self) if data_plane.pickles else None
        self._closing = False
        self.failure: Optional[Exception] = None  # a SchedulerError once the loop died (failure.py)
        self.awaited = AwaitedAnswers()  # coordination waits, erred on close and failure
        self.runs = RunBook()  # client.run answers still owed by workers
        self.task_stream = TaskStream()  # task_stream.py: dashboard, get_task_stream, reports
        self._runs_at_last_death = 0  # task_stream.runs when a worker last died (_worker_died)
        self.on_worker_lost = on_worker_lost
        self.on_worker_retired = on_worker_retired
        # called with the address of every worker removed (coordination frees its semaphore leases)
        self.worker_removed_hooks: list[Callable[[str], None]] = []
        # called with the id of every client whose connection ended (coordination frees its locks)
        self.client_gone_hooks: list[Callable[[str], None]] = []
        self.plugins = SchedulerPlugins(self, self.logger)  # client.register_plugin (plugins.py)
        self.started = time.time()
        # [0]: tasks done; an array, not an int attribute, for the reason in task_stream.py
        self.done_count = array.array("q", (0,))
        self._forgot = 0  # keys forgotten in this loop turn: the books are compacted after it
        self._forgot_since_trim = 0  # sparse.trim_heap: after a large run was released
        self._trim_due = 0.0  # monotonic time of the trim asked for, or 0
        prepare_trim()  # before any run, not in the middle of one (sparse.py)
        self._thread = threading.Thread(target=self._loop, name="minidist-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------- thread-safe entry

    def post(self, message) -> None:
        """Hand a message to the scheduler thread (from any thread). A release does not wake it (see
        ``wake``): in a loop of submit/result that saves a wake-up per task."""
        self.inbox.append(message)
        if self.failure is not None:  # the loop is gone: answer now (scheduler/failure.py); not a
            return None if type(message) is ReleasePending else refuse_inbox(self)  # client's lock
        if not self._wake_pending and type(message) is not ReleasePending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # closed: the scheduler is gone
            except BaseException:
                # a KeyboardInterrupt (Ctrl-C in the thread that posts) before the byte went: a flag
                # left set would make every later post skip its wake-up
                self._wake_pending = False
                raise

    def wake(self) -> None:
        """Look at the inbox now, not at the next idle wake-up (from any thread; FutureBook)."""
        self.post(Wake())

    def call(self, function: Callable, *args) -> concurrent.futures.Future:
        """Run ``function(self, *args)`` on the scheduler thread; its result arrives in the future.

        The escape hatch (``run_on_scheduler`` is built on it) and the way to read several things at
        once; code that changes the scheduler's books posts a named message instead.
        """
        return self.ask(Call, function, args)

    def ask(self, kind, *fields) -> concurrent.futures.Future:
        """Post ``kind(*fields, reply)`` (a message whose last field is ``reply``, e.g. ``RetireWorkers``)
        and return that reply future."""
        reply: concurrent.futures.Future = concurrent.futures.Future()
        if self.failure is not None:
            reply.set_exception(self.failure)
        elif self._closing:
            reply.set_exception(RuntimeError("The scheduler is closed"))
        else:
            self.post(kind(*fields, reply))
        return reply

    def query(self, view: Callable, *args) -> concurrent.futures.Future:
        """Run the read-only ``view(state, *args)`` (``scheduler/queries.py``) on the scheduler thread."""
        return self.call(lambda scheduler: view(scheduler.state, *args))

    @property
    def tasks_done(self) -> int:
        """Tasks that finished here (their results kept or held by a worker)."""
        return self.done_count[0]

    @property
    def closing(self) -> bool:
        """True once ``close()`` began: nothing more is handled."""
        return self._closing

    def fetch(self, key):
        """The stored value of ``key`` (a Payload in process mode); KeyError if it is gone."""
        return self.data[key]

    def check_handler(self, name: str) -> None:
        if name in self.blocked_handlers:
            raise ValueError(f"{name!r} handler has been explicitly disallowed in Scheduler")

    # ----------------------------------------------------------------------------------------- loop

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: B036 - whatever ends the loop, every waiter hears why
            self.delivery.release_wakes()  # what was reported before the failure
            fail(self, exc)
        self._drain_calls()

    def _serve(self) -> None:
        wake_r = self._wake_r
        poll = self._poll.poll
        readers = self._readers
        delivery = self.delivery
        lane = self.lane
        while True:
            if self._trim_due and time.monotonic() >= self._trim_due:
                # between turns, the last one's objects gone: alive, they would pin the run's arenas
                self._trim_due = 0.0
                self.task_stream.pack()  # the run's last records must not pin its arenas
                trim_heap()
            try:
                events = poll(FREE_DELAY_MS if delivery.held or self._trim_due else _IDLE_WAKE_MS)
            except OSError:
                events = []
            if self._closing:
                break
            if not events:
                # a quiet turn: a flag still set means a poster set it and never wrote (interrupted
                # where the except above could not see it); clearing it costs at most one extra byte
                self._wake_pending = False
            outgoing: dict = {}
            reports: dict = {}
            read = None  # a worker whose reports this turn read (it may be idle now: lane.py)
            if lane is not None and lane.out:
                # a task a client sent straight to a worker (lane.py) is recorded before anything
                # else: its result may be among this turn's reports
                record_direct_task(self, lane.withdraw(), self.inbox, outgoing, reports)
            for fd, _ in events:
                if fd == wake_r:
                    # one read: a wake-up is one byte per pending flag, so 4096 is all of them; a
                    # byte written after it wakes the next poll() at worst
                    try:
                        os.read(wake_r, 4096)
                    except OSError:
                        pass
                    # cleared only after draining: a poster that saw the flag set is then sure a byte
                    # written after this point will wake us, and its message is already in the inbox
                    self._wake_pending = False
                else:
                    # a hang-up or an error reads as an end of file (the worker died)
                    worker = readers.get(fd)  # None: removed while handling this turn
                    if worker is not None:
                        read = worker[0]
                        self._read_worker(read, worker[1], outgoing, reports)
            self._handle_inbox(outgoing, reports)
            if self.data_plane.ledger_returns:
                self._return_segments(outgoing)
            delivery.deliver(outgoing, reports)
            if self._forgot >= _COMPACT_AFTER:
                outgoing = reports = {}  # what this turn sent goes before the books are compacted
                self._compact()
            if delivery.held:
                delivery.send_held_if_due(quiet=not events)
            if lane is not None:
                lane.offer(read)
            if delivery.wakes:
                delivery.release_wakes()  # the last thing before poll() (see FutureBook.report)
            if self._closing:
                break
            # nothing made this turn is held while poll() waits: the next turn would make its own
            # list and dicts before these are freed, in the same allocator pool, so that pool would
            # never empty and, after a large run, would keep one of the run's arenas (1 MiB) alive
            del events, outgoing, reports

    def _handle_inbox(self, outgoing: dict, reports: dict) -> None:
        inbox = self.inbox
        while inbox:
            message = inbox.popleft()
            try:
                if type(message) is ReleasePending and inbox:
                    release_then_submit(self, message, inbox, outgoing, reports)
                else:
                    self._handle(message, outgoing, reports)
            except Exception:
                self.logger.exception("scheduler failed to handle %s", type(message).__name__)
            # not kept until the next message arrives: an UpdateGraph holds every task's
            # arguments, which the state lets go of as the tasks finish
            del message

    def _read_worker(
        self, handle: WorkerHandle, reader: FrameReader, outgoing: dict, reports: dict
    ) -> None:
        # the frames one read brought (comm/frames.py): frames still in the socket make the next
        # poll() return at once (it is level-triggered), but frames already read must be handled
        # now, as no poll() will report them
        try:
            while True:
                batch = decode_batch(reader.recv_bytes())
                self._worker_batch(handle, batch, outgoing, reports)
                if not reader.has_frame() or handle.address not in self.workers:
                    break
        except (EOFError, OSError):
            self._worker_died(handle, outgoing, reports)
        except Exception:
            self.logger.exception("bad message from worker %s", handle.address)

    def _return_segments(self, outgoing: dict) -> None:
        """Pooled segments nothing refers to any more go back to the workers that wrote them (a
        segment's name says which process wrote it); those of workers gone are unlinked."""
        by_pid = {handle.pid: handle for handle in self.workers.values() if handle.pid}
        orphans = []
        returned: dict = {}
        for name in self.data_plane.take_returned():
            info = parse_segment_name(name)
            handle = by_pid.get(info.pid) if info is not None else None
            if handle is None:
                orphans.append(name)
            else:
                returned.setdefault(handle, []).append(name)
        for handle, names in returned.items():
            outgoing.setdefault(handle, []).append(ReturnSegments(tuple(names)))
        if orphans:
            unlink_segments(orphans)  # their writer is gone (only process workers pool)

    # ------------------------------------------------------------------------------ instruction output

    def _apply(self, instructions: list, outgoing: dict, reports: dict) -> None:
        workers = self.workers
        data = self.data
        plugins = self.plugins if self.plugins.plugins else None
        for inst in instructions:
            kind = type(inst)
            if kind is Execute:
                handle = workers.get(inst.worker)
                if handle is None:
                    continue
                if plugins is not None:
                    plugins.transition(inst.key, "queued", "processing")
                deps = self.data_plane.dependency_values(inst, data) if inst.dependencies else {}
                outgoing.setdefault(handle, []).append(
                    handle.execute_message(
                        inst.key,
                        inst.run_spec,
                        inst.dependencies,
                        deps,
                        inst.attempt,
                        inst.may_hold,
                    )
                )
            elif kind is Report:
                item = from_fields(TaskStatus, (inst.key, *inst[2:]))  # less its clients
                for client_id in inst.clients:
                    reports.setdefault(client_id, []).append(item)
            elif kind is Forget:
                self._forgot += 1
                if plugins is not None:
                    plugins.transition(inst.key, "released", "forgotten")
                value = data.pop(inst.key, None)
                if value is not None and type(value) is not bytes:  # a pickle holds no segment
                    self.data_plane.release(value)
                if inst.run_spec is not None:
                    self.data_plane.release(inst.run_spec[2])  # its arguments
            elif kind is ReleaseArguments:
                arguments = inst.run_spec[2]
                if type(arguments) is not bytes:  # a pickle alone holds no shared memory
                    self.data_plane.release(arguments)
            elif kind is FreeOnWorker:
                handle = workers.get(inst.worker)
                if handle is not None:
                    batch = outgoing.setdefault(handle, [])
                    last = batch[-1] if batch else None
                    if type(last) is FreeKeys and type(last.keys) is list:
                        # frees in a row for one worker (a released batch of futures: one per
                        # key) travel as one message; only the last message grows, so their
                        # order against the worker's other messages is kept
                        last.keys.extend(inst.keys)
                    else:
                        keys: Any = list(inst.keys)  # grows while it is the last message
                        batch.append(FreeKeys(keys))
            elif kind is Publish:
                handle = workers.get(inst.worker)
                if handle is not None:
                    outgoing.setdefault(handle, []).append(PublishKeys(inst.keys))
            elif kind is AskToRelease:
                handle = workers.get(inst.worker)
                if handle is not None:
                    outgoing.setdefault(handle, []).append(ReleaseQueued(inst.keys))
            elif kind is RetireWorker:
                handle = workers.get(inst.worker)
                if handle is not None:
                    self._remove_worker(handle, "retired", outgoing, reports, expected=True)
                    if self.on_worker_retired is not None:
                        self.on_worker_retired(handle)

    def _compact(self) -> None:
        """After keys were forgotten: give back the tables a large run left mostly empty
        (``sparse.py``). A new ``data`` dict is bound, never changed in place, so a client thread
        reading a result meanwhile still finds it in the old one. Once a large run is released
        (many keys forgotten, few tasks left), the C allocator's free pages go back too."""
        self._forgot_since_trim += self._forgot
        self._forgot = 0
        self.state.compact()
        self.data = right_sized(self.data)
        forgotten = self._forgot_since_trim
        if forgotten >= TRIM_AFTER and len(self.state.tasks) * 8 <= forgotten:
            self._forgot_since_trim = 0
            # a moment later: thread workers and clients free their copies of the run (caches,
            # futures) once this turn's messages reach them; the loop wakes every FREE_DELAY_MS meanwhile
            self._trim_due = time.monotonic() + _TRIM_SETTLE

    # ---------------------------------------------------------------------------------- client events

    def _handle(self, message, outgoing: dict, reports: dict) -> None:
        # scheduler/handlers.py: one function per message type
        handler = HANDLERS.get(type(message))
        if handler is None:
            self.logger.warning("unknown scheduler message %r", type(message).__name__)
        else:
            handler(self, message, outgoing, reports)

    # ---------------------------------------------------------------------------------- worker events

    def _add_worker(self, handle: WorkerHandle, outgoing: dict, reports: dict) -> None:
        self.workers[handle.address] = handle
        if handle.conn is not None:
            fd = handle.conn.fileno()
            self._readers[fd] = (handle, FrameReader(fd))
            self._poll.register(fd, select.POLLIN)
        self.logger.info(
            "Register worker %s (name %s, %d threads)", handle.address, handle.name, handle.nthreads
        )
        if self.plugins.plugins:
            self.plugins.emit("add_worker", self, worker=handle.address)
        self._apply(
            self.state.add_worker(
                handle.address, handle.nthreads, str(handle.name), handle.resources, time.time()
            ),
            outgoing,
            reports,
        )

    def _worker_batch(
        self, handle: WorkerHandle, batch: list, outgoing: dict, reports: dict
    ) -> None:
        # the slots a batch of results frees are filled once, after the batch (hold_placement)
        self.state.hold_placement()
        try:
            for message in batch:
                handler = WORKER_HANDLERS.get(type(message))
                if handler is None:
                    self.logger.warning(
                        "unknown message %r from worker %s", type(message).__name__, handle.address
                    )
                else:
                    handler(self, handle, message, outgoing, reports)
        finally:
            self._apply(self.state.resume_placement(), outgoing, reports)

    def _worker_died(self, handle: WorkerHandle, outgoing: dict, reports: dict) -> None:
        reason = handle.death_reason()
        self.logger.warning("Worker %s (name %s) died: %s", handle.address, handle.name, reason)
        # a worker that died before it started (bad environment, failing worker_class) says nothing
        # about the tasks it was given: they are requeued without suspicion
        ws = self.state.workers.get(handle.address)
        running = handle.running_keys(list(ws.processing)) if ws is not None else None
        self._remove_worker(
            handle, reason, outgoing, reports, expected=not handle.started, running=running
        )
        if handle.pid is not None:
            # results it wrote to shared memory but never reported are nobody's now
            sweep_process(self.cluster_id, handle.pid, keep=self.data_plane.segments_in_use())
        if self.on_worker_lost is not None:
            # the cluster stops replacing workers that keep failing like this (a worker_class whose
            # setup fails, a memory_limit below what an idle worker needs): none of it is a task's fault
            # (a worker killed from outside, by a user or the OOM killer, says nothing about that, and
            # a task finished since the last death shows the cluster works)
            progressed = self.task_stream.runs != self._runs_at_last_death
            self._runs_at_last_death = self.task_stream.runs
            failed_to_start = (
                handle.ended_by_itself()
                and not progressed
                and (
                    not handle.started
                    or (
                        ws is not None
                        and ws.never_given_a_task()
                        and time.time() - ws.joined < DIED_YOUNG_SECONDS
                    )
                )
            )
            try:
                self.on_worker_lost(handle, reason, failed_to_start)
            except Exception:
                self.logger.exception("replacing worker %s failed", handle.address)

    def _remove_worker(
        self, handle, reason: str, outgoing: dict, reports: dict, expected: bool, running=None
    ) -> None:
        if self.workers.pop(handle.address, None) is None:
            return
        if handle.conn is not None and not handle.conn.closed:
            fd = handle.conn.fileno()
            self._readers.pop(fd, None)
            try:
                self._poll.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        outgoing.pop(handle, None)
        self.delivery.forget(handle)
        self.runs.worker_gone(handle.address, reason)
        self._apply(
            self.state.remove_worker(handle.address, reason, time.time(), expected, running),
            outgoing,
            reports,
        )
        for hook in self.worker_removed_hooks:
            try:
                hook(handle.address)
            except Exception:
                self.logger.exception("a worker-removed hook failed for %s", handle.address)
        handle.close()

    # ------------------------------------------------------------------------------------------ close

    def _drain_calls(self) -> None:
        while self.inbox:
            message = self.inbox.popleft()
            reply = getattr(message, "reply", None)
            if reply is not None and reply.set_running_or_notify_cancel():
                reply.set_exception(RuntimeError("The scheduler is closed"))
        self.runs.close()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop thread (workers are the cluster's to stop); idempotent."""
        if self._closing:
            return
        self._closing = True
        self.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self.awaited.abandon(RuntimeError("The scheduler closed while waiting"))
        if self.lane is not None:
            self.lane.close()  # no client writes to a worker's pipe from now on
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.plugins.emit("before_close")  # dask's order: before_close, then close
        self.plugins.close()
        for value in self.data.values():
            self.data_plane.release(value)
        self.data.clear()
        self.data_plane.close()  # what was freed is unlinked once this returns

    # --------------------------------------------------------------------------------------- snapshot

    def prefix_counts(self) -> dict:
        return queries.prefix_counts(self.state)
