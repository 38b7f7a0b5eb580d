"""The scheduler's records: one ``TaskState`` per key and one ``WorkerState`` per worker.

Plain slotted objects that ``SchedulerState`` (``scheduler/state.py``) and its placement rules
(``scheduler/placement.py``) change, and that read-only views (``scheduler/queries.py``) look at. Nothing
here changes itself: every change is an event of ``SchedulerState``.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional

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
        self.dependents: set[Key] = NO_KEYS
        self.waiting_on: set[Key] = NO_KEYS  # dependencies not yet in memory
        self.waiters: set[Key] = NO_KEYS  # dependents not yet finished that need this value
        self.who_wants: set[str] = NO_KEYS  # most tasks of a graph: no client wants them
        self.priority: tuple = (0, 0)
        self.run_spec: Any = None
        self.retries = 0
        self.restrictions: Optional[frozenset] = None
        self.loose = False
        self.resources: Optional[dict] = None
        self.processing_on: Optional[str] = None
        self.who_has: set[str] = NO_KEYS  # workers caching the value: none until it is computed
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

    def add_dependent(self, key: Key) -> None:
        if self.dependents is NO_KEYS:
            self.dependents = set()
        self.dependents.add(key)

    def add_waiting_on(self, key: Key) -> None:
        if self.waiting_on is NO_KEYS:
            self.waiting_on = set()
        self.waiting_on.add(key)

    def add_wanter(self, client: str) -> None:
        if self.who_wants is NO_KEYS:
            self.who_wants = set()
        self.who_wants.add(client)

    def add_holder(self, worker: str) -> None:
        if self.who_has is NO_KEYS:
            self.who_has = set()
        self.who_has.add(worker)

    def add_waiter(self, key: Key) -> None:
        if self.waiters is NO_KEYS:
            self.waiters = set()
        self.waiters.add(key)


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
        "executing_since",
        "idle_since",
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
        self.idle_since: Optional[float] = now
        self.joined = now  # idle_since still equal to it: it was never given a task

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} {self.status} processing={len(self.processing)}>"

    def never_given_a_task(self) -> bool:
        return not self.processing and self.idle_since == self.joined
