"""blocked_handlers: named scheduler operations refused for local clients, remote clients and clients
inside tasks, with dask's message; the names are documented."""

from __future__ import annotations

import pathlib
import re

import pytest

from conftest import wait_until
from minidist import Client, LocalCluster, get_client
from minidist.scheduler.operations import HANDLER_NAMES

pytestmark = pytest.mark.timeout(60)

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "network.md"


def message(name: str) -> str:
    return re.escape(f"'{name}' handler has been explicitly disallowed in Scheduler")


def inc(x):
    return x + 1


def run_from_a_task():
    try:
        get_client().run(inc, 1)
    except ValueError as exc:
        return str(exc)
    return "not refused"


def test_local_client_is_refused_run_function_but_keeps_the_rest():
    with (
        LocalCluster(
            n_workers=1, processes=False, blocked_handlers=["run_function"], dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(ValueError, match=message("run_function")):
            client.run(inc, 1)
        with pytest.raises(ValueError, match=message("run_function")):
            client.run_on_scheduler(inc, 1)
        assert client.submit(inc, 1).result(timeout=10) == 2
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(run_from_a_task).result(timeout=10) == (
            "'run_function' handler has been explicitly disallowed in Scheduler"
        )


def test_remote_clients_and_task_clients_are_refused_too():
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        blocked_handlers=["run_function", "restart"],
        dashboard_address=None,
    ) as cluster:
        with Client(cluster.scheduler_address) as client:
            with pytest.raises(ValueError, match=message("run_function")):
                client.run(inc, 1)
            with pytest.raises(ValueError, match=message("restart")):
                client.restart()
            assert client.who_has() == {}
            assert client.submit(inc, 1).result(timeout=10) == 2
            assert client.submit(run_from_a_task).result(timeout=20) == (
                "'run_function' handler has been explicitly disallowed in Scheduler"
            )


def test_unblocked_cluster_runs_them():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert list(client.run(inc, 1).values()) == [2]


def test_every_handler_name_is_documented():
    text = DOCS.read_text()
    missing = sorted(name for name in set(HANDLER_NAMES.values()) if f"`{name}`" not in text)
    assert not missing, f"docs/network.md does not list: {missing}"


def test_shutdown_closes_a_cluster_the_client_did_not_make_unless_terminate_is_blocked():
    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp", dashboard_address=None
    ) as cluster:
        with Client(cluster) as local:
            remote = Client(cluster.scheduler_address)
            assert remote.submit(inc, 1).result() == 2
            remote.shutdown()  # dask's: the cluster goes, and every client with it
            assert remote.status == "closed"
            # its answer was the connection closing, which is the close's first step
            assert wait_until(lambda: cluster.status.name == "closed")
            assert local.status == "running"  # still open, on a closed cluster (as in dask)
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        Client(cluster).shutdown()  # a local client: the same
        assert cluster.status.name == "closed"
    with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tcp",
        dashboard_address=None,
        blocked_handlers=["terminate"],
    ) as cluster:
        with Client(cluster.scheduler_address) as remote:
            with pytest.raises(ValueError, match=message("terminate")):
                remote.shutdown()
            assert remote.submit(inc, 1).result() == 2  # refused, and nothing else changed
