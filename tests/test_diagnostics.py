"""Task stream records, performance_report and get_task_metadata through the public API, on both worker
kinds and from a remote client."""

from __future__ import annotations

import re
import time

import pytest
from tcp_cluster_fixtures import tcp_client, tcp_cluster  # noqa: F401 (fixtures by name)

from minidist import (
    Client,
    get_task_metadata,
    get_task_stream,
    performance_report,
    wait,
)
from minidist.testing import wait_until

pytestmark = pytest.mark.timeout(90)


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def fail(x):
    raise ValueError(x)


def test_task_stream_context_has_one_record_per_task_in_dasks_shape(client):
    with get_task_stream(client) as ts:
        futures = client.map(inc, range(10), pure=False)
        total = client.submit(sum, futures)
        assert total.result() == 55
    keys = {f.key for f in futures} | {total.key}
    records = [r for r in ts.data if r["key"] in keys]
    assert sorted(r["key"] for r in records) == sorted(keys)
    workers = set(client.scheduler_info()["workers"])
    for record in records:
        assert record["worker"] in workers
        assert record["status"] == "OK"
        assert isinstance(record["thread"], int)
        actions = [s["action"] for s in record["startstops"]]
        assert actions[-1] == "compute"
        for interval in record["startstops"]:
            assert interval["start"] <= interval["stop"]
    [summing] = [r for r in records if r["key"] == total.key]
    if client.cluster.processes:  # the ten values were decoded on its worker: a transfer interval
        assert [s["action"] for s in summing["startstops"]] == ["transfer", "compute"]
        transfer, compute = summing["startstops"]
        assert transfer["stop"] <= compute["start"] + 1e-6


def test_client_task_stream_start_stop_count(client):
    before = time.time()
    futures = client.map(inc, range(5), pure=False)
    wait(futures)
    bad = client.submit(fail, 1)
    wait([bad])
    recent = client.get_task_stream(start=before)
    assert {f.key for f in futures} | {bad.key} <= {r["key"] for r in recent}
    assert [r for r in recent if r["key"] == bad.key][0]["status"] == "error"
    assert len(client.get_task_stream(count=3)) == 3
    assert client.get_task_stream(start="1 hour", count=0) == []
    assert client.get_task_stream(stop=before - 3600) == []
    assert {r["key"] for r in client.get_task_stream(start="1 minute")} >= {f.key for f in futures}
    with pytest.raises(ValueError, match="count"):
        client.get_task_stream(count=-1)
    with pytest.raises(ValueError, match="plot='save'"):
        client.get_task_stream(plot=True)


def test_the_task_stream_reads_the_same_after_a_large_run_is_released(thread_client):
    # once a large run is released, the scheduler packs the stream's keys into one buffer (the run's
    # own key objects would keep its allocator arenas alive): records read back as they were, and
    # later tasks' records follow them
    client = thread_client
    futures = client.map(inc, range(12_000), pure=False)
    client.gather(futures)
    before = [r["key"] for r in client.get_task_stream(count=10_000)]
    assert set(before) <= {f.key for f in futures} and len(before) == 10_000
    del futures
    assert wait_until(lambda: not client.who_has(), timeout=30)
    assert wait_until(lambda: client.run_on_scheduler(_stream_packed), timeout=30)
    assert [r["key"] for r in client.get_task_stream(count=10_000)] == before
    later = client.map(inc, range(5), pure=False)
    client.gather(later)
    after = [r["key"] for r in client.get_task_stream(count=10_000)]
    assert after[:-5] == before[5:]
    assert set(after[-5:]) == {f.key for f in later}


def _stream_packed(dask_scheduler) -> bool:
    return dask_scheduler.task_stream._packed is not None


def test_performance_report_is_self_contained_html(client, tmp_path):
    path = tmp_path / "report.html"
    with performance_report(filename=str(path)):
        x = client.map(inc, range(20), pure=False)
        y = client.map(add, x, x, pure=False)
        assert client.gather(y)[-1] == 40
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    for section in ("Summary", "Task stream", "Per task prefix", "Worker timeline"):
        assert f"<h2>{section}</h2>" in text
    assert ">inc</td>" in text and ">add</td>" in text
    assert "<svg" in text and "<rect" in text
    # nothing is fetched from elsewhere: viewable offline
    assert not re.search(r"(src|href)\s*=|https?://|@import|<script", text)
    for address in client.scheduler_info()["workers"]:
        assert address in text


def test_task_stream_save_writes_html(client, tmp_path):
    path = tmp_path / "stream.html"
    with get_task_stream(client, plot="save", filename=str(path)) as ts:
        client.submit(inc, 1, pure=False).result()
    assert len(ts.data) >= 1
    assert "<h2>Task stream</h2>" in path.read_text()


def test_task_metadata_collects_the_tasks_of_the_block(client):
    outside = client.submit(inc, 100, pure=False)
    outside.result()
    with get_task_metadata() as tm:
        a = client.submit(inc, 1, pure=False)
        b = client.submit(fail, 2, pure=False)
        wait([a, b])
    assert set(tm.state) == {a.key, b.key}
    assert tm.state[a.key] == "memory" and tm.state[b.key] == "erred"
    assert tm.metadata[a.key]["worker"] in client.scheduler_info()["workers"]
    assert tm.metadata[b.key]["status"] == "error"
    assert outside.key not in tm.state


@pytest.fixture(scope="module")
def remote(cluster):
    with Client(cluster.scheduler_address) as c:
        yield c


def test_remote_client_reads_the_task_stream_and_writes_a_report(remote, tmp_path):
    path = tmp_path / "remote.html"
    with performance_report(filename=str(path), client=remote):
        future = remote.submit(inc, 1, pure=False)
        assert future.result() == 2
    assert future.key in path.read_text()
    with get_task_stream(remote) as ts:
        again = remote.submit(inc, 2, pure=False)
        assert again.result() == 3
    assert again.key in {r["key"] for r in ts.data}
    with get_task_metadata(remote) as tm:
        third = remote.submit(inc, 3, pure=False)
        assert third.result() == 4
    assert tm.state == {third.key: "memory"}
