"""Large dask graphs of tiny nodes run their in-trees as fused tasks (integrations/dask_fusion.py): the
same results with far fewer tasks; wanted, held and differently annotated nodes stay tasks of their
own; errors name the dask key; dask's switch turns it off; a worker dying mid-graph loses nothing."""

from __future__ import annotations

import operator
import os
import sys
import time

import pytest

dask = pytest.importorskip("dask", reason="dask is a test extra: pip install -e '.[test]'")

from conftest import calls, count_call  # noqa: E402
from minidist import Client  # noqa: E402
from minidist.integrations.dask_fusion import FUSE_MIN_NODES, group_cap  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "processes"])
def client(request):
    with Client(
        processes=request.param, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as c:
        yield c


def tree(leaves, leaf=operator.neg):
    """A pairwise ``add`` tree over ``leaf(i)`` for i < leaves (2 * leaves - 1 nodes); its root."""
    layer = [dask.delayed(leaf)(i) for i in range(leaves)]
    while len(layer) > 1:
        layer = [
            dask.delayed(operator.add)(layer[i], layer[i + 1]) if i + 1 < len(layer) else layer[i]
            for i in range(0, len(layer), 2)
        ]
    return layer[0]


def tasks_run(client, compute) -> list:
    """The keys of the tasks that ran while ``compute()`` did (the task stream's records)."""
    start = time.time()
    compute()
    return [record["key"] for record in client.get_task_stream(start=start)]


def test_a_large_tree_of_tiny_nodes_runs_as_a_few_fused_tasks(client):
    total = tree(1024)  # 2,047 nodes
    keys = tasks_run(client, lambda: assert_equal(total.compute(), -sum(range(1024))))
    # in-trees of up to ``cap`` nodes (7 here), under their roots' keys: adds (the leaves are inside)
    cap = group_cap(2047)
    assert 2047 / cap <= len(keys) <= 2 * 2047 / cap, f"{len(keys)} tasks ran for 2,047 nodes"
    assert {str(key).split("-")[0] for key in keys} == {"add"}
    # the same graph with dask's switch for low-level fusion off: one task per node
    with dask.config.set({"optimization.fuse.active": False}):
        assert len(tasks_run(client, lambda: total.compute())) == 2047


def assert_equal(value, expected):
    assert value == expected


def test_small_graphs_keep_one_task_per_node(client):
    leaves = FUSE_MIN_NODES // 4
    total = tree(leaves)
    keys = tasks_run(client, lambda: assert_equal(total.compute(), -sum(range(leaves))))
    assert len(keys) == 2 * leaves - 1


def test_wanted_nodes_inside_a_tree_get_their_own_results(client):
    total = tree(1024)
    inner = total.dask  # the graph: every node, any of them may be asked for
    graph = dict(inner)
    deep = [key for key in graph if str(key).startswith("add")][:3]  # low in the tree
    values = client.get(graph, [total.key, *deep])
    assert values[0] == -sum(range(1024))
    expected = dask.get(graph, deep)  # dask's own synchronous scheduler
    assert list(values[1:]) == list(expected)


def test_a_node_this_client_holds_is_shared_not_recomputed(client, tmp_path):
    log = str(tmp_path / "calls")
    counted = dask.delayed(count_call)(log, 7)
    held = client.compute(counted)
    assert held.result() == 7
    # a large tree whose first leaf is that node (its only dependent is an add, which would absorb it)
    leaves = [counted, *(dask.delayed(operator.neg)(i) for i in range(1, 1024))]
    layer = leaves
    while len(layer) > 1:
        layer = [
            dask.delayed(operator.add)(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)
        ]
    assert layer[0].compute() == 7 - sum(range(1, 1024))
    assert calls(log) == 1


def test_nodes_with_other_options_stay_tasks_of_their_own(client):
    with dask.annotate(retries=1):
        marked = [dask.delayed(operator.neg)(i, dask_key_name=f"marked-{i}") for i in range(8)]
    leaves = marked + [dask.delayed(operator.neg)(i) for i in range(8, 1024)]
    layer = leaves
    while len(layer) > 1:
        layer = [
            dask.delayed(operator.add)(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)
        ]
    keys = tasks_run(
        client,
        lambda: assert_equal(layer[0].compute(optimize_graph=False), -sum(range(1024))),
    )
    assert {f"marked-{i}" for i in range(8)} <= {str(key) for key in keys}


def divide(i):
    return 1 / (i - 500)


def test_an_error_inside_a_fused_task_is_its_own_and_names_its_dask_key(client):
    total = tree(1024, leaf=divide)
    with pytest.raises(ZeroDivisionError) as info:
        total.compute()
    if sys.version_info >= (3, 11):  # notes are 3.11's
        notes = "".join(getattr(info.value, "__notes__", []))
        assert "divide-" in notes and "fused into" in notes, notes
    assert tree(1024).compute() == -sum(range(1024))  # the client is fine


def die_once(marker, i):
    """Kills its worker process the first time it runs (``marker`` says it did), then is ``-i``."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(1)
    return -i


def test_a_worker_dying_inside_a_fused_task_loses_nothing(tmp_path):
    marker = str(tmp_path / "died")
    with Client(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
        leaves = [dask.delayed(operator.neg)(i) for i in range(1024)]
        leaves[700] = dask.delayed(die_once)(marker, 700)
        layer = leaves
        while len(layer) > 1:
            layer = [
                dask.delayed(operator.add)(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)
            ]
        assert c.compute(layer[0]).result(timeout=30) == -sum(range(1024))
        assert os.path.exists(marker)


def fail_twice(log, i):
    """Fails the first two times it runs (counted in ``log``, so across worker processes), then -i."""
    count_call(log, None)
    if calls(log) < 3:
        raise OSError("not yet")
    return -i


def tree_with(leaf_at_700) -> object:
    """A 1,024-leaf add tree (2,047 nodes, fused) whose leaf 700 is ``leaf_at_700``."""
    leaves = [dask.delayed(operator.neg)(i) for i in range(1024)]
    leaves[700] = leaf_at_700
    layer = leaves
    while len(layer) > 1:
        layer = [
            dask.delayed(operator.add)(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)
        ]
    return layer[0]


def test_retries_rerun_the_fused_task_holding_a_flaky_node(client, tmp_path):
    log = str(tmp_path / "calls")
    total = tree_with(dask.delayed(fail_twice)(log, 700))
    # the call's retries are every node's option: equal options, so the nodes are still fused
    keys = tasks_run(
        client, lambda: assert_equal(client.compute(total, retries=2).result(), -sum(range(1024)))
    )
    assert len(keys) < 2047 // 2 and calls(log) == 3
    with pytest.raises(OSError, match="not yet"):  # without retries, the first failure is final
        client.compute(tree_with(dask.delayed(fail_twice)(str(tmp_path / "b"), 700))).result()


def test_a_fused_task_that_keeps_killing_its_worker_ends_in_killed_worker():
    from minidist import KilledWorker

    with Client(
        processes=True,
        n_workers=1,
        threads_per_worker=1,
        dashboard_address=None,
        scheduler_kwargs={"allowed_failures": 0},
    ) as c:
        total = tree_with(dask.delayed(os._exit)(3))
        with pytest.raises(KilledWorker, match="exit code 3"):
            c.compute(total).result(timeout=30)
        assert c.compute(tree(1024)).result(timeout=30) == -sum(range(1024))  # the cluster goes on
