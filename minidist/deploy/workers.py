"""Worker handles: how the scheduler thread talks to one worker, process or thread.

A handle is what ``scheduler/server.py`` keeps per worker. Both kinds implement the scheduler's
``WorkerHandle`` protocol (``scheduler/worker_handle.py``): ``execute_message`` (shape a task for this
worker), ``send_messages`` (deliver a batch), ``start_run`` (client.run), ``death_reason``, ``close``...
and add what the cluster needs (``stop``, ``kill``, ``wait_ready``).

``ProcessWorkerHandle`` owns a worker process and the parent end of a socket pair. The process is forked
by the cluster's single-threaded template process (``deploy/launcher.py``, ready in milliseconds) or,
where that cannot be used, started as a fresh interpreter with ``subprocess``; the threaded parent is
never forked either way.
Functions cross the pipe once per worker: the handle remembers which function ids it already sent.

``ThreadWorkerHandle`` owns a ``WorkerRuntime`` in this process; messages become direct calls and
reports come back through the scheduler's inbox. Values are never serialised.

Both run ``worker_class`` (a ``WorkerRuntime`` subclass, see ``deploy/worker_hooks.py``) when the cluster
has one: a process worker receives it pickled in its init message, a thread worker instantiates it here.
Handles never log by themselves; the cluster logs about them in its own per-component logs.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Pipe
from typing import Any, Callable, Optional, Union

from ..comm.frames import write_frame
from ..messages import (
    CloseWorker,
    ComputeTask,
    FreeKeys,
    ReleaseQueued,
    RunFunction,
    RunResult,
    RunSpec,
    WorkerReports,
    encode_batch,
    from_fields,
)
from ..scheduler.worker_handle import WorkerHandle
from ..worker.admin import call_with_worker
from ..worker.running import RunningBoard, key_token
from ..worker.runtime import WorkerRuntime
from .launcher import ForkedProcess, WorkerLauncher, python_command, wait_for_exit
from .memory import format_bytes
from .worker_hooks import Worker

# how a process is ended by someone else (not counted against a worker that keeps failing to start)
_SIGNALS_FROM_OUTSIDE = frozenset((signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
_THREAD_LIMIT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def describe_exit(returncode: Optional[int], memory_killed: bool = False, detail: str = "") -> str:
    """Say how a process ended, for logs and KilledWorker messages (``detail``: the memory figures)."""
    if memory_killed:
        why = "terminated by minidist for exceeding its memory limit"
        return f"{why} ({detail})" if detail else why
    if returncode is None:
        return "its pipe closed but the process has not exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " - possibly out of memory" if -returncode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {returncode}"


def cannot_start_message(handle, reason: str) -> str:
    """What to tell the user once workers keep failing to start like ``handle`` did (``reason``)."""
    when = "as soon as they start" if handle.started else "before they start"
    if handle.memory_killed:
        advice = (
            f"A memory_limit of {format_bytes(handle.memory_limit)} is less than an idle worker process "
            "needs: give the cluster a larger memory_limit (or memory_limit=0 for no limit)."
        )
    else:
        advice = (
            "The workers' own logs (cluster.get_logs()) may say why; also check that minidist imports "
            "in a fresh interpreter: python -c 'import minidist.worker.process'."
        )
    return f"Worker processes keep dying {when} ({reason}). {advice}"


class ProcessWorkerHandle:
    kind = "process"

    def __init__(
        self,
        process: Union[subprocess.Popen, ForkedProcess],
        conn,
        name: Any,
        nthreads: int,
        memory_limit: Optional[int],
        resources: Optional[dict],
        running_board: Optional[RunningBoard] = None,
        log_sink: Optional[Callable[[str, list], None]] = None,
        client_router: Optional[Callable] = None,
    ):
        self.process = process
        self.pid = process.pid
        self.conn = conn
        self.address = f"ipc://{process.pid}"
        self.name = name
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = resources
        self.started = False
        self.memory_killed = False  # set by the memory monitor before it kills the process
        self.memory_kill_detail = ""  # its figures, for the death reason
        self.functions_sent: set = set()
        self.log_sink = log_sink  # callable(address, records): its shipped log records
        self.client_router = client_router  # callable(scheduler, handle, message): clients in tasks
        self.client_session = None  # serves those clients (remote/server.py); ends with the worker
        self.running_board = running_board  # what its task threads run (running.py)
        self.ready = threading.Event()  # set when it said hello: it can run tasks from then on

    def __repr__(self) -> str:
        return f"<ProcessWorker {self.address} name={self.name}>"

    def running_keys(self, candidates) -> Optional[list]:
        """Which of ``candidates`` its task threads were running (read after it died), or None if
        that cannot be told."""
        if self.running_board is None:
            return None
        tokens = self.running_board.tokens()
        return [key for key in candidates if key_token(key) in tokens]

    def execute_message(
        self,
        key,
        run_spec: RunSpec,
        dependencies,
        dep_values,
        attempt: int = 0,
        may_hold: bool = False,
    ) -> ComputeTask:
        function_id, function, arguments = run_spec
        if function_id in self.functions_sent:
            function = None  # it has the function already
        else:
            self.functions_sent.add(function_id)
        return from_fields(
            ComputeTask,
            (key, function_id, function, arguments, dependencies, dep_values, attempt, may_hold),
        )

    def send_messages(self, batch: list) -> None:
        # conn.fileno() raises OSError once the pipe is closed; a small frame is one write
        write_frame(self.conn.fileno(), encode_batch(batch))

    def start_run(self, run_id, function_blob, args_payload) -> None:
        """``client.run`` on this worker: it answers with a RunResult (OSError if its pipe is gone)."""
        self.send_messages([RunFunction(run_id, function_blob, args_payload)])

    def on_hello(self, message) -> None:
        self.ready.set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker can run tasks; False if it died first or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if self.process.poll() is not None or time.monotonic() >= deadline:
                return False
        return True

    def on_logs(self, records) -> None:
        if self.log_sink is not None:
            self.log_sink(self.address, records)

    def on_client_message(self, scheduler, message) -> None:
        if self.client_router is not None:
            self.client_router(scheduler, self, message)

    def death_reason(self) -> str:
        try:
            returncode = wait_for_exit(self.process, 2)
        except subprocess.TimeoutExpired:
            returncode = None
        reason = describe_exit(returncode, self.memory_killed, self.memory_kill_detail)
        if not self.started:
            reason += " before it started (its log, in cluster.get_logs(), may say why)"
        return reason

    def ended_by_itself(self) -> bool:
        """After ``death_reason``: it exited, crashed or was killed by the memory monitor, rather than
        being killed by a signal from outside (a user's kill, the kernel's OOM killer)."""
        if self.memory_killed:
            return True
        returncode = self.process.poll()  # death_reason waited for the exit
        if returncode is None:
            return False
        return -returncode not in _SIGNALS_FROM_OUTSIDE

    def close(self) -> None:
        """Tell the worker to leave (a clean close, so it leaves shared memory alone) and hang up.

        The clients its tasks opened go with it: what they held (scattered data, futures) is released
        now, whether the worker died, retired or was stopped.
        """
        session, self.client_session = self.client_session, None
        if session is not None:
            session.worker_gone()
        if self.conn.closed:
            return
        try:
            self.send_messages([CloseWorker()])
        except (OSError, ValueError):
            pass
        try:
            self.conn.close()
        except OSError:
            pass

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the worker to leave, close the pipe, then make sure the process is gone."""
        self.close()
        try:
            wait_for_exit(self.process, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        finally:
            if self.running_board is not None:
                self.running_board.close()

    def kill(self) -> None:
        try:
            self.process.kill()
        except ProcessLookupError:
            pass


def start_process_worker(
    init: dict,
    nthreads: int,
    name: Any,
    memory_limit: Optional[int],
    resources: Optional[dict],
    env: Optional[dict] = None,
    worker_class=None,
    launcher: Optional[WorkerLauncher] = None,
    log_sink: Optional[Callable[[str, list], None]] = None,
    client_router: Optional[Callable] = None,
    worker_setup: Optional[list] = None,
) -> ProcessWorkerHandle:
    """Start a worker process (forked by ``launcher``'s template if it can, else a fresh interpreter)
    and hand it its settings; returns without waiting for the worker to be ready. ``log_sink`` takes the
    log records it ships; ``client_router`` serves the clients of its tasks (remote/server.py);
    ``worker_setup``: the cluster's worker plugins, installed before its first task (worker/plugins.py)."""
    if worker_setup:
        init = dict(init, worker_setup=worker_setup)
    if worker_class is not None:
        from ..comm.serialize import dumps_function

        init = dict(init, worker_class=dumps_function(worker_class))  # by value if from __main__
    parent_conn, child_conn = Pipe(duplex=True)
    fd = child_conn.fileno()
    child_env = dict(os.environ)
    for (
        variable
    ) in _THREAD_LIMIT_VARIABLES:  # one BLAS thread per task thread, as dask's nanny does
        child_env.setdefault(variable, str(nthreads))
    if env:
        child_env.update({k: str(v) for k, v in env.items()})
    board, board_fd = RunningBoard.create()  # what its task threads run, readable after a crash
    fds = (fd,) if board_fd is None else (fd, board_fd)
    process: Union[subprocess.Popen, ForkedProcess, None] = None
    if launcher is not None:  # forked from the cluster's template process: ready in milliseconds
        process = launcher.launch(child_env, fds, running_board=board_fd is not None)
    if process is None:
        process = subprocess.Popen(
            python_command(f"from minidist.worker.process import main; main({fd})"),
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's Ctrl-C goes to the user's program, not its workers
            env=child_env,
            close_fds=True,
        )
    child_conn.close()
    if board_fd is not None:
        os.close(board_fd)  # the mapping stays; the child has its own copy of the descriptor
    handle = ProcessWorkerHandle(
        process,
        parent_conn,
        name,
        nthreads,
        memory_limit,
        resources,
        running_board=board,
        log_sink=log_sink,
        client_router=client_router,
    )
    settings = dict(
        init,
        address=handle.address,
        name=name,
        nthreads=nthreads,
        resources=resources,
        memory_limit=memory_limit,
        parent_pid=os.getpid(),
        sys_path=list(sys.path),
        running_fd=board_fd,
    )
    parent_conn.send_bytes(pickle.dumps(settings, protocol=5))
    return handle


class ThreadWorkerHandle:
    kind = "thread"
    conn = None
    pid = None
    memory_killed = False

    def __init__(
        self,
        scheduler,
        address: str,
        name: Any,
        nthreads: int,
        resources: Optional[dict] = None,
        runtime_class=None,
        memory_limit: Optional[int] = None,
        logger=None,
        task_clients=None,
        context=None,
    ):
        """``logger`` is handed to hooked worker classes (``deploy/worker_hooks.py``) as their log;
        ``task_clients`` is where its tasks' ``get_client()`` finds the cluster's client; tasks and
        ``client.run`` calls run in copies of ``context`` (the cluster's maker's context variables)."""
        self.address = address
        self.name = name
        self.nthreads = nthreads
        self.resources = resources
        self.memory_limit = (
            memory_limit  # reported, not enforced: threads share this process's memory
        )
        self.started = True
        self._scheduler = scheduler
        runtime_class = runtime_class or WorkerRuntime
        extra = {}
        if logger is not None and issubclass(runtime_class, Worker):
            extra["logger"] = logger
        self.runtime = runtime_class(
            address,
            name,
            nthreads,
            send=lambda batch: scheduler.post(WorkerReports(address, batch)),
            resources=resources,
            task_clients=task_clients,
            context=context,
            **extra,
        )
        if logger is not None:
            self.runtime.logger = logger  # task errors go to this worker's own log

    def __repr__(self) -> str:
        return f"<ThreadWorker {self.address} name={self.name}>"

    def execute_message(
        self,
        key,
        run_spec: RunSpec,
        dependencies,
        dep_values,
        attempt: int = 0,
        may_hold: bool = False,
    ) -> ComputeTask:
        # values never leave a thread worker's process: there is nothing to hold back
        return ComputeTask(key, *run_spec, dependencies, dep_values, attempt)

    def send_messages(self, batch: list) -> None:
        """Deliver a batch as direct calls (on the scheduler thread; the runtime only files them)."""
        runtime = self.runtime
        for message in batch:
            kind = type(message)
            if kind is ComputeTask:
                runtime.submit(
                    message.key, message, message.dependencies, message.dep_values, message.attempt
                )
            elif kind is FreeKeys:
                runtime.free(message.keys)
            elif kind is ReleaseQueued:
                runtime.release_queued(message.keys)

    def start_run(self, run_id, function, args) -> None:
        def run() -> None:
            try:
                result = call_with_worker(function, args[0], args[1], self.runtime)
                reply = RunResult(run_id, True, result)
            except BaseException as exc:  # noqa: B036
                reply = RunResult(run_id, False, (exc, exc.__traceback__))
            self.runtime.report(reply)

        target = self.runtime.in_context(run)
        threading.Thread(target=target, name="minidist-run", daemon=True).start()

    def on_hello(self, message) -> None:
        pass

    def wait_ready(self, timeout: float) -> bool:
        return True  # a thread worker can run tasks as soon as it exists

    def on_logs(self, records) -> None:
        pass

    def on_client_message(self, scheduler, message) -> None:
        pass

    def death_reason(self) -> str:
        return "closed"

    def ended_by_itself(self) -> bool:
        return False  # thread workers do not die

    def running_keys(self, candidates) -> None:
        return None  # thread workers do not die

    def close(self) -> None:
        self.runtime.close(timeout=0.5)

    def stop(self, timeout: float = 3.0) -> None:
        self.runtime.close(timeout=timeout)

    def kill(self) -> None:
        self.close()


def _both_kinds_are_worker_handles(
    process: ProcessWorkerHandle, thread: ThreadWorkerHandle
) -> tuple[WorkerHandle, WorkerHandle]:
    """Never called: mypy checks here that both kinds offer what the scheduler uses."""
    return process, thread
