"""How a client packs work for the scheduler: keys, dependencies, pickled functions and arguments.

One ``TaskPacker`` per ``Client`` (built by its constructor from the cluster's scheduler and data plane,
``data_plane.py``, and the client's ``FutureBook``)::

    submit/map(func, args) ──► function_ref(func): pickled once per client, id = hash of the pickle
                           ──► prepare(...): Futures in args ──► DependencyRef(key) + dependencies
                                             key = prefix-token (content hash for pure=True)
                                             the data plane packs the arguments (pickled
                                             now for process workers: errors surface here)
                           ──► a NewTask for the client to post (None if the key is already held)
    scatter(data)          ──► pack_scatter(...): keys and values, packed by the data plane
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .client_futures import FutureBook
from .futures import Future
from .keys import function_id_of, key_split, random_token
from .messages import DependencyRef, TaskColumns, UpdateGraph, new_task

if TYPE_CHECKING:
    from .data_plane import DataPlane

_FUNCTION_CACHE_SIZE = 512
_CANNOT_HOLD_FUTURES = frozenset((int, float, str, bytes, bool, type(None), complex))


def task_options(workers, resources, retries, priority, allow_other_workers) -> dict:
    """The scheduling options of ``submit``/``map`` as ``new_task`` takes them."""
    if isinstance(workers, (str, int)):
        workers = [workers]
    options = {
        "priority": priority,
        "retries": retries,
        "resources": resources,
        "allow_other_workers": allow_other_workers,
    }
    if workers is not None:
        options["workers"] = [str(w) if not isinstance(w, str) else w for w in workers]
    return options


def map_batch(batch_size) -> Optional[int]:
    """How many tasks ``map`` posts per message: all at once (None) unless ``batch_size`` says, as in
    dask. (Batches by default measured no faster for 5,000 tasks and left the client ~25 MiB bigger
    after a 100,000-task map; with ``batch_size``, workers start while a slow iterable is still read.)"""
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0
    ):
        raise ValueError(f"batch_size must be a positive whole number or None, not {batch_size!r}")
    return batch_size or None


class MapColumns:
    """The tasks of one ``map`` call, gathered as columns (``TaskColumns``) rather than as a
    ``NewTask`` each: 100,000 pending message objects would be walked by every full garbage collection
    until the scheduler has read them (and collections come more often the more objects survive).
    Tasks take ``options`` (``task_options``, with the prefix, or None for each key's own); with other
    than the defaults they travel whole, in ``special``."""

    def __init__(self, options: dict):
        self._prefix = options["prefix"]
        self._options = None if _defaults_only(options) else options
        self._clear()

    def _clear(self) -> None:
        self.keys: list = []
        self._dependencies: list = []
        self._run_specs: list = []
        self._prefixes: list = []
        self._special: dict = {}

    def add(self, key, dependencies, run_spec) -> None:
        self.keys.append(key)
        self._dependencies.append(tuple(dependencies) if dependencies else ())
        self._run_specs.append(run_spec)
        self._prefixes.append(self._prefix if self._prefix is not None else key_split(key))
        if self._options is not None:
            self._special[key] = new_task(key, dependencies, run_spec, **self._options)

    def take(self) -> TaskColumns:
        """The tasks added so far, as one ``TaskColumns``; starts afresh."""
        columns = TaskColumns(
            tuple(self.keys),
            tuple(self._dependencies),
            tuple(self._run_specs),
            tuple(self._prefixes),
            self._special,
        )
        self._clear()
        return columns


def _defaults_only(options: dict) -> bool:
    """True if ``task_options`` are the defaults ``TaskColumns`` gives every task."""
    return not (
        options["priority"]
        or options["retries"]
        or options["resources"]
        or options["allow_other_workers"]
        or options.get("workers")
    )


class TaskPacker:
    """Turns calls and data into what the scheduler takes (see the module docstring)."""

    def __init__(self, scheduler: Any, plane: DataPlane, book: FutureBook):
        self._scheduler = scheduler  # futures of another cluster's scheduler are refused
        self._plane = plane  # how this cluster packs functions, arguments and values
        self._book = book
        self._functions: dict = {}  # id(func) -> (func, function_id, blob)
        # the scheduler's direct lane to idle process workers (scheduler/lane.py), if it has one
        self._lane = getattr(scheduler, "lane", None)

    def function_ref(self, func) -> tuple:
        """(function_id, blob) for a callable, pickled once per client and cached."""
        cached = self._functions.get(id(func))
        if cached is not None and cached[0] is func:
            return cached[1], cached[2]
        blob = self._plane.function_blob(func)
        function_id = function_id_of(blob)
        if len(self._functions) >= _FUNCTION_CACHE_SIZE:
            self._functions.pop(next(iter(self._functions)))
        self._functions[id(func)] = (func, function_id, blob)
        return function_id, blob

    def prepare(self, func, function_ref, args, kwargs, key, pure, options) -> tuple:
        """(key, task to post, or None if this client already holds the key and shares it, the
        ``FutureState`` for the new Future, counted)."""
        key, dependencies, run_spec, state = self.pack(
            func, function_ref, args, kwargs, key, pure, options
        )
        if run_spec is None:
            return key, None, state
        return key, new_task(key, dependencies, run_spec, **options), state

    def pack(self, func, function_ref, args, kwargs, key, pure, options) -> tuple:
        """(key, dependencies, run_spec, state): run_spec None if this client already holds the key
        and shares it; ``state`` the ``FutureState`` for the new Future, counted. What ``prepare``
        makes a task of, or ``map`` puts in its columns."""
        plane = self._plane
        dependencies: set = set()
        for item in args:  # most calls: a few numbers or strings, which hold no futures to replace
            if type(item) not in _CANNOT_HOLD_FUTURES:
                args = self._replace_futures(args, dependencies)
                break
        if kwargs:
            kwargs = self._replace_futures(kwargs, dependencies)
        function_id, blob = function_ref
        arguments = None
        if key is None and pure and plane.tokens_while_packing:
            # one pass makes both the payload and its content token, so a large array is read once
            arguments, token = plane.pack_arguments(args, kwargs, None, function_id)
            key = f"{options['prefix']}-{token}"
        elif key is None:
            token = plane.tokenize(function_id, args, kwargs) if pure else random_token()
            key = f"{options['prefix']}-{token}"
        book = self._book
        if key in book.states or book.dropped:  # most keys of a map: neither, and no lock taken
            # looked up and counted at once: a key found held is not released before it is shared
            state = book.share_if_held(key)
            if state is not None:
                if arguments is not None:
                    plane.discard_arguments(arguments)  # the shared task already has its arguments
                return key, None, None, state  # already submitted by this client: share it
        if arguments is None:
            arguments, _ = plane.pack_arguments(args, kwargs, key)
        run_spec = plane.run_spec(function_id, blob, func, arguments)
        return key, dependencies, run_spec, book.share(key)

    def post_one(self, client_id: str, task, key_kind: str) -> None:
        """Post one submitted task; straight to an idle worker when the scheduler offers one, unless
        ``key_kind`` is "actor". A "random" key is new to everyone; a "given" one (pure, or the
        caller's) goes that way only if the scheduler holds nothing under it and no release of it by
        this client is still on its way (``DirectLane.send``): a key already there is shared, never
        run twice."""
        lane = self._lane
        if (
            key_kind == "actor"
            or lane is None
            or lane.ticket is None
            or (
                not lane.send(client_id, task)
                if key_kind == "random"
                else self._book.releasing(task.key) or not lane.send(client_id, task, True)
            )
        ):
            self._book.post(UpdateGraph(client_id, (task,), (task.key,)))

    def graph_tasks(self, function, keys: list, nodes: dict, options: dict) -> TaskColumns:
        """One task per key of ``keys``, in that order, for ``nodes[key]`` (dask graphs):
        ``function(node, {dependency: value})`` under that key (the data plane may call the node
        directly, ``node_run_spec``), its dependencies the node's own frozenset; ``options`` are per
        key, for keys that have any. As columns (``TaskColumns``): no message object per task."""
        function_id, blob = self.function_ref(function)
        node_run_spec = self._plane.node_run_spec
        dependencies = []
        run_specs = []
        special = {}
        for key in keys:
            node = nodes[key]
            spec = node_run_spec(function_id, blob, function, node, key)
            dependencies.append(node.dependencies)
            run_specs.append(spec)
            task_options = options.get(key)
            if task_options:
                special[key] = new_task(key, node.dependencies, spec, **task_options)
        prefixes = tuple(map(key_split, keys))
        return TaskColumns(tuple(keys), tuple(dependencies), tuple(run_specs), prefixes, special)

    def pack_scatter(self, data, hash: bool) -> tuple:
        """(keys in ``data``'s order, {key: value or payload}, {key: nbytes}) for ``scatter``."""
        if isinstance(data, dict):
            items = list(data.items())
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, value) for value in data]
        else:
            items = [(None, data)]
        values: dict = {}
        nbytes: dict = {}
        keys = []
        for key, value in items:
            if key is None and hash:
                # the token comes from the pass that packs the value: a large array is read once
                stored, size, token = self._plane.pack_value_with_token(value)
                key = f"{type(value).__name__}-{token}"
                keys.append(key)
                if key in values:
                    self._plane.discard_arguments(stored)  # the same value twice in ``data``
                else:
                    values[key], nbytes[key] = stored, size
                continue
            if key is None:
                key = f"{type(value).__name__}-{random_token()}"
            keys.append(key)
            if key in values:
                continue
            values[key], nbytes[key] = self._plane.pack_value(value)
        return keys, values, nbytes

    def _replace_futures(self, obj, dependencies: set):
        """Copy of ``obj`` with each Future swapped for a DependencyRef (and its key recorded)."""
        typ = type(obj)
        if typ is Future:
            if obj.client.scheduler is not self._scheduler:
                raise ValueError(
                    f"Future {obj.key!r} belongs to a different cluster; gather it first"
                )
            dependencies.add(obj.key)
            return DependencyRef(obj.key)
        if typ is tuple or typ is list:
            for item in obj:
                if type(item) not in _CANNOT_HOLD_FUTURES:
                    return typ(self._replace_futures(item, dependencies) for item in obj)
            return obj  # e.g. map's ``(i,)``: nothing to replace, no copy
        if typ is dict:
            if not obj:
                return obj
            return {k: self._replace_futures(v, dependencies) for k, v in obj.items()}
        if typ is set or typ is frozenset:
            return typ(self._replace_futures(item, dependencies) for item in obj)
        return obj
