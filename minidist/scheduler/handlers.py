"""What the scheduler thread does with each message: one function per message type, found by type.

``Scheduler`` (``scheduler/server.py``) looks a message's type up in ``HANDLERS`` (posted by clients and
the cluster) or ``WORKER_HANDLERS`` (sent by workers) and calls the function found::

    message ─► handler(scheduler, [handle,] message, outgoing, reports)
                   │ a public event of SchedulerState (update_graph, task_finished, retire_workers...)
                   ▼
               instructions ─► scheduler._apply ─► outgoing (per worker) / reports (per client)

Handlers run on the scheduler thread only. They touch stored values (``scheduler.data``) and shared
memory (through ``scheduler.data_plane``) where a message brings or drops them; every change to the task and worker
books goes through an event of ``SchedulerState``. To add a message, see docs/architecture.md.
"""

from __future__ import annotations

import pickle
import time
from collections import deque
from typing import Callable, Optional, Sequence

from ..errors import Reschedule
from ..messages import (
    AddWorker,
    Call,
    Cancel,
    ClientFrame,
    ClientSession,
    DirectTask,
    FailPending,
    ForgetClients,
    PauseWorker,
    Published,
    QueuedReleased,
    Rejoin,
    Release,
    ReleasePending,
    RemoveWorkers,
    Restart,
    RetireWorkers,
    Retry,
    RunOnWorkers,
    RunResult,
    Scatter,
    Secede,
    TaskColumns,
    TaskDone,
    TaskErred,
    TaskHeld,
    TaskTransfer,
    UpdateGraph,
    Wake,
    WorkerHello,
    WorkerLogs,
    WorkerReports,
)
from .queries import retirement_candidates

# ----------------------------------------------------------------------------------------- clients


def on_update_graph(
    scheduler, message: UpdateGraph | DirectTask, outgoing: dict, reports: dict, sent_to=None
) -> None:
    plane = scheduler.data_plane
    tasks = message.tasks
    run_specs: Sequence
    if type(tasks) is TaskColumns and not tasks.special:
        run_specs = tasks.run_specs  # a map's or a graph's: no NewTask made for this walk
    else:
        run_specs = [spec.run_spec for spec in tasks]
    for _, _, arguments in run_specs:
        # held until the state lets go of them (ReleaseArguments, or Forget); at once for a task the
        # state drops because an equal one exists. A pickle alone (bytes) holds no shared memory
        if type(arguments) is not bytes:
            plane.retain(arguments)
    if scheduler.plugins.plugins:  # scheduler/plugins.py
        keys = [spec.key for spec in message.tasks]
        scheduler.plugins.update_graph(message.client, message.wanted, keys)
    instructions = scheduler.state.update_graph(
        message.tasks, message.client, message.wanted, time.time(), sent_to
    )
    scheduler._apply(instructions, outgoing, reports)


def record_direct_task(
    scheduler, message: Optional[DirectTask], inbox: deque, outgoing: dict, reports: dict
) -> None:
    """A task a client already sent to an idle worker (scheduler/lane.py), recorded as running there
    first thing in the turn: before the inbox, whatever it holds (a RetireWorkers for that worker must
    find it busy), and before the worker's reports. That client's releases posted just before it (a
    chain drops each future before it submits the next task) are applied next, their frees held for
    the workers' next batches, as ``release_then_submit`` does. None: no client took the offer."""
    if message is None:
        return
    on_update_graph(scheduler, message, outgoing, reports, message.worker)
    if scheduler.plugins.plugins:
        ts = scheduler.state.tasks.get(message.tasks[0].key)
        if ts is not None and ts.processing_on == message.worker:
            scheduler.plugins.transition(ts.key, "queued", "processing")
    if inbox and type(inbox[0]) is ReleasePending and inbox[0].client == message.client:
        session = scheduler.sessions.get(inbox.popleft().client)
        if session is not None:
            released: dict = {}
            release_keys(scheduler, message.client, session.take_releases(), released, reports)
            scheduler.delivery.hold(released, outgoing)


def on_release(scheduler, message: Release, outgoing: dict, reports: dict) -> None:
    release_keys(scheduler, message.client, message.keys, outgoing, reports)


def on_release_pending(scheduler, message: ReleasePending, outgoing: dict, reports: dict) -> None:
    session = scheduler.sessions.get(message.client)
    if session is not None:
        release_keys(scheduler, message.client, session.take_releases(), outgoing, reports)


_RELEASE_STEP = 2000  # keys released per event at most (see release_keys)


def release_keys(scheduler, client: str, keys, outgoing: dict, reports: dict) -> None:
    # A large release goes in steps, each applied before the next: the instructions for 100,000 keys
    # at once (a Forget and a FreeOnWorker each) would outlive two young garbage collections, and
    # 200,000 objects reaching the oldest generation bring on a full collection of the whole heap
    for start in range(0, len(keys), _RELEASE_STEP):
        chunk = keys[start : start + _RELEASE_STEP]
        scheduler._apply(scheduler.state.client_releases(client, chunk), outgoing, reports)


def release_then_submit(
    scheduler, message: ReleasePending, inbox: deque, outgoing: dict, reports: dict
) -> None:
    """A client's releases followed by its next submission of one task (a loop of submit -> result
    drops each future just before it submits the next task): the new task goes out to its worker
    first, and the releases are applied while the worker runs it, off the round trip's path. Only
    when no key of the submission is among the released ones, so the order cannot matter (a key
    released and submitted again must be forgotten first); otherwise both in order. Larger
    submissions (a graph, a map) keep the order: freeing first lets their results reuse the
    released ones' shared memory (comm/shm_pool.py)."""
    session = scheduler.sessions.get(message.client)
    following = inbox[0]  # only the scheduler thread takes from the inbox
    if (
        session is None
        or type(following) is not UpdateGraph
        or following.client != message.client
        or type(following.tasks) is not tuple
        or len(following.tasks) != 1
    ):
        on_release_pending(scheduler, message, outgoing, reports)
        return
    keys = session.take_releases()
    inbox.popleft()
    if keys and _names_any(following, keys):
        release_keys(scheduler, message.client, keys, outgoing, reports)
        scheduler._handle(following, outgoing, reports)
        return
    scheduler._handle(following, outgoing, reports)
    scheduler.delivery.send_work(outgoing)
    released: dict = {}  # what releasing sends (frees, mostly): kept apart to be held
    release_keys(scheduler, message.client, keys, released, reports)
    scheduler.delivery.hold(released, outgoing)


def _names_any(update: UpdateGraph, keys: list) -> bool:
    """Whether ``update`` names any of ``keys``: a task's key or dependency, or a wanted key."""
    released = set(keys) if len(keys) > 4 else keys
    for spec in update.tasks:
        if spec.key in released or any(dep in released for dep in spec.dependencies):
            return True
    return any(key in released for key in update.wanted)


def on_cancel(scheduler, message: Cancel, outgoing: dict, reports: dict) -> None:
    scheduler._apply(scheduler.state.cancel(message.keys), outgoing, reports)


def on_retry(scheduler, message: Retry, outgoing: dict, reports: dict) -> None:
    scheduler._apply(scheduler.state.retry(message.keys), outgoing, reports)


def on_scatter(scheduler, message: Scatter, outgoing: dict, reports: dict) -> None:
    data, plane = scheduler.data, scheduler.data_plane
    for key, value in message.values.items():
        if key in data:
            plane.release(value)  # same content already stored under this key
            continue
        data[key] = value
        if type(value) is not bytes:  # a pickle alone (most results) holds no shared memory
            plane.retain(value)
    scheduler._apply(scheduler.state.scattered(message.client, message.nbytes), outgoing, reports)


def on_forget_clients(scheduler, message: ForgetClients, outgoing: dict, reports: dict) -> None:
    for client in message.clients:
        scheduler._apply(scheduler.state.forget_client(client), outgoing, reports)
        for hook in scheduler.client_gone_hooks:
            hook(client)


def on_client_session(scheduler, message: ClientSession, outgoing: dict, reports: dict) -> None:
    if scheduler.plugins:
        hook = "add_client" if message.opened else "remove_client"
        scheduler.plugins.emit(hook, scheduler, client=message.client)


# ----------------------------------------------------------------------------------------- cluster


def on_add_worker(scheduler, message: AddWorker, outgoing: dict, reports: dict) -> None:
    scheduler._add_worker(message.handle, outgoing, reports)


def on_remove_workers(scheduler, message: RemoveWorkers, outgoing: dict, reports: dict) -> None:
    for handle in message.handles:
        scheduler._remove_worker(handle, message.reason, outgoing, reports, expected=True)
    _answer(message.reply, None)


def on_retire_workers(scheduler, message: RetireWorkers, outgoing: dict, reports: dict) -> None:
    state = scheduler.state
    vet = scheduler.plugins.downscaling_allowed if message.by_scaling else None
    chosen = retirement_candidates(state, message.number, message.addresses, vet)
    scheduler._apply(state.retire_workers(chosen), outgoing, reports)
    _answer(message.reply, chosen)


def on_pause_worker(scheduler, message: PauseWorker, outgoing: dict, reports: dict) -> None:
    instructions = scheduler.state.set_memory_paused(message.address, message.paused)
    scheduler._apply(instructions, outgoing, reports)


def on_restart(scheduler, message: Restart, outgoing: dict, reports: dict) -> None:
    to_old_workers: dict = {}  # the old workers are going: send them nothing more
    scheduler._apply(scheduler.state.restart(), to_old_workers, reports)
    scheduler.plugins.emit("restart", scheduler)
    for handle in message.handles:
        scheduler._remove_worker(handle, "restart", to_old_workers, reports, expected=True)
    _answer(message.reply, None)


def on_fail_pending(scheduler, message: FailPending, outgoing: dict, reports: dict) -> None:
    scheduler._apply(scheduler.state.fail_pending(message.exception, ""), outgoing, reports)


def on_run_on_workers(scheduler, message: RunOnWorkers, outgoing: dict, reports: dict) -> None:
    handles = [scheduler.workers[w] for w in message.workers if w in scheduler.workers]
    scheduler.runs.start(handles, message.function, message.arguments, message.reply)


def on_worker_reports(scheduler, message: WorkerReports, outgoing: dict, reports: dict) -> None:
    handle = scheduler.workers.get(message.address)  # a thread worker's batch
    if handle is not None:
        scheduler._worker_batch(handle, message.batch, outgoing, reports)


def on_call(scheduler, message: Call, outgoing: dict, reports: dict) -> None:
    reply = message.reply
    if not reply.set_running_or_notify_cancel():
        return
    try:
        result = message.function(scheduler, *message.args)
    except BaseException as exc:  # noqa: B036 - hand every failure to the caller
        reply.set_exception(exc)
    else:
        reply.set_result(result)


def on_wake(scheduler, message: Wake, outgoing: dict, reports: dict) -> None:
    pass  # only wakes the loop (close)


def _answer(reply, value) -> None:
    if reply is not None and reply.set_running_or_notify_cancel():
        reply.set_result(value)


HANDLERS: dict[type, Callable[..., None]] = {
    UpdateGraph: on_update_graph,
    Release: on_release,
    ReleasePending: on_release_pending,
    Cancel: on_cancel,
    Retry: on_retry,
    Scatter: on_scatter,
    ForgetClients: on_forget_clients,
    ClientSession: on_client_session,
    AddWorker: on_add_worker,
    RemoveWorkers: on_remove_workers,
    RetireWorkers: on_retire_workers,
    PauseWorker: on_pause_worker,
    Restart: on_restart,
    FailPending: on_fail_pending,
    RunOnWorkers: on_run_on_workers,
    WorkerReports: on_worker_reports,
    Call: on_call,
    Wake: on_wake,
}


# ----------------------------------------------------------------------------------------- workers


def on_task_done(scheduler, handle, message: TaskDone, outgoing: dict, reports: dict) -> None:
    key, value, address = message.key, message.value, handle.address
    state, data, plane = scheduler.state, scheduler.data, scheduler.data_plane
    if state.expects_result(key, address, message.attempt):
        old = data.get(key)
        if old is not None:
            plane.release(old)
        data[key] = value
        if type(value) is not bytes:  # a pickle alone (most results) holds no shared memory
            plane.retain(value)
        scheduler.done_count[0] += 1
        # the task's own key object, not the copy this message carried: the stream outlives the
        # run, and copies made while it churned would pin the allocator's arenas (task_stream.py)
        scheduler.task_stream.finished(
            state.tasks[key].key,
            address,
            message.thread,
            message.start,
            message.stop,
            "ok",
            message.nbytes,
        )
        if scheduler.plugins.plugins:
            scheduler.plugins.transition(key, "processing", "memory")
    else:
        plane.retain(value)
        plane.release(value)  # a stale copy: free its shared memory
    instructions = state.task_finished(
        key, address, message.nbytes, message.start, message.stop, message.attempt
    )
    scheduler._apply(instructions, outgoing, reports)


def on_task_held(scheduler, handle, message: TaskHeld, outgoing: dict, reports: dict) -> None:
    """The worker kept a large result to itself (scheduler/lineage.py): nothing to store yet."""
    key, address, state = message.key, handle.address, scheduler.state
    if state.expects_result(key, address, message.attempt):
        scheduler.done_count[0] += 1
        scheduler.task_stream.finished(
            key, address, message.thread, message.start, message.stop, "ok", message.nbytes
        )
        if scheduler.plugins.plugins:
            scheduler.plugins.transition(key, "processing", "memory")
    instructions = state.task_finished(
        key, address, message.nbytes, message.start, message.stop, message.attempt, held=True
    )
    scheduler._apply(instructions, outgoing, reports)


def on_published(scheduler, handle, message: Published, outgoing: dict, reports: dict) -> None:
    """A held result, published on request: stored from now on as any result is."""
    key, value, address = message.key, message.value, handle.address
    state, plane = scheduler.state, scheduler.data_plane
    if value is not None:
        plane.retain(value)
    if not state.expects_publication(key, address):
        if value is not None:
            plane.release(value)  # forgotten meanwhile: free its shared memory
        return
    if value is None:
        blob, text = message.error or (None, "the worker no longer held the value")
        exception = _load_exception(blob) if blob is not None else RuntimeError(text)
        instructions = state.publication_failed(key, address, exception, text)
    else:
        old = scheduler.data.get(key)
        if old is not None:
            plane.release(old)
        scheduler.data[key] = value
        instructions = state.published(key, address)
    scheduler._apply(instructions, outgoing, reports)


def on_task_erred(scheduler, handle, message: TaskErred, outgoing: dict, reports: dict) -> None:
    key, address = message.key, handle.address
    exception = _load_exception(message.exception)
    if isinstance(exception, Reschedule):  # not an error: the task goes back to the queue
        scheduler.task_stream.discard_transfer(key)
        instructions = scheduler.state.task_rescheduled(key, address, message.stop, message.attempt)
        scheduler._apply(instructions, outgoing, reports)
        return
    if scheduler.state.expects_result(key, address, message.attempt):
        scheduler.task_stream.finished(
            scheduler.state.tasks[key].key,  # the task's own key object (see on_task_done)
            address,
            message.thread,
            message.start,
            message.stop,
            "error",
        )
        if scheduler.plugins.plugins:
            scheduler.plugins.transition(key, "processing", "erred")
    instructions = scheduler.state.task_erred(
        key, address, exception, message.traceback, message.start, message.stop, message.attempt
    )
    scheduler._apply(instructions, outgoing, reports)


def on_task_transfer(
    scheduler, handle, message: TaskTransfer, outgoing: dict, reports: dict
) -> None:
    scheduler.task_stream.transfer(message.key, message.start, message.stop)


def on_run_result(scheduler, handle, message: RunResult, outgoing: dict, reports: dict) -> None:
    scheduler.runs.answer(message.run_id, handle.address, message.ok, message.value)


def on_secede(scheduler, handle, message: Secede, outgoing: dict, reports: dict) -> None:
    scheduler._apply(scheduler.state.secede(handle.address, message.key), outgoing, reports)


def on_rejoin(scheduler, handle, message: Rejoin, outgoing: dict, reports: dict) -> None:
    scheduler._apply(scheduler.state.rejoin(handle.address, message.key), outgoing, reports)


def on_queued_released(
    scheduler, handle, message: QueuedReleased, outgoing: dict, reports: dict
) -> None:
    instructions = scheduler.state.queued_released(handle.address, message.released, message.kept)
    scheduler._apply(instructions, outgoing, reports)


def on_worker_hello(scheduler, handle, message: WorkerHello, outgoing: dict, reports: dict) -> None:
    handle.started = True
    handle.on_hello(message)


def on_worker_logs(scheduler, handle, message: WorkerLogs, outgoing: dict, reports: dict) -> None:
    handle.on_logs(message.records)


def on_client_frame(scheduler, handle, message: ClientFrame, outgoing: dict, reports: dict) -> None:
    handle.on_client_message(scheduler, message.frame)


WORKER_HANDLERS: dict[type, Callable[..., None]] = {
    TaskDone: on_task_done,
    TaskHeld: on_task_held,
    Published: on_published,
    TaskErred: on_task_erred,
    TaskTransfer: on_task_transfer,
    RunResult: on_run_result,
    Secede: on_secede,
    Rejoin: on_rejoin,
    QueuedReleased: on_queued_released,
    WorkerHello: on_worker_hello,
    WorkerLogs: on_worker_logs,
    ClientFrame: on_client_frame,
}


def _load_exception(blob):
    if not isinstance(blob, (bytes, bytearray)):
        return blob
    try:
        return pickle.loads(blob)
    except Exception as exc:
        return RuntimeError(f"The task's exception could not be unpickled here: {exc!r}")
