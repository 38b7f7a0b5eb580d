"""The scheduler's records: one ``TaskState`` per key and one ``WorkerState`` per worker.

Plain slotted objects that ``SchedulerState`` (``scheduler/state.py``) and its placement rules
(``scheduler/placement.py``) change, and that read-only views (``scheduler/queries.py``) look at. Nothing
here changes itself: every change is an event of ``SchedulerState``.
"""

from __future__ import annotations

import array
import math
from typing import AbstractSet as Set
from typing import Any, Hashable, Optional, overload

Key = Hashable


class _NoKeys(frozenset):
    """The empty key set that tasks share until they need one of their own: an empty ``set`` costs
    216 bytes, and most tasks of a large map never get dependencies, dependents or waiters (most tasks
    of a graph are wanted by no client). It reads as an empty set, ``discard`` and ``clear`` do
    nothing, and it has no ``add``: ``TaskState.add_*`` give the task a set of its own first (a missed
    one fails loudly instead of sharing keys)."""

    __slots__ = ()

    def discard(self, key) -> None:
        pass

    def clear(self) -> None:
        pass


NO_KEYS: Any = _NoKeys()

# who_wants and who_has of most tasks hold one name (the client that submitted it; the worker that
# made it): they share one frozenset per name instead of a set each (216 bytes, and one more object
# for every full garbage collection to walk while a large run is in flight). Being frozen, a shared
# set cannot be changed through one task by mistake: TaskState's methods replace it instead.
_ONE_NAME_SETS: dict[str, frozenset] = {}


def _just(name: str) -> frozenset:
    shared = _ONE_NAME_SETS.get(name)
    if shared is None:
        if len(_ONE_NAME_SETS) >= 1024:  # clients and workers come and go in a long process
            _ONE_NAME_SETS.clear()
        shared = _ONE_NAME_SETS[name] = frozenset((name,))
    return shared


class TaskState:
    """One key: where it is in its life cycle (``state``), its links, and who wants or holds it."""

    __slots__ = (
        "key",
        "prefix",
        "state",
        "dependencies",
        "dependents",
        "waiting_on",
        "waiters",
        "who_wants",
        "priority",
        "run_spec",
        "retries",
        "restrictions",
        "loose",
        "resources",
        "processing_on",
        "who_has",
        "suspicious",
        "exception",
        "traceback",
        "nbytes",
        "last_worker_death",
        "attempt",
        "held_depth",
        "pins",
    )

    def __init__(self, key: Key, prefix: str):
        self.key = key
        self.prefix = prefix
        self.state = "released"
        # NO_KEYS until the first key (see _NoKeys); dependencies are fixed when the task is made
        self.dependencies: frozenset[Key] = NO_KEYS
        self.dependents: Set[Key] = (
            NO_KEYS  # a set, or a frozenset shared with siblings (add_dependent)
        )
        # dependencies not yet in memory: the task's own frozenset of dependencies while none has come
        # (wait_on_all), a set of its own once some have, NO_KEYS once all have
        self.waiting_on: Set[Key] = NO_KEYS
        self.waiters: Set[Key] = NO_KEYS  # dependents not yet finished that need this value
        # who_wants and who_has: NO_KEYS, a shared one-name frozenset (_just) or a set of their own;
        # changed only through the methods below. Most tasks of a graph: no client wants them
        self.who_wants: Set[str] = NO_KEYS
        self.priority: tuple = (0, 0)
        self.run_spec: Any = None
        self.retries = 0
        self.restrictions: Optional[frozenset] = None
        self.loose = False
        self.resources: Optional[dict] = None
        self.processing_on: Optional[str] = None
        self.who_has: Set[str] = NO_KEYS  # workers caching the value: none until it is computed
        self.suspicious = 0
        self.exception: Any = None
        self.traceback: Any = None
        self.nbytes = 0
        self.last_worker_death = ("", "")
        # how many times the task was handed to a worker: a report names the attempt it answers, so a
        # late report of an earlier attempt (the task was stolen away and back) is not taken for the
        # current one, whose result the worker's cache will hold
        self.attempt = 0
        # 0, or the result lives only in its worker's memory (held, scheduler/lineage.py): then the
        # length of the chain of held results it was computed from, which is bounded
        self.held_depth = 0
        self.pins = 0  # how many held results were computed from this one (lineage keeps it)

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"

    # ``waiters`` may be the very set ``dependents`` is: while the task's one dependent is also its one
    # waiter (every task of a tree, a chain or most reductions), the two share a set rather than keep
    # two equal ones for the whole run. Every change goes through the methods below, which give
    # ``waiters`` a set of its own before the two differ.

    def add_dependent(self, key: Key, alone: Optional[frozenset] = None) -> None:
        """``alone``: ``frozenset((key,))``, which the caller shares among the dependencies of ``key``
        that have no other dependent yet (so a task that is the only dependent of each of its
        dependencies costs them one set between them); replaced by a set on the next change."""
        dependents = self.dependents
        if dependents is NO_KEYS:
            self.dependents = alone if alone is not None else {key}
            return
        if self.waiters is dependents:
            self.waiters = set(dependents)
        if type(dependents) is not set:  # the shared ``alone`` of another task
            dependents = self.dependents = set(dependents)
        dependents.add(key)

    def discard_dependent(self, key: Key) -> None:
        dependents = self.dependents
        if key in dependents:
            if self.waiters is dependents:
                self.waiters = set(dependents)
            if type(dependents) is set:
                dependents.discard(key)
            else:
                rest = set(dependents)
                rest.discard(key)
                self.dependents = rest or NO_KEYS

    def add_waiting_on(self, key: Key) -> None:
        waiting = self.waiting_on
        if type(waiting) is not set:  # NO_KEYS, or the shared dependencies (wait_on_all)
            waiting = self.waiting_on = set(waiting)
        waiting.add(key)

    def wait_on_all(self) -> None:
        """No dependency is in memory yet: the task waits on its own frozenset of dependencies until the
        first comes, rather than on a set of its own (each task of a large graph would keep one for the
        whole run, one more object for every full garbage collection to walk)."""
        self.waiting_on = self.dependencies

    def dependency_arrived(self, key: Key) -> None:
        waiting = self.waiting_on
        if type(waiting) is set:
            waiting.discard(key)
        elif key in waiting:  # the shared dependencies: the rest get a set of their own
            if len(waiting) == 1:
                self.waiting_on = NO_KEYS
            else:
                rest = set(waiting)
                rest.discard(key)
                self.waiting_on = rest

    def add_wanter(self, client: str) -> None:
        self.who_wants = _with(self.who_wants, client)

    def discard_wanter(self, client: str) -> None:
        wanters = self.who_wants
        if client in wanters:
            # the common case inline: the one client that wanted it lets go (a released batch)
            self.who_wants = NO_KEYS if len(wanters) == 1 else _without(wanters, client)

    def add_waiter(self, key: Key) -> None:
        waiters = self.waiters
        if type(waiters) is set and waiters is not self.dependents:
            waiters.add(key)
            return
        if key in waiters:
            return  # shared with dependents, which hold it
        if waiters is NO_KEYS and len(self.dependents) == 1 and key in self.dependents:
            self.waiters = self.dependents  # shared (see above)
            return
        own = set(waiters)
        own.add(key)
        self.waiters = own

    def discard_waiter(self, key: Key) -> None:
        waiters = self.waiters
        if key not in waiters:
            return
        if type(waiters) is set and waiters is not self.dependents:
            waiters.discard(key)
        else:  # shared with dependents (then both are just {key})
            rest = set(waiters)
            rest.discard(key)
            self.waiters = rest or NO_KEYS

    def add_holder(self, worker: str) -> None:
        holders = self.who_has
        self.who_has = _just(worker) if not holders else _with(holders, worker)

    def discard_holder(self, worker: str) -> None:
        holders = self.who_has
        if worker in holders:
            self.who_has = NO_KEYS if len(holders) == 1 else _without(holders, worker)


def add_wanter(tasks: dict, keys, client: str) -> None:
    """``client`` wants each of ``keys`` that ``tasks`` holds (``TaskState.add_wanter`` for many: a
    map's tasks, wanted by nobody yet, take one shared set without a call each)."""
    one = _just(client)
    for key in keys:
        ts = tasks.get(key)
        if ts is not None:
            wanters = ts.who_wants
            if not wanters:
                ts.who_wants = one
            elif client not in wanters:
                ts.who_wants = _with(wanters, client)


def _with(names: Set[str], name: str) -> Set[str]:
    """``names`` (see who_wants) with ``name`` added: a shared set is replaced, never changed."""
    if name in names:
        return names
    if not names:
        return _just(name)
    if type(names) is set:
        names.add(name)
        return names
    return {*names, name}


def _without(names: Set[str], name: str) -> Set[str]:
    """``names`` without ``name``, which it holds with others."""
    if type(names) is set:
        names.discard(name)
        return names
    return frozenset(names - {name})


class RunningMeans:
    """Task prefix -> running mean duration (s), read as a mapping of floats.

    Each mean lives in a one-slot array updated in place rather than as a float object replaced on
    every task: the float of a large run's last task would outlive the run in one of its allocator
    arenas and keep that whole arena (1 MiB) alive (``task_stream.py`` says more)."""

    __slots__ = ("_means",)

    def __init__(self) -> None:
        self._means: dict[str, array.array] = {}

    def record(self, prefix: str, duration: float) -> None:
        mean = self._means.get(prefix)
        if mean is None:
            self._means[prefix] = array.array("d", (duration,))
        else:
            mean[0] = 0.8 * mean[0] + 0.2 * duration

    @overload
    def get(self, prefix: str) -> Optional[float]: ...

    @overload
    def get(self, prefix: str, default: float) -> float: ...

    def get(self, prefix: str, default: Optional[float] = None) -> Optional[float]:
        mean = self._means.get(prefix)
        return default if mean is None else mean[0]

    def __getitem__(self, prefix: str) -> float:
        return self._means[prefix][0]

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._means

    def __len__(self) -> int:
        return len(self._means)

    def __iter__(self):
        return iter(self._means)

    def keys(self):
        return self._means.keys()


BUSY = math.nan  # WorkerState.idle_clock[0] while the worker has tasks


class WorkerState:
    """One worker: its threads and resources, what it runs (``processing``) and caches (``has``)."""

    __slots__ = (
        "address",
        "name",
        "nthreads",
        "resources",
        "available",
        "processing",
        "has",
        "status",
        "seceded",
        "idle_clock",
        "joined",
    )

    def __init__(
        self, address: str, name: str, nthreads: int, resources: Optional[dict], now: float
    ):
        self.address = address
        self.name = name
        self.nthreads = nthreads
        self.resources = dict(resources or {})
        self.available = dict(self.resources)
        self.processing: dict[Key, None] = {}  # insertion-ordered set
        self.has: set[Key] = set()
        self.status = "running"  # running | paused | retiring
        self.seceded = 0  # tasks that left their thread slot (secede) and no longer count
        # [0]: when it last ran out of tasks, BUSY while it has some. An array, not a float
        # attribute: the float of a large run's last task would outlive the run in one of its
        # allocator arenas and keep that whole arena alive (task_stream.py says more)
        self.idle_clock = array.array("d", (now,))
        self.joined = now  # idle_since still equal to it: it was never given a task
        # the frozenset its results' who_has will share, made now rather than at its first result,
        # which may come in the middle of a large run and would keep one of its arenas alive
        _just(address)

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} {self.status} processing={len(self.processing)}>"

    @property
    def idle_since(self) -> Optional[float]:
        """When it last ran out of tasks (epoch seconds), None while it has some."""
        since = self.idle_clock[0]
        return None if math.isnan(since) else since

    def never_given_a_task(self) -> bool:
        return not self.processing and self.idle_clock[0] == self.joined
