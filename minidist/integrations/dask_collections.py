"""dask collections on a Client: ``compute``, ``persist``, ``get``, and being dask's default scheduler.

::

    x.compute(), dask.compute(a, b) ──► dask's "scheduler" setting ──► default Client.get ──┐
    x.persist(), dask.persist(a, b) ──► dask's "scheduler" setting ──► default Client.persist ─┤
    client.compute(x), client.persist(x), client.get(dsk, keys) ──────────────────────────────┤
                                                                                              ▼
            one expression for all collections (dask) ──► integrations/dask.submit_graph ──► Futures

``compute`` submits the collections' finalized graph and returns one Future per collection;
``persist`` submits every output key and rebuilds each collection with ``{key: Future}`` as its graph,
so later graphs built on it depend on those keys instead of recomputing them; ``normalize_collection``
swaps in futures the client already has for a collection's keys; ``get`` is dask's scheduler
interface (results, or futures with ``sync=False``).

**Default scheduler.** A Client created with ``set_as_default=True`` (the default) sets dask's
``scheduler`` setting to ``DEFAULT_SCHEDULER``, a small stand-in that forwards to the newest open default
Client (a string would need dask.distributed to resolve it; the stand-in also survives being copied or
pickled with dask's config). Closing a Client takes it off the stack; when the last one goes, the
setting is put back to what it was before the first, unless the user chose another scheduler meanwhile.
minidist never imports dask for this: if the program has not imported it when the Client is created,
the setting is made right after it does (``after_import.when_imported``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .after_import import when_imported
from .dask import flatten_keys, nest_like, require_dask, submit_graph

# ------------------------------------------------------------------------------- default scheduler

_lock = threading.Lock()
_defaults: list = []  # clients that are dask's default scheduler, newest last
_pending: list = []  # default clients waiting for the program to import dask
_saved_setting = (
    None  # dask.config.set(...) made by the first of them: exiting it restores the old value
)


class DefaultClientScheduler:
    """What dask's ``scheduler`` setting holds while a minidist Client is the default.

    dask calls it as a scheduler function (``compute``) and asks it for ``persist``; both go to the
    newest open default Client.
    """

    def client(self):
        with _lock:
            for client in reversed(_defaults):
                if not client._closed:
                    break
            else:
                raise RuntimeError(
                    "dask's scheduler is set to minidist's default Client, but no Client is open; "
                    "create one (minidist.Client()) or pick another scheduler"
                )
        if client.asynchronous:
            raise RuntimeError(
                "The default minidist Client is asynchronous: use `await client.compute(x)` or "
                "`client.persist(x)` instead of dask.compute/x.compute()"
            )
        return client

    def __call__(self, dsk, keys, **kwargs):
        return self.client().get(dsk, keys, **kwargs)

    def persist(self, collections, **kwargs):
        return self.client().persist(collections, **kwargs)

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return "DEFAULT_SCHEDULER"  # the module-level instance, wherever it is unpickled

    def __repr__(self) -> str:
        return "<minidist default Client scheduler>"


DEFAULT_SCHEDULER = DefaultClientScheduler()


def become_default(client) -> None:
    """Make ``client`` dask's default scheduler: now if dask is imported, else as soon as the program
    imports it (``after_import``: dask is never imported for this)."""
    with _lock:
        if client in _defaults:
            return
        _pending.append(client)
    when_imported("dask", _set_defaults)


def _set_defaults(dask_module) -> None:
    """Dask is imported: the clients waiting to be its default scheduler become it, oldest first."""
    global _saved_setting
    import dask.config

    with _lock:
        waiting = [client for client in _pending if not client._closed]
        _pending.clear()
        for client in waiting:
            if client in _defaults:
                continue
            if not _defaults or dask.config.get("scheduler", None) is not DEFAULT_SCHEDULER:
                _saved_setting = dask.config.set(scheduler=DEFAULT_SCHEDULER)
                _defaults.clear()  # clients stacked before the user chose another scheduler
            _defaults.append(client)


def stop_being_default(client) -> None:
    """``client`` closes: the previous default Client takes over, or dask's earlier setting returns."""
    global _saved_setting
    with _lock:
        if client in _pending:
            _pending.remove(client)  # dask was never imported while it was open
        if client not in _defaults:
            return
        _defaults.remove(client)
        if _defaults or _saved_setting is None:
            return
        import dask.config

        saved, _saved_setting = _saved_setting, None
        if dask.config.get("scheduler", None) is DEFAULT_SCHEDULER:
            saved.__exit__(None, None, None)  # put back the value before the first Client
        # else the user picked another scheduler since: theirs stays


# ------------------------------------------------------------------------------------ collections


def compute(client, collections, sync=False, optimize_graph=True, traverse=True, **options):
    """``Client.compute``: a Future per collection (results with ``sync=True``); other values pass
    through. Lists, sets, tuples and dicts are computed as one value (``traverse=True``)."""
    dask = require_dask()
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    single = not isinstance(collections, (list, tuple, set, frozenset))
    items = [collections] if single else list(collections)
    if traverse:
        items = [
            dask.delayed(item) if isinstance(item, (list, set, tuple, dict, Iterator)) else item
            for item in items
        ]
    variables = [item for item in items if dask.is_dask_collection(item)]
    futures: dict = {}
    names: list = []
    if variables:
        expr = FinalizeCompute(collections_to_expr(variables, optimize_graph)).optimize()
        names = flatten_keys(expr.__dask_keys__())
        futures = submit_graph(client, expr, names, options)
    by_collection = iter(names)
    results = [
        futures[next(by_collection)] if dask.is_dask_collection(item) else item for item in items
    ]
    del futures
    if sync:
        results = client.gather(results)
    return results[0] if single else results


def persist(client, collections, optimize_graph=True, **options):
    """``Client.persist``: each collection rebuilt on futures of its output keys; returns at once."""
    dask = require_dask()
    from dask._expr import CompositeExpr, _ExprSequence
    from dask.base import collections_to_expr

    single = not isinstance(collections, (list, tuple, set, frozenset))
    items = [collections] if single else list(collections)
    variables = [item for item in items if dask.is_dask_collection(item)]
    if not variables:
        return collections
    expr = collections_to_expr(variables, optimize_graph)
    # collections made of several child expressions are rebuilt from their optimized children;
    # every other collection from its own keys (as dask.persist does)
    children = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    composite = any(isinstance(child, CompositeExpr) for child in children)
    expr = expr.optimize()
    children = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    if not composite or len(children) != len(variables):
        children = [None] * len(variables)
    keys_per_collection = expr.__dask_keys__()
    if len(keys_per_collection) != len(variables):
        raise RuntimeError(
            f"dask gave keys for {len(keys_per_collection)} of {len(variables)} collections; "
            "cannot persist them"
        )
    futures = submit_graph(client, expr, flatten_keys(keys_per_collection), options)
    rebuilt = iter(
        [
            _rebuild(collection, child, keys, futures)
            for collection, child, keys in zip(variables, children, keys_per_collection)
        ]
    )
    results = [next(rebuilt) if dask.is_dask_collection(item) else item for item in items]
    return results[0] if single else type(collections)(results)


def _rebuild(collection, expr, keys, futures: dict):
    """``collection`` with its graph replaced by the futures of its keys."""
    if expr is not None:
        from dask.base import _rebuild_composite_collection

        return _rebuild_composite_collection(collection, expr, futures, cull_to_child_keys=True)
    rebuild, state = collection.__dask_postpersist__()
    return rebuild({key: futures[key] for key in flatten_keys(keys)}, *state)


def normalize_collection(client, collection):
    """``Client.normalize_collection``: ``collection`` with each task whose key this client already has
    a future for replaced by such a future, so computing it reuses those results; nothing is
    submitted. The collection itself when no key is known."""
    dask = require_dask()
    if not dask.is_dask_collection(collection):
        raise TypeError(
            f"normalize_collection needs a dask collection, not {type(collection).__name__}"
        )
    from ..futures import Future

    graph = dict(collection.__dask_graph__())
    futures = {key: Future(key, client) for key in graph if client._holds(key)}
    if not futures:
        return collection
    graph.update(futures)
    rebuild, state = collection.__dask_postpersist__()
    return rebuild(graph, *state)


def get(client, dsk, keys, sync=True, **options):
    """dask's scheduler interface: the values of ``keys`` (nested like them) of graph ``dsk``;
    futures instead with ``sync=False``."""
    for ignored in ("asynchronous", "direct", "fifo_timeout", "actors", "num_workers"):
        options.pop(ignored, None)
    options = {k: v for k, v in options.items() if k in _CALL_OPTIONS}
    futures = submit_graph(client, dsk, keys, options)
    shaped = nest_like(keys, futures) if isinstance(keys, list) else futures[keys]
    del futures
    return client.gather(shaped) if sync else shaped


_CALL_OPTIONS = ("priority", "retries", "workers", "resources", "allow_other_workers")


def gather_collection(client, collection):
    """``client.gather`` of a dask collection (e.g. what ``persist`` returned): its computed value."""
    return compute(client, collection, sync=True)
