"""Client: the user's entry point (dask.distributed's ``Client`` API).

``Client()`` builds and owns a ``LocalCluster``; ``Client(cluster)`` uses one. Data flow::

    submit/map ──► key + run_spec (function pickled once, arguments pickled now so errors surface here)
               ──► scheduler.post(UpdateGraph(...)) ──► scheduler thread
    scheduler thread ──► Client._report(batch) ──► FutureState.status, condition.notify_all()
    Future.result() ──► waits on the condition ──► value read straight from scheduler.data

Each client keeps a reference count per key (one per live ``Future``); when it drops to zero the
scheduler is told, so results are freed as soon as nobody can ask for them.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Optional

from .asynchronous import Closing, in_event_loop
from .client_admin import ClusterAdmin
from .client_async import AsyncClientMixin
from .client_futures import FutureBook
from .client_ops import ClientOperations
from .comm.serialize import (
    SerializationError,
    deserialize,
    dumps_function,
    serialize,
    serialize_with_token,
)
from .comm.shm import unlink_segments
from .default_clients import _clients, current_client_for_task, default_client  # noqa: F401
from .errors import ClientClosedError, TaskSerializationError
from .futures import (  # noqa: F401
    Future,
    FutureState,
    as_completed,
    futures_in,
    futures_of,
    shaped_like,
)
from .keys import funcname, random_token, tokenize_call
from .messages import (
    Cancel,
    DependencyRef,
    Release,
    Retry,
    RunSpec,
    Scatter,
    UpdateGraph,
    new_task,
)
from .worker.runtime import sizeof
from .worker.task_client import register_client_maker

_FUNCTION_CACHE_SIZE = 512


def _replace_futures(obj, client, dependencies: set):
    """Copy of ``obj`` with each Future swapped for a DependencyRef (and its key recorded)."""
    typ = type(obj)
    if typ is Future:
        if obj.client is not client and obj.client.scheduler is not client.scheduler:
            raise ValueError(f"Future {obj.key!r} belongs to a different cluster; gather it first")
        dependencies.add(obj.key)
        return DependencyRef(obj.key)
    if typ is tuple or typ is list:
        if not obj:
            return obj
        return typ(_replace_futures(item, client, dependencies) for item in obj)
    if typ is dict:
        if not obj:
            return obj
        return {k: _replace_futures(v, client, dependencies) for k, v in obj.items()}
    if typ is set or typ is frozenset:
        return typ(_replace_futures(item, client, dependencies) for item in obj)
    return obj


class Client(FutureBook, ClientOperations, ClusterAdmin, AsyncClientMixin):
    """Connect to a cluster (or build a local one) and run work on it."""

    _instances: weakref.WeakSet[Client] = weakref.WeakSet()

    def __init__(
        self,
        address=None,
        loop=None,
        timeout=None,
        set_as_default: bool = True,
        scheduler_file=None,
        security=None,
        asynchronous: bool = False,
        name=None,
        heartbeat_interval=None,
        serializers=None,
        deserializers=None,
        extensions=None,
        direct_to_workers=None,
        connection_limit=None,
        **kwargs,
    ):
        from .deploy.local import LocalCluster

        self.id = f"Client-{uuid.uuid4()}"
        self.name = name
        self.asynchronous = asynchronous
        self._owns_cluster = False
        self._closed = False
        self.status = "connecting"
        if scheduler_file is not None:
            if address is not None:
                raise ValueError("Give Client an address or a scheduler_file, not both")
            from .deploy.scheduler_file import connect_scheduler_file

            # the cluster a scheduler file names (minidist serve); a clear error if it has stopped
            self.cluster = connect_scheduler_file(
                scheduler_file, security=security, timeout=timeout, **kwargs
            )
            self._owns_cluster = True
        elif address is None:
            self.cluster = LocalCluster(**kwargs)
            self._owns_cluster = True
        elif hasattr(address, "scheduler") and hasattr(address, "scheduler_address"):
            if kwargs:
                raise TypeError(f"Client(cluster) takes no cluster keywords; got {sorted(kwargs)}")
            self.cluster = address
        elif isinstance(address, str):
            from .remote import connect_cluster

            self.cluster = connect_cluster(address, security=security, timeout=timeout, **kwargs)
            self._owns_cluster = True
        else:
            raise TypeError(
                f"Client() takes no address, a cluster object or an address string, "
                f"not {type(address).__name__}"
            )
        self.scheduler = (
            self.cluster.scheduler
        )  # post(), fetch(), sessions: local or a remote proxy
        self.operations = self.cluster.operations  # named operations (scheduler/operations.py)
        self.processes = self.scheduler.processes
        self._states: dict = {}  # key -> FutureState
        self._refcounts: dict = {}  # key -> number of live Future objects in this client
        # keys whose last Future went, not yet told to the scheduler: batches, oldest first, one
        # "release-pending" message each; a submission closes the open batch (see _cut_releases)
        self._releases: collections.deque = collections.deque()
        self._open_releases: Optional[list] = None
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._functions: dict = {}  # id(func) -> (func, function_id, blob)
        self._callbacks = None  # lazily started callback thread
        self._store = getattr(self.cluster, "segment_store", None)
        self.scheduler.sessions[self.id] = self
        self._set_as_default = set_as_default
        if set_as_default:
            _clients.append(self)
            from .integrations.dask_collections import become_default

            become_default(self)  # dask's x.compute() now runs here
        Client._instances.add(self)
        from .integrations.autoregister import offer_joblib_backend

        offer_joblib_backend()  # joblib.parallel_config(backend="minidist") works from now on
        self.status = "running"

    # ---------------------------------------------------------------------------------- submissions

    def _function_ref(self, func) -> tuple:
        """(function_id, blob) for a callable, pickled once per client and cached."""
        cached = self._functions.get(id(func))
        if cached is not None and cached[0] is func:
            return cached[1], cached[2]
        try:
            blob = dumps_function(func)
        except Exception as exc:
            if self.processes:
                raise TaskSerializationError(
                    f"Could not pickle the function {func!r} of type {type(func).__name__} to send it to "
                    f"worker processes: {exc}. Define it at module level or use Client(processes=False)."
                ) from exc
            blob = None
        function_id = hashlib.blake2b(blob, digest_size=16).digest() if blob else uuid.uuid4().bytes
        if len(self._functions) >= _FUNCTION_CACHE_SIZE:
            self._functions.pop(next(iter(self._functions)))
        self._functions[id(func)] = (func, function_id, blob)
        return function_id, blob

    def _prepare_task(self, func, function_ref, args, kwargs, key, pure, options) -> tuple:
        dependencies: set = set()
        if args:
            args = _replace_futures(args, self, dependencies)
        if kwargs:
            kwargs = _replace_futures(kwargs, self, dependencies)
        function_id, blob = function_ref
        args_payload = None
        if key is None and pure and self.processes and self._store is not None:
            # one pass makes both the payload and its content token, so a large array is read once
            args_payload, token = self._serialize_arguments(args, kwargs, None, function_id)
            key = f"{options['prefix']}-{token}"
        elif key is None:
            token = tokenize_call(function_id, args, kwargs) if pure else random_token()
            key = f"{options['prefix']}-{token}"
        if key in self._states and key not in options.get("_force", ()):
            if args_payload is not None:
                unlink_segments(
                    args_payload.segments()
                )  # the shared task already has its arguments
            return key, None  # already submitted by this client: share it
        if self.processes:
            if args_payload is None:
                args_payload, _ = self._serialize_arguments(args, kwargs, key, None)
            run_spec = RunSpec(function_id, blob, args_payload)
        else:
            run_spec = RunSpec(function_id, func, (args, kwargs))
        return key, new_task(key, dependencies, run_spec, **options)

    def _serialize_arguments(self, args, kwargs, key, token_salt) -> tuple:
        """(payload, token or None) for a task's arguments; a clear error if they cannot be pickled."""
        try:
            if token_salt is not None:
                return serialize_with_token((args, kwargs), self._store, token_salt)
            return serialize((args, kwargs), self._store), None
        except SerializationError as exc:
            where = f"task {key!r}" if key is not None else "a task"
            raise TaskSerializationError(
                f"Could not send an argument of {where} to the workers: {exc}"
            ) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("This Client is closed; create a new Client to submit work")

    def submit(
        self,
        func,
        *args,
        key=None,
        workers=None,
        resources=None,
        retries=None,
        priority=0,
        fifo_timeout="100 ms",
        allow_other_workers=False,
        actor=False,
        actors=False,
        pure=True,
        **kwargs,
    ):
        """Run ``func(*args, **kwargs)`` on a worker; return a Future. Futures in the arguments are
        replaced by their results, and the task waits for them."""
        self._check_open()
        if not callable(func):
            raise TypeError("First input to submit must be a callable function")
        if actor or actors:
            raise NotImplementedError(
                "minidist does not support actors; use dask.distributed for them"
            )
        options = _task_options(workers, resources, retries, priority, allow_other_workers)
        options["prefix"] = funcname(func) if key is None else None
        key, task = self._prepare_task(
            func, self._function_ref(func), args, kwargs, key, pure, options
        )
        future = self._new_future(key)
        if task is not None:
            self.scheduler.post(UpdateGraph(self.id, (task,), (key,)))
        return future

    def map(
        self,
        func,
        *iterables,
        key=None,
        workers=None,
        retries=None,
        resources=None,
        priority=0,
        allow_other_workers=False,
        fifo_timeout="100 ms",
        actor=False,
        actors=False,
        pure=True,
        batch_size=None,
        **kwargs,
    ):
        """Apply ``func`` to each element of ``iterables``; one Future per element, in order."""
        self._check_open()
        if not callable(func):
            raise TypeError("First input to map must be a callable function")
        if not iterables:
            return []
        options = _task_options(workers, resources, retries, priority, allow_other_workers)
        options["prefix"] = key if isinstance(key, str) else funcname(func)
        if isinstance(key, (list, tuple)):
            options["prefix"] = None  # explicit keys: each task's prefix comes from its own key
        keys = None
        if isinstance(key, (list, tuple)):
            keys = list(key)
        prefix = key if isinstance(key, str) else None
        function_ref = self._function_ref(func)
        futures = []
        tasks = []
        for i, args in enumerate(zip(*iterables)):
            task_key = keys[i] if keys is not None else None
            if task_key is None and prefix is not None:
                token = tokenize_call(function_ref[0], args, kwargs) if pure else random_token()
                task_key = f"{prefix}-{token}"
            task_key, task = self._prepare_task(
                func, function_ref, args, kwargs, task_key, pure, options
            )
            futures.append(self._new_future(task_key))
            if task is not None:
                tasks.append(task)
        if tasks:
            self.scheduler.post(UpdateGraph(self.id, tuple(tasks), tuple(t.key for t in tasks)))
        return futures

    # ------------------------------------------------------------------------------------ results

    def _get_value(self, key, fetching=None):
        """The value of ``key``; ``fetching`` is a concurrent Future already asked for it (remote)."""
        try:
            value = self.scheduler.fetch(key) if fetching is None else fetching.result()
        except KeyError:
            from .errors import CancelledError

            raise CancelledError(f"The value of {key!r} is no longer held by the cluster") from None
        return deserialize(value) if self.processes else value

    def gather(self, futures, errors: str = "raise", direct=None, asynchronous=None):
        """Wait for and return the results of ``futures`` (nested in lists, tuples, dicts, sets)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        if self._async_call(asynchronous):
            return self._gather_async(futures, errors)
        if isinstance(futures, Iterator):
            return (self.gather(f, errors=errors) for f in futures)
        if hasattr(futures, "__dask_graph__") and type(futures) is not Future:
            from .integrations.dask_collections import gather_collection

            return gather_collection(self, futures)  # e.g. what persist returned
        for future in futures_in(futures):
            future._wait(None)
        return self._fill_results(futures, errors, self._prefetch(futures))

    def _prefetch(self, futures) -> Optional[dict]:
        """Remote clusters: ask for every finished value at once, one round trip rather than one each."""
        fetch_async = getattr(self.scheduler, "fetch_async", None)
        if fetch_async is None:
            return None
        return {f.key: fetch_async(f.key) for f in futures_in(futures) if f.status == "finished"}

    _SKIP = object()

    def _fill_results(self, obj, errors, prefetched=None):
        typ = type(obj)
        if typ is Future:
            if obj.status == "error" and errors == "skip":
                return Client._SKIP
            if prefetched and obj.status == "finished" and obj.key in prefetched:
                return self._get_value(obj.key, prefetched[obj.key])
            return obj.result()
        if typ in (list, tuple, set, frozenset):
            values = (self._fill_results(item, errors, prefetched) for item in obj)
            return typ(v for v in values if v is not Client._SKIP)
        if typ is dict:
            out = {}
            for k, v in obj.items():
                value = self._fill_results(v, errors, prefetched)
                if value is not Client._SKIP:
                    out[k] = value
            return out
        return obj

    def scatter(
        self,
        data,
        workers=None,
        broadcast: bool = False,
        direct=None,
        hash: bool = True,
        timeout=None,
        asynchronous=None,
    ):
        """Put local data into the cluster; returns Futures shaped like ``data`` (one, list or dict)."""
        self._check_open()
        if isinstance(data, dict):
            items = list(data.items())
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, value) for value in data]
        else:
            items = [(None, data)]
        values, nbytes, keys = {}, {}, []
        for key, value in items:
            if key is None:
                token = tokenize_call(b"scatter", (value,), {}) if hash else random_token()
                key = f"{type(value).__name__}-{token}"
            keys.append(key)
            if key in values:
                continue
            if self.processes:
                try:
                    payload = serialize(value, self._store)
                except SerializationError as exc:
                    raise TaskSerializationError(
                        f"Could not scatter {type(value).__name__}: {exc}"
                    ) from exc
                values[key], nbytes[key] = payload, payload.nbytes
            else:
                values[key], nbytes[key] = value, sizeof(value)
        futures = [self._new_future(key) for key in keys]
        self.scheduler.post(Scatter(self.id, values, nbytes))
        if self._async_call(asynchronous):
            return self._scatter_wait_async(futures, timeout, data)
        for future in futures:
            future._wait(timeout)
        return shaped_like(data, futures)

    def cancel(
        self, futures, asynchronous=None, force: bool = False, reason=None, msg=None
    ) -> None:
        """Stop ``futures`` (and tasks that depend on them); their results are dropped."""
        futures = futures_in(futures)
        if futures:
            self.scheduler.post(Cancel(tuple(f.key for f in futures)))
            # the scheduler reports every cancelled key back; wait for that so status is settled
            self._wait_until(
                lambda: all(f._state.status == "cancelled" or f._released for f in futures),
                time.monotonic() + 10,
            )

    def retry(self, futures, asynchronous=None) -> None:
        """Run erred futures' tasks again (and the erred tasks they depend on), under the same keys."""
        futures = [f for f in futures_in(futures) if f.status == "error"]
        with self._lock:
            for future in futures:
                future._state.status = "pending"
                future._state.exception = future._state.traceback = None
        if futures:
            self.scheduler.post(Retry(tuple(f.key for f in futures)))

    # ------------------------------------------------------------------------------ dask graphs

    def compute(
        self,
        collections,
        sync: bool = False,
        optimize_graph: bool = True,
        workers=None,
        allow_other_workers: bool = False,
        resources=None,
        retries=None,
        priority: int = 0,
        fifo_timeout="60s",
        actors=None,
        traverse: bool = True,
        **kwargs,
    ):
        """Run dask collections on this cluster: a Future per collection (results with ``sync=True``)."""
        from .integrations.dask_collections import compute

        self._check_open()
        return compute(
            self,
            collections,
            sync=sync,
            optimize_graph=optimize_graph,
            traverse=traverse,
            **_task_options(workers, resources, retries, priority, allow_other_workers),
        )

    def persist(
        self,
        collections,
        optimize_graph: bool = True,
        workers=None,
        allow_other_workers: bool = False,
        resources=None,
        retries=None,
        priority: int = 0,
        fifo_timeout="60s",
        actors=None,
        **kwargs,
    ):
        """Start computing dask collections; return them rebuilt on futures (at once, not waiting)."""
        from .integrations.dask_collections import persist

        self._check_open()
        return persist(
            self,
            collections,
            optimize_graph=optimize_graph,
            **_task_options(workers, resources, retries, priority, allow_other_workers),
        )

    def get(self, dsk, keys, sync: bool = True, **kwargs):
        """The dask scheduler interface: ``x.compute(scheduler=client)``; futures with ``sync=False``."""
        from .integrations.dask_collections import get

        self._check_open()
        return get(self, dsk, keys, sync=sync, **kwargs)

    def _graph_task(self, function, key, args: tuple, dependencies, **options):
        """A task with an explicit key whose arguments already hold DependencyRefs (dask graphs)."""
        function_id, blob = self._function_ref(function)
        if self.processes:
            run_spec = RunSpec(function_id, blob, self._serialize_arguments(args, {}, key, None)[0])
        else:
            run_spec = RunSpec(function_id, function, (args, {}))
        return new_task(key, dependencies, run_spec, **options)

    def _post_graph(self, tasks: list, wanted: list) -> None:
        self.scheduler.post(UpdateGraph(self.id, tuple(tasks), tuple(wanted)))

    def _holds(self, key) -> bool:
        """Whether a future of this client holds ``key`` (so the cluster keeps its value)."""
        return key in self._states

    def futures_of(self, obj) -> list:
        """Every Future in ``obj``, including the graphs of dask collections (see ``futures_of``)."""
        return futures_of(obj)

    # ------------------------------------------------------------------------------ lifecycle

    def close(self, timeout=None) -> None:
        """Release every future, stop owning the default slot, and close an owned cluster."""
        if self.asynchronous and in_event_loop():
            return Closing(lambda: self.close(timeout))  # awaitable: closes in a worker thread
        if self._closed:
            return
        self._closed = True
        self.status = "closed"
        with self._condition:
            self._condition.notify_all()
        self._wake_async_waiters()
        keys = list(self._states)
        self._states.clear()
        self._refcounts.clear()
        try:
            if keys:
                self.scheduler.post(Release(self.id, tuple(keys)))
            self.scheduler.sessions.pop(self.id, None)
        except Exception:
            pass
        if self._callbacks is not None:
            self._callbacks.put(None)
        if self in _clients:
            _clients.remove(self)
        if self._set_as_default:
            from .integrations.dask_collections import stop_being_default

            stop_being_default(self)
        if self._owns_cluster:
            self.cluster.close()

    shutdown = close

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        try:
            if not self._closed and self._owns_cluster:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        if self._closed:
            return f"<Client: {self.id} closed>"
        info = self.cluster._summary()
        return (
            f"<Client: '{self.cluster.scheduler_address}' processes={info['workers']} "
            f"threads={info['threads']}, memory={info['memory_text']}>"
        )

    def _repr_html_(self) -> str:
        if self._closed:
            return f"<b>Client</b>: {self.id} (closed)"
        return self.cluster._repr_html_().replace(type(self.cluster).__name__, "Client", 1)

    @property
    def dashboard_link(self):
        return self.cluster.dashboard_link

    @staticmethod
    def unpickle_future(key) -> Future:
        """A future unpickled here (e.g. inside a task's arguments) belongs to the current client:
        the task's own client on a worker, else the default one. See ``Future.__reduce__``."""
        return Future(key, current_client_for_task() or default_client())


def _task_options(workers, resources, retries, priority, allow_other_workers) -> dict:
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


def _make_task_client(cluster) -> Client:
    """How a worker's tasks get their client (worker/task_client.py): one more client of the cluster."""
    return Client(cluster, set_as_default=False)


register_client_maker(_make_task_client)


@atexit.register
def _close_all_clients() -> None:
    for client in list(Client._instances):
        try:
            client.close()
        except Exception:
            pass
