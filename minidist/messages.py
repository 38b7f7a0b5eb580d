"""The message vocabulary of the scheduler: between clients, the cluster, the scheduler thread and workers.

Each message is a small named tuple; its type *is* its kind, so every receiver dispatches with a dict from
type to handler and nobody spells a kind twice. Who sends what::

    client ──► scheduler      UpdateGraph  Release  ReleasePending  Scatter  Cancel  Retry  DirectTask
    cluster ──► scheduler     AddWorker  RemoveWorkers  RetireWorkers  PauseWorker  Restart  FailPending
                              ForgetClients  ClientSession  RunOnWorkers  WorkerReports (a thread
                              worker's batch)
                              Call (the escape hatch)  Wake
    scheduler ──► worker      ComputeTask  FreeKeys  PublishKeys  ReturnSegments  RunFunction  ClientReply
                              CloseWorker
    worker ──► scheduler      TaskDone  TaskHeld  Published  TaskErred  TaskTransfer  RunResult  Secede
                              Rejoin  WorkerHello  WorkerLogs
                              ClientFrame (a frame from a client inside a task)
    scheduler ──► client      sessions' report(items): a list of TaskStatus

The links between other processes (remote clients, the template process, SubprocessCluster's scheduler
process) have their messages in ``peer_messages.py``.

Payloads inside them: ``NewTask`` (one task of an ``UpdateGraph``), ``RunSpec`` (what to call for a task, a plain tuple
packed by the cluster's data plane) and ``DependencyRef`` (a future inside task arguments).

Batches between the scheduler and a worker process travel as ``encode_batch`` frames: each message as the
code of its class (its index among the ``@_wire`` types) and its field tuple, which pickle handles natively
(more compact and faster than bare tuples with a string kind). Elsewhere (remote links, messages inside
messages) they pickle through the reducer registered by ``pickled_as_fields``. Messages from remote peers
are checked against the field annotations here (``message_checks.check_fields``), so the remote protocol
never restates a shape. To add a message: see "How to add a message" in ``docs/architecture.md``.
"""

import copyreg
import pickle
from itertools import chain
from typing import Any, Hashable, NamedTuple, Optional, Tuple, Union

from .keys import key_split

Key = Hashable

FIRE_AND_FORGET = (
    "fire-and-forget"  # the pseudo-client that wants fire_and_forget's keys until done
)


class MalformedMessage(ValueError):
    """A message from a peer does not have the shape the protocol expects (it is dropped)."""


# Every wire type in the order this module defines them: a worker pipe's batches name a message's type
# by its index here (both ends run this same module), which pickle writes and reads as a small int
# rather than a class found by module and name on every frame. Only this module registers here
# (peer_messages.py's types never travel in batches), so the order cannot depend on import order.
_BATCH_TYPES: list = []
_BATCH_CODES: dict = {}


def pickled_as_fields(cls):
    """Pickle ``cls`` as ``tuple.__new__(cls, fields)``: one small Python call to pickle a message and
    none to load it (a named tuple's default reduction costs several times that, both ways)."""
    copyreg.pickle(cls, _reduce_fields)
    return cls


def _wire(cls):
    """A message of this module: pickled as its fields, and able to travel in worker pipe batches."""
    _BATCH_CODES[cls] = len(_BATCH_TYPES)
    _BATCH_TYPES.append(cls)
    return pickled_as_fields(cls)


_new_tuple = tuple.__new__

# ``from_fields(Message, (field, ...))``: a named tuple made without the Python-level ``__new__`` that
# ``Message(...)`` runs (it costs as much as the tuple itself). For the few made once per task on the
# scheduler thread (instructions, ComputeTask, TaskStatus); every field given, in order
from_fields = tuple.__new__


def _reduce_fields(message):
    return _new_tuple, (type(message), tuple(message))


def encode_batch(messages: list) -> bytes:
    """One pipe frame for a batch of messages between the scheduler and a worker process.

    The hot path (a ComputeTask and a TaskDone per task): each message goes as the code of its type (its
    index among the ``@_wire`` types) and its field tuple, which pickle handles natively, so a batch
    costs no Python call per message either way, and no lookup of a class by its module and name (half
    the cost of loading a one-task frame). Only ``@_wire`` types travel in batches.
    """
    codes = map(_BATCH_CODES.__getitem__, map(type, messages))
    flat = list(chain.from_iterable(zip(codes, map(tuple, messages))))
    return pickle.dumps(flat, protocol=5)


def decode_batch(data) -> list:
    """The messages of a frame made by ``encode_batch``."""
    flat = pickle.loads(data)
    return list(map(_new_tuple, map(_BATCH_TYPES.__getitem__, flat[::2]), flat[1::2]))


# -------------------------------------------------------------------------------------------- payloads


class DependencyRef:
    """Stands in for a Future inside task arguments; the worker swaps in the dependency's value."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __reduce__(self):
        return (DependencyRef, (self.key,))

    def __repr__(self) -> str:
        return f"DependencyRef({self.key!r})"


class DependencyValues:
    """Stands in, inside task arguments, for the dict ``{dependency key: value}`` of all the task's
    dependencies; the worker passes the dict it assembles anyway. A dask graph node takes its inputs
    this way, so its task needs no dict of ``DependencyRef`` of its own (one marker serves every task,
    and unpickles as itself)."""

    __slots__ = ()

    def __reduce__(self):
        return "DEPENDENCY_VALUES"

    def __repr__(self) -> str:
        return "DEPENDENCY_VALUES"


DEPENDENCY_VALUES = DependencyValues()


# What to call for a task: the plain tuple ``(function_id, function, arguments)``. ``function_id`` names
# the function (a hash of its pickle); the data plane (``data_plane.py``) decides the other two: for
# process workers ``function`` is the cloudpickled blob and ``arguments`` the packed ``(args, kwargs)``
# (a Payload, or bytes); for thread workers the callable and the ``(args, kwargs)`` pair itself. A plain
# tuple rather than a named type, unlike the messages: one lives per pending task, and a tuple of bytes
# alone (process workers) is one the garbage collector stops tracking, so full collections during a
# large run do not walk it (docs/architecture.md, "Garbage collection"). Read it by unpacking.
RunSpec = Tuple[bytes, Any, Any]


@_wire
class NewTask(NamedTuple):
    """One task of an ``UpdateGraph``."""

    key: Key
    # a tuple, or the frozenset a dask graph node already has (the scheduler keeps it as it is)
    dependencies: Union[tuple, frozenset] = ()
    run_spec: Any = None  # a RunSpec; opaque to the scheduler's state
    priority: int = 0  # user priority: higher runs first
    retries: int = 0
    workers: Optional[frozenset] = None  # addresses or names this task may run on
    allow_other_workers: bool = False
    resources: Optional[dict] = None  # abstract resources needed, e.g. {"GPU": 1}
    prefix: str = ""


def new_task(
    key,
    dependencies,
    run_spec,
    priority=0,
    retries=0,
    workers=None,
    allow_other_workers=False,
    resources=None,
    prefix=None,
) -> NewTask:
    """A ``NewTask`` from the loose forms the client API accepts (lists, None for defaults)."""
    return NewTask(
        key,
        dependencies if type(dependencies) is frozenset else tuple(dependencies),
        run_spec,
        priority or 0,
        retries or 0,
        frozenset(workers) if workers else None,
        allow_other_workers,
        resources or None,
        prefix if prefix is not None else key_split(key),
    )


@_wire
class TaskStatus(NamedTuple):
    """What a client hears about one of its keys: ``memory``, ``erred`` (with the exception and a
    traceback) or ``cancelled``. Sessions receive lists of them in ``report(items)``."""

    key: Key
    status: str
    exception: Any = None
    traceback: Any = None


# ----------------------------------------------------------------------------- client ──► scheduler


class TaskColumns:
    """Many tasks as columns (a dask graph's): iterating gives each one's ``NewTask``, made as it is
    read. A graph of 20,000 tasks then does not keep 20,000 message objects alive from packing until
    the scheduler has read them all: each is made, read and dropped on the scheduler thread, young, and
    the garbage collector's full collections never walk them. Tasks with options of their own (dask
    annotations) travel whole in ``special`` (key -> NewTask); the others take the defaults."""

    __slots__ = ("keys", "dependencies", "run_specs", "prefixes", "special")

    def __init__(
        self, keys: tuple, dependencies: tuple, run_specs: tuple, prefixes: tuple, special
    ):
        self.keys = keys
        self.dependencies = dependencies  # per key: a tuple, or a dask node's own frozenset
        self.run_specs = run_specs
        self.prefixes = prefixes
        self.special = special  # {key: NewTask} for keys with non-default options

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        special = self.special
        for key, dependencies, run_spec, prefix in zip(
            self.keys, self.dependencies, self.run_specs, self.prefixes
        ):
            task = special.get(key) if special else None
            if task is None:
                task = NewTask(key, dependencies, run_spec, 0, 0, None, False, None, prefix)
            yield task

    def __reduce__(self):
        return TaskColumns, (
            self.keys,
            self.dependencies,
            self.run_specs,
            self.prefixes,
            self.special,
        )

    def __repr__(self) -> str:
        return f"<TaskColumns of {len(self.keys)} tasks>"


@_wire
class UpdateGraph(NamedTuple):
    """New tasks from ``client``, which now wants the ``wanted`` keys (tasks may be empty: only wants).
    ``tasks`` is a tuple of ``NewTask`` or, for a graph, the same as ``TaskColumns``."""

    client: str
    tasks: Union[tuple, TaskColumns]
    wanted: tuple


@_wire
class Release(NamedTuple):
    """``client`` holds no more futures for ``keys``."""

    client: str
    keys: tuple


@_wire
class ReleasePending(NamedTuple):
    """``client`` has a batch of released keys; the scheduler collects it with ``take_releases()``.
    Only posted in-process (a remote link turns it into a ``Release``); it does not wake the scheduler."""

    client: str


@_wire
class Scatter(NamedTuple):
    """Values ``client`` put straight into memory: ``values`` and ``nbytes`` are dicts by key."""

    client: str
    values: dict
    nbytes: dict


@_wire
class Cancel(NamedTuple):
    """Cancel ``keys`` and everything that depends on them, for every client."""

    keys: tuple


@_wire
class Retry(NamedTuple):
    """Run the erred tasks ``keys`` (and the erred tasks they depend on) again."""

    keys: tuple


class DirectTask(NamedTuple):
    """One task ``client`` already sent to the idle worker at ``worker`` (``scheduler/lane.py``): an
    ``UpdateGraph`` of ``tasks`` (that one) and ``wanted`` (its key) whose placement is done. In-process."""

    client: str
    tasks: tuple
    wanted: tuple
    worker: str


# ---------------------------------------------------------------------- cluster ──► scheduler thread


class AddWorker(NamedTuple):
    """A worker handle (``deploy/workers.py``) joins the cluster."""

    handle: Any


class Call(NamedTuple):
    """Run ``function(scheduler, *args)`` on the scheduler thread; its result goes to ``reply``. The
    escape hatch behind ``Scheduler.call`` and ``run_on_scheduler``: anything else is a named message."""

    function: Any
    args: tuple
    reply: Any  # a concurrent.futures.Future


class Wake(NamedTuple):
    """Only wakes the scheduler loop (on close)."""


class RunOnWorkers(NamedTuple):
    """``client.run``: send a function to ``workers``; ``reply`` gets ``{address: (ok, value)}``."""

    function: Any  # packed by the data plane, as a RunSpec's function
    arguments: Any
    workers: tuple
    reply: Any


class RetireWorkers(NamedTuple):
    """Retire ``addresses`` (when given) or the ``number`` least busy workers; ``reply`` gets the
    addresses chosen. They take no new tasks and leave once empty. ``by_scaling``: the cluster chose
    to shrink (``scale``, ``adapt``), so scheduler plugins' ``valid_workers_downscaling`` have a say;
    a user's explicit ``retire_workers`` is not vetted."""

    number: int
    addresses: Optional[tuple]
    by_scaling: bool
    reply: Any


class PauseWorker(NamedTuple):
    """The memory monitor pauses (``paused``) or resumes a worker; retiring workers are left alone."""

    address: str
    paused: bool


class RemoveWorkers(NamedTuple):
    """The cluster stops these worker handles on purpose (their running tasks are requeued without
    suspicion); ``reply`` is set once they are out of the scheduler's books."""

    handles: tuple
    reason: str
    reply: Any


class Restart(NamedTuple):
    """Forget every task (clients see their futures cancelled) and remove the worker ``handles``
    without sending them anything more; ``reply`` is set when done."""

    handles: tuple
    reply: Any


class FailPending(NamedTuple):
    """Err every unfinished task with ``exception`` (e.g. worker processes cannot start)."""

    exception: Any


class ForgetClients(NamedTuple):
    """These clients are gone (their connection closed): release everything they wanted."""

    clients: tuple


class ClientSession(NamedTuple):
    """A client connected (``opened``) or closed: scheduler plugins' ``add_client``/``remove_client``."""

    client: str
    opened: bool


class WorkerReports(NamedTuple):
    """A batch of worker messages from a thread worker (process workers send theirs down a pipe)."""

    address: str
    batch: list


# ------------------------------------------------------------------------------ scheduler ──► worker


@_wire
class ComputeTask(NamedTuple):
    """Run ``key``. ``dep_values`` are the encoded values of ``dependencies`` this worker lacks.

    The task's RunSpec travels inline (``function_id``, ``function``, ``arguments``: one object less to
    pickle per task)."""

    key: Key
    function_id: bytes
    function: Any  # None when this worker already has the function
    arguments: Any
    dependencies: tuple
    dep_values: dict
    attempt: int = 0  # echoed in the report, so a late report of an earlier attempt is told apart
    may_hold: bool = False  # a large result may stay in this worker only (answer with TaskHeld)


@_wire
class PublishKeys(NamedTuple):
    """Publish these held results (serialise them, large buffers into shared memory): ``Published``."""

    keys: tuple


@_wire
class FreeKeys(NamedTuple):
    """Drop cached values and cancel queued or running copies of ``keys``."""

    keys: tuple


@_wire
class ReturnSegments(NamedTuple):
    """Nothing refers to these shared-memory segments (which you wrote) any more: write later values
    into them once no reader maps them (``comm/shm_pool.py``)."""

    names: tuple


@_wire
class ReleaseQueued(NamedTuple):
    """Give back those of ``keys`` not started yet (work stealing); answer with ``QueuedReleased``."""

    keys: tuple


@_wire
class RunFunction(NamedTuple):
    """``client.run``: call a function outside the task system and answer with a ``RunResult``."""

    run_id: int
    function: Any  # packed by the data plane, as a RunSpec's function
    arguments: Any  # packed by the data plane, as a RunSpec's arguments


@_wire
class ClientReply(NamedTuple):
    """A frame of remote-protocol messages for the clients of tasks on this worker."""

    frame: bytes


@_wire
class CloseWorker(NamedTuple):
    """Leave cleanly (and leave shared memory alone)."""


# ------------------------------------------------------------------------------ worker ──► scheduler


@_wire
class TaskDone(NamedTuple):
    """``key`` finished on the thread ``thread`` between ``start`` and ``stop`` (epoch seconds)."""

    key: Key
    value: Any  # encoded by the data plane
    nbytes: int
    start: float
    stop: float
    thread: int
    attempt: int = 0  # the ComputeTask's


@_wire
class TaskHeld(NamedTuple):
    """As ``TaskDone``, but the worker kept the result to itself (the ComputeTask allowed it)."""

    key: Key
    nbytes: int
    start: float
    stop: float
    thread: int
    attempt: int = 0


@_wire
class Published(NamedTuple):
    """The answer to ``PublishKeys`` for ``key``: its encoded ``value``, or None and the ``error``
    (pickled exception, traceback text) if it could not be serialised or is not here any more."""

    key: Key
    value: Any
    nbytes: int
    error: Any = None


@_wire
class TaskErred(NamedTuple):
    """``key`` raised; process workers send the exception pickled and the traceback as text."""

    key: Key
    exception: Any
    traceback: Any
    start: float
    stop: float
    thread: int
    attempt: int = 0  # the ComputeTask's


@_wire
class TaskTransfer(NamedTuple):
    """The worker decoded dependency values it received for ``key`` between ``start`` and ``stop``:
    the task stream's transfer interval. Sent just before the task's ``TaskDone``/``TaskErred``."""

    key: Key
    start: float
    stop: float


@_wire
class RunResult(NamedTuple):
    """The answer to ``RunFunction``: ``value`` is the result, or ``(exception, traceback)``."""

    run_id: int
    ok: bool
    value: Any


@_wire
class QueuedReleased(NamedTuple):
    """The answer to ``ReleaseQueued``: ``released`` will not run here; ``kept`` had started (or
    finished, or were unknown) and stay."""

    released: tuple
    kept: tuple


@_wire
class Secede(NamedTuple):
    """The task ``key`` left its thread slot (it waits on other tasks)."""

    key: Key


@_wire
class Rejoin(NamedTuple):
    """The task ``key`` takes a thread slot again."""

    key: Key


@_wire
class WorkerHello(NamedTuple):
    """A process worker is up (its first message)."""

    pid: int


@_wire
class WorkerLogs(NamedTuple):
    """Log records shipped from a process worker: ``(created, level, logger name, text)`` tuples."""

    records: list


@_wire
class ClientFrame(NamedTuple):
    """A frame of remote-protocol messages from a client inside a task on this worker."""

    frame: bytes


CLIENT_MESSAGES = (UpdateGraph, Release, ReleasePending, Scatter, Cancel, Retry)
