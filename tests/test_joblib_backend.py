"""joblib.Parallel on minidist through the "minidist" backend."""

from __future__ import annotations

import os

import pytest

joblib = pytest.importorskip("joblib", reason="joblib is a test extra: pip install -e '.[test]'")

import minidist.integrations.joblib  # noqa: E402,F401  (registers the backend)
from minidist import Client  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def square(x):
    return x * x


def where(_):
    return os.getpid()


def fails(x):
    if x == 3:
        raise ValueError("three is bad")
    return x


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_parallel_runs_on_the_cluster(processes):
    with Client(
        processes=processes, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        with joblib.parallel_config(backend="minidist"):
            results = joblib.Parallel()(joblib.delayed(square)(i) for i in range(50))
        assert results == [i * i for i in range(50)]
        if processes:
            with joblib.parallel_config(backend="minidist"):
                pids = set(
                    joblib.Parallel(batch_size=1)(joblib.delayed(where)(i) for i in range(20))
                )
            assert pids <= {w["pid"] for w in client.scheduler_info()["workers"].values()}


def test_a_failing_call_raises_its_error():
    with Client(processes=False, n_workers=2, dashboard_address=None):
        with (
            joblib.parallel_config(backend="minidist"),
            pytest.raises(ValueError, match="three is bad"),
        ):
            joblib.Parallel()(joblib.delayed(fails)(i) for i in range(6))
