"""Using minidist leaves the caller's process as it found it: the root logger, signal handlers, warning
filters, multiprocessing's start method, sys.path, the working directory, the environment and the other
process-wide settings ``state()`` lists, through both worker kinds, clusters, clients and close.

Checked in a fresh interpreter, so that what importing minidist does counts too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import gc, logging, multiprocessing, os, resource, signal, socket, sys, threading
    import warnings

    def state():
        root = logging.getLogger()
        umask = os.umask(0o022)
        os.umask(umask)
        return {
            "root logger handlers": list(root.handlers),
            "root logger level": root.level,
            "logging.disable": logging.root.manager.disable,
            "logger classes": (logging.getLoggerClass(), logging.getLogRecordFactory()),
            "signal handlers": {
                s: signal.getsignal(s)
                for s in signal.valid_signals()
                if s not in (signal.SIGKILL, signal.SIGSTOP)
            },
            "warning filters": list(warnings.filters),
            "multiprocessing start method": multiprocessing.get_start_method(allow_none=True),
            "sys.path": list(sys.path),
            "working directory": os.getcwd(),
            "environment": dict(os.environ),
            "umask": umask,
            "hooks": (sys.excepthook, threading.excepthook, sys.displayhook),
            "standard streams": (sys.stdin, sys.stdout, sys.stderr),
            "interpreter settings": (sys.getrecursionlimit(), sys.getswitchinterval()),
            "tracing": (sys.gettrace(), sys.getprofile(), threading.stack_size()),
            "garbage collector": (gc.isenabled(), gc.get_threshold()),
            "socket default timeout": socket.getdefaulttimeout(),
            "open files limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        }

    before = state()

    import minidist
    from minidist import Client, LocalCluster, as_completed, fire_and_forget, wait

    def fail():
        raise ValueError("expected")

    for processes in (True, False):
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=":0"
        ) as cluster, Client(cluster) as client:
            futures = client.map(abs, range(-20, 0))
            assert sum(client.gather(futures)) == 210
            assert [f.result() for f in as_completed(futures)]
            big = client.scatter(bytes(1 << 20))
            assert client.submit(len, big).result() == 1 << 20
            wait(client.submit(fail), timeout=30)
            fire_and_forget(client.submit(abs, -1))
            client.run(os.getpid)
            cluster.scale(3)
            client.wait_for_workers(3, timeout=30)
            cluster.get_logs()
            client.restart()
    with Client(processes=False, n_workers=1, dashboard_address=None) as client:
        assert client.submit(abs, -3).result() == 3

    after = state()
    print({name: (before[name], after[name]) for name in before if before[name] != after[name]})
    """
)


def test_using_minidist_leaves_the_callers_process_as_it_found_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{}", done.stdout
