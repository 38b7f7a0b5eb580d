"""hypothesis: random task graphs through a real cluster give the same answers as plain evaluation.

Each graph is a list of nodes; node i applies an operation to constants and to earlier nodes' values.
The same graph is evaluated in a plain loop and submitted to minidist with futures as arguments (nested
in lists and dicts too, some pure and some not, some failing on purpose); every future must give the
loop's value, or raise the loop's error.
"""

from __future__ import annotations

import operator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minidist import Client, wait

pytestmark = pytest.mark.timeout(300)


def combine(op_name, values, extra):
    if op_name == "fail" and values and values[0] % 7 == 0:
        raise ArithmeticError(f"refusing {values[0]}")
    ops = {"add": operator.add, "mul": operator.mul, "sub": operator.sub, "fail": operator.add}
    total = extra
    for v in values:
        total = ops[op_name](total, v) % 1_000_003
    return total


def from_dict(payload):
    return combine(payload["op"], payload["values"], payload["extra"])


node = st.tuples(
    st.sampled_from(["add", "mul", "sub", "fail"]),
    st.lists(st.integers(0, 30), max_size=3),  # indices of earlier nodes (taken modulo position)
    st.integers(-50, 50),
    st.booleans(),  # pass dependencies nested in a dict instead of a list
    st.booleans(),  # pure
)
graphs = st.lists(node, min_size=1, max_size=25)


def evaluate(graph):
    results = []
    for i, (op, picks, extra, _, _) in enumerate(graph):
        deps = sorted({p % i for p in picks}) if i else []
        if any(isinstance(results[d], Exception) for d in deps):
            results.append(next(results[d] for d in deps if isinstance(results[d], Exception)))
            continue
        try:
            results.append(combine(op, [results[d] for d in deps], extra))
        except ArithmeticError as exc:
            results.append(exc)
    return results


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "processes"])
def client(request):
    with Client(
        processes=request.param, n_workers=2, threads_per_worker=2, dashboard_address=None
    ) as c:
        yield c


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(graph=graphs)
def test_random_graphs_match_sequential_evaluation(client, graph):
    expected = evaluate(graph)
    futures = []
    for i, (op, picks, extra, as_dict, pure) in enumerate(graph):
        deps = [futures[d] for d in sorted({p % i for p in picks})] if i else []
        if as_dict:
            future = client.submit(from_dict, {"op": op, "values": deps, "extra": extra}, pure=pure)
        else:
            future = client.submit(combine, op, deps, extra, pure=pure)
        futures.append(future)
    wait(futures, timeout=60)
    for future, want in zip(futures, expected):
        if isinstance(want, Exception):
            assert future.status == "error"
            assert str(future.exception()) == str(want)
        else:
            assert future.result() == want
