"""A testing kit for libraries that embed minidist, used by minidist's own suite too.

    # conftest.py of your project
    pytest_plugins = ["minidist.testing"]

    # a test
    def test_my_pipeline(client):                  # a Client on a fresh process LocalCluster
        assert my_pipeline(client) == 42           # ...which must leave nothing behind

What it offers:

- pytest fixtures: ``cluster``/``client`` (process workers), ``thread_cluster``/``thread_client``
  (thread workers), each a fresh cluster per test that is closed afterwards and checked by
  :func:`no_leaks`; override ``minidist_cluster_options`` to change their size or settings; the
  ``leak_check`` fixture puts any test inside :func:`no_leaks`.
- :func:`no_leaks`: a context manager that fails (``LeakError``) when the code inside leaves child
  processes, minidist or non-daemon threads, file descriptors, listening ports or shared-memory segments
  of this process's clusters behind. Closing is synchronous, but daemon threads and child processes take
  a moment to unwind, so it waits up to ``timeout`` seconds for them before failing.
- :func:`task_graphs`: a hypothesis strategy of random :class:`TaskGraph`s whose tasks combine earlier
  results (nested in lists and dicts, some pure, some failing on purpose), with the answer a plain
  sequential evaluation gives, so a test can check that a cluster computes exactly that.
- :func:`wait_until`: poll a condition with a deadline (instead of sleeping).
- :func:`backing_file`: the file behind an array's memory in this process (a ``/dev/shm`` segment when
  the array is a zero-copy mapping, ``""`` when it is private memory), to check that no copy was made.

pytest and hypothesis are imported only by the parts that need them; ``import minidist`` imports neither.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

__all__ = [
    "LeakError",
    "Outcome",
    "ResourceSnapshot",
    "TaskGraph",
    "TaskNode",
    "backing_file",
    "no_leaks",
    "task_graphs",
    "wait_until",
]


def backing_file(array) -> str:
    """The file behind the mapping of this process that holds ``array``'s memory, or ``""`` (private
    memory: an anonymous mapping, or the ``[heap]``, where glibc serves blocks below its mmap
    threshold, which grows once a process has freed a larger block). Read inside a task it tells
    whether an argument is the shared segment itself."""
    address, nbytes = array.__array_interface__["data"][0], array.nbytes
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address and address + nbytes <= high:
                name = fields[5].strip() if len(fields) > 5 else ""
                return "" if name.startswith("[") else name  # [heap], [stack]: private
    return ""


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Call ``predicate`` until it is true or ``timeout`` seconds have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ------------------------------------------------------------------------------------------ leaks


class LeakError(AssertionError):
    """Code inside :func:`no_leaks` left processes, threads, descriptors, ports or segments behind."""


@dataclasses.dataclass(frozen=True)
class ResourceSnapshot:
    """What this process holds at one moment, as :func:`no_leaks` compares it."""

    processes: frozenset  # pids of child processes (and theirs)
    threads: frozenset  # threads named minidist-*, or not daemon (see _counted)
    fds: dict  # open file descriptor -> what it points to
    ports: frozenset  # listening (ip, port) pairs
    segments: frozenset  # /dev/shm segments of clusters this process owns

    @classmethod
    def take(cls) -> ResourceSnapshot:
        import psutil

        me = psutil.Process()
        try:
            listening = frozenset(
                (c.laddr.ip, c.laddr.port)
                for c in me.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            )
        except psutil.Error:
            listening = frozenset()
        return cls(
            processes=frozenset(p.pid for p in me.children(recursive=True)),
            threads=frozenset(t for t in threading.enumerate() if t.is_alive() and _counted(t)),
            fds=_open_fds(),
            ports=listening,
            segments=frozenset(_own_segments()),
        )

    def leaks_since(self, before: ResourceSnapshot) -> list[str]:
        """One line per kind of resource that grew since ``before``, naming what is new."""
        found = []
        processes = self.processes - before.processes
        if processes:
            found.append(f"processes {sorted(processes)} ({_describe_processes(processes)})")
        threads = self.threads - before.threads
        if threads:
            found.append(f"threads {sorted(t.name for t in threads)}")
        if len(self.fds) > len(before.fds):
            new = {fd: target for fd, target in self.fds.items() if before.fds.get(fd) != target}
            found.append(f"{len(self.fds) - len(before.fds)} file descriptors (new: {new})")
        ports = self.ports - before.ports
        if ports:
            found.append(f"listening ports {sorted(ports)}")
        segments = self.segments - before.segments
        if segments:
            found.append(f"shared-memory segments {sorted(segments)}")
        return found


def _counted(thread: threading.Thread) -> bool:
    """minidist's threads, and non-daemon threads (they keep a program from exiting), except the idle
    workers of ``concurrent.futures`` pools that libraries keep for the whole process on purpose (dask's
    threaded scheduler, asyncio's default executor): those are joined when the interpreter exits."""
    if thread.name.startswith("minidist-"):
        return True
    if thread.daemon:
        return False
    target = getattr(thread, "_target", None)
    return getattr(target, "__module__", None) != "concurrent.futures.thread"


def _open_fds() -> dict:
    folder = "/proc/self/fd"
    try:
        names = os.listdir(folder)
    except OSError:  # not Linux: no descriptor check
        return {}
    fds = {}
    for name in names:
        try:
            fds[int(name)] = os.readlink(os.path.join(folder, name))
        except OSError:
            pass  # closed meanwhile (e.g. the descriptor listdir itself used)
    return fds


def _own_segments() -> list:
    prefix = f"minidist_{os.getpid()}-"  # cluster ids start with the owner's pid
    try:
        return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
    except OSError:
        return []


def _describe_processes(pids) -> str:
    import psutil

    described = []
    for pid in sorted(pids):
        try:
            words = " ".join(psutil.Process(pid).cmdline()).split()  # a -c program's lines too
            described.append(" ".join(words)[:80])
        except psutil.Error:
            described.append("gone")
    return "; ".join(described)


@contextlib.contextmanager
def no_leaks(timeout: float = 10.0) -> Iterator[ResourceSnapshot]:
    """Fail with ``LeakError`` if the code inside leaves resources behind (see the module doc).

    Yields the snapshot taken on entry. Nothing is checked if the code inside raised.
    """
    before = ResourceSnapshot.take()
    yield before
    found: list = []

    def clean() -> bool:
        found[:] = ResourceSnapshot.take().leaks_since(before)
        return not found

    if not wait_until(clean, timeout, interval=0.05):
        raise LeakError("left behind: " + "; ".join(found))


# ------------------------------------------------------------------------------------- task graphs

OPERATIONS = ("add", "mul", "sub", "fail")


def combine(operation: str, values: Sequence[int], constant: int, delay: float = 0.0) -> int:
    """The one task function of a TaskGraph; "fail" raises when its first input is a multiple of 7.

    ``delay`` seconds of work first (so that fault tests can hit a graph while it runs).
    """
    if delay:
        time.sleep(delay)
    if operation == "fail" and values and values[0] % 7 == 0:
        raise ArithmeticError(f"refusing {values[0]}")
    total = constant
    for value in values:
        if operation == "mul":
            total = total * value % 1_000_003
        elif operation == "sub":
            total = (total - value) % 1_000_003
        else:  # add, fail
            total = (total + value) % 1_000_003
    return total


def combine_dict(arguments: dict) -> int:
    """``combine`` with its inputs nested in a dict (dependencies inside a dict argument)."""
    return combine(
        arguments["operation"], arguments["values"], arguments["constant"], arguments["delay"]
    )


class Outcome(NamedTuple):
    """How one node of a TaskGraph ends: its ``value``, or one of ``errors`` (when not ``ok``)."""

    ok: bool
    value: Any
    errors: tuple


@dataclasses.dataclass(frozen=True)
class TaskNode:
    """One task: ``operation`` over the values of earlier nodes ``dependencies`` and a constant."""

    operation: str
    dependencies: tuple
    constant: int
    as_dict: bool = False  # pass the dependencies nested in a dict instead of a list
    pure: bool = True
    delay: float = 0.0  # seconds the task takes


class TaskGraph:
    """Tasks that depend on earlier tasks, with the answers a plain sequential loop gives."""

    def __init__(self, nodes: Sequence[TaskNode]):
        for i, node in enumerate(nodes):
            if any(not 0 <= d < i for d in node.dependencies):
                raise ValueError(f"node {i} may only depend on earlier nodes: {node}")
        self.nodes = list(nodes)

    def __repr__(self) -> str:
        return f"TaskGraph({self.nodes!r})"

    def __len__(self) -> int:
        return len(self.nodes)

    def expected(self) -> list:
        """Each node's value, or the exception it (or the first failed dependency) raises."""
        return [outcome if ok else errors[0] for ok, outcome, errors in self.outcomes()]

    def outcomes(self) -> list[Outcome]:
        """How each node ends: its value, or every error it may end with.

        A node with several failed dependencies takes the error of whichever failed first on the
        cluster, which timing decides (as in dask), so each of theirs is a right answer.
        """
        outcomes: list[Outcome] = []
        for node in self.nodes:
            failed = [outcomes[d].errors for d in node.dependencies if not outcomes[d].ok]
            if failed:
                errors = tuple({str(e): e for group in failed for e in group}.values())
                outcomes.append(Outcome(False, None, errors))
                continue
            try:
                values = [outcomes[d].value for d in node.dependencies]
                outcomes.append(Outcome(True, combine(node.operation, values, node.constant), ()))
            except ArithmeticError as exc:
                # without its traceback: its frames reach the caller's (which may hold futures)
                # and would keep them, and their keys on the cluster, alive until a garbage collection
                outcomes.append(Outcome(False, None, (exc.with_traceback(None),)))
        return outcomes

    def submit(self, client) -> list:
        """Submit every node (futures as arguments); one future per node, in order."""
        futures: list = []
        for node in self.nodes:
            deps = [futures[d] for d in node.dependencies]
            if node.as_dict:
                arguments = {
                    "operation": node.operation,
                    "values": deps,
                    "constant": node.constant,
                    "delay": node.delay,
                }
                futures.append(client.submit(combine_dict, arguments, pure=node.pure))
            else:
                futures.append(
                    client.submit(
                        combine, node.operation, deps, node.constant, node.delay, pure=node.pure
                    )
                )
        return futures

    def check(self, futures: Sequence, timeout: float = 60.0, tolerate: tuple = ()) -> int:
        """Assert each future gives the sequential answer; returns how many erred with a ``tolerate``
        exception instead (e.g. ``KilledWorker`` in a test that kills workers)."""
        from .futures import wait

        wait(list(futures), timeout=timeout)
        tolerated = 0
        for i, (future, (ok, value, errors)) in enumerate(zip(futures, self.outcomes())):
            got = future.exception() if future.status == "error" else None
            if got is not None and tolerate and isinstance(got, tolerate):
                tolerated += 1
            elif not ok:
                assert got is not None and str(got) in {str(e) for e in errors}, (
                    f"node {i} ({self.nodes[i]}): expected one of {errors!r}, got {got!r} "
                    f"({future.status})"
                )
            else:
                assert got is None, f"node {i} ({self.nodes[i]}): expected {value!r}, got {got!r}"
                assert future.result() == value, f"node {i} ({self.nodes[i]})"
        return tolerated


def task_graphs(max_tasks: int = 25, failures: bool = True, delay: float = 0.0):
    """A hypothesis strategy of :class:`TaskGraph` with 1 to ``max_tasks`` nodes.

    ``failures=False`` leaves out the operation that raises on purpose; with ``delay``, each task
    takes between 0 and ``delay`` seconds.
    """
    from hypothesis import strategies as st

    operations = OPERATIONS if failures else tuple(o for o in OPERATIONS if o != "fail")

    @st.composite
    def graphs(draw):
        size = draw(st.integers(1, max_tasks))
        nodes = []
        for i in range(size):
            picks = draw(st.lists(st.integers(0, max(0, i - 1)), max_size=3)) if i else []
            nodes.append(
                TaskNode(
                    draw(st.sampled_from(operations)),
                    tuple(sorted(set(picks))),
                    draw(st.integers(-50, 50)),
                    draw(st.booleans()),
                    draw(st.booleans()),
                    draw(st.sampled_from((0.0, delay / 2, delay))) if delay else 0.0,
                )
            )
        return TaskGraph(nodes)

    return graphs()


# ------------------------------------------------------------------------------------ pytest plugin

try:
    import pytest
except ImportError:  # the fixtures need pytest; the rest of this module does not
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def minidist_cluster_options() -> dict:
        """Keywords of the clusters the fixtures start; override this fixture to change them."""
        return {
            "n_workers": 2,
            "threads_per_worker": 1,
            "dashboard_address": None,
            "silence_logs": False,
        }

    def _cluster(options: dict, processes: bool):
        from .deploy.local import LocalCluster

        with no_leaks():
            with LocalCluster(**dict(options, processes=processes)) as cluster:
                yield cluster

    @pytest.fixture
    def cluster(minidist_cluster_options):
        """A LocalCluster with process workers, closed after the test and checked for leaks."""
        yield from _cluster(minidist_cluster_options, processes=True)

    @pytest.fixture
    def thread_cluster(minidist_cluster_options):
        """A LocalCluster with thread workers, closed after the test and checked for leaks."""
        yield from _cluster(minidist_cluster_options, processes=False)

    @pytest.fixture
    def client(cluster):
        """A Client of the ``cluster`` fixture."""
        from .client import Client

        with Client(cluster) as c:
            yield c

    @pytest.fixture
    def thread_client(thread_cluster):
        """A Client of the ``thread_cluster`` fixture."""
        from .client import Client

        with Client(thread_cluster) as c:
            yield c

    @pytest.fixture
    def leak_check():
        """Fail the test if it leaves processes, threads, descriptors, ports or segments behind."""
        with no_leaks() as before:
            yield before
