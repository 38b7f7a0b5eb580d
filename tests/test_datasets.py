"""Published datasets: named values and futures shared by every client of a cluster."""

from __future__ import annotations

import pytest

from minidist import Client, LocalCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[False, True], ids=["threads", "processes"])
def cluster(request):
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=request.param, dashboard_address=None
    ) as c:
        yield c


def read_dataset(name):
    from minidist import get_client

    return get_client().get_dataset(name).result() * 10


def test_a_published_future_outlives_the_client_that_published_it(cluster):
    with Client(cluster.scheduler_address) as publisher:
        publisher.publish_dataset(publisher.submit(sum, [1, 2, 3]), name="total")
        publisher.publish_dataset(config={"rate": 0.5}, pair=(1, 2))
    with Client(cluster) as reader:
        assert sorted(reader.list_datasets()) == ["config", "pair", "total"]
        assert isinstance(reader.list_datasets(), tuple)  # as dask returns
        total = reader.get_dataset("total")
        assert total.result() == 6
        assert reader.get_dataset("config") == {"rate": 0.5}
        assert reader.submit(read_dataset, "total").result() == 60  # from a task
        reader.unpublish_dataset("total")
        assert total.result() == 6  # this client's own future still holds it
        assert "total" not in reader.datasets


def test_taken_names_need_override_and_missing_ones_a_default(cluster):
    with Client(cluster) as first, Client(cluster.scheduler_address) as second:
        first.publish_dataset({"x": 1})
        with pytest.raises(KeyError, match="'x' is already published; pass override=True"):
            second.publish_dataset(2, name="x")
        assert second.get_dataset("x") == 1  # the refused publish changed nothing
        second.publish_dataset(2, name="x", override=True)
        assert first.get_dataset("x") == 2
        assert first.get_dataset("nothing", default=None) is None
        with pytest.raises(KeyError, match="'nothing' not found"):
            first.get_dataset("nothing")
        with pytest.raises(ValueError, match="positional argument must be a"):
            first.publish_dataset(1, 2)
        assert first.submit(lambda: 1).result() == 1


def test_datasets_mapping(cluster):
    with Client(cluster) as client:
        client.datasets["a"] = [1, 2]
        assert client.datasets["a"] == [1, 2] and len(client.datasets) == 1
        assert list(client.datasets) == ["a"]
        with pytest.raises(KeyError):
            client.datasets["a"] = 3
        del client.datasets["a"]
        assert "a" not in client.datasets
        with pytest.raises(KeyError):
            del client.datasets["a"]
