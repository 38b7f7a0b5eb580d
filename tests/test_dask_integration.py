"""dask collections and graphs on minidist: client.compute, scheduler=client.get."""

from __future__ import annotations

import pytest

da = pytest.importorskip("dask.array", reason="dask is a test extra: pip install -e '.[test]'")
np = pytest.importorskip("numpy")
import dask  # noqa: E402

from minidist import Client, Future  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "processes"])
def client(request):
    with Client(
        processes=request.param, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as c:
        yield c


def test_compute_an_array_reduction(client):
    x = da.arange(10_000, chunks=1_000)
    future = client.compute((x * 2).sum())
    assert isinstance(future, Future)
    assert future.result() == int((np.arange(10_000) * 2).sum())


def test_compute_several_collections_synchronously(client):
    x = da.random.default_rng(0).random((200, 200), chunks=50)
    mean, total = client.compute([x.mean(), x.sum()], sync=True)
    expected = x.compute(scheduler="sync")
    assert mean == pytest.approx(expected.mean())
    assert total == pytest.approx(expected.sum())


def test_compute_an_array_returns_the_whole_array(client):
    x = da.ones((30, 40), chunks=(10, 20))
    result = client.compute(x + 1).result()
    assert isinstance(result, np.ndarray)
    assert result.shape == (30, 40) and (result == 2).all()


def test_client_get_as_a_dask_scheduler(client):
    x = da.arange(100, chunks=10)
    assert (x**2).sum().compute(scheduler=client.get) == sum(i * i for i in range(100))


def test_delayed_graph_with_an_error_reports_it(client):
    @dask.delayed
    def boom(v):
        raise ZeroDivisionError(f"no {v}")

    @dask.delayed
    def plus(a, b):
        return a + b

    good = plus(1, 2)
    assert client.compute(good).result() == 3
    with pytest.raises(ZeroDivisionError, match="no 3"):
        client.compute(plus(boom(3), good)).result()
