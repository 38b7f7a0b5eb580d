"""The worker process: its entry point and its message loop.

A process worker is started by ``deploy/workers.py`` as ``python -c "...main(FD)"`` with one end of a
socket pair as file descriptor FD (no fork of the threaded parent, no re-import of the user's
``__main__``, so it works from scripts without a main guard, from stdin and from a REPL)::

    parent ──init dict──► main(): hello, then waits for CloseWorker
    parent ──batches────► an idle task thread: recv, unpickle, dispatch ──► WorkerRuntime (files work)
    parent ◄──batches──── task threads (TaskDone, TaskErred...), log shipper thread (WorkerLogs)

One idle task thread at a time receives; when what came is a task and a slot is free, it runs the task
itself, so a task reaches an idle worker without a hand-off between threads, while another thread
receives in its place (woken at once, or, for the last free slot, an idle thread that watches takes over
within 2 ms: ``WorkerRuntime.receive_with``). The thread that receives never blocks on
sending, so the parent can never deadlock against it. Values travel as ``comm.serialize.Payload``: large buffers sit in shared memory and are mapped, not
copied. The worker exits when the pipe reaches EOF (the parent closed it or died) or when its parent pid
changes; before leaving it sweeps the cluster's shared-memory segments if the parent died, since no one
else will.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..comm.frames import FrameReader, write_frame
from ..comm.serialize import deserialize, loads_function, payload_nbytes, serialize
from ..comm.shm import SegmentStore, sweep_cluster
from ..comm.shm_mappings import MappingCache
from ..comm.shm_pool import SegmentPool
from ..logs import WorkerLogShipper
from ..messages import (
    ClientReply,
    CloseWorker,
    ComputeTask,
    FreeKeys,
    PublishKeys,
    ReleaseQueued,
    ReturnSegments,
    RunFunction,
    RunResult,
    WorkerHello,
    WorkerLogs,
    decode_batch,
    encode_batch,
)
from ..tracebacks import encode_error
from ..utils import format_bytes
from .admin import call_with_worker
from .allocator import HeapTrimmer, tune_allocator
from .holding import HeldResults
from .running import RunningBoard
from .runtime import WorkerRuntime
from .task_client import TaskClientSlot

if TYPE_CHECKING:
    from ..remote.client import WorkerLink

logger = logging.getLogger("minidist.worker")


class ProcessWorker:
    """Glue between the pipe and the runtime inside a worker process."""

    def __init__(self, frames: FrameReader, fd: int, init: dict):
        self.fd = fd
        # one read per batch of frames, after a poll() for them (comm/frames.py); it read the init
        # message already, and may hold frames that came right behind it
        self.frames = frames
        self.init = init
        self.cluster_id = init["cluster_id"]
        self.parent = ParentWatch(init["parent_pid"])
        self.store = SegmentStore(self.cluster_id, threshold=init.get("shm_threshold", 64 * 1024))
        # large segments read again (one array passed to many tasks) are mapped once
        self.mappings = MappingCache()
        self.functions: dict = {}  # function id -> callable, so each function crosses the pipe once
        self._send_lock = threading.Lock()
        self.client_link: Optional[WorkerLink] = None  # made by the first get_client() in a task
        # worker_class= of the cluster (deploy/worker_hooks.py), pickled by the parent
        blob = init.get("worker_class")
        runtime_class = loads_function(blob) if blob is not None else WorkerRuntime
        self.runtime = runtime_class(
            init["address"],
            init["name"],
            init["nthreads"],
            send=self.send,
            encode_result=self.encode_result,
            encode_error=encode_error,
            decode_value=self.decode_value,
            prepare=self.prepare,
            resources=init.get("resources"),
            # get_client() in tasks: a client over this pipe, made by the client layer on first use
            task_clients=TaskClientSlot(self.connect_to_scheduler),
        )
        if init.get("running_fd") is not None:
            self.runtime.running_board = RunningBoard(init["running_fd"])
        # large results the scheduler lets this worker keep to itself until needed elsewhere; when
        # they must move they are written into segments this worker recycles (comm/shm_pool.py)
        holding = HeldResults(self.runtime, self.encode_published, init.get("memory_limit"))
        self.runtime.holding = holding
        self.pool = holding.pool = SegmentPool(self.store, capacity=holding.budget // 2)
        self.closing = False
        self._closed = threading.Event()  # the main thread waits on it, then leaves
        # gives freed heap memory back when idle (allocator.py), if large blocks come from the heap
        self.heap_trimmer: Optional[HeapTrimmer] = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            ComputeTask: self._on_compute_task,
            FreeKeys: self._on_free_keys,
            PublishKeys: self._on_publish_keys,
            ReturnSegments: self._on_return_segments,
            ReleaseQueued: self._on_release_queued,
            RunFunction: self._on_run_function,
            ClientReply: self._on_client_reply,
            CloseWorker: self._on_close,
        }

    def send(self, batch: list) -> None:
        data = encode_batch(batch)
        with self._send_lock:
            write_frame(self.fd, data)  # a small frame in one write (comm/frames.py)

    def connect_to_scheduler(self):
        """A connection for the tasks' client, talking to the scheduler through this pipe (made on
        the first get_client(); the receiving thread hands its replies to ``client_link``)."""
        from ..remote.client import WorkerLink, connect_worker

        link = WorkerLink(self.runtime.address, self.runtime.report)
        self.client_link = link
        return connect_worker(link, self.store)

    def encode_result(self, value) -> tuple:
        payload = serialize(value, self.store)
        return payload, payload_nbytes(payload)

    def encode_published(self, value) -> tuple:
        """A held result, published: its large buffers go into recycled segments."""
        payload = serialize(value, self.pool)
        return payload, payload_nbytes(payload)

    def decode_value(self, payload):
        return deserialize(payload, self.mappings.open)

    def prepare(self, run_spec: ComputeTask) -> tuple:
        function_id = run_spec.function_id
        with self.runtime.decode_lock:
            function = self.functions[function_id]
            if type(function) is _LazyFunction:
                function = self.functions[function_id] = loads_function(function.blob)
            args, kwargs = deserialize(run_spec.arguments, self.mappings.open)
        return function, args, kwargs

    # -------------------------------------------------------------------------------------- dispatch

    def dispatch(self, message) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            logger.warning(
                "worker %s: unknown message %r", self.runtime.address, type(message).__name__
            )
        else:
            handler(message)

    def _on_compute_task(self, message: ComputeTask) -> None:
        if message.function is not None and message.function_id not in self.functions:
            # keep the blob until first use: decoding happens on a task thread
            self.functions[message.function_id] = _LazyFunction(message.function)
        # the message holds the task's RunSpec fields: prepare() reads them from it
        self.runtime.submit(
            message.key,
            message,
            message.dependencies,
            message.dep_values,
            message.attempt,
            message.may_hold,
        )

    def _on_free_keys(self, message: FreeKeys) -> None:
        self.runtime.free(message.keys)

    def _on_publish_keys(self, message: PublishKeys) -> None:
        self.runtime.holding.publish(message.keys)

    def _on_return_segments(self, message: ReturnSegments) -> None:
        self.pool.give_back(message.names)

    def _on_release_queued(self, message: ReleaseQueued) -> None:
        self.runtime.release_queued(message.keys)

    def _on_run_function(self, message: RunFunction) -> None:
        threading.Thread(
            target=self._run_function,
            args=(message.run_id, message.function, message.arguments),
            daemon=True,
            name="minidist-run",
        ).start()

    def _on_client_reply(self, message: ClientReply) -> None:
        if self.client_link is not None:
            self.client_link.receive(message.frame)

    def _on_close(self, message: CloseWorker) -> None:
        self.closing = True

    def _run_function(self, run_id, function_blob, args_payload) -> None:
        try:
            function = loads_function(function_blob)
            args, kwargs = deserialize(args_payload)
            result = call_with_worker(function, args, kwargs, self.runtime)
            reply = RunResult(run_id, True, serialize(result, None))
        except BaseException as exc:  # noqa: B036
            blob, text = encode_error(exc, exc.__traceback__)
            reply = RunResult(run_id, False, (blob, text))
        self.runtime.report(reply)

    def watch_parent(self) -> None:
        """Leave if the parent disappears, even if the pipe stays open (e.g. an inherited copy)."""
        while not self.closing:
            if not self.parent.alive():
                self.die_orphaned()
            self.mappings.drop_unlinked()  # their files' pages go back to the system
            if self.heap_trimmer is not None:
                self.heap_trimmer.look(idle=not self.runtime.executing)
            time.sleep(0.5)

    def die_orphaned(self) -> None:
        """Leave; sweep the cluster's shared memory only if the parent really is gone.

        The pipe can reach EOF a moment before the kernel marks the parent as exited: give it a second.
        """
        deadline = time.monotonic() + 1.0
        while self.parent.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.parent.alive():
            sweep_cluster(self.cluster_id)
        os._exit(0)

    def serve(self, shipper: Optional[WorkerLogShipper] = None) -> None:
        """Say hello, then receive until closed. ``shipper``: this process's log shipper, whose records
        travel with the hello and then every ``SHIP_INTERVAL``."""
        threading.Thread(
            target=self.watch_parent, name="minidist-parent-watch", daemon=True
        ).start()
        limit = self.init.get("memory_limit")
        logger.info(
            "Start worker %s (name %s, pid %d, %d threads, memory limit %s)",
            self.runtime.address,
            self.runtime.name,
            os.getpid(),
            self.runtime.nthreads,
            format_bytes(limit) if limit else "none",
        )
        hello: list = [WorkerHello(os.getpid())]
        records = shipper.drain() if shipper is not None else None
        if records:
            # the start line goes before the hello: it is in the worker's log before the worker can
            # be given a task, so the client records it while it starts, not in its first run, where
            # the record would keep one of the run's allocator arenas alive (docs/architecture.md)
            hello.insert(0, WorkerLogs(records))
        try:
            self.send(hello)
        except OSError:  # closed before we said hello (closed or retired at once): just go
            if not self.parent.alive():
                self.die_orphaned()
            os._exit(0)
        if shipper is not None:
            shipper.ship_every(lambda records: self.send([WorkerLogs(records)]))
        # from now on an idle task thread receives, and runs what came itself (runtime.receive_with)
        self.runtime.receive_with(self.receive)
        self._closed.wait()
        self.runtime.close(timeout=1.0)
        self.pool.close()

    def receive(self) -> bool:
        """Receive one frame and file its messages (on whichever task thread receives); False once
        the worker was asked to close."""
        try:
            data = self.frames.recv_bytes()
        except (EOFError, OSError):
            self.die_orphaned()  # the parent closed the pipe or died
        handlers = self._handlers
        try:
            for message in decode_batch(data):
                handler = handlers.get(type(message))
                if handler is None:
                    self.dispatch(message)  # says it is unknown
                else:
                    handler(message)
        except BaseException:  # noqa: B036 - a frame we cannot read: leave, the parent replaces us
            logger.exception("worker %s: could not handle a message", self.runtime.address)
            os._exit(1)
        if self.closing:
            self._closed.set()
            return False
        return True


class ParentWatch:
    """Whether the cluster's process still lives. It need not be our parent (a worker forked by the
    template has the template as its parent), so it is watched through a pidfd, which names that one
    process for good; without pidfd support, through our parent pid."""

    def __init__(self, pid: int):
        self.pid = pid
        self.pidfd: Optional[int] = None
        self.dead = False
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.dead = True  # gone before we looked
        except (AttributeError, OSError):
            pass

    def alive(self) -> bool:
        if self.dead:
            return False
        if self.pidfd is not None:
            readable, _, _ = select.select([self.pidfd], [], [], 0)  # readable once it has exited
            self.dead = bool(readable)
        else:
            self.dead = os.getppid() != self.pid
        return not self.dead


class _LazyFunction:
    """A function blob decoded on first use (on a task thread, so import errors err the task)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes):
        self.blob = blob


def main(fd: int, running_fd: Optional[int] = None) -> None:
    """Run a worker on the pipe ``fd``. ``running_fd``: its running board's descriptor when it differs
    from the number in the settings (a worker forked by the template received it under another)."""
    # the pipe's frames are multiprocessing's Connection format, read and written without it
    # (comm/frames.py): a worker, and the template that forks it, need not import multiprocessing
    frames = FrameReader(fd, blocking=True)
    init = pickle.loads(frames.recv_bytes())
    if running_fd is not None:
        init["running_fd"] = running_fd
    # this process only; before any task allocates and before any thread starts (one malloc arena)
    heap_trimmer = tune_allocator(init.get("memory_limit"))
    # see the same modules as the parent: scripts' folders, test folders, editable installs
    for entry in reversed(init.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    # records of "minidist.worker" loggers go to this worker's log in the parent (ClusterLogs)
    shipper = WorkerLogShipper()
    shipper.install()
    try:
        worker = ProcessWorker(frames, fd, init)
    except BaseException:  # noqa: B036 - e.g. worker_class.setup() raised: say why before leaving
        logger.exception("Worker %s could not start", init.get("address"))
        shipper.ship(lambda records: write_frame(fd, encode_batch([WorkerLogs(records)])))
        os._exit(1)
    worker.heap_trimmer = heap_trimmer
    if init.get("worker_setup"):  # the cluster's worker plugins, before the first task
        from .plugins import install_all

        install_all(worker.runtime, init["worker_setup"])
    worker.serve(shipper)
    os._exit(0)
