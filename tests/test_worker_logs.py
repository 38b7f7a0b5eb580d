"""Each worker's own log (``cluster.get_logs()[address]``) tells its story, for both worker kinds: its
start (address, pid, threads, memory limit), the tasks that erred, and its end with the reason."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import wait_until
from minidist import Client, LocalCluster

pytestmark = pytest.mark.timeout(60)


def fail(x):
    raise ValueError(f"bad input {x}")


def inc(x):
    return x + 1


@pytest.mark.parametrize("processes", [True, False])
def test_a_workers_log_has_its_start_its_task_errors_and_its_end(processes):
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=processes,
        memory_limit="1GiB",
        dashboard_address=None,
        silence_logs=False,
    ) as cluster:
        with Client(cluster) as client:
            (address,) = client.scheduler_info()["workers"]
            pid = client.scheduler_info()["workers"][address]["pid"] or os.getpid()
            failed = client.submit(fail, 42)
            with pytest.raises(ValueError):
                failed.result(timeout=30)
            assert client.submit(inc, 1).result(timeout=30) == 2
            # process workers ship their records every 0.1 s
            assert wait_until(lambda: "bad input 42" in cluster.get_logs()[address])
        log = cluster.get_logs()[address]
        assert f"Start worker {address}" in log
        assert f"pid {pid}" in log and "2 threads" in log and "memory limit 1.00 GiB" in log
        assert failed.key in log and "ValueError: bad input 42" in log
    log = cluster.get_logs()[address]
    assert f"Worker {address} stopped: the cluster closed" in log.splitlines()[-1]


def test_a_process_workers_start_line_is_in_its_log_before_it_runs_a_task():
    # it travels with the worker's hello, not 0.1 s later with the other records: the client records
    # it while the cluster starts, not in the middle of the first run (docs/architecture.md)
    with Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert client.submit(inc, 1).result(timeout=30) == 2
        logs = client.cluster.get_logs()  # before anything else: scheduler_info would take time
        ((address, info),) = client.scheduler_info()["workers"].items()
        assert f"Start worker {address} (name {info['name']}, pid {info['pid']}," in logs[address]


def test_a_killed_process_workers_log_ends_with_its_death_and_the_reason():
    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=None, silence_logs=False
    ) as cluster:
        with Client(cluster) as client:
            assert client.submit(inc, 1).result(timeout=30) == 2  # it has started
            ((address, info),) = client.scheduler_info()["workers"].items()
            os.kill(info["pid"], signal.SIGKILL)
            assert wait_until(lambda: address not in client.scheduler_info()["workers"])
            client.wait_for_workers(1, timeout=30)
            (replacement,) = client.scheduler_info()["workers"]
            last = cluster.get_logs()[address].splitlines()[-1]
            assert last.endswith(
                f"Worker {address} died: killed by SIGKILL - possibly out of memory"
            )
            assert replacement != address
