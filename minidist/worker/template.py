"""The template process: a single-threaded interpreter that exists only to fork worker processes.

Starting a worker as a fresh interpreter costs ~0.15-0.2 s here (the interpreter plus minidist's and
cloudpickle's imports). The cluster starts this template once, with those modules already imported, and
asks it for workers; each one is an ``os.fork()`` of the template that goes straight into
``worker.process.main``, ready in a few milliseconds. The threaded client process is never forked: the
template has one thread (checked before every fork, through ``/proc/self/task``, which also sees threads
that C libraries start) and never imports anything that starts threads (NumPy's BLAS does, so the
template does not import NumPy; workers import it themselves, after the fork)::

    parent (deploy/launcher.py) ──ForkWorker + fds (SCM_RIGHTS)──► template loop
                                ◄──WorkerForked / WorkerExited / ForkRefused (minidist/messages.py)
    template ──fork──► child: new session, the request's environment and folder, worker.process.main(fd)

The template is the parent of the workers it forks, so it reaps them (through one pidfd per child in
its selector) and reports their exit codes; the cluster reads them as it would a Popen's. It leaves when
its control socket reaches EOF (the cluster closed it, or died), without touching its children: they
watch their own pipes and leave by themselves.
"""

from __future__ import annotations

import os
import pickle
import selectors
import socket
import struct
from typing import Callable

from ..peer_messages import ForkRefused, ForkWorker, WorkerExited, WorkerForked

_LENGTH = struct.Struct("<I")
MAX_FDS = 4  # descriptors one request may carry (the worker's pipe end and its running board)


def send_message(sock: socket.socket, message, fds: tuple = ()) -> None:
    data = pickle.dumps(message, protocol=5)
    frame = _LENGTH.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [frame], list(fds))
    else:
        sock.sendall(frame)


def receive_message(sock: socket.socket) -> tuple:
    """One message and the descriptors that came with it; raises EOFError at the end of the stream."""
    header, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, MAX_FDS)
    if not header:
        raise EOFError
    header = _read_rest(sock, header, _LENGTH.size)
    (length,) = _LENGTH.unpack(header)
    return pickle.loads(_read_rest(sock, b"", length)), fds


def _read_rest(sock: socket.socket, start: bytes, size: int) -> bytes:
    chunks = [start]
    have = len(start)
    while have < size:
        chunk = sock.recv(size - have)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: trust the interpreter's own count (the template starts none)
        return 1


class Template:
    """The template's loop: fork on request, reap children, report both."""

    def __init__(self, control: socket.socket, worker_main: Callable[..., None]):
        self.control = control
        self.worker_main = worker_main  # worker.process.main, imported before the first fork
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ, None)
        self.children: dict = {}  # pidfd (or None without pidfd support) -> pid

    def serve(self) -> None:
        while True:
            for selected, _ in self.selector.select(timeout=None if self._has_pidfds() else 0.2):
                if selected.data is None:
                    try:
                        request, fds = receive_message(self.control)
                    except (EOFError, OSError):
                        return  # the cluster closed us or died: the workers look after themselves
                    self.spawn(request, fds)
            self.reap()

    def _has_pidfds(self) -> bool:
        return hasattr(os, "pidfd_open")

    def spawn(self, request: ForkWorker, fds: list) -> None:
        threads = thread_count()
        if (
            threads != 1
        ):  # never fork a process with threads; the cluster falls back to a fresh interpreter
            send_message(
                self.control, ForkRefused(request.request_id, f"template has {threads} threads")
            )
            for fd in fds:
                os.close(fd)
            return
        pid = os.fork()
        if pid == 0:
            self._become_worker(request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
            self.selector.register(pidfd, selectors.EVENT_READ, pid)
        except (AttributeError, OSError):
            pidfd = -pid  # no pidfd: found by polling in reap()
        self.children[pidfd] = pid
        send_message(self.control, WorkerForked(request.request_id, pid))

    def _become_worker(self, request: ForkWorker, fds: list) -> None:
        try:
            self.selector.close()
            self.control.close()
            for pidfd in self.children:
                if pidfd >= 0:
                    os.close(pidfd)
            os.setsid()  # the terminal's Ctrl-C goes to the user's program, not its workers
            os.environ.clear()
            os.environ.update(request.env)
            os.chdir(request.cwd)
            running_fd = fds[1] if request.running_board and len(fds) > 1 else None
            self.worker_main(fds[0], running_fd=running_fd)
        finally:
            os._exit(1)  # main() leaves with os._exit; getting here means it failed

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for pidfd, child in list(self.children.items()):
                if child == pid:
                    del self.children[pidfd]
                    if pidfd >= 0:
                        self.selector.unregister(pidfd)
                        os.close(pidfd)
            try:
                send_message(self.control, WorkerExited(pid, os.waitstatus_to_exitcode(status)))
            except OSError:
                pass  # the cluster is gone; keep reaping until asked to leave


def main(fd: int) -> None:
    # what a worker imports, imported once here so forked workers start with it in memory (imported
    # here, not at the top, so the cluster's side, which imports this module's framing, does not pay it)
    from .process import main as worker_main

    control = socket.socket(fileno=fd)
    try:
        Template(control, worker_main).serve()
    finally:
        os._exit(0)
