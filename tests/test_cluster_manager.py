"""LocalCluster as dask documents it: its keywords, its repr, worker_class hooks, and supervision."""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

import minidist.deploy.options as options_module
from conftest import process_gone, wait_until
from minidist import Client, KilledWorker, LocalCluster, get_worker
from minidist.deploy.worker_hooks import Worker

pytestmark = pytest.mark.timeout(60)

CORES = len(os.sched_getaffinity(0))


def inc(x):
    return x + 1


def slow_inc(x, delay=0.05):
    time.sleep(delay)
    return x + 1


# quiet clusters without a dashboard (any keyword may be given again)
cluster = functools.partial(LocalCluster, dashboard_address=None, silence_logs=False)


def worker_info(c) -> list:
    return list(c.scheduler_info["workers"].values())


# ------------------------------------------------------------------------------------------ sizing


@pytest.mark.parametrize(
    "kwargs, cores, expected",
    [
        (
            {"processes": True},
            8,
            (4, 2),
        ),  # dask's mixture: processes near the square root of the cores
        ({"processes": True}, 3, (3, 1)),
        ({"processes": True, "threads_per_worker": 4}, 8, (2, 4)),
        ({"processes": False}, 8, (1, 8)),
        ({"processes": False, "threads_per_worker": 2}, 8, (1, 2)),
        ({"processes": False, "n_workers": 3}, 8, (3, 3)),  # overcommit rather than undercommit
        ({"processes": False, "n_workers": 2, "threads_per_worker": 5}, 8, (2, 5)),
        ({"processes": False, "n_workers": 2, "nthreads": 3}, 8, (2, 3)),
    ],
)
def test_n_workers_and_threads_default_from_each_other_as_in_dask(
    monkeypatch, kwargs, cores, expected
):
    monkeypatch.setattr(options_module, "cpu_count", lambda: cores)
    with cluster(**kwargs) as c:
        info = worker_info(c)
        assert len(info) == expected[0]
        assert {w["nthreads"] for w in info} == {expected[1]}


def test_processes_default_to_true_and_threads_per_worker_split_the_cores():
    with cluster(n_workers=1) as c:
        [info] = worker_info(c)
        assert c.processes and info["pid"] != os.getpid()
        assert info["nthreads"] == CORES
        assert c.scheduler_info["workers"]


def test_n_workers_zero_starts_no_worker_and_scale_adds_some():
    with cluster(n_workers=0, threads_per_worker=1, processes=False) as c:
        assert worker_info(c) == []
        c.scale(2)
        assert len(worker_info(c)) == 2


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"foo": 1}, TypeError, "unexpected keyword argument"),
        ({"lifetime": "1h"}, TypeError, "lifetime"),
        ({"scheduler_kwargs": {"dashboard": True}}, TypeError, "allowed_failures"),
        ({"scheduler_kwargs": {"allowed_failures": -1}}, ValueError, "allowed_failures"),
        ({"n_workers": -1}, ValueError, "n_workers"),
        ({"n_workers": 1.5}, ValueError, "n_workers"),
        ({"threads_per_worker": 0}, ValueError, "threads_per_worker"),
        ({"threads_per_worker": 2, "nthreads": 3}, ValueError, "nthreads"),
        ({"memory_limit": "lots"}, ValueError, "memory_limit"),
        ({"memory_pause_fraction": 1.5}, ValueError, "memory_pause_fraction"),
        ({"resources": ["GPU"]}, TypeError, "resources"),
        ({"worker_class": dict}, TypeError, "worker_class"),
        ({"silence_logs": "loud"}, ValueError, "silence_logs"),
    ],
)
def test_bad_keywords_are_refused_clearly_and_leave_nothing_running(kwargs, error, words):
    with pytest.raises(error, match=words):
        cluster(**{"processes": False, "n_workers": 1, **kwargs})


def test_ip_and_diagnostics_port_warn_and_map_to_host_and_dashboard_address():
    with pytest.warns(FutureWarning, match="host"):
        with cluster(processes=False, n_workers=1, ip="127.0.0.1") as c:
            assert c.options.host == "127.0.0.1"
    with pytest.warns(FutureWarning, match="dashboard_address"):
        with cluster(processes=False, n_workers=1, diagnostics_port=0) as c:
            assert c.options.dashboard_address == ":0"
            assert c.dashboard_link is not None


def test_dask_keywords_without_effect_here_are_accepted_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with cluster(
            processes=False,
            n_workers=1,
            loop=None,
            start=None,
            services=None,
            worker_services=None,
            asynchronous=False,
            scheduler_sync_interval=1,
            local_directory="/tmp",
            death_timeout=60,
            memory_target_fraction=0.6,
            memory_spill_fraction=0.7,
        ) as c:
            assert len(worker_info(c)) == 1


def test_name_is_the_clusters_and_workers_are_numbered_from_zero():
    with cluster(name="my-cluster", n_workers=2, processes=False) as c:
        assert c.name == "my-cluster"
        assert sorted(w["name"] for w in worker_info(c)) == [0, 1]
        assert sorted(c.workers) == [0, 1]


def test_resources_and_memory_limit_and_nthreads_reach_every_worker():
    with cluster(n_workers=2, nthreads=2, resources={"GPU": 1}, memory_limit="1GiB") as c:
        for info in worker_info(c):
            assert info["nthreads"] == 2
            assert info["resources"] == {"GPU": 1}
            assert info["memory_limit"] == 2**30
        with Client(c) as client:
            # one GPU per worker: two tasks needing one each cannot share a worker
            places = client.map(lambda i: get_worker().address, range(2), resources={"GPU": 1})
            assert len(set(client.gather(places))) == 2
            too_many = client.submit(inc, 1, resources={"GPU": 2})
            with pytest.raises(TimeoutError):
                too_many.result(timeout=0.3)
            too_many.cancel()


def test_scheduler_kwargs_set_allowed_failures():
    with cluster(n_workers=1, threads_per_worker=1, scheduler_kwargs={"allowed_failures": 0}) as c:
        with Client(c) as client:
            doomed = client.submit(os._exit, 3)
            with pytest.raises(KilledWorker, match="exit code 3"):
                doomed.result(timeout=30)
            # one death was enough: the scheduler log has exactly one for it
            deaths = [line for line in c.get_logs()["Scheduler"].splitlines() if " died: " in line]
            assert len(deaths) == 1


# -------------------------------------------------------------------------------------------- repr


def test_repr_is_dasks():
    with cluster(
        name="demo", n_workers=2, threads_per_worker=2, processes=False, memory_limit="1GiB"
    ) as c:
        assert (
            repr(c)
            == f"LocalCluster(demo, '{c.scheduler_address}', workers=2, threads=4, memory=2.00 GiB)"
        )
    with cluster(name="demo", n_workers=1, processes=False, memory_limit=None) as c:
        assert repr(c) == f"LocalCluster(demo, '{c.scheduler_address}', workers=1, threads={CORES})"


def test_repr_html_names_the_cluster_and_its_workers():
    with cluster(name="demo", n_workers=2, threads_per_worker=1, processes=False) as c:
        html = c._repr_html_()
        assert "LocalCluster demo" in html
        assert c.scheduler_address in html
        assert "<table>" in html and ">2<" in html


# ------------------------------------------------------------------------------------ worker_class


class Recording(Worker):
    """Counts tasks and remembers what the hooks saw; sets a value tasks read through get_worker()."""

    def setup(self):
        self.greeting = f"hello from {self.name}"
        self.seen = []
        self.logger.info("Recording worker set up")

    def before_task(self, key):
        self.seen.append(("before", key))

    def after_task(self, key, error):
        self.seen.append(("after", key, type(error).__name__ if error else None))

    def teardown(self):
        self.logger.info("Recording worker torn down")


class ThreadRecording(Recording):
    runs_in_threads = True


class BrokenSetup(Worker):
    runs_in_threads = True

    def setup(self):
        raise RuntimeError("no database here")


class RefusingBeforeTask(Worker):
    runs_in_threads = True

    def before_task(self, key):
        if "forbidden" in str(key):
            raise PermissionError(f"{key} may not run here")


def hooks_seen():
    worker = get_worker()
    assert worker.get_current_task() == "look"
    return worker.greeting, list(worker.seen)


def fail():
    raise ValueError("boom")


@pytest.mark.parametrize("processes", [False, True])
def test_worker_class_hooks_run_around_tasks_and_get_worker_returns_the_worker(processes):
    with cluster(
        n_workers=1, threads_per_worker=1, processes=processes, worker_class=Recording
    ) as c:
        with Client(c) as client:
            assert client.submit(inc, 1, key="inc-1").result(timeout=10) == 2
            with pytest.raises(ValueError):
                client.submit(fail, key="fail-1").result(timeout=10)
            greeting, seen = client.submit(hooks_seen, key="look", pure=False).result(timeout=10)
        assert greeting == "hello from 0"
        assert seen == [
            ("before", "inc-1"),
            ("after", "inc-1", None),
            ("before", "fail-1"),
            ("after", "fail-1", "ValueError"),
            ("before", "look"),
        ]
        [address] = [w for w in c.scheduler_info["workers"]]
        assert wait_until(lambda: "Recording worker set up" in c.get_logs()[address])


def test_runs_in_threads_makes_processes_default_to_false_and_teardown_runs_on_close():
    with cluster(n_workers=2, worker_class=ThreadRecording) as c:
        assert not c.processes
        addresses = list(c.scheduler_info["workers"])
    logs = c.get_logs()
    for address in addresses:
        assert "Recording worker torn down" in logs[address]


def test_dasks_worker_and_nanny_classes_mean_threads_and_processes():
    import distributed

    with cluster(n_workers=1, worker_class=distributed.Worker) as c:
        assert not c.processes
    with cluster(n_workers=1, threads_per_worker=1, worker_class=distributed.Nanny) as c:
        assert c.processes and worker_info(c)[0]["pid"] != os.getpid()


def test_a_setup_that_raises_stops_the_cluster_from_starting_and_leaves_nothing():
    with pytest.raises(RuntimeError, match="no database here"):
        cluster(n_workers=2, worker_class=BrokenSetup)


def test_an_exception_in_before_task_errs_that_task_only():
    with cluster(n_workers=1, worker_class=RefusingBeforeTask) as c, Client(c) as client:
        with pytest.raises(PermissionError, match="may not run here"):
            client.submit(inc, 1, key="forbidden-1").result(timeout=10)
        assert client.submit(inc, 1).result(timeout=10) == 2


# ------------------------------------------------------------------------------------- supervision


def exit_once(marker, value):
    """os._exit the first time (the marker file does not exist yet), return ``value`` after that."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(7)
    return value


def double(x):
    return 2 * x


@pytest.fixture
def process_client():
    with cluster(n_workers=2, threads_per_worker=1) as c, Client(c) as client:
        yield client


def test_os_exit_mid_task_is_retried_on_a_replacement_and_the_result_is_right(
    process_client, tmp_path
):
    client = process_client
    before = {w["pid"] for w in worker_info(client.cluster)}
    future = client.submit(exit_once, str(tmp_path / "marker"), 42)
    assert future.result(timeout=30) == 42
    assert (tmp_path / "marker").exists()  # it did die once
    client.wait_for_workers(2, timeout=30)
    after = {w["pid"] for w in worker_info(client.cluster)}
    assert len(after) == 2 and len(after - before) == 1
    assert "died: exit code 7" in client.cluster.get_logs()["Scheduler"]


def test_sigkill_from_outside_during_a_map_loses_no_result_and_the_cluster_heals(process_client):
    client = process_client
    first = client.map(slow_inc, range(30), delay=0.03)
    second = client.map(double, first)  # dependents of results computed on the victim
    victim = worker_info(client.cluster)[0]["pid"]
    assert wait_until(lambda: sum(f.done() for f in first) >= 5, timeout=20)
    os.kill(victim, signal.SIGKILL)
    assert client.gather(first) == list(range(1, 31))
    assert client.gather(second) == [2 * x for x in range(1, 31)]
    # every result may already be in the client before the scheduler has seen the death
    pids = lambda: [w["pid"] for w in worker_info(client.cluster)]  # noqa: E731
    assert wait_until(lambda: victim not in pids() and len(pids()) == 2, timeout=30)
    assert wait_until(lambda: process_gone(victim))
    assert "killed by SIGKILL" in client.cluster.get_logs()["Scheduler"]


def test_restart_keeps_the_scaled_size_with_fresh_workers(process_client):
    client = process_client
    client.cluster.scale(3)
    client.wait_for_workers(3, timeout=30)
    before = {w["pid"] for w in worker_info(client.cluster)}
    held = client.submit(inc, 1)
    held.result(timeout=10)
    client.restart()
    after = {w["pid"] for w in worker_info(client.cluster)}
    assert len(after) == 3 and not (before & after)
    assert held.status == "cancelled"
    assert client.submit(inc, 2).result(timeout=10) == 3
    assert "Restarting cluster" in client.cluster.get_logs()["Cluster"]


def test_restart_keywords_as_dask_timeout_and_not_waiting_for_workers(process_client):
    client = process_client
    assert client.restart(timeout="20s") is None  # dask's restart returns None
    assert len(worker_info(client.cluster)) == 2
    # far too short for stopping two processes and starting two: a TimeoutError, and the workers still come
    with pytest.raises(TimeoutError, match="within 0.001 s"):
        client.restart(timeout="1ms")
    client.wait_for_workers(2, timeout="20s")
    assert client.submit(inc, 1).result(timeout=10) == 2
    client.restart(wait_for_workers=False)
    client.cluster.wait_for_workers(2, timeout=20)  # dask's cluster managers have it too
    assert client.submit(inc, 2).result(timeout=10) == 3
    with pytest.raises(ValueError, match="duration"):
        client.restart(timeout="soon")


def test_a_thread_cluster_restarts_too():
    with cluster(n_workers=2, processes=False) as c, Client(c) as client:
        before = set(c.scheduler_info["workers"])
        client.restart()
        assert len(c.scheduler_info["workers"]) == 2
        assert not (before & set(c.scheduler_info["workers"]))
        assert client.submit(inc, 1).result(timeout=10) == 2


def test_silence_logs_level_echoes_cluster_lines_to_stderr(capfd):
    with cluster(n_workers=1, processes=False, silence_logs=logging.INFO):
        pass
    err = capfd.readouterr().err
    assert "Starting cluster" in err and " - INFO - " in err
    with cluster(n_workers=1, processes=False, silence_logs="error"):
        pass
    assert "Starting cluster" not in capfd.readouterr().err


def test_get_client_gives_the_clusters_default_client_or_a_new_one():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        made = cluster.get_client()  # no client yet: a new one, the default
        try:
            assert made.cluster is cluster and made.submit(inc, 1).result() == 2
            assert cluster.get_client() is made
            with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as other:
                with Client(other) as elsewhere:  # the default now, but of another cluster
                    assert cluster.get_client() is made
                    assert other.get_client() is elsewhere
        finally:
            made.close()


def test_get_client_works_in_a_program_that_never_imported_client():
    program = (
        "from minidist import LocalCluster\n"
        "with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:\n"
        "    with cluster.get_client() as client:\n"
        "        print(client.submit(pow, 2, 10).result())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1024"
