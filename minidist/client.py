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
import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import Any, Optional

from .asynchronous import AsyncContext, Closing, in_event_loop, run_off_loop
from .client_admin import ClusterAdmin
from .client_async import await_future, gather_async, scatter_wait_async, wants_awaitable
from .client_bridge import ClientBridge, current_client
from .client_events import EventTopics
from .client_futures import FutureBook
from .client_ops import ClusterCalls
from .client_ops import forward as _forward
from .client_ops import forward_awaitable as _awaitable
from .client_plugins import PluginClient
from .client_results import ResultReader
from .client_shared import Datasets, SharedData
from .client_tasks import MapColumns, TaskPacker, map_batch, task_options
from .default_clients import _clients, current_client_for_task, default_client  # noqa: F401
from .errors import ClientClosedError
from .futures import Future, FutureState, as_completed, futures_in, futures_of, shaped_like  # noqa
from .keys import funcname
from .messages import Cancel, Release, Retry, Scatter, TaskColumns, UpdateGraph
from .utils import timeout_seconds
from .worker.task_client import register_client_maker


class Client(AsyncContext):
    """Connect to a cluster (or build a local one) and run work on it.

    Made of parts, each built here and owning its state: ``FutureBook`` (futures, references,
    releases, waiting), ``TaskPacker`` (keys, pickling), ``ResultReader`` (values), ``ClusterCalls``
    and ``ClusterAdmin`` (named operations). The methods below, the public API, call those parts.
    """

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
        timeout = timeout_seconds(timeout)  # dask's forms: seconds, "10s", a timedelta
        self.name = name
        self.asynchronous = asynchronous
        self._owns_cluster = False
        self._closed = False
        self.status = "connecting"
        self.cluster: Any  # a LocalCluster, a cluster object given, or a view of a remote one
        self.scheduler_file = scheduler_file  # the file it connected by, or wrote (dask's)
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
            from .deploy.launcher import template_started_early

            with template_started_early(kwargs):  # it boots while LocalCluster is made
                from .deploy.local import LocalCluster

                self.cluster = LocalCluster(**kwargs)
            self._owns_cluster = True
        elif hasattr(address, "scheduler") and hasattr(address, "scheduler_address"):
            if kwargs:
                raise TypeError(f"Client(cluster) takes no cluster keywords; got {sorted(kwargs)}")
            self.cluster = address
        elif isinstance(address, str) and address.startswith("inproc://"):
            from .deploy.local import inproc_cluster

            if kwargs:
                raise TypeError(f"Client(address) takes no cluster keywords; got {sorted(kwargs)}")
            self.cluster = inproc_cluster(address)  # a cluster of this process: shared, not owned
        elif isinstance(address, str):
            from .deploy.remote_cluster import connect_cluster

            self.cluster = connect_cluster(address, security=security, timeout=timeout, **kwargs)
            self._owns_cluster = True
        else:
            raise TypeError(
                f"Client() takes no address, a cluster object or an address string, "
                f"not {type(address).__name__}"
            )
        import uuid  # here: the cluster's imports (cloudpickle) loaded it, while the template booted

        self.id = f"Client-{uuid.uuid4()}"
        self.scheduler = self.cluster.scheduler  # post(), fetch(), sessions: local or remote proxy
        self.operations = self.cluster.operations  # named operations (scheduler/operations.py)
        self.data_plane = self.scheduler.data_plane  # how calls and values travel (data_plane.py)
        self.processes = self.data_plane.pickles  # whether work and values cross processes
        # a local scheduler's wake() lets a large release wake its thread (client_futures.py)
        self._book = FutureBook(self.id, self.scheduler.post, getattr(self.scheduler, "wake", None))
        self._packer = TaskPacker(self.scheduler, self.data_plane, self._book)
        self._results = ResultReader(self.scheduler, self.data_plane)
        self._calls = ClusterCalls(self.operations, self.data_plane)
        self._admin = ClusterAdmin(self._calls)
        self._shared = SharedData(self)  # published datasets (client_shared.py)
        self._bridge = ClientBridge(self)  # get_executor, sync, as_current... (client_bridge.py)
        self._events = EventTopics(self)  # log_event, topics, what tasks print (client_events.py)
        self._plugins = PluginClient(self._calls)  # plugins, upload_file (client_plugins.py)
        self._results.adopt_actor = lambda p: p._bound(Future(p._key, self))  # actors.py
        self.scheduler.sessions[self.id] = self  # it calls report() and take_releases()
        self._set_as_default = set_as_default
        if set_as_default:
            _clients.append(self)
            from .integrations.dask_collections import become_default

            become_default(self)  # dask's x.compute() runs here, now or once dask is imported
        Client._instances.add(self)
        from .integrations.autoregister import offer_joblib_backend

        offer_joblib_backend()  # joblib.parallel_config(backend="minidist") works from now on
        self.status = "running"
        if not self._events.inside_task():
            self._events.start()  # what tasks print and warn shows here (not in tasks' own clients)

    # ---------------------------------------------------------------------------------- submissions

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
        if actor or actors:  # the task makes the instance on its worker and returns a proxy
            from .actors import actor_constructor

            func, pure = actor_constructor(func), False
        options = task_options(workers, resources, retries, priority, allow_other_workers)
        options["prefix"] = funcname(func) if key is None else None
        key, task, state = self._packer.prepare(
            func, self._packer.function_ref(func), args, kwargs, key, pure, options
        )
        future = Future(key, self, state=state)
        if task is not None:  # it may go straight to an idle worker (client_tasks.post_one)
            kind = "actor" if actor or actors else "given" if pure or key is not None else "random"
            self._packer.post_one(self.id, task, kind)
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
        options = task_options(workers, resources, retries, priority, allow_other_workers)
        options["prefix"] = key if isinstance(key, str) else funcname(func)
        if isinstance(key, (list, tuple)):
            options["prefix"] = None  # explicit keys: each task's prefix comes from its own key
        keys = None
        if isinstance(key, (list, tuple)):
            keys = list(key)
        function_ref = self._packer.function_ref(func)
        futures = []
        tasks = MapColumns(options)  # posted as columns: no message object per task
        step = map_batch(batch_size)  # tasks per UpdateGraph: None, all of them (as dask)
        pack = self._packer.pack  # once per task: no lookups in the loop
        for i, args in enumerate(zip(*iterables)):
            task_key = keys[i] if keys is not None else None
            # with key=None or a prefix (options["prefix"]), pack() makes the key as submit does
            task_key, dependencies, run_spec, state = pack(
                func, function_ref, args, kwargs, task_key, pure, options
            )
            futures.append(Future(task_key, self, state=state))
            if run_spec is not None:  # None: a key this client holds already, shared
                tasks.add(task_key, dependencies, run_spec)
                if step is not None and len(tasks.keys) >= step:
                    self._post_map_tasks(tasks)
        if tasks.keys:
            self._post_map_tasks(tasks)
        return futures

    def _post_map_tasks(self, tasks: MapColumns) -> None:
        wanted = tuple(tasks.keys)
        self._book.post(UpdateGraph(self.id, tasks.take(), wanted))

    # ------------------------------------------------------------------------------------ results

    def gather(self, futures, errors: str = "raise", direct=None, asynchronous=None):
        """Wait for and return the results of ``futures`` (nested in lists, tuples, dicts, sets)."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        if wants_awaitable(self.asynchronous, asynchronous):
            return gather_async(self._book, self._results, futures, errors)
        # a list first: isinstance with an ABC caches each new type it sees, and a cache entry made
        # in the middle of a large run keeps one of its allocator arenas alive (sparse.py)
        if type(futures) is not list and isinstance(futures, Iterator):
            return (self.gather(f, errors=errors) for f in futures)
        if hasattr(futures, "__dask_graph__") and type(futures) is not Future:
            from .integrations.dask_collections import gather_collection

            return gather_collection(self, futures)  # e.g. what persist returned
        for future in futures_in(futures):
            if future._state.status == "pending":  # most are done by the time their turn comes
                future._wait(None)
        return self._results.fill(futures, errors, self._results.prefetch(futures))

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
        timeout = timeout_seconds(timeout)
        keys, values, nbytes = self._packer.pack_scatter(data, hash)
        futures = [self._new_future(key) for key in keys]
        self._book.post(Scatter(self.id, values, nbytes))
        if wants_awaitable(self.asynchronous, asynchronous):
            return scatter_wait_async(self._book, futures, timeout, data)
        for future in futures:
            future._wait(timeout)
        return shaped_like(data, futures)

    def cancel(
        self, futures, asynchronous=None, force: bool = False, reason=None, msg=None
    ) -> None:
        """Stop ``futures`` (and tasks that depend on them); their results are dropped. Like the other
        calls taking futures, also the futures of persisted dask collections among them."""
        futures = futures_of(futures)
        if futures:
            self.scheduler.post(Cancel(tuple(f.key for f in futures)))

        def settled() -> None:  # the scheduler reports every cancelled key back: statuses settle
            self._book.wait_until(
                lambda: all(f._state.status == "cancelled" or f._released for f in futures),
                time.monotonic() + 10,
            )

        if wants_awaitable(self.asynchronous, asynchronous):
            return run_off_loop(settled)
        settled()

    def retry(self, futures, asynchronous=None) -> None:
        """Run erred futures' tasks again (and the erred tasks they depend on), under the same keys."""
        futures = [f for f in futures_of(futures) if f.status == "error"]
        with self._book.lock:
            for future in futures:
                future._state.status = "pending"
                future._state.exception = future._state.traceback = None
        if futures:
            self.scheduler.post(Retry(tuple(f.key for f in futures)))
        if wants_awaitable(self.asynchronous, asynchronous):
            return run_off_loop(lambda: None)  # dask's is awaited too

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
            **task_options(workers, resources, retries, priority, allow_other_workers),
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
            **task_options(workers, resources, retries, priority, allow_other_workers),
        )

    def get(self, dsk, keys, sync: bool = True, **kwargs):
        """The dask scheduler interface: ``x.compute(scheduler=client)``; futures with ``sync=False``."""
        from .integrations.dask_collections import get

        self._check_open()
        return get(self, dsk, keys, sync=sync, **kwargs)

    def normalize_collection(self, collection):
        """``collection`` with the tasks whose keys this client has futures for replaced by those
        futures, so computing it reuses their results (nothing is submitted)."""
        from .integrations.dask_collections import normalize_collection

        self._check_open()
        return normalize_collection(self, collection)

    def _graph_tasks(self, function, keys: list, nodes: dict, options: dict) -> TaskColumns:
        """Tasks of graph nodes with explicit keys (dask graphs); see ``TaskPacker.graph_tasks``."""
        return self._packer.graph_tasks(function, keys, nodes, options)

    def _post_graph(self, tasks: TaskColumns, wanted: list) -> None:
        self._book.post(UpdateGraph(self.id, tasks, tuple(wanted)))

    def _holds(self, key) -> bool:
        """Whether a future of this client holds ``key`` (so the cluster keeps its value)."""
        return self._book.holds(key)

    @classmethod
    def current(cls, allow_global: bool = True):
        """The client of the innermost ``as_current()`` block; outside one, the default client if
        ``allow_global``. ValueError if there is none (dask's ``Client.current``)."""
        return current_client(allow_global)

    def futures_of(self, futures) -> list:
        """``futures_of(futures, client=self)``: a cancelled future among them raises CancelledError."""
        return futures_of(futures, client=self)

    # --------------------------------------------------------------------------- cluster operations
    # Done by the parts (client_ops.py, client_admin.py); each forwarder keeps the part's signature
    # and docstring, so help(client.run) shows the real thing. The ``_awaitable`` ones are those dask
    # makes awaitable on an asynchronous client: inside its loop they run off it and return awaitables.

    run = _awaitable("_calls", ClusterCalls.run)
    run_on_scheduler = _awaitable("_calls", ClusterCalls.run_on_scheduler)
    nthreads = ncores = _awaitable("_calls", ClusterCalls.nthreads)
    scheduler_info = _forward("_calls", ClusterCalls.scheduler_info)
    who_has = _awaitable("_calls", ClusterCalls.who_has)
    has_what = _awaitable("_calls", ClusterCalls.has_what)
    processing = _awaitable("_calls", ClusterCalls.processing)
    wait_for_workers = _awaitable("_calls", ClusterCalls.wait_for_workers)
    restart = _awaitable("_calls", ClusterCalls.restart)
    get_scheduler_logs = _awaitable("_calls", ClusterCalls.get_scheduler_logs)
    get_worker_logs = _awaitable("_calls", ClusterCalls.get_worker_logs)
    get_task_stream = _awaitable("_calls", ClusterCalls.get_task_stream)
    retire_workers = _awaitable("_admin", ClusterAdmin.retire_workers)
    restart_workers = _awaitable("_admin", ClusterAdmin.restart_workers)
    replicate = _awaitable("_admin", ClusterAdmin.replicate)
    rebalance = _awaitable("_admin", ClusterAdmin.rebalance)
    nbytes = _awaitable("_admin", ClusterAdmin.nbytes)
    call_stack = _awaitable("_admin", ClusterAdmin.call_stack)
    get_versions = _awaitable("_admin", ClusterAdmin.get_versions)
    set_metadata = _awaitable("_admin", ClusterAdmin.set_metadata)
    get_metadata = _awaitable("_admin", ClusterAdmin.get_metadata)
    publish_dataset = _awaitable("_shared", SharedData.publish_dataset)
    unpublish_dataset = _awaitable("_shared", SharedData.unpublish_dataset)
    list_datasets = _awaitable("_shared", SharedData.list_datasets)
    get_dataset = _awaitable("_shared", SharedData.get_dataset)
    log_event = _awaitable("_events", EventTopics.log_event)
    get_events = _awaitable("_events", EventTopics.get_events)
    subscribe_topic = _forward("_events", EventTopics.subscribe_topic)
    unsubscribe_topic = _forward("_events", EventTopics.unsubscribe_topic)
    forward_logging = _awaitable("_events", EventTopics.forward_logging)
    unforward_logging = _awaitable("_events", EventTopics.unforward_logging)
    get_executor = _forward("_bridge", ClientBridge.get_executor)
    sync = _forward("_bridge", ClientBridge.sync)
    as_current = _forward("_bridge", ClientBridge.as_current)
    write_scheduler_file = _forward("_bridge", ClientBridge.write_scheduler_file)

    @property
    def datasets(self) -> Datasets:
        """The published datasets as a mapping: ``client.datasets["x"]``, ``in``, ``del``..."""
        return Datasets(self._shared)

    register_plugin = _awaitable("_plugins", PluginClient.register_plugin)
    unregister_worker_plugin = _awaitable("_plugins", PluginClient.unregister_worker_plugin)
    unregister_scheduler_plugin = _awaitable("_plugins", PluginClient.unregister_scheduler_plugin)
    register_worker_callbacks = _awaitable("_plugins", PluginClient.register_worker_callbacks)
    upload_file = _awaitable("_plugins", PluginClient.upload_file)

    # ------------------------------------------------------------- what Future and the scheduler call

    def report(self, items: list, wakes: Optional[list] = None) -> None:
        """The scheduler thread (or a remote link's reader) resolves futures: (key, status, exc, tb);
        ``wakes``: see ``FutureBook.report``."""
        self._book.report(items, wakes)

    def take_releases(self) -> list:
        """The scheduler collects the oldest batch of released keys (one ``ReleasePending`` each)."""
        return self._book.take_releases()

    def pending_keys(self) -> list:
        """Keys of this client's futures still waiting (a lost connection errs them)."""
        return self._book.pending_keys()

    def _new_future(self, key) -> Future:
        """A Future for a key this call is about to submit (no separate 'wants' message needed;
        ``FutureBook.share`` counts earlier drops off: a key dropped and submitted again runs again)."""
        return Future(key, self, state=self._book.share(key))

    def _acquire(self, key) -> FutureState:
        return self._book.acquire(key)

    def _wait_for(self, state: FutureState, timeout: Optional[float]) -> bool:
        return self._book.wait_for(state, timeout)

    def _wait_until(self, predicate, deadline: Optional[float]) -> bool:
        return self._book.wait_until(predicate, deadline)

    def _add_callback(self, future: Future, fn) -> None:
        self._book.add_callback(future, fn)

    def _fire_and_forget(self, key) -> None:
        self._book.fire_and_forget(key)

    def _get_value(self, key) -> Any:
        return self._results.value(key)

    def _await_future(self, future: Future, timeout=None, outcome=None):
        return await_future(self._book, self._results, future, timeout, outcome)

    # ------------------------------------------------------------------------------ lifecycle

    def close(self, timeout=None) -> Optional[Closing]:
        """Release every future, stop owning the default slot, and close an owned cluster (inside a
        running event loop with ``asynchronous=True``: an awaitable that does it)."""
        if self.asynchronous and in_event_loop():
            return Closing(lambda: self.close(timeout))  # awaitable: closes in a worker thread
        if self._closed:
            return None
        self._closed = True
        self.status = "closed"
        self._events.stop()  # the event listener thread leaves
        keys = self._book.close()  # wakes every waiter; stops the callback thread
        try:
            if keys:
                self.scheduler.post(Release(self.id, tuple(keys)))
            self.scheduler.sessions.pop(self.id, None)
        except Exception:
            pass
        if self in _clients:
            _clients.remove(self)
        if self._set_as_default:
            from .integrations.dask_collections import stop_being_default

            stop_being_default(self)
        if self._owns_cluster:
            self.cluster.close()
        return None

    def shutdown(self) -> Optional[Closing]:
        """Close the cluster this client is connected to, even one it did not make, then the client
        (dask's ``shutdown``): the cluster's other clients lose it too. For ``Client("tcp://...")``
        the serving process closes its cluster (``minidist serve`` then exits)."""
        if self.asynchronous and in_event_loop():
            return Closing(self.shutdown)  # awaitable: shuts down in a worker thread
        if not self._closed:
            self.cluster._terminate()
        return self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit, half of it may be gone
            if not self._closed and self._owns_cluster:
                self.close()

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


def _make_task_client(source) -> Client:
    """How a worker's tasks get their client (worker/task_client.py): one more client of the cluster.
    ``source`` is what the worker's shell hands over: its LocalCluster (thread workers), or a
    RemoteConnection over the worker's pipe (process workers), made a RemoteCluster here."""
    from .deploy.cluster import Cluster
    from .deploy.remote_cluster import RemoteCluster

    cluster = source if isinstance(source, Cluster) else RemoteCluster(source)
    return Client(cluster, set_as_default=False)


register_client_maker(_make_task_client)


@atexit.register
def _close_all_clients() -> None:
    for client in list(Client._instances):
        try:
            client.close()
        except Exception:
            pass
