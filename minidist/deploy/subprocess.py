"""SubprocessCluster: the scheduler in a process of its own, each worker in its own process.

::

    this process                          scheduler process                    worker processes
    SubprocessCluster ──spawn──►  main(fd): LocalCluster(processes=True) ──►  one per worker
          │  control pipe: settings ──►   (listens on tcp:// or tls://)        (children of the
          │            ◄── ("ready", address, secret, security)                 scheduler process)
          └─ RemoteConnection ═══ TCP/TLS ══► scheduler ◄══ pipes ══► workers
    SubprocessCluster is a RemoteCluster (deploy/remote_cluster.py) that also owns the process

The control pipe is also the lifeline: when this process exits or is killed, the scheduler process
reads EOF (or sees its parent change), closes its cluster and leaves; its workers leave when their own
pipes close. So nothing outlives the process that made the cluster. The secret and any temporary TLS
credentials come back over the pipe, so connecting needs no secret file.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, Pipe
from typing import Optional

from ..asynchronous import Closing, in_event_loop
from ..peer_messages import ClusterFailed, ClusterStarted
from ..remote.client import TCPLink, start_link
from ..status import Status
from .launcher import python_command
from .remote_cluster import RemoteCluster

_START_TIMEOUT = 60.0


class SubprocessCluster(RemoteCluster):
    """A LocalCluster whose scheduler runs in a subprocess; this process connects over TCP."""

    def __init__(
        self,
        n_workers=None,
        threads_per_worker=None,
        memory_limit="auto",
        name=None,
        host=None,
        scheduler_port=0,
        protocol=None,
        security=None,
        interface=None,
        dashboard_address=":8787",
        silence_logs=None,
        blocked_handlers=None,
        asynchronous: bool = False,
        timeout: float = _START_TIMEOUT,
        **kwargs,
    ):
        from .local import LocalCluster  # noqa: F401 - fail here, not in the child, on a broken install

        if kwargs.pop("processes", True) is not True:
            raise ValueError(
                "SubprocessCluster runs every worker in a process of its own; use "
                "LocalCluster(processes=False) for thread workers"
            )
        if protocol is not None and protocol.startswith("inproc"):
            raise ValueError(
                "SubprocessCluster is reached over TCP; protocol must be 'tcp://' or 'tls://'"
            )
        settings = dict(
            kwargs,
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit,
            name=name,
            host=host,
            scheduler_port=scheduler_port,
            protocol=protocol or ("tls://" if security else "tcp://"),
            security=security,
            interface=interface,
            dashboard_address=dashboard_address,
            blocked_handlers=blocked_handlers,
            processes=True,
        )
        if silence_logs is not None:
            settings["silence_logs"] = silence_logs
        self.asynchronous = asynchronous
        self.status = Status.starting
        self._closed = False
        self._process, self._control, info = _start_scheduler_process(settings, timeout)
        self.scheduler_pid = self._process.pid
        self.security = info["security"]
        try:
            from ..comm.tcp import connect

            conn = connect(
                info["address"], secret=info["secret"], security=self.security, timeout=timeout
            )
            connection = start_link(TCPLink(conn, info["address"]), timeout)
        except BaseException:
            self._stop_process(timeout=5)
            raise
        super().__init__(connection)
        self.scheduler_address = info["address"]

    # ------------------------------------------------------------------------------------ operations

    def worker_pids(self) -> dict:
        """``{worker address: pid}`` of the worker processes."""
        return {a: w["pid"] for a, w in self.scheduler_info["workers"].items()}

    # ----------------------------------------------------------------------------------------- close

    def close(self, timeout: float = 10.0) -> Optional[Closing]:
        """Disconnect, ask the scheduler process to close its cluster, and make sure it is gone."""
        if self.asynchronous and in_event_loop():
            return Closing(lambda: self.close(timeout))  # awaitable: closes in a worker thread
        if self._closed:
            return None
        self._closed = True
        self.status = Status.closing
        self.connection.close()
        self._stop_process(timeout)
        self.status = Status.closed
        return None

    def _terminate(self) -> None:
        self.close()  # the scheduler process is this object's own: closing it stops the cluster

    def _stop_process(self, timeout: float) -> None:
        try:
            self._control.send_bytes(b"close")
        except (OSError, ValueError):
            pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._control.close()

    def __del__(self):
        try:
            if not self._closed and getattr(self, "_process", None) is not None:
                self.close(timeout=5)
        except Exception:
            pass


def _start_scheduler_process(settings: dict, timeout: float):
    parent_conn, child_conn = Pipe(duplex=True)
    fd = child_conn.fileno()
    process = subprocess.Popen(
        python_command(f"from minidist.deploy.subprocess import main; main({fd})"),
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,  # Ctrl-C in a terminal reaches the user's program, not the cluster
    )
    child_conn.close()
    try:
        parent_conn.send_bytes(
            pickle.dumps(
                {"settings": settings, "parent_pid": os.getpid(), "sys_path": list(sys.path)},
                protocol=5,
            )
        )
        if not parent_conn.poll(timeout):
            raise TimeoutError(f"The scheduler process did not start within {timeout:g}s")
        answer = pickle.loads(parent_conn.recv_bytes())
    except BaseException as exc:
        process.kill()
        process.wait()
        parent_conn.close()
        if isinstance(exc, EOFError):
            raise RuntimeError(
                f"The scheduler process exited during start-up (exit code "
                f"{process.returncode}); see its output above"
            ) from None
        raise
    if type(answer) is ClusterFailed:
        process.wait(10)
        parent_conn.close()
        raise answer.error
    return process, parent_conn, answer.info


# --------------------------------------------------------------------------------- scheduler process


def main(fd: int) -> None:
    """Entry point of the scheduler process."""
    conn = Connection(fd)
    config = pickle.loads(conn.recv_bytes())
    for entry in reversed(config.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    from ..remote.protocol import portable_exception
    from .local import LocalCluster

    try:
        cluster = LocalCluster(**config["settings"])
        if cluster.listener is None:
            raise ValueError("the cluster did not open a TCP listener")
    except BaseException as exc:  # noqa: B036 - report any start-up failure to the parent
        conn.send_bytes(pickle.dumps(ClusterFailed(portable_exception(exc)), protocol=5))
        os._exit(1)
    info = {
        "address": cluster.scheduler_address,
        "secret": cluster.listener.secret,
        "security": cluster.security,
        "pid": os.getpid(),
    }
    conn.send_bytes(pickle.dumps(ClusterStarted(info), protocol=5))
    parent_pid = config["parent_pid"]
    done = threading.Event()
    threading.Thread(
        target=_watch_parent, args=(parent_pid, done), name="minidist-parent-watch", daemon=True
    ).start()
    threading.Thread(
        target=_watch_pipe, args=(conn, done), name="minidist-control", daemon=True
    ).start()
    done.wait()
    cluster.close()
    os._exit(0)


def _watch_pipe(conn: Connection, done: threading.Event) -> None:
    try:
        while conn.recv_bytes() != b"close":
            pass
    except (EOFError, OSError):
        pass  # the parent closed the pipe or died
    done.set()


def _watch_parent(parent_pid: int, done: threading.Event) -> None:
    while not done.is_set():
        if os.getppid() != parent_pid:
            done.set()
            return
        time.sleep(0.5)
