"""hypothesis: random task graphs through a real cluster give the same answers as plain evaluation.

The graphs come from the testing kit (``minidist.testing.task_graphs``): node i applies an operation to
a constant and to earlier nodes' values, passed as futures nested in lists or dicts, some pure and some
not, some failing on purpose. Every future must give the sequential loop's value, or raise its error.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from minidist import Client
from minidist.testing import task_graphs

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=[False, True], ids=["threads", "processes"])
def graph_client(request):
    with Client(
        processes=request.param, n_workers=2, threads_per_worker=2, dashboard_address=None
    ) as c:
        yield c


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(graph=task_graphs(max_tasks=25))
def test_random_graphs_match_sequential_evaluation(graph_client, graph):
    graph.check(graph.submit(graph_client), timeout=60)
