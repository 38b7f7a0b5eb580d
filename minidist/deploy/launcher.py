"""How the cluster starts worker processes: forked by its template process, or as fresh interpreters.

``WorkerLauncher`` starts one template process per cluster (``worker/template.py``: a single-threaded
interpreter with a worker's modules imported) and asks it for workers over a Unix socket pair; a worker
forked from it is ready in milliseconds instead of the ~0.2 s a fresh interpreter costs, for the first
start and for every later one (``scale``, ``adapt``, replacement after a crash, ``restart``)::

    launch(env, fds) ── ForkWorker + fds ──► template ── fork ──► worker
          ▲                                        │
          └── ForkedProcess ◄── reader thread ◄────┘ WorkerForked / WorkerExited / ForkRefused

``ForkedProcess`` gives the worker the little of ``subprocess.Popen`` that a worker handle uses (``pid``,
``wait``, ``poll``, ``kill``): the template is the worker's parent, so the exit code arrives as a
``WorkerExited`` message. When the template cannot be used (no pidfd support to watch a process that is
not our child, the template died or refused), ``launch`` returns None and the caller starts a fresh interpreter:
slower, never wrong. The launcher logs nothing itself; it reports why the template is off in
``unavailable_reason`` for the cluster's log.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Optional

# The template's messages and framing (``peer_messages``, ``worker.template``) are imported by the
# calls that use them, after the template process was started: a first start waits on its boot, so
# nothing that process start does not need comes before it.

LAUNCH_TIMEOUT = 60.0  # the first request also waits for the template's own start

# the launcher ``template_started_early`` started for the cluster this thread is about to make
_started_early = threading.local()

# the folder this process imported minidist from
_MINIDIST_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python_command(statement: str) -> list:
    """The command line of a fresh interpreter that runs ``statement`` with the minidist this process
    runs. ``python -c`` puts the current folder first on ``sys.path``, where another ``minidist`` (a
    source checkout, a folder of that name) would shadow it: the child imports minidist from this
    process's copy first, then takes that folder off its path (the parent's ``sys.path`` comes later,
    with the worker's settings)."""
    root = _MINIDIST_ROOT
    # the statement comes first as a comment too, so ps and leak reports show what the process is
    return [
        sys.executable,
        "-c",
        f"# {statement}\n"
        f"import sys; sys.path.insert(0, {root!r}); import minidist; sys.path.remove({root!r})\n"
        + statement,
    ]


class ForkedProcess:
    """A worker process forked by the template: the part of ``Popen`` that worker handles use."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: Optional[int] = None
        self._exited = threading.Event()

    def _set_exited(self, returncode: Optional[int]) -> None:
        self.returncode = returncode
        self._exited.set()

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """The exit code (None if the template died before it could tell); ``TimeoutExpired`` as Popen."""
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout or 0)
        return self.returncode

    def kill(self) -> None:
        if self._exited.is_set():
            return
        try:
            os.kill(
                self.pid, signal.SIGKILL
            )  # not yet reaped by the template: the pid is still ours
        except ProcessLookupError:
            pass


class WorkerLauncher:
    """One cluster's template process and the requests in flight to it."""

    def __init__(self) -> None:
        self.unavailable_reason: Optional[str] = None
        self._lock = threading.Lock()
        self._pending: dict = {}  # request id -> Future of ForkedProcess (or None: refused)
        self._processes: dict = {}  # pid -> ForkedProcess, until it exits
        self._request_ids = itertools.count()
        self._template: Optional[subprocess.Popen] = None
        self._control: Optional[socket.socket] = None
        self._reader: Optional[threading.Thread] = None
        self._start()

    def _start(self) -> None:
        if not hasattr(os, "pidfd_open"):
            # a forked worker's parent is the template, so it could not watch the cluster's process
            self.unavailable_reason = "this platform has no pidfd_open"
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._template = subprocess.Popen(
                python_command(
                    f"from minidist.worker.template import main; main({theirs.fileno()})"
                ),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            ours.close()
            self.unavailable_reason = f"the template process could not start: {exc}"
            return
        finally:
            theirs.close()
        self._control = ours
        self._reader = threading.Thread(
            target=self._read, name="minidist-template-reader", daemon=True
        )
        self._reader.start()

    def launch(self, env: dict, fds: tuple, running_board: bool) -> Optional[ForkedProcess]:
        """Fork a worker that runs ``worker.process.main`` on ``fds[0]``; None if the template cannot."""
        from ..peer_messages import ForkWorker
        from ..worker.template import send_message

        with self._lock:
            if self._control is None or self.unavailable_reason is not None:
                return None
            request_id = next(self._request_ids)
            answer: Future = Future()
            self._pending[request_id] = answer
            try:
                send_message(
                    self._control, ForkWorker(request_id, env, os.getcwd(), running_board), fds
                )
            except OSError as exc:
                self._pending.pop(request_id, None)
                self.unavailable_reason = f"the template process is unreachable: {exc}"
                return None
        try:
            return answer.result(LAUNCH_TIMEOUT)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(request_id, None)
                self.unavailable_reason = f"the template did not answer within {LAUNCH_TIMEOUT} s"
            return None

    def _read(self) -> None:
        from ..peer_messages import ForkRefused, WorkerExited, WorkerForked
        from ..worker.template import receive_message

        control = self._control
        assert control is not None
        while True:
            try:
                message, fds = receive_message(control)
            except (EOFError, OSError):
                break
            for fd in fds:  # the template sends none; never leak one if it did
                os.close(fd)
            if type(message) is WorkerExited:
                with self._lock:
                    process = self._processes.pop(message.pid, None)
                if process is not None:
                    process._set_exited(message.returncode)
            elif type(message) is WorkerForked:
                process = ForkedProcess(message.pid)
                with self._lock:
                    self._processes[message.pid] = process
                    answer = self._pending.pop(message.request_id, None)
                if answer is not None:
                    answer.set_result(process)
            elif type(message) is ForkRefused:
                with self._lock:
                    self.unavailable_reason = message.reason
                    answer = self._pending.pop(message.request_id, None)
                if answer is not None:
                    answer.set_result(None)
        # the template is gone: no more launches, and no exit codes for the workers it forked
        with self._lock:
            if self.unavailable_reason is None:
                self.unavailable_reason = "the template process exited"
            pending, self._pending = list(self._pending.values()), {}
            processes, self._processes = list(self._processes.values()), {}
        for answer in pending:
            answer.set_result(None)
        for process in processes:
            threading.Thread(
                target=_wait_for_orphan, args=(process,), name="minidist-orphan-wait", daemon=True
            ).start()

    def close(self, timeout: float = 2.0) -> None:
        """Let the template go (its workers are stopped first, by the cluster) and wait for it."""
        with self._lock:
            control, self._control = self._control, None
            if self.unavailable_reason is None:
                self.unavailable_reason = "the cluster is closing"
        if control is not None:
            try:
                control.shutdown(socket.SHUT_RDWR)  # EOF for the template, and wakes our reader
            except OSError:
                pass
        if self._template is not None:
            try:
                wait_for_exit(self._template, timeout)
            except subprocess.TimeoutExpired:
                self._template.kill()
                self._template.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if control is not None:
            control.close()


def wants_process_workers(cluster_keywords: dict) -> bool:
    """Whether ``LocalCluster(**cluster_keywords)`` will have process workers: dask's default, unless
    ``processes`` says otherwise or a ``worker_class`` may choose threads (then it is not guessed)."""
    processes = cluster_keywords.get("processes")
    if processes is None:
        return cluster_keywords.get("worker_class") is None
    return bool(processes)


@contextlib.contextmanager
def template_started_early(cluster_keywords: dict):
    """Start the template process now, for a ``LocalCluster(**cluster_keywords)`` made inside the block
    (``Client()``): the template's interpreter then boots while this process imports and builds the
    cluster and its scheduler, instead of after. The cluster takes it with ``take_early_launcher``; one
    left untaken (the cluster refused its keywords) is closed on the way out."""
    launcher = WorkerLauncher() if wants_process_workers(cluster_keywords) else None
    _started_early.launcher = launcher
    try:
        yield
    finally:
        untaken = take_early_launcher()
        if untaken is not None:
            untaken.close()


def take_early_launcher() -> Optional[WorkerLauncher]:
    """The launcher ``template_started_early`` started in this thread, now owned by the caller."""
    launcher = getattr(_started_early, "launcher", None)
    _started_early.launcher = None
    return launcher


def wait_for_exit(process, timeout: float) -> Optional[int]:
    """``process.wait(timeout)``, but a ``Popen`` is watched through a pidfd, readable the moment it
    exits: ``Popen.wait`` with a timeout polls, sleeping up to 50 ms between looks, which made closing a
    cluster wait ~5 ms for a template that had long exited."""
    if isinstance(process, subprocess.Popen) and process.returncode is None:
        try:
            pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            return process.wait(timeout)  # no pidfd here, or reaped already: Popen's own wait
        try:
            exited, _, _ = select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        if not exited:
            raise subprocess.TimeoutExpired(process.args, timeout)
        return process.wait()  # it has exited: reaps at once
    return process.wait(timeout)


def _wait_for_orphan(process: ForkedProcess) -> None:
    """After the template died, its workers are reaped by the system: wait for this one to be gone."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:
        process._set_exited(None)
        return
    try:
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
    process._set_exited(None)
