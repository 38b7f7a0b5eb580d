"""Work stealing moves only tasks a worker has not started: a task never runs twice because of it,
and an idle worker still takes queued work from a busy one."""

from __future__ import annotations

import os
import random
import time

import pytest

from conftest import wait_until
from minidist import Client, Event, get_worker, wait

pytestmark = pytest.mark.timeout(90)


def record(i, delay, path):
    """A task with a side effect: one line per execution, appended atomically."""
    with open(path, "a") as runs:
        runs.write(f"{i} {get_worker().address}\n")
    time.sleep(delay)
    return i


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_stolen_tasks_run_exactly_once(tmp_path, processes):
    path = str(tmp_path / "runs.txt")
    rng = random.Random(1)
    with Client(
        processes=processes, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        for batch in range(5):
            # uneven durations keep one worker idle while the other still holds a queue
            keys = range(batch * 1000, batch * 1000 + 200)
            delays = [rng.choice([0.0, 0.0, 0.001, 0.02]) for _ in keys]
            futures = client.map(record, keys, delays, path=path, pure=False)
            assert client.gather(futures) == list(keys)
    runs = [line.split() for line in open(path).read().splitlines()]
    executions = [int(i) for i, _ in runs]
    assert len(executions) == 1000
    assert sorted(executions) == sorted(set(executions)), "a task ran twice"
    assert len({worker for _, worker in runs}) == 2  # both workers took part


def record_then_wait(i, path, gate):
    """``record``, then hold the worker's only thread until the test sets the Event ``gate``."""
    record(i, 0.0, path)
    Event(gate).wait(60)
    return i


def test_an_idle_worker_takes_work_queued_behind_a_long_task(tmp_path):
    path = str(tmp_path / "runs.txt")
    with Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        workers = list(client.scheduler_info()["workers"])
        gate = Event(f"long-{client.id}", client=client)
        long = client.submit(
            record_then_wait, -1, path, gate.name, pure=False, workers=[workers[0]]
        )
        assert wait_until(lambda: os.path.exists(path), timeout=30)  # the long task is running
        # queued behind the long task on its worker (allowed elsewhere): the other worker steals them
        short = client.map(record, range(6), [0.0] * 6, path=path, pure=False)
        # all six finish while the long task still holds its worker (it waits for the gate)
        wait(short, timeout=30)
        assert not long.done()
        assert client.gather(short) == list(range(6))
        ran_on = {int(i): w for i, w in (line.split() for line in open(path).read().splitlines())}
        assert len(ran_on) == 7 and ran_on[-1] == workers[0]
        gate.set()
        assert long.result(timeout=30) == -1
