"""Running dask collections and graphs on minidist: ``client.compute(x)`` and ``client.get(dsk, keys)``.

A dask graph maps keys to task nodes (``dask._task_spec``: ``Task``, ``Alias``, ``DataNode``), each knowing
its dependencies and callable with a dict of their values. Every node becomes one minidist task whose
function is ``run_node(node, {dependency: DependencyRef})``; the worker swaps the references for the
dependencies' values, so dask's graph runs under minidist's scheduler with the same placement,
failure handling and data plane as any other task. The whole graph is sent in one ``update_graph``.

``compute`` then submits the collection's ``finalize`` step over the output keys and returns one future;
``get`` is the dask scheduler interface (``x.compute(scheduler=client.get)``) and returns results.
dask is an optional extra: ``pip install minidist[dask]``.
"""

from __future__ import annotations

from ..worker.runtime import DependencyRef


def _require_dask():
    try:
        import dask  # noqa: F401
        from dask._task_spec import convert_legacy_graph
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "Running dask collections needs dask: pip install 'minidist[dask]'"
        ) from exc
    return convert_legacy_graph


def run_node(node, dependencies: dict):
    """Worker side: evaluate one dask graph node given its dependencies' values."""
    return node(dependencies)


def _flatten(keys) -> list:
    out: list = []
    stack = [keys]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _nest(structure, values: dict):
    if isinstance(structure, list):
        return [_nest(item, values) for item in structure]
    return values[structure]


def submit_graph(client, dsk, output_keys, priority: int = 0) -> dict:
    """Submit every node of ``dsk``; returns ``{output key: Future}``."""
    convert_legacy_graph = _require_dask()
    if hasattr(dsk, "__dask_graph__"):  # newer dask hands schedulers an expression
        dsk = dsk.__dask_graph__()
    nodes = convert_legacy_graph(dict(dsk))
    wanted = list(dict.fromkeys(_flatten(output_keys)))
    missing = [k for k in wanted if k not in nodes]
    if missing:
        raise KeyError(f"Keys {missing[:5]} are not in the graph")
    tasks = []
    for key, node in nodes.items():
        dependencies = {dep: DependencyRef(dep) for dep in node.dependencies}
        tasks.append(
            client._graph_task(run_node, key, (node, dependencies), dependencies, priority)
        )
    futures = {key: client._new_future(key) for key in wanted}
    client._post_graph(tasks, wanted)
    return futures


def compute(
    client, collections, optimize_graph: bool = True, priority: int = 0, sync: bool = False
):
    """dask's ``Client.compute``: one future (or result with ``sync=True``) per collection."""
    import dask

    single = not isinstance(collections, (list, tuple))
    items = [collections] if single else list(collections)
    results = []
    for item in items:
        if not dask.is_dask_collection(item):
            results.append(item)
            continue
        if optimize_graph:
            (item,) = dask.optimize(item)
        keys = item.__dask_keys__()
        futures = submit_graph(client, item.__dask_graph__(), keys, priority)
        finalize, extra = item.__dask_postcompute__()
        results.append(
            client.submit(finalize, _nest(keys, futures), *extra, priority=priority, pure=False)
        )
        del futures  # the finalize task now holds the outputs; our handles may go
    if sync:
        results = client.gather(results)
    return results[0] if single else results


def get(client, dsk, keys, **kwargs):
    """The dask scheduler interface: compute ``keys`` of graph ``dsk`` and return nested results."""
    futures = submit_graph(client, dsk, keys)
    return client.gather(_nest(keys, futures) if isinstance(keys, list) else futures[keys])
