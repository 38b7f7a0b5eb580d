"""dask graphs as minidist tasks: what ``client.compute``, ``client.persist`` and ``client.get`` submit.

A dask graph maps keys to nodes (``dask._task_spec``: ``Task``, ``Alias``, ``DataNode``), each knowing its
dependencies and callable with a dict of their values. ``submit_graph`` turns the part of a graph the
wanted keys need into minidist tasks and posts them in one ``update_graph``::

    graph (dict or expression) ──► nodes (convert_legacy_graph) ──► culled to the wanted keys,
        dependencies first, checked (unknown dependencies, cycles) ──► options from annotations
        ──► in-trees fused (1,000 nodes or more, dask_fusion.py) ──► dask.order over the tasks
        ──► one task per node or fused group: run_node(node, DEPENDENCY_VALUES) ──► update_graph

Each node runs on a worker as ``run_node``; the worker passes the dict of the dependencies' values in
place of the ``DEPENDENCY_VALUES`` marker (thread workers call the node itself the same way, see
``data_plane.node_run_spec``), so a dask graph gets minidist's placement, failure handling and data
plane like any task. A task holds only what it must (its node, the node's own set of dependencies,
shared markers): on a graph of many small tasks every object kept per task is one more for each full
garbage collection to walk.

Priorities follow dask's static ordering: tasks are posted in ``dask.order`` order and the scheduler
breaks ties between equal user priorities by submission order, so the graph runs depth first, as dask's
own schedulers run it, and intermediate results are freed early. Annotations (``dask.annotate``) and the
call's keywords give each task its ``priority``, ``retries``, ``workers``, ``resources`` and
``allow_other_workers``: per-layer annotations win over the call's keywords, which win over annotations
active at submission (as in dask.distributed).

Keys held by futures of this client (a persisted collection's graph is ``{key: Future}``) are
dependencies, not tasks: later graphs reuse them without recomputing. dask is an optional extra
(``pip install minidist[dask]``); this module imports it only when called.
"""

from __future__ import annotations

from collections.abc import Mapping

from .dask_fusion import FusedNodes, fuse_in_trees, group_cap

TASK_OPTIONS = ("priority", "retries", "workers", "resources", "allow_other_workers")


def require_dask():
    """Import dask or say how to get it."""
    try:
        import dask
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "Running dask collections needs dask: pip install 'minidist[dask]'"
        ) from exc
    return dask


def run_node(node, dependencies=()):
    """Worker side: evaluate one dask graph node given ``{dependency: value}`` (none for a root)."""
    return node(dependencies)


def flatten_keys(keys) -> list:
    """The keys of a (possibly nested) list of keys, in order, without repeats."""
    out: list = []
    stack = [keys]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def nest_like(structure, values: dict):
    """``structure`` (nested lists of keys) with each key replaced by ``values[key]``."""
    if isinstance(structure, list):
        return [nest_like(item, values) for item in structure]
    return values[structure]


# ------------------------------------------------------------------------------------------- graphs


def graph_nodes(graph) -> tuple[dict, dict]:
    """(nodes, held): the graph's task nodes by key, and ``{key: Future}`` for keys it takes from
    futures (persisted results) rather than computing them."""
    require_dask()
    from dask._task_spec import (
        Alias,
        DataNode,
        GraphNode,
        Task,
        TaskRef,
        convert_legacy_graph,
    )

    if hasattr(graph, "__dask_graph__"):  # dask hands schedulers an expression
        graph = graph.__dask_graph__()
    if not isinstance(graph, Mapping):
        raise TypeError(
            f"A dask graph must be a mapping of keys to tasks, not {type(graph).__name__}"
        )
    graph = dict(graph)
    held: dict = {}
    for key, value in graph.items():
        if type(key) is not str:
            _check_key(key)
        if getattr(type(value), "__dask_future__", False) is True and hasattr(value, "key"):
            held[value.key] = value
    try:
        nodes = convert_legacy_graph(graph)
    except Exception as exc:
        raise ValueError(f"Malformed dask graph: {type(exc).__name__}: {exc}") from exc
    # one pass over the nodes, which stay as they are unless they take futures (rare): what is
    # replaced is collected and changed afterwards
    plain = {TaskRef, *_PLAIN_ARGUMENTS}  # argument types that cannot be or hold a future
    changed: list = []
    for key, node in nodes.items():
        if type(node) is Task:
            for value in node.args:
                if type(value) not in plain and _holds_future(value):
                    changed.append(key)
                    break
            else:
                if node.kwargs and _has_future_argument(node):
                    changed.append(key)
        elif not isinstance(node, GraphNode):
            raise ValueError(f"Malformed dask graph: node {key!r} is a {type(node).__name__}")
        elif isinstance(node, DataNode) and _is_future(node.value):
            changed.append(key)
    for key in changed:
        node = nodes[key]
        if type(node) is Task:
            nodes[key] = _with_future_references(node, held)
            continue
        future = node.value  # dask without duck-typed futures keeps them as data
        held[future.key] = future
        if future.key == key:
            del nodes[key]
        else:
            nodes[key] = Alias(key, target=future.key)
    return nodes, held


_PLAIN_ARGUMENTS = (int, float, str, bytes, bool, type(None))


def _is_future(value) -> bool:
    """A minidist Future (or any future dask recognises by its ``__dask_future__`` flag)."""
    return getattr(type(value), "__dask_future__", False) is True and hasattr(value, "key")


def _has_future_argument(node) -> bool:
    return any(_holds_future(a) for a in node.args) or any(
        _holds_future(v) for v in node.kwargs.values()
    )


def _holds_future(value) -> bool:
    typ = type(value)
    if typ in (list, tuple, set, frozenset):
        return any(_holds_future(item) for item in value)
    if typ is dict:
        return any(_holds_future(item) for item in value.values())
    return _is_future(value)


def _futures_in(value, held: dict) -> None:
    typ = type(value)
    if typ in (list, tuple, set, frozenset):
        for item in value:
            _futures_in(item, held)
    elif typ is dict:
        for item in value.values():
            _futures_in(item, held)
    elif _is_future(value):
        held[value.key] = value


def _with_future_references(node, held: dict):
    """``node`` with the futures in its arguments turned into references to their keys: dask's
    ``delayed(f)(future)`` keeps them as plain values (only its own ``TaskRef`` counts there)."""
    from dask._task_spec import Task, parse_input

    def reference(value):
        if not _holds_future(value):
            return value
        _futures_in(value, held)
        return parse_input(value)  # futures become references (dask recognises their flag here)

    args = [reference(a) for a in node.args]
    kwargs = {name: reference(v) for name, v in node.kwargs.items()}
    return Task(node.key, node.func, *args, _data_producer=node.data_producer, **kwargs)


def _check_key(key) -> None:
    typ = type(key)
    if typ is tuple:
        for part in key:
            _check_key(part)
    elif typ not in (str, bytes, int, float):
        raise TypeError(
            f"Unexpected key type {typ.__name__} (value: {key!r}): dask keys are str, bytes, int, "
            "float or tuples of those"
        )


def needed_nodes(nodes: dict, wanted: list, is_held) -> dict:
    """The nodes the wanted keys need (the rest of the graph is not run), each after its dependencies
    (depth first from the wanted keys, so a subtree's nodes come together); clear errors for keys that
    are neither in the graph nor held by the client, and for a cycle."""
    for key in wanted:
        if key not in nodes and not is_held(key):
            raise KeyError(
                f"Key {key!r} is not in the graph (and no future of this client holds it)"
            )
    needed: dict = {}
    entered: set = set()  # keys whose dependencies are being walked (or were)
    for top in wanted:
        if top in entered or top not in nodes:
            continue
        entered.add(top)
        stack = [(top, iter(nodes[top].dependencies))]
        while stack:
            key, dependencies = stack[-1]
            for dep in dependencies:
                if dep not in nodes:
                    if not is_held(dep):
                        raise KeyError(
                            f"Task {key!r} depends on {dep!r}, which is neither in the graph nor "
                            "held by a future of this client (was it released?)"
                        )
                elif dep not in entered:
                    entered.add(dep)
                    stack.append((dep, iter(nodes[dep].dependencies)))
                    break
                elif dep not in needed:  # entered but not finished: it is on the stack
                    raise RuntimeError(f"Cycle detected in the dask graph: {dep!r} needs itself")
            else:
                stack.pop()
                needed[key] = nodes[key]
    return needed


def static_order(nodes: dict) -> list:
    """The graph's keys in dask's static order (dependencies first); a clear error on a cycle."""
    from dask.order import order

    if len(nodes) == 1:
        return list(nodes)
    # dask reads each node's dependencies itself (it ignores a ``dependencies=`` mapping); keys that
    # come from futures the client holds are outside ``nodes``, and dask treats them as data
    priorities = order(nodes)  # raises RuntimeError on a cycle
    # dask numbers the keys 0..n-1: each goes straight to its place, no sort needed
    ordered: list = [None] * len(nodes)
    if len(priorities) != len(ordered):
        return sorted(nodes, key=priorities.__getitem__)
    for key, rank in priorities.items():
        if type(rank) is not int or not 0 <= rank < len(ordered) or ordered[rank] is not None:
            return sorted(nodes, key=priorities.__getitem__)  # other numbers: sort by them
        ordered[rank] = key
    return ordered


def ordering_stand_ins(tasks: dict) -> dict:
    """``tasks`` for ``dask.order``: each fused task stands in as a dask task that needs what it needs
    (dask.order takes only its own node types for tasks)."""
    from dask._task_spec import Task, TaskRef

    stand_ins = {}
    for key, task in tasks.items():
        if type(task) is FusedNodes:
            task = Task(key, run_node, *(TaskRef(dep) for dep in task.dependencies))
        stand_ins[key] = task
    return stand_ins


def task_options(keys: list, call_options: dict, layer_annotations: dict) -> dict:
    """``{key: options}`` for keys whose options differ from the defaults."""
    import dask

    base = dict(dask.get_annotations())
    base.update({k: v for k, v in call_options.items() if v})  # as dask.distributed: unset if falsy
    per_key: dict = {}
    if base:
        for name, value in base.items():
            if name not in TASK_OPTIONS:
                continue
            for key in keys:
                per_key.setdefault(key, {})[name] = value(key) if callable(value) else value
    for name, values in (layer_annotations or {}).items():
        if name not in TASK_OPTIONS:
            continue
        for key, value in values.items():
            per_key.setdefault(key, {})[name] = value
    for options in per_key.values():
        workers = options.get("workers")
        if isinstance(workers, (str, int)):
            options["workers"] = [workers]
        if options.get("workers") is not None:
            options["workers"] = [str(w) for w in options["workers"]]
    return per_key


def fusion_cap(nodes: int) -> int:
    """How many nodes one fused task may hold (``dask_fusion.py``); 1 when dask's switch for low-level
    fusion is off (``optimization.fuse.active`` False)."""
    import dask

    if dask.config.get("optimization.fuse.active", None) is False:
        return 1
    return group_cap(nodes)


def submit_graph(client, graph, wanted, call_options=None) -> dict:
    """Submit what ``wanted`` keys of ``graph`` need; ``{wanted key: Future}``.

    Everything is checked before anything is posted, so a bad graph leaves the client as it was.
    """
    call_options = call_options or {}
    wanted = flatten_keys(wanted)
    nodes, held = graph_nodes(graph)

    def is_held(key) -> bool:
        return key in held or client._holds(key)

    needed = needed_nodes(nodes, wanted, is_held)
    annotations = {}
    if hasattr(graph, "__dask_annotations__"):
        annotations = graph.__dask_annotations__()
    options = task_options(list(needed), call_options, annotations)
    cap = fusion_cap(len(needed))
    if cap > 1:
        # roots of their own: keys wanted, or held by this client's futures (an existing task the
        # scheduler shares rather than one recomputed inside a fused task)
        keep = {*wanted, *filter(client._holds, needed)}
        needed = fuse_in_trees(list(needed), needed, keep, cap, options)
        # dask.order orders the tasks, not every node (members run in their fused task's order)
        ordered = static_order(ordering_stand_ins(needed))
    else:
        ordered = static_order(needed)
    tasks = client._graph_tasks(run_node, ordered, needed, options)
    futures = {key: client._new_future(key) for key in wanted}
    client._post_graph(tasks, wanted)
    return futures
