"""SubprocessCluster: the scheduler in a process of its own, one process per worker, checked by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from conftest import wait_until
from minidist import Client, SubprocessCluster, worker_client

pytestmark = pytest.mark.timeout(90)


def gone(pids) -> bool:
    def dead(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(pid) for pid in pids)


def square(x):
    return x * x


def tree_sum(values):
    if len(values) == 1:
        return values[0]
    with worker_client() as client:
        half = len(values) // 2
        left, right = client.submit(tree_sum, values[:half]), client.submit(tree_sum, values[half:])
        return left.result() + right.result()


def test_scheduler_and_every_worker_have_their_own_process():
    with SubprocessCluster(
        n_workers=2, threads_per_worker=2, memory_limit="1GiB", dashboard_address=None
    ) as cluster:
        scheduler_pid = cluster.scheduler_pid
        with Client(cluster) as client:
            assert client.gather(client.map(square, range(10))) == [x * x for x in range(10)]
            info = client.scheduler_info()
            workers = info["workers"].values()
            assert sorted(w["nthreads"] for w in workers) == [2, 2]
            assert all(w["memory_limit"] == 2**30 for w in workers)
            worker_pids = set(cluster.worker_pids().values())
            assert set(client.run(os.getpid).values()) == worker_pids
            assert client.submit(os.getpid, pure=False).result(timeout=10) in worker_pids
            assert client.run_on_scheduler(os.getpid) == scheduler_pid
            assert client.submit(tree_sum, list(range(16))).result(timeout=30) == sum(range(16))
            assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        me = os.getpid()
        assert len(worker_pids) == 2 and scheduler_pid not in worker_pids and me not in worker_pids
        assert scheduler_pid != me
        assert {
            p.pid for p in psutil.Process(scheduler_pid).children(recursive=True)
        } >= worker_pids
        assert psutil.Process(scheduler_pid).ppid() == me
    # the scheduler process is reaped by close(); its workers too, unless close() had to kill it
    # (a slow machine), when they leave by themselves a moment later
    assert wait_until(lambda: gone([scheduler_pid, *worker_pids]), timeout=20)


def test_scale_logs_and_repr():
    with SubprocessCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            cluster.scale(3)
            client.wait_for_workers(3, timeout=30)
            assert len(set(cluster.worker_pids().values())) == 3
            cluster.scale(1)
            assert wait_until(lambda: len(cluster.worker_pids()) == 1, timeout=20)
            logs = cluster.get_logs()
            assert {"Cluster", "Scheduler"} <= set(logs)
            assert "Starting cluster" in logs["Cluster"] and "Register worker" in logs["Scheduler"]
            assert "workers=1" in repr(cluster) and "processes=1" in repr(client)
            assert "SubprocessCluster" in cluster._repr_html_()


def test_start_up_errors_reach_the_caller():
    with pytest.raises(ValueError, match="n_workers must be a non-negative int"):
        SubprocessCluster(n_workers=-1, dashboard_address=None)
    with pytest.raises(ValueError, match="tcp"):
        SubprocessCluster(protocol="inproc://")


def test_tls_subprocess_cluster():
    with SubprocessCluster(
        n_workers=1, threads_per_worker=1, security=True, dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with Client(cluster) as client:
            assert client.submit(square, 7).result(timeout=10) == 49


def test_killing_the_client_process_takes_the_whole_cluster_down():
    code = """
        import json, os, time
        from minidist import Client, SubprocessCluster, worker_client

        cluster = SubprocessCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
        client = Client(cluster)
        assert client.submit(sum, [1, 2]).result() == 3
        pids = [cluster.scheduler_pid, *cluster.worker_pids().values()]
        print(json.dumps(pids), flush=True)
        time.sleep(120)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    pids: list = []
    try:
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 3 and not gone(pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: gone(pids), timeout=20), [p for p in pids if not gone([p])]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        for pid in pids:  # never leave them behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
