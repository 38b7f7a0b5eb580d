"""hypothesis: fusing a dask graph's in-trees (integrations/dask_fusion.py) keeps every value.

Random graphs of dask ``Task`` nodes (node i adds a constant to some earlier nodes' values), some keys
wanted or held, some with options, go through ``fuse_in_trees``. Every node must land in exactly one task;
a task's members other than its root must be neither kept nor optioned apart from the root, used by
exactly one node, inside the task, and need nothing from outside it (so the task needs from outside only
what its root does); members come each after its dependencies, and so do the tasks; a task's dependencies are exactly what its members need from
outside; no task is larger than the cap; and running the tasks (each given only its dependencies'
values) gives every task key the value plain evaluation of the graph gives it.
"""

from __future__ import annotations

import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

dask = pytest.importorskip("dask", reason="dask is a test extra: pip install -e '.[test]'")
from dask._task_spec import Task, TaskRef  # noqa: E402

from minidist.integrations.dask_fusion import FusedNodes, fuse_in_trees  # noqa: E402


def plus(*values):
    return sum(values)


@st.composite
def graphs(draw):
    size = draw(st.integers(1, 40))
    nodes: dict = {}
    for i in range(size):
        earlier = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        key = f"n-{i}"
        nodes[key] = Task(key, plus, i, *(TaskRef(f"n-{j}") for j in earlier))
    keys = list(nodes)
    keep = set(draw(st.lists(st.sampled_from(keys), max_size=4)))
    optioned = draw(st.lists(st.sampled_from(keys), max_size=6))
    options = {key: {"retries": draw(st.integers(1, 2))} for key in optioned}
    cap = draw(st.integers(1, 12))
    return nodes, keep, options, cap


def evaluate(nodes: dict) -> dict:
    values: dict = {}
    for key, node in nodes.items():  # insertion order is topological here
        values[key] = node({d: values[d] for d in node.dependencies})
    return values


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_fused_tasks_give_every_task_key_its_value(case):
    nodes, keep, options, cap = case
    ordered = list(nodes)  # a valid order (dependencies first), as dask.order's is
    expected = evaluate(nodes)
    tasks = fuse_in_trees(ordered, nodes, keep, cap, options)
    consumers: dict = {}
    for node in nodes.values():
        for dependency in node.dependencies:
            consumers.setdefault(dependency, []).append(node.key)
    seen: list = []
    for key, task in tasks.items():
        members = list(task.nodes) if isinstance(task, FusedNodes) else [task]
        member_keys = [m.key for m in members]
        assert member_keys[-1] == key and len(members) <= max(cap, 1)
        for i, member in enumerate(members):  # each after its dependencies inside the task
            assert not set(member.dependencies) & set(member_keys[i:])
        seen.extend(member_keys)
        inside = set(member_keys)
        for member in members[:-1]:  # whole subtrees: nothing needed from outside the task
            assert set(member.dependencies) <= inside
        # so the task needs from outside only what its root does
        assert set(task.dependencies) <= set(members[-1].dependencies)
        for member in member_keys[:-1]:
            assert member not in keep
            assert options.get(member) == options.get(key)
            assert len(consumers[member]) == 1 and consumers[member][0] in inside
        needs = {d for m in members for d in m.dependencies if d not in inside}
        assert set(task.dependencies) == needs
    assert sorted(seen) == sorted(nodes)
    assert keep <= set(tasks)
    # the tasks come each after its dependencies: run them in that order
    values: dict = {}
    for key, task in tasks.items():
        values[key] = task({d: values[d] for d in task.dependencies})
    assert values == {key: expected[key] for key in tasks}


def test_a_chain_is_fused_up_to_the_cap_only():
    nodes = {"a": Task("a", operator.neg, 1)}
    previous = "a"
    for i in range(9):
        key = f"c-{i}"
        nodes[key] = Task(key, operator.add, TaskRef(previous), i)
        previous = key
    tasks = fuse_in_trees(list(nodes), nodes, {previous}, 4, {})
    sizes = [len(t.nodes) if isinstance(t, FusedNodes) else 1 for t in tasks.values()]
    # the first four in one task; the rest each need the value before them from outside
    assert sizes == [4, 1, 1, 1, 1, 1, 1]
    values: dict = {}
    for key, task in tasks.items():
        values[key] = task({d: values[d] for d in task.dependencies})
    assert values[previous] == -1 + sum(range(9))
