"""Logs per component through a real cluster: get_logs(), client.get_scheduler_logs/get_worker_logs, records
shipped from worker processes, and a clear line in the right log for each thing that happens."""

from __future__ import annotations

import functools
import logging
import os
import re
import signal

import pytest

from conftest import wait_until
from minidist import Client, KilledWorker, LocalCluster
from minidist.deploy.worker_hooks import Worker
from minidist.errors import WorkerStartError

pytestmark = pytest.mark.timeout(60)

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - minidist\.(cluster|scheduler|worker)\S* - "
    r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) - \S"
)


# quiet clusters without a dashboard (any keyword may be given again)
cluster = functools.partial(
    LocalCluster, dashboard_address=None, silence_logs=False, threads_per_worker=1
)


@pytest.fixture(scope="module")
def logged():
    """A process cluster that has started, scaled up and lost a worker to a SIGKILL."""
    with cluster(n_workers=2) as c, Client(c) as client:
        client.gather(client.map(lambda x: x + 1, range(10)))
        c.scale(3)
        victim = sorted(c.scheduler_info["workers"].items())[0]
        os.kill(victim[1]["pid"], signal.SIGKILL)
        assert wait_until(lambda: victim[0] not in c.scheduler_info["workers"])
        client.wait_for_workers(3, timeout=30)
        yield c, client, victim[0]


def test_get_logs_has_one_text_per_component_in_dasks_format(logged):
    c, _, dead = logged
    live = set(c.scheduler_info["workers"])
    logs = c.get_logs()
    assert set(logs) == {"Cluster", "Scheduler", dead} | live  # the dead worker's lines are kept
    for text in logs.values():
        for line in text.splitlines():
            assert LINE.match(line), line


def test_get_logs_can_leave_components_out(logged):
    c, _, _ = logged
    assert set(c.get_logs(cluster=False, workers=False)) == {"Scheduler"}
    assert "Scheduler" not in c.get_logs(scheduler=False)
    assert set(c.get_logs(cluster=False, scheduler=False)) >= set(c.scheduler_info["workers"])


def test_starting_leaves_a_line_in_each_component(logged):
    c, _, _ = logged
    logs = c.get_logs()
    assert "Starting cluster" in logs["Cluster"]
    for address, info in c.scheduler_info["workers"].items():
        assert f"Started worker {address}" in logs["Cluster"]
        assert f"Register worker {address}" in logs["Scheduler"]
        # written in the worker process and shipped to this one
        started = f"Start worker {address} (name {info['name']}, pid {info['pid']},"
        assert wait_until(lambda a=address, s=started: s in c.get_logs()[a])


def test_scaling_and_a_death_leave_lines_in_the_cluster_and_scheduler_logs(logged):
    c, _, dead = logged
    logs = c.get_logs()
    assert "Scaling from 2 to 3 workers" in logs["Cluster"]
    assert f"Worker {dead} (name 0) died: killed by SIGKILL" in logs["Scheduler"]
    assert re.search(
        rf"Worker {re.escape(dead)} \(name 0\) died: killed by SIGKILL.*Starting a replacement",
        logs["Cluster"],
    )


def test_client_reads_the_newest_lines_as_dask_does(logged):
    c, client, _ = logged
    newest = client.get_scheduler_logs(n=2)
    assert [line for _, line in newest] == c.get_logs()["Scheduler"].splitlines()[-1:-3:-1]
    assert all(level in ("INFO", "WARNING") for level, _ in newest)
    per_worker = client.get_worker_logs(n=1)
    assert set(per_worker) == set(c.scheduler_info["workers"])
    for address in per_worker:
        assert wait_until(lambda a=address: len(client.get_worker_logs(n=1)[a]) == 1)
        [(level, line)] = client.get_worker_logs(n=1)[address]
        assert LINE.match(line) and f" - {level} - " in line


def log_from_task(x):
    logging.getLogger("minidist.worker.tasks").warning("task saw %d", x)
    return x


def test_records_logged_by_tasks_in_a_worker_process_reach_that_workers_log(logged):
    c, client, _ = logged
    address = sorted(c.scheduler_info["workers"])[0]
    assert client.submit(log_from_task, 41, workers=[address]).result(timeout=10) == 41
    assert wait_until(lambda: "task saw 41" in c.get_logs()[address])
    line = next(line for line in c.get_logs()[address].splitlines() if "task saw 41" in line)
    assert f".{address} - WARNING - task saw 41" in line  # under the worker's own logger name
    others = [
        text for a, text in c.get_logs(cluster=False, scheduler=False).items() if a != address
    ]
    assert not any("task saw 41" in text for text in others)


class NoDatabase(Worker):
    def setup(self):
        raise ConnectionError("database unreachable")


def test_a_worker_class_that_cannot_start_says_why_in_its_log_and_tasks_fail_clearly():
    with cluster(n_workers=1, worker_class=NoDatabase) as c, Client(c) as client:
        future = client.submit(sum, [1, 2])
        # each worker that dies before it starts is blamed for the task it was given (KilledWorker after
        # allowed_failures) unless five in a row die first (WorkerStartError): either way, it says so
        with pytest.raises((KilledWorker, WorkerStartError), match="before it started"):
            future.result(timeout=45)
        worker_logs = [text for key, text in c.get_logs().items() if key.startswith("ipc://")]
        assert any("ConnectionError: database unreachable" in text for text in worker_logs)
        # and the cluster stops starting workers that cannot start
        assert wait_until(
            lambda: "keep dying before they start" in c.get_logs()["Cluster"], timeout=20
        )


def test_the_root_logger_is_left_alone_and_silence_logs_false_prints_nothing(capfd):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with cluster(n_workers=1) as c:
        os.kill(next(iter(c.scheduler_info["workers"].values()))["pid"], signal.SIGKILL)
        assert wait_until(lambda: "died" in c.get_logs()["Scheduler"])
    assert root.handlers == handlers and root.level == level
    assert capfd.readouterr().err == ""
