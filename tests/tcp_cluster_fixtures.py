"""Module-scoped fixtures for test modules whose features cross clients: a cluster of each worker kind
listening on TCP (``cluster``), a client in this process (``client``) and a second client that reaches
the cluster by address (``remote``). A module opts in by importing the functions below, which registers
the fixtures under those names (and keeps them from clashing with the test parameters' names)."""

from __future__ import annotations

import pytest

from minidist import Client, LocalCluster


@pytest.fixture(name="cluster", scope="module", params=[True, False], ids=["processes", "threads"])
def tcp_cluster(request):
    with LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=request.param,
        dashboard_address=None,
        protocol="tcp",
    ) as cluster:
        yield cluster


@pytest.fixture(name="client", scope="module")
def tcp_client(cluster):
    with Client(cluster) as client:
        yield client


@pytest.fixture(name="remote", scope="module")
def tcp_remote(cluster):
    with Client(cluster.scheduler_address) as client:
        yield client
