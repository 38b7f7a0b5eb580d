"""The scheduler thread: the I/O shell around ``SchedulerState``.

One thread in the client process runs ``Scheduler._loop``::

            clients (user threads)                      process workers
    post() ──► inbox deque ──► wake-up pipe ──┐       ┌── pipe (one per worker) ◄── batched reports
                                               ▼       ▼
                  selector over the wake-up pipe + worker pipes
                                               │ drain everything that is ready
                                               ▼
                                     SchedulerState events
                                               │ instructions
               ┌───────────────────────────────┼──────────────────────────────┐
               ▼                               ▼                              ▼
     Report → client sessions        Execute/FreeOnWorker → one       Forget → drop stored data,
     (futures resolve)               batch per worker per wake-up     unlink shared memory

Thread workers (processes=False) post their reports into the same inbox instead of a pipe. Values live
in ``self.data`` (``Payload`` for process workers, plain objects for thread workers); clients in this
process read them directly, so ``gather`` costs no round trip. ``self.ledger`` counts references to
shared-memory segments across payloads and unlinks a segment when the last payload using it goes.

Anything that must see a consistent state (``scheduler_info``, ``who_has``, ``restart``...) runs on this
thread through ``call()``, which hands back a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import pickle
import selectors
import threading
import time
from typing import Any, Callable, Optional

from ..comm.shm import sweep_process, unlink_segments
from ..keys import key_split
from ..messages import (
    FIRE_AND_FORGET,
    AddWorker,
    Call,
    Cancel,
    ClientFrame,
    FreeKeys,
    Rejoin,
    Release,
    ReleasePending,
    Retry,
    RunResult,
    Scatter,
    Secede,
    TaskDone,
    TaskErred,
    TaskStatus,
    UpdateGraph,
    Wake,
    WorkerHello,
    WorkerLogs,
    WorkerReports,
    new_task,  # noqa: F401 (re-exported)
)
from .failure import fail, refuse_inbox
from .state import (
    Execute,
    Forget,
    FreeOnWorker,
    ReleaseArguments,
    Report,
    RetireWorker,
    SchedulerState,
)

logger = logging.getLogger("minidist.scheduler")


_IDLE_WAKE = 0.25  # the loop looks at its inbox at least this often, even with nothing to wake it


class FireAndForget:
    """The pseudo-client behind ``fire_and_forget``: it wants keys until they finish, then lets go."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def report(self, items: list) -> None:
        self.scheduler.post(Release(FIRE_AND_FORGET, tuple(item.key for item in items)))


class SegmentLedger:
    """Reference counts of shared-memory segments, which several payloads may share."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()

    def retain(self, value: Any) -> None:
        if not getattr(value, "buffers", None):
            return  # inline payloads and plain objects hold no shared memory
        for name in value.segments():
            self.counts[name] += 1

    def release(self, value: Any) -> None:
        if not getattr(value, "buffers", None):
            return
        segments = value.segments
        doomed = []
        for name in segments():
            left = self.counts[name] - 1
            if left <= 0:
                self.counts.pop(name, None)
                doomed.append(name)
            else:
                self.counts[name] = left
        if doomed:
            unlink_segments(doomed)


class Scheduler:
    """Owns the state machine, the stored values, and the thread that drives workers."""

    def __init__(
        self,
        cluster_id: str,
        processes: bool,
        allowed_failures: int = 3,
        logger_: Optional[logging.Logger] = None,
        blocked_handlers=(),
    ):
        self.cluster_id = cluster_id
        self.processes = processes
        self.state = SchedulerState(allowed_failures=allowed_failures)
        self.data: dict = {}
        self.ledger = SegmentLedger()
        self.logger = logger_ or logger
        self.blocked_handlers = frozenset(blocked_handlers or ())
        self.workers: dict[str, Any] = {}  # address -> worker handle
        # one persistent selector over the wake-up pipe and every worker pipe (building a new one per
        # wake-up, as multiprocessing.connection.wait does, costs tens of microseconds each time)
        self._selector = selectors.DefaultSelector()
        self.sessions: dict[str, Any] = {
            FIRE_AND_FORGET: FireAndForget(self)
        }  # client id -> session
        self.inbox: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._wake_pending = False
        self._closing = False
        self.failure: Optional[Exception] = None  # a SchedulerError once the loop died (failure.py)
        self._runs: dict[
            int, dict
        ] = {}  # client.run bookkeeping: id -> {"pending", "results", "future"}
        self._run_ids = iter(range(1, 1 << 62))
        self.task_stream: collections.deque = collections.deque(maxlen=2000)
        self.on_worker_lost: Optional[Callable[[Any, str], None]] = None
        self.on_worker_retired: Optional[Callable[[Any], None]] = None
        self.started = time.time()
        self.tasks_done = 0
        # dispatch by message type (minidist/messages.py): what clients and the cluster post ...
        self._handlers: dict[type, Callable] = {
            UpdateGraph: self._on_update_graph,
            Release: self._on_release,
            ReleasePending: self._on_release_pending,
            Cancel: self._on_cancel,
            Retry: self._on_retry,
            Scatter: self._on_scatter,
            WorkerReports: self._on_worker_reports,
            Call: self._on_call,
            AddWorker: self._on_add_worker,
            Wake: self._on_wake,
        }
        # ... and what workers send
        self._worker_handlers: dict[type, Callable] = {
            TaskDone: self._on_task_done,
            TaskErred: self._on_task_erred,
            RunResult: self._on_run_result,
            Secede: self._on_secede,
            Rejoin: self._on_rejoin,
            WorkerHello: self._on_worker_hello,
            WorkerLogs: self._on_worker_logs,
            ClientFrame: self._on_client_frame,
        }
        self._thread = threading.Thread(target=self._loop, name="minidist-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------- thread-safe entry

    def post(self, message) -> None:
        """Hand a message to the scheduler thread (from any thread).

        Releases do not wake the thread: freeing memory can wait for the next wake-up (at most
        ``_IDLE_WAKE`` seconds), and in a loop of submit/result it saves a wake-up per task.
        """
        self.inbox.append(message)
        if self.failure is not None:  # the loop is gone: answer now (see scheduler/failure.py)
            return refuse_inbox(self)
        if not self._wake_pending and type(message) is not ReleasePending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # closed: the scheduler is gone

    def call(self, function: Callable, *args) -> concurrent.futures.Future:
        """Run ``function(self, *args)`` on the scheduler thread; its result arrives in the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.failure is not None:
            future.set_exception(self.failure)
            return future
        if self._closing:
            future.set_exception(RuntimeError("The scheduler is closed"))
            return future
        self.post(Call(function, args, future))
        return future

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
            fail(self, exc)
        self._drain_calls()

    def _serve(self) -> None:
        wake_r = self._wake_r
        select = self._selector.select
        while True:
            try:
                events = select(timeout=_IDLE_WAKE)
            except (OSError, ValueError):
                events = []
            if self._closing:
                break
            outgoing: dict = {}
            reports: dict = {}
            for selector_key, _ in events:
                handle = selector_key.data
                if handle is None:
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    # cleared only after draining: a poster that saw the flag set is then sure a byte
                    # written after this point will wake us, and its message is already in the inbox
                    self._wake_pending = False
                else:
                    self._read_worker(handle, outgoing, reports)
            inbox = self.inbox
            while inbox:
                message = inbox.popleft()
                try:
                    self._handle(message, outgoing, reports)
                except Exception:
                    self.logger.exception("scheduler failed to handle %s", type(message).__name__)
            self._deliver(outgoing, reports)
            if self._closing:
                break

    def _read_worker(self, handle, outgoing: dict, reports: dict) -> None:
        if handle is None:
            return
        conn = handle.conn
        try:
            while True:
                batch = pickle.loads(conn.recv_bytes())
                self._worker_batch(handle, batch, outgoing, reports)
                if not conn.poll():
                    break
        except (EOFError, OSError):
            self._worker_died(handle, outgoing, reports)
        except Exception:
            self.logger.exception("bad message from worker %s", handle.address)

    def _deliver(self, outgoing: dict, reports: dict) -> None:
        for handle, batch in outgoing.items():
            if not batch or handle.address not in self.workers:
                continue
            try:
                handle.send_messages(batch)
            except (OSError, EOFError, ValueError):
                # a dead pipe: the EOF on its receiving side will remove the worker
                self.logger.debug("could not send to %s", handle.address)
        for client_id, items in reports.items():
            session = self.sessions.get(client_id)
            if session is not None:
                try:
                    session.report(items)
                except Exception:
                    self.logger.exception("could not report to client %s", client_id)

    # ------------------------------------------------------------------------------ instruction output

    def _apply(self, instructions: list, outgoing: dict, reports: dict) -> None:
        workers = self.workers
        data = self.data
        for inst in instructions:
            kind = type(inst)
            if kind is Execute:
                handle = workers.get(inst.worker)
                if handle is None:
                    continue
                deps = {
                    k: data[k]
                    for k in (inst.dependencies if not self.processes else inst.missing_deps)
                }
                outgoing.setdefault(handle, []).append(
                    handle.execute_message(inst.key, inst.run_spec, inst.dependencies, deps)
                )
            elif kind is Report:
                item = TaskStatus(inst.key, inst.status, inst.exception, inst.traceback)
                for client_id in inst.clients:
                    reports.setdefault(client_id, []).append(item)
            elif kind is Forget:
                value = data.pop(inst.key, None)
                if value is not None:
                    self.ledger.release(value)
                if inst.run_spec is not None:
                    self.ledger.release(inst.run_spec.arguments)
            elif kind is ReleaseArguments:
                self.ledger.release(inst.run_spec.arguments)
            elif kind is FreeOnWorker:
                handle = workers.get(inst.worker)
                if handle is not None:
                    outgoing.setdefault(handle, []).append(FreeKeys(inst.keys))
            elif kind is RetireWorker:
                handle = workers.get(inst.worker)
                if handle is not None:
                    self._remove_worker(handle, "retired", outgoing, reports, expected=True)
                    if self.on_worker_retired is not None:
                        self.on_worker_retired(handle)

    def apply_now(self, instructions: list) -> None:
        """Carry out instructions at once (only on the scheduler thread, e.g. inside ``call``)."""
        outgoing: dict = {}
        reports: dict = {}
        self._apply(instructions, outgoing, reports)
        self._deliver(outgoing, reports)

    # ---------------------------------------------------------------------------------- client events

    def _handle(self, message, outgoing: dict, reports: dict) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            self.logger.warning("unknown scheduler message %r", type(message).__name__)
        else:
            handler(message, outgoing, reports)

    def _on_update_graph(self, message: UpdateGraph, outgoing: dict, reports: dict) -> None:
        known = self.state.tasks
        fresh: set = set()
        ledger = self.ledger
        for spec in message.tasks:
            arguments = spec.run_spec.arguments
            if spec.key in known or spec.key in fresh:
                # an equal task exists (e.g. another client's): the state machine keeps its
                # run_spec and drops this one, so this copy's segments belong to no one
                ledger.retain(arguments)
                ledger.release(arguments)
            else:
                fresh.add(spec.key)
                ledger.retain(arguments)
        self._apply(
            self.state.update_graph(message.tasks, message.client, message.wanted, time.time()),
            outgoing,
            reports,
        )

    def _on_release(self, message: Release, outgoing: dict, reports: dict) -> None:
        self._apply(self.state.client_releases(message.client, message.keys), outgoing, reports)

    def _on_release_pending(self, message: ReleasePending, outgoing: dict, reports: dict) -> None:
        session = self.sessions.get(message.client)
        if session is not None:
            keys = session.take_releases()
            self._apply(self.state.client_releases(message.client, keys), outgoing, reports)

    def _on_cancel(self, message: Cancel, outgoing: dict, reports: dict) -> None:
        self._apply(self.state.cancel(message.keys), outgoing, reports)

    def _on_retry(self, message: Retry, outgoing: dict, reports: dict) -> None:
        self._apply(self.state.retry(message.keys), outgoing, reports)

    def _on_scatter(self, message: Scatter, outgoing: dict, reports: dict) -> None:
        for key, value in message.values.items():
            if key in self.data:
                self.ledger.release(value)  # same content already stored under this key
                continue
            self.data[key] = value
            self.ledger.retain(value)
        self._apply(self.state.scattered(message.client, message.nbytes), outgoing, reports)

    def _on_worker_reports(self, message: WorkerReports, outgoing: dict, reports: dict) -> None:
        handle = self.workers.get(message.address)  # a thread worker's batch
        if handle is not None:
            self._worker_batch(handle, message.batch, outgoing, reports)

    def _on_call(self, message: Call, outgoing: dict, reports: dict) -> None:
        future = message.future
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = message.function(self, *message.args)
        except BaseException as exc:  # noqa: B036 - hand every failure to the caller
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _on_add_worker(self, message: AddWorker, outgoing: dict, reports: dict) -> None:
        self._add_worker(message.handle, outgoing, reports)

    def _on_wake(self, message: Wake, outgoing: dict, reports: dict) -> None:
        pass  # only wakes the loop (close)

    # ---------------------------------------------------------------------------------- worker events

    def _add_worker(self, handle, outgoing: dict, reports: dict) -> None:
        self.workers[handle.address] = handle
        if handle.conn is not None:
            self._selector.register(handle.conn.fileno(), selectors.EVENT_READ, handle)
        self.logger.info(
            "Register worker %s (name %s, %d threads)", handle.address, handle.name, handle.nthreads
        )
        self._apply(
            self.state.add_worker(
                handle.address, handle.nthreads, str(handle.name), handle.resources, time.time()
            ),
            outgoing,
            reports,
        )

    def _worker_batch(self, handle, batch: list, outgoing: dict, reports: dict) -> None:
        handlers = self._worker_handlers
        for message in batch:
            handler = handlers.get(type(message))
            if handler is None:
                self.logger.warning(
                    "unknown message %r from worker %s", type(message).__name__, handle.address
                )
            else:
                handler(handle, message, outgoing, reports)

    def _on_task_done(self, handle, message: TaskDone, outgoing: dict, reports: dict) -> None:
        key, value = message.key, message.value
        address = handle.address
        if self.state.expects_result(key, address):
            old = self.data.get(key)
            if old is not None:
                self.ledger.release(old)
            self.data[key] = value
            self.ledger.retain(value)
            self.tasks_done += 1
            self.task_stream.append(
                (key, address, message.thread, message.start, message.stop, "ok")
            )
        else:
            self.ledger.retain(value)
            self.ledger.release(value)  # a stale copy: free its shared memory
        instructions = self.state.task_finished(
            key, address, message.nbytes, message.start, message.stop
        )
        self._apply(instructions, outgoing, reports)

    def _on_task_erred(self, handle, message: TaskErred, outgoing: dict, reports: dict) -> None:
        key, address = message.key, handle.address
        if self.state.expects_result(key, address):
            self.task_stream.append(
                (key, address, message.thread, message.start, message.stop, "error")
            )
        exception = _load_exception(message.exception)
        instructions = self.state.task_erred(
            key, address, exception, message.traceback, message.start, message.stop
        )
        self._apply(instructions, outgoing, reports)

    def _on_run_result(self, handle, message: RunResult, outgoing: dict, reports: dict) -> None:
        self._run_result(message.run_id, handle.address, message.ok, message.value)

    def _on_secede(self, handle, message: Secede, outgoing: dict, reports: dict) -> None:
        self._apply(self.state.secede(handle.address, message.key), outgoing, reports)

    def _on_rejoin(self, handle, message: Rejoin, outgoing: dict, reports: dict) -> None:
        self._apply(self.state.rejoin(handle.address, message.key), outgoing, reports)

    def _on_worker_hello(self, handle, message: WorkerHello, outgoing: dict, reports: dict) -> None:
        handle.started = True
        handle.on_hello(message)

    def _on_worker_logs(self, handle, message: WorkerLogs, outgoing: dict, reports: dict) -> None:
        handle.on_logs(message.records)

    def _on_client_frame(self, handle, message: ClientFrame, outgoing: dict, reports: dict) -> None:
        handle.on_client_message(self, message.frame)

    def _worker_died(self, handle, outgoing: dict, reports: dict) -> None:
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
            sweep_process(self.cluster_id, handle.pid, keep=self.ledger.counts.keys())
        if self.on_worker_lost is not None:
            try:
                self.on_worker_lost(handle, reason)
            except Exception:
                self.logger.exception("replacing worker %s failed", handle.address)

    def _remove_worker(
        self, handle, reason: str, outgoing: dict, reports: dict, expected: bool, running=None
    ) -> None:
        if self.workers.pop(handle.address, None) is None:
            return
        if handle.conn is not None and not handle.conn.closed:
            try:
                self._selector.unregister(handle.conn.fileno())
            except (KeyError, ValueError, OSError):
                pass
        outgoing.pop(handle, None)
        for run_id in list(self._runs):
            self._run_result(
                run_id, handle.address, False, (RuntimeError(f"worker died: {reason}"), "")
            )
        self._apply(
            self.state.remove_worker(handle.address, reason, time.time(), expected, running),
            outgoing,
            reports,
        )
        handle.close()

    # ---------------------------------------------------------------------------------------- client.run

    def start_run(self, function_blob, args_payload, workers, future) -> None:
        """Called on the scheduler thread: send a function to ``workers`` and collect their answers."""
        targets = [self.workers[w] for w in workers if w in self.workers]
        run_id = next(self._run_ids)
        entry = {"pending": {h.address for h in targets}, "results": {}, "future": future}
        self._runs[run_id] = entry
        for handle in targets:
            handle.start_run(self, run_id, function_blob, args_payload)
        if not targets:
            self._finish_run(run_id)

    def _run_result(self, run_id: int, address: str, ok: bool, value) -> None:
        entry = self._runs.get(run_id)
        if entry is None or address not in entry["pending"]:
            return
        entry["pending"].discard(address)
        entry["results"][address] = (ok, value)
        if not entry["pending"]:
            self._finish_run(run_id)

    def _finish_run(self, run_id: int) -> None:
        entry = self._runs.pop(run_id)
        future = entry["future"]
        if not future.done():
            future.set_result(entry["results"])

    # ------------------------------------------------------------------------------------------ close

    def _drain_calls(self) -> None:
        while self.inbox:
            message = self.inbox.popleft()
            if type(message) is Call and not message.future.done():
                message.future.set_exception(RuntimeError("The scheduler is closed"))
        for run_id in list(self._runs):
            future = self._runs.pop(run_id)["future"]
            if not future.done():
                future.set_exception(
                    RuntimeError("The scheduler closed before the workers answered")
                )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop thread (workers are the cluster's to stop); idempotent."""
        if self._closing:
            return
        self._closing = True
        self.post(Wake())
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        for value in self.data.values():
            self.ledger.release(value)
        self.data.clear()

    # --------------------------------------------------------------------------------------- snapshot

    def prefix_counts(self) -> dict:
        by_prefix: dict = {}
        for ts in self.state.tasks.values():
            counts = by_prefix.get(ts.prefix)
            if counts is None:
                counts = by_prefix[ts.prefix] = {
                    "waiting": 0,
                    "queued": 0,
                    "processing": 0,
                    "memory": 0,
                    "erred": 0,
                    "released": 0,
                }
            if ts.state in counts:
                counts[ts.state] += 1
        return by_prefix

    def stream_records(self) -> list:
        return [
            {
                "key": str(key),
                "prefix": key_split(key),
                "worker": worker,
                "thread": thread,
                "start": start,
                "stop": stop,
                "status": status,
            }
            for key, worker, thread, start, stop, status in list(self.task_stream)
        ]


def _load_exception(blob):
    if not isinstance(blob, (bytes, bytearray)):
        return blob
    try:
        return pickle.loads(blob)
    except Exception as exc:
        return RuntimeError(f"The task's exception could not be unpickled here: {exc!r}")
