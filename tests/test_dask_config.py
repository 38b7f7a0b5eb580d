"""dask's configuration reaches minidist's clusters, as it reaches dask.distributed's: memory thresholds,
allowed failures, work stealing and the dashboard link template (``deploy/dask_config.py``)."""

from __future__ import annotations

import os

import dask.config as dask_config
import pytest

from minidist import Client, KilledWorker, LocalCluster

pytestmark = pytest.mark.timeout(90)


def quiet_cluster(**kwargs) -> LocalCluster:
    kwargs.setdefault("n_workers", 1)
    kwargs.setdefault("threads_per_worker", 1)
    kwargs.setdefault("dashboard_address", None)
    return LocalCluster(**kwargs)


def test_allowed_failures_comes_from_dask_config_and_a_keyword_wins():
    with dask_config.set({"distributed.scheduler.allowed-failures": 0}):
        with quiet_cluster(processes=True) as cluster, Client(cluster) as client:
            doomed = client.submit(os._exit, 3)
            with pytest.raises(KilledWorker, match="exit code 3"):
                doomed.result(timeout=30)
            deaths = [
                line for line in cluster.get_logs()["Scheduler"].splitlines() if " died: " in line
            ]
            assert len(deaths) == 1  # the configured 0: the first death was enough
        with quiet_cluster(processes=False, scheduler_kwargs={"allowed_failures": 5}) as cluster:
            assert cluster.scheduler.state.allowed_failures == 5
    with dask_config.set({"distributed.scheduler.allowed-failures": -1}):
        with pytest.raises(ValueError, match="allowed_failures"):
            quiet_cluster(processes=False)


def test_memory_thresholds_come_from_dask_config():
    with dask_config.set(
        {"distributed.worker.memory.pause": False, "distributed.worker.memory.terminate": False}
    ):
        with quiet_cluster(processes=True, memory_limit="1GiB") as cluster:
            assert cluster.memory_monitor is None  # nothing to watch for: both thresholds are off
        with quiet_cluster(
            processes=True, memory_limit="1GiB", memory_terminate_fraction=0.9
        ) as cluster:
            assert cluster.memory_monitor is not None  # the keyword wins over the configuration
    with quiet_cluster(processes=True, memory_limit="1GiB") as cluster:
        assert cluster.memory_monitor is not None  # dask's defaults: pause 0.8, terminate 0.95
    with dask_config.set({"distributed.worker.memory.pause": 1.5}):
        with pytest.raises(ValueError, match="distributed.worker.memory.pause"):
            quiet_cluster(processes=True, memory_limit="1GiB")


def test_work_stealing_can_be_turned_off():
    with quiet_cluster(processes=False) as cluster:
        assert cluster.scheduler.state.work_stealing
    with dask_config.set({"distributed.scheduler.work-stealing": False}):
        with quiet_cluster(processes=False, n_workers=2) as cluster, Client(cluster) as client:
            assert not cluster.scheduler.state.work_stealing
            assert client.gather(client.map(abs, range(-20, 0))) == list(range(20, 0, -1))


def test_the_dashboard_link_follows_the_configured_template(monkeypatch):
    monkeypatch.setenv("MINIDIST_TEST_USER", "ada")
    template = "https://hub.example/user/{MINIDIST_TEST_USER}/proxy/{port}/status"
    with quiet_cluster(processes=False, dashboard_address="127.0.0.1:0") as cluster:
        plain = cluster.dashboard_link
        port = plain.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        with dask_config.set({"distributed.dashboard.link": template}):
            link = cluster.dashboard_link
            assert link.startswith(f"https://hub.example/user/ada/proxy/{port}/status")
            assert link.partition("?")[2] == plain.partition("?")[2]  # the access token stays
            with Client(cluster) as client:
                assert client.dashboard_link == link
        with dask_config.set({"distributed.dashboard.link": "{nowhere}/status"}):
            with pytest.raises(ValueError, match="nowhere"):
                assert cluster.dashboard_link is None  # never reached: the property raises
