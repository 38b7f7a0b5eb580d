"""dask collections and graphs on minidist: client.compute, client.get, persist, and the Client as
dask's default scheduler (x.compute(), dask.compute, dask.persist), on both worker kinds."""

from __future__ import annotations

import os

import pytest

da = pytest.importorskip("dask.array", reason="dask is a test extra: pip install -e '.[test]'")
np = pytest.importorskip("numpy")
import dask  # noqa: E402
import dask.bag as db  # noqa: E402

from conftest import calls, count_call, wait_for_file, wait_until  # noqa: E402
from minidist import (  # noqa: E402
    CancelledError,
    Client,
    Future,
    fire_and_forget,
    futures_of,
    wait,
)
from minidist.keys import key_split  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "processes"])
def client(request):
    with Client(
        processes=request.param, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as c:
        yield c


# ----------------------------------------------------------------------------------- client.compute


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


def test_compute_passes_other_values_through_and_traverses_containers(client):
    x = da.arange(10, chunks=5)
    assert client.compute([x.sum(), 7, [x.max(), 1]], sync=True) == [45, 7, [9, 1]]


def test_compute_an_array_returns_the_whole_array(client):
    x = da.ones((30, 40), chunks=(10, 20))
    result = client.compute(x + 1).result()
    assert isinstance(result, np.ndarray)
    assert result.shape == (30, 40) and (result == 2).all()


# ------------------------------------------------------------------------------- default scheduler


def test_collections_compute_on_the_default_client(client):
    # each collection type through its own .compute(), dask choosing the scheduler
    assert client is not None and dask.config.get("scheduler") is not None
    x = da.random.default_rng(1).random((300, 300), chunks=100)
    expected = x.compute(scheduler="sync")
    assert (x + x.T).mean().compute() == pytest.approx((expected + expected.T).mean())
    assert db.from_sequence(range(100), npartitions=7).map(abs).sum().compute() == 4950
    total, biggest = dask.compute(x.sum(), x.max())
    assert total == pytest.approx(expected.sum()) and biggest == expected.max()
    assert dask.delayed(sum)([dask.delayed(abs)(-i) for i in range(10)]).compute() == 45
    assert (x + 1).sum().compute(scheduler=client) == pytest.approx((expected + 1).sum())


def test_default_scheduler_runs_on_the_client(client, tmp_path):
    # the tasks really run on this cluster's workers: the function sees a minidist worker
    def where(_):
        from minidist import get_worker

        return get_worker().address

    addresses = db.from_sequence(range(4), npartitions=4).map(where).compute()
    assert set(addresses) <= set(client.scheduler_info()["workers"])


def test_dataframe_groupby_on_the_default_client(client):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame({"k": [i % 3 for i in range(60)], "v": range(60)})
    ddf = dd.from_pandas(frame, npartitions=4)
    result = ddf.groupby("k").v.sum().compute()
    assert result.sort_index().tolist() == frame.groupby("k").v.sum().sort_index().tolist()
    assert len(ddf[ddf.v > 10].persist()) == 49


# ------------------------------------------------------------------------------------------ persist


def test_persist_returns_collections_backed_by_futures(client):
    x = da.arange(100, chunks=10)
    y = (x * 3).persist()
    futures = futures_of(y)
    assert len(futures) == 10 and all(isinstance(f, Future) for f in futures)
    wait(y)
    assert all(f.status == "finished" for f in futures)
    assert (client.gather(y) == np.arange(100) * 3).all()
    assert y.sum().compute() == 3 * 4950


def test_futures_of_with_a_client_refuses_a_cancelled_persisted_collection(client):
    y = (da.arange(40, chunks=10) + 1).persist()
    assert futures_of(y, client=client) == client.futures_of(y) == futures_of(y)
    client.cancel(futures_of(y)[1])
    assert len(futures_of(y)) == 4  # without a client, as in dask, it only finds them
    for find in (lambda: futures_of(y, client=client), lambda: client.futures_of(y)):
        with pytest.raises(CancelledError, match="cancelled"):
            find()


def fail_unless_exists(path):
    if not os.path.exists(path):
        raise RuntimeError(f"{path} does not exist yet")
    return "ran"


def test_calls_that_take_futures_find_them_in_persisted_collections(client, tmp_path):
    # as in dask.distributed (who_has, cancel, retry and fire_and_forget took none of them, silently)
    x = client.persist(da.arange(40, chunks=10) + 1)
    wait(x)
    assert set(client.who_has(x)) == {f.key for f in futures_of(x)} and len(futures_of(x)) == 4

    flaky = client.persist(dask.delayed(fail_unless_exists)(str(tmp_path / "fixed")))
    wait(flaky)
    assert futures_of(flaky)[0].status == "error"
    (tmp_path / "fixed").touch()
    client.retry(flaky)
    assert flaky.compute() == "ran"

    gate = str(tmp_path / "gate")
    blocked = client.persist(dask.delayed(wait_for_file)(gate, 1))
    client.cancel(blocked)
    assert futures_of(blocked)[0].cancelled()

    waiting = dask.delayed(wait_for_file)(gate, 2)
    forgotten = client.persist(dask.delayed(count_call)(str(tmp_path / "ran"), waiting))
    fire_and_forget(forgotten)
    del forgotten  # its tasks wait for the gate: only fire_and_forget keeps them
    open(gate, "w").close()
    assert wait_until(lambda: calls(tmp_path / "ran") == 1, timeout=30)


def test_persisted_results_are_reused_not_recomputed(client, tmp_path):
    log = str(tmp_path / "calls")
    parts = [dask.delayed(count_call)(log, i, dask_key_name=f"part-{i}") for i in range(4)]
    persisted = dask.persist(*parts)
    wait(list(persisted))
    ran = calls(log)
    assert ran >= 4  # (a stolen task may have started twice)
    total = dask.delayed(sum)(list(persisted))
    assert total.compute() == 6
    assert client.compute(total, sync=True) == 6
    assert calls(log) == ran  # the parts ran at persist, not again


def test_a_graph_computed_again_runs_again(client, tmp_path):
    # each compute's futures are gone when the next one submits the same keys: the tasks run again
    # (they reused the first run's finished results, so to_parquet(path, overwrite=True) twice in a
    # row wrote nothing the second time: the client had emptied the directory)
    log = str(tmp_path / "runs")
    for i in range(4):
        parts = [dask.delayed(count_call)(log, n, dask_key_name=f"again-{n}") for n in range(3)]
        assert dask.delayed(sum)(parts, dask_key_name="again-sum").compute() == 3
        assert calls(log) >= 3 * (i + 1)  # (a stolen task may have started twice)


def log_value(path, value):
    """Append ``value`` to ``path`` (works from worker processes too) and return it."""
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


def test_normalize_collection_swaps_in_futures_the_client_has(client, tmp_path):
    log = tmp_path / "ran"
    parts = [dask.delayed(log_value)(str(log), i, dask_key_name=f"norm-{i}") for i in range(3)]
    total = dask.delayed(sum)(parts)
    assert client.normalize_collection(total) is total  # no key known yet: the collection itself
    held = client.compute(parts[:2])  # this client now has futures of two of the parts
    wait(held)
    log.unlink()
    normalized = client.normalize_collection(total)
    graph = dict(normalized.__dask_graph__())
    assert {key for key, value in graph.items() if isinstance(value, Future)} == {
        "norm-0",
        "norm-1",
    }
    assert normalized.compute() == 3
    assert set(log.read_text().split()) == {"2"}  # the others' results were reused


def test_client_persist_of_several_collections(client):
    x = da.arange(20, chunks=5)
    a, b = client.persist([x + 1, x * 2])
    assert isinstance(a, type(x)) and len(futures_of(a)) == 4
    assert a.sum().compute() == 210 and b.sum().compute() == 380


def test_futures_inside_delayed_calls_and_graphs_are_dependencies(client):
    future = client.submit(abs, -3)
    assert dask.delayed(lambda v: v + 1)(future).compute() == 4
    assert client.compute(dask.delayed(sum)([future, future]), sync=True) == 6
    assert dask.delayed(lambda a, b: a * b["x"])(2, b={"x": future}).compute() == 6
    assert client.get({"a": (abs, "b"), "b": future}, ["a", "b"]) == [3, 3]


# ---------------------------------------------------------------------------------------------- get


def test_client_get_of_a_plain_graph(client):
    graph = {"a": 1, "b": (abs, -2), "c": (sum, ["a", "b"]), "unused": (abs, "missing-input")}
    assert client.get(graph, "c") == 3
    assert client.get(graph, ["c", ["a", "b"]]) == [3, [1, 2]]
    futures = client.get(graph, ["b", "c"], sync=False)
    assert [f.result() for f in futures] == [2, 3]


def test_client_get_as_a_dask_scheduler(client):
    x = da.arange(100, chunks=10)
    assert (x**2).sum().compute(scheduler=client.get) == sum(i * i for i in range(100))


def test_bad_graphs_give_clear_errors_and_leave_the_client_usable(client):
    with pytest.raises(KeyError, match="not in the graph"):
        client.get({"a": 1}, "b")
    with pytest.raises(RuntimeError, match="Cycle"):
        client.get({"a": (abs, "b"), "b": (abs, "a")}, "a")
    with pytest.raises(TypeError, match="mapping"):
        client.get([("a", 1)], "a")
    with pytest.raises(TypeError, match="key type"):
        client.get({1.5j: 1}, [1.5j])
    assert client.get({"a": (abs, -5)}, "a") == 5


# ------------------------------------------------------------------------------------------- errors


def test_a_failing_task_inside_a_graph_raises_its_own_error(client):
    @dask.delayed
    def boom(v):
        raise ZeroDivisionError(f"no {v}")

    @dask.delayed
    def plus(a, b):
        return a + b

    good = plus(1, 2)
    assert client.compute(good).result() == 3
    with pytest.raises(ZeroDivisionError, match="no 3") as info:
        plus(boom(3), good).compute()
    text = "".join(getattr(info.value, "__notes__", [])) + "".join(
        str(entry.name) for entry in info.traceback
    )
    assert "boom" in text  # the worker's frame of the failing function is in the report
    assert plus(good, 1).compute() == 4


# -------------------------------------------------------------------------------------- annotations


def test_annotations_and_keywords_reach_the_tasks(client):
    workers = sorted(client.scheduler_info()["workers"])
    with dask.annotate(workers=[workers[0]]):
        parts = [
            dask.delayed(lambda i: __import__("minidist").get_worker().address)(i) for i in range(4)
        ]
    assert set(dask.compute(*parts, optimize_graph=False)) == {workers[0]}
    later = [
        dask.delayed(lambda i: __import__("minidist").get_worker().address)(i) for i in range(4)
    ]
    futures = client.compute(later, workers=[workers[1]])
    assert {f.result() for f in futures} == {workers[1]}


def flaky(log):
    """Fails the first two times it runs (per ``log`` file)."""
    count_call(log, None)
    if calls(log) < 3:
        raise OSError("not yet")
    return "ok"


def test_retries_annotation_reruns_a_flaky_task(client, tmp_path):
    with dask.annotate(retries=2):
        value = dask.delayed(flaky)(str(tmp_path / "a"))
    assert value.compute() == "ok" and calls(str(tmp_path / "a")) == 3
    assert client.compute(dask.delayed(flaky)(str(tmp_path / "b")), retries=2).result() == "ok"
    with pytest.raises(OSError, match="not yet"):
        dask.delayed(flaky)(str(tmp_path / "c")).compute()


# ----------------------------------------------------------------------------- ordering and memory


def test_a_reduction_streams_its_chunks_in_dask_order(client):
    # dask.order runs each chunk's partial sum right after the chunk, so a reduction over 32 chunks
    # holds a few chunks at a time; roots first would make nearly all 32 before summing any. (Chunks of
    # 8 MB take long enough that workers prefetch only 2 tasks; a deep prefetch of tiny tasks runs
    # ahead of the order, in the worker's queue order.)
    import threading

    x = da.random.default_rng(2).random((8192, 4096), chunks=(1024, 1024))
    peak = 0
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            held = client.who_has()
            now = [k for k, w in held.items() if "random" in str(k) and w]
            peak = max(peak, len(now))
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        total = x.sum().compute()
    finally:
        done.set()
        watcher.join()
    assert total == pytest.approx(x.size / 2, rel=0.01)
    assert 1 <= peak <= 12, f"{peak} of 32 chunks were held at once"


def test_progress_groups_persisted_collections_by_dask_key_prefix(client, capsys):
    from minidist import progress

    x = da.arange(100, chunks=10)
    doubled, shifted = client.persist([x * 2, x + 1])
    progress(doubled, shifted, notebook=False)  # plain lines: stdout is captured, not a terminal
    out = capsys.readouterr().out
    assert {key_split(f.key) for f in futures_of([doubled, shifted])} == {"mul", "add"}
    assert "mul 10/10" in out and "add 10/10" in out
