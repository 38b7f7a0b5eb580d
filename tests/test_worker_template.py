"""Process workers forked by the cluster's template process: every start path uses it, the workers
behave like fresh interpreters (environment, folder, parent watch), and the cluster carries on with
fresh interpreters when the template is gone."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from conftest import wait_until
from minidist import Client, KilledWorker, LocalCluster

pytestmark = pytest.mark.timeout(90)


def parent_pid():
    return os.getppid()


def environment(name):
    return os.environ.get(name)


def inc(x):
    return x + 1


def crash():
    os._exit(3)


@pytest.fixture
def cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=False
    ) as cluster:
        yield cluster


def template_of(cluster) -> psutil.Process:
    """The single child of this process that is the cluster's template (the parent of its workers)."""
    parents = {psutil.Process(pid).ppid() for pid in (h.pid for h in cluster.handles.values())}
    assert len(parents) == 1, parents
    template = psutil.Process(parents.pop())
    assert template.ppid() == os.getpid()
    return template


def test_every_start_path_forks_workers_from_one_template(cluster):
    with Client(cluster) as client:
        template = template_of(cluster)
        first = set(client.run(parent_pid).values())
        cluster.scale(4)
        client.wait_for_workers(4)
        after_scale = client.run(parent_pid)
        assert len(after_scale) == 4  # wait_for_workers returned only once all four could run
        client.restart()
        after_restart = client.run(parent_pid)
        assert len(after_restart) == 4  # restart returned once the new workers could run
        assert first | set(after_scale.values()) | set(after_restart.values()) == {template.pid}
        assert template.num_threads() == 1  # never fork a process that has threads


def test_a_replacement_for_a_crashed_worker_is_forked_too(cluster):
    with Client(cluster) as client:
        template = template_of(cluster)
        before = set(client.run(os.getpid).values())
        with pytest.raises(KilledWorker):
            client.submit(crash, pure=False).result(timeout=30)
        assert wait_until(lambda: len(client.run(os.getpid)) == 2, timeout=30)
        replaced = client.run(parent_pid)
        assert set(client.run(os.getpid).values()) != before
        assert set(replaced.values()) == {template.pid}
        assert client.submit(inc, 1).result(timeout=10) == 2


def test_forked_workers_get_their_own_environment_and_the_current_folder(tmp_path):
    here = os.getcwd()
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=3,
            dashboard_address=None,
            env={"MINIDIST_TEMPLATE_PROBE": "yes"},
        ) as cluster,
        Client(cluster) as client,
    ):
        os.chdir(tmp_path)
        try:
            cluster.scale(2)
            client.wait_for_workers(2)
            folders = set(client.run(os.getcwd).values())
        finally:
            os.chdir(here)
        assert (
            str(tmp_path) in folders
        )  # the worker started after chdir works where the client does
        assert set(client.run(environment, "MINIDIST_TEMPLATE_PROBE").values()) == {"yes"}
        assert set(client.run(environment, "OMP_NUM_THREADS").values()) == {"3"}


def test_the_cluster_carries_on_with_fresh_interpreters_when_the_template_dies(cluster):
    with Client(cluster) as client:
        template = template_of(cluster)
        template.send_signal(signal.SIGKILL)
        template.wait(10)
        # its workers are not its children any more, but they still serve the cluster
        assert client.submit(inc, 1).result(timeout=10) == 2
        cluster.scale(3)
        client.wait_for_workers(3)
        parents = set(client.run(parent_pid).values())
        assert os.getpid() in parents  # the new worker is a fresh interpreter, our own child
        assert client.map(inc, range(10)) and sum(client.gather(client.map(inc, range(10)))) == 55
        assert "fresh interpreters" in cluster.get_logs()["Cluster"]


@pytest.mark.parametrize(
    "refused", [{"n_wrokers": 2}, {"memory_limit": "lots"}, {"silence_logs": "loud"}]
)
def test_a_client_whose_cluster_is_refused_leaves_no_template_behind(refused):
    # Client() starts the template before it imports and builds its LocalCluster; a cluster that
    # refuses its keywords must not leave that process running
    children = {p.pid for p in psutil.Process().children()}
    with pytest.raises((TypeError, ValueError)):
        Client(dashboard_address=None, **refused)
    assert {p.pid for p in psutil.Process().children()} <= children  # nothing new left running
