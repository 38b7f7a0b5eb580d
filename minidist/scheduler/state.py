"""SchedulerState: the scheduler's brain, a pure state machine.

Events come in as method calls (``update_graph``, ``task_finished``, ``remove_worker`` ...); each returns
a list of instructions (small named tuples below) for the I/O shell in ``scheduler/server.py`` to carry
out. Nothing here does I/O, starts threads or reads a clock: times arrive inside events. That keeps the
rules in one place, shared by every transport, and lets hypothesis drive them directly
(``tests_property/test_state_property.py``).

Task life cycle::

    waiting --(all dependencies in memory)--> queued --(a worker has a free slot)--> processing
    processing --finished--> memory         processing --erred--> erred (dependents err too)
    processing --worker died--> queued again, or erred with KilledWorker after too many deaths
    any state --(nobody wants it any more)--> forgotten (removed from ``tasks``)

Where data lives: results are sent back to the client process and kept there (``server.data``), so a
key in memory is never lost when a worker dies; except large results nobody outside wants yet, which
a process worker may keep to itself until they are needed elsewhere (held results, ``lineage.py``: what
they were computed from is kept, so a lost one is recomputed). Workers also keep a cache of values they
computed or received; ``TaskState.who_has`` tracks those caches so that placement can prefer the worker
that already holds a task's dependencies and the shell ships only what the chosen worker lacks.

A key is kept while some client wants it (``who_wants``) or some unfinished dependent still needs it
(``waiters``); when both are empty it is forgotten and every cache is told to drop it.
"""

from __future__ import annotations

import itertools
from typing import Any, Hashable, Iterable, Optional

from ..errors import KilledWorker
from ..messages import from_fields
from ..sparse import right_sized
from .instructions import (  # noqa: F401
    Execute,
    Forget,
    FreeOnWorker,
    NewTask,
    Publish,
    ReleaseArguments,
    Report,
    RetireWorker,
)
from .lineage import Lineage
from .records import NO_KEYS, RunningMeans, TaskState, WorkerState, add_wanter

Key = Hashable


class SchedulerState(Lineage):
    """Task and worker bookkeeping. Every public method is an event and returns instructions."""

    def __init__(self, allowed_failures: int = 3, prefetch: int = 2, work_stealing: bool = True):
        self.tasks: dict[Key, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.allowed_failures = allowed_failures
        self.work_stealing = work_stealing  # idle workers take tasks queued on busy ones
        self.prefetch = prefetch
        self.ready: list = []  # heap of ready_entry(ts) for unrestricted queued tasks
        self.restricted: dict[Key, TaskState] = {}  # queued tasks with restrictions or resources
        self._sequence = itertools.count()
        self.prefix_durations = RunningMeans()  # task prefix -> running mean duration (s)
        self.counts = {"waiting": 0, "queued": 0, "processing": 0, "memory": 0, "erred": 0}
        self._retired: list[str] = []  # retiring workers that just became empty
        self._idle_changed = False
        self._steals: dict = {}  # placement.py: key -> (victim, thief) while a steal is asked
        self._thieves_waiting: set = set()
        self._publishing: dict = {}  # lineage.py: held key -> queued tasks waiting for it
        self._aside: dict = {}  # lineage.py: task set aside -> (held key it waits for, its worker)
        self._placement_held = False  # see hold_placement
        # (exception, traceback) of fail_pending while no worker can start: new tasks err with it at
        # once instead of waiting for a worker that will not come; a worker joining clears it
        self.cannot_start: Optional[tuple] = None

    # -------------------------------------------------------------------------------- queries (no events)

    def direct_worker(self, address: str) -> bool:
        """Whether a new task without dependencies, restrictions or resources would go to the worker
        at ``address`` now, as its first attempt: it runs nothing and nothing waits for a worker."""
        ws = self.workers.get(address)
        return (
            ws is not None
            and ws.status == "running"
            and not ws.processing
            and not self.ready
            and not self.restricted
            and not self._aside
            and not self._steals
            and not self._retired
            and self.cannot_start is None
        )

    def expects_result(self, key: Key, worker: str, attempt: Optional[int] = None) -> bool:
        ts = self.tasks.get(key)
        return (
            ts is not None
            and ts.state == "processing"
            and ts.processing_on == worker
            and (attempt is None or attempt == ts.attempt)
        )

    def hold_placement(self) -> None:
        """Events from now on leave freed slots empty until ``resume_placement``: the shell holds
        placement while it handles one worker's batch of reports, so slots freed by a batch of
        results are filled once, by the same rules, instead of once per result."""
        self._placement_held = True

    def resume_placement(self) -> list:
        """Fill the slots freed while placement was held (see ``hold_placement``)."""
        self._placement_held = False
        out: list = []
        self._fill_workers(out)
        return out

    # ----------------------------------------------------------------------------------------- clients

    def update_graph(
        self,
        tasks: Iterable[NewTask],
        client: str,
        wanted: Iterable[Key] = (),
        now: float = 0.0,
        sent_to: Optional[str] = None,
    ) -> list:
        """New tasks from ``client``, which holds futures for ``wanted`` keys. ``sent_to``: the client
        already sent the one new task to that worker (``direct_worker`` offered it): it is processing
        there, as its first attempt, and no ``Execute`` is emitted for it."""
        out: list = []
        new = self._create_tasks(tasks, out)
        wanted = list(wanted)
        add_wanter(self.tasks, wanted, client)
        lost: list[Key] = []
        for ts in new:  # link after all are created so tasks of one graph may refer to each other
            alone = None  # {ts.key}, shared by the dependencies that have no other dependent
            for dep_key in ts.dependencies:
                dep = self.tasks.get(dep_key)
                if dep is None:
                    lost.append(ts.key)  # its dependency was released or cancelled meanwhile
                    continue
                if dep.dependents is NO_KEYS and alone is None:
                    alone = frozenset((ts.key,))
                dep.add_dependent(ts.key, alone)
        if lost:
            # as dask: tasks whose dependencies are gone are cancelled ("lost dependencies"), with
            # everything of this graph that depends on them; the client sees CancelledError
            out.extend(self.cancel(lost))
        for ts in new:
            if ts.state == "erred" or self.tasks.get(ts.key) is not ts:
                continue
            if sent_to is not None and not ts.dependencies and sent_to in self.workers:
                ts.state = "queued"  # and at once processing there: the Execute went already
                self.counts["queued"] += 1
                self._assign(ts, self.workers[sent_to], [])
            else:
                self._initial_transition(ts, out)
        for key in wanted:
            held = self.tasks.get(key)
            if held is None:
                if key not in lost:
                    out.append(Report(key, (client,), "cancelled"))
            elif held.state == "memory":
                if held.held_depth:  # only its worker has it: reported once published
                    self._request_publication(held, out)
                else:
                    out.append(Report(key, (client,), "memory"))
            elif held.state == "erred":
                out.append(Report(key, (client,), "erred", held.exception, held.traceback))
        self._fill_workers(out)
        return out

    def _initial_transition(self, ts: TaskState, out: list) -> None:
        waiting = 0  # dependencies not in memory
        for dep_key in ts.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is None:  # only on retry: an erred dependency nobody wanted was forgotten
                error = KeyError(
                    f"Cannot run {ts.key!r} again: its dependency {dep_key!r} was "
                    "released; submit it again"
                )
                self._set_erred(ts, error, None, out)
                return
            if dep.state == "erred":
                self._set_erred(ts, dep.exception, dep.traceback, out)
                return
            if dep.state != "memory":
                waiting += 1
            dep.add_waiter(ts.key)
        if waiting == len(ts.dependencies) and waiting:
            ts.wait_on_all()  # the common case in a new graph: no copy of the dependencies
        elif waiting:
            for dep_key in ts.dependencies:
                if self.tasks[dep_key].state != "memory":
                    ts.add_waiting_on(dep_key)
        if ts.waiting_on:
            ts.state = "waiting"
            self.counts["waiting"] += 1
        else:
            self._to_queued(ts)

    def client_releases(self, client: str, keys: Iterable[Key]) -> list:
        """``client`` holds no more futures for ``keys``."""
        out: list = []
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            ts.discard_wanter(client)
            self._maybe_forget(ts, out)
        self._fill_workers(out)
        return out

    def compact(self) -> None:
        """Give back the tables that tasks forgotten since the last call left mostly empty (not an
        event: it changes no book, only how much memory the books take; ``sparse.py``)."""
        self.tasks = right_sized(self.tasks)
        self.restricted = right_sized(self.restricted)
        self._publishing = right_sized(self._publishing)
        self._aside = right_sized(self._aside)
        for ws in self.workers.values():
            ws.has = right_sized(ws.has)
            ws.processing = right_sized(ws.processing)

    def forget_client(self, client: str) -> list:
        """``client`` is gone (its connection closed): it wants nothing any more."""
        return self.client_releases(
            client, [k for k, ts in self.tasks.items() if client in ts.who_wants]
        )

    def fail_pending(self, exception: Any, traceback: Any = "") -> list:
        """Err every unfinished task with ``exception`` (no worker can start to run them); tasks
        submitted later err with it too, until a worker joins."""
        out: list = []
        self.cannot_start = (exception, traceback)
        for ts in list(self.tasks.values()):
            if ts.state in ("waiting", "queued", "processing") and self.tasks.get(ts.key) is ts:
                worker = ts.processing_on
                self._set_erred(ts, exception, traceback, out)
                if worker in self.workers:  # a copy still runs there: its result would be stale
                    out.append(FreeOnWorker(worker, (ts.key,)))
        self._fill_workers(out)  # retiring workers this emptied may go
        return out

    def cancel(self, keys: Iterable[Key]) -> list:
        """Cancel keys and everything that depends on them, for every client."""
        out: list = []
        stack = [k for k in keys if k in self.tasks]
        doomed: dict[Key, TaskState] = {}
        while stack:
            ts = self.tasks.get(stack.pop())
            if ts is None or ts.key in doomed:
                continue
            doomed[ts.key] = ts
            stack.extend(ts.dependents)
        for ts in doomed.values():
            if ts.who_wants:
                out.append(Report(ts.key, tuple(ts.who_wants), "cancelled"))
            ts.who_wants = NO_KEYS
        for ts in doomed.values():
            self._forget(ts, out)
        # dependencies of cancelled tasks may now be unneeded
        for ts in doomed.values():
            for dep_key in ts.dependencies:
                dep = self.tasks.get(dep_key)
                if dep is not None:
                    self._maybe_forget(dep, out)
        self._fill_workers(out)
        return out

    def retry(self, keys: Iterable[Key]) -> list:
        """Run erred tasks again, with the erred tasks they depend on (dask's ``Client.retry``)."""
        out: list = []
        chosen: dict = {}
        stack = [self.tasks[k] for k in keys if k in self.tasks and self.tasks[k].state == "erred"]
        while stack:
            ts = stack.pop()
            if ts.key in chosen:
                continue
            chosen[ts.key] = ts
            stack.extend(
                d
                for k in ts.dependencies
                if (d := self.tasks.get(k)) is not None and d.state == "erred"
            )
        for ts in chosen.values():
            self._leave_state(ts)
            ts.exception = ts.traceback = None
            ts.suspicious = 0
            ts.waiting_on = NO_KEYS
        done: set = set()

        def restart(ts: TaskState) -> None:  # dependencies first, so dependents see them pending
            if ts.key in done:
                return
            done.add(ts.key)
            for dep_key in ts.dependencies:
                if dep_key in chosen:
                    restart(chosen[dep_key])
            self._initial_transition(ts, out)

        for ts in chosen.values():
            restart(ts)
        self._fill_workers(out)
        return out

    def scattered(self, client: str, keys_nbytes: dict, workers: Iterable[str] = ()) -> list:
        """Data the client put straight into memory under ``keys`` (already cached on ``workers``)."""
        out: list = []
        holders = [w for w in workers if w in self.workers]
        for key, nbytes in keys_nbytes.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                ts.add_wanter(client)
                if ts.held_depth:  # the client's copy is now the stored value (server.data)
                    self._unhold(ts, out)
                out.append(Report(key, (client,), "memory"))
                continue
            if ts is not None:  # replace a pending or erred task of the same name
                self._leave_state(ts)
            else:
                ts = TaskState(key, "scatter")
                self.tasks[key] = ts
            ts.state = "memory"
            self.counts["memory"] += 1
            ts.nbytes = nbytes
            ts.add_wanter(client)
            for w in holders:
                ts.add_holder(w)
                self.workers[w].has.add(key)
            out.append(Report(key, (client,), "memory"))
            for dependent_key in list(ts.dependents):
                self._dependency_ready(self.tasks[dependent_key], key)
        self._fill_workers(out)
        return out

    def cached(self, worker: str, keys: Iterable[Key]) -> list:
        """``worker`` now holds copies of ``keys`` in its cache (``replicate``); keys not in memory are
        skipped. Returns the keys recorded."""
        ws = self.workers.get(worker)
        recorded: list = []
        if ws is None:
            return recorded
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                ts.add_holder(worker)
                ws.has.add(key)
                recorded.append(key)
        return recorded

    # ----------------------------------------------------------------------------------------- workers

    def add_worker(
        self,
        address: str,
        nthreads: int,
        name: str = "",
        resources: Optional[dict] = None,
        now: float = 0.0,
    ) -> list:
        self.workers[address] = WorkerState(address, name or address, nthreads, resources, now)
        self.cannot_start = None
        self._idle_changed = True
        out: list = []
        self._fill_workers(out)
        return out

    def remove_worker(
        self,
        address: str,
        reason: str = "",
        now: float = 0.0,
        expected: bool = False,
        running: Optional[Iterable[Key]] = None,
    ) -> list:
        """A worker is gone. Its running tasks are retried elsewhere, or fail after too many deaths.

        ``expected`` is true for a clean retirement: its tasks are requeued without suspicion.
        ``running`` names the tasks it was running when it died, when the shell can tell (a process
        worker's running board); only those are suspected.
        """
        out: list = []
        ws = self.workers.pop(address, None)
        if ws is None:
            return out
        self._forget_steals(address)
        for key in ws.has:
            ts = self.tasks.get(key)
            if ts is not None:
                ts.discard_holder(address)
        # Without word from the shell: workers run their queue in order, so only the oldest nthreads
        # tasks can have been running; the prefetched ones behind them are requeued without suspicion.
        if running is None:
            running = itertools.islice(ws.processing, ws.nthreads + ws.seceded)
        running = set(running)
        for key in list(ws.processing):
            ts = self.tasks.get(key)
            if ts is None or ts.processing_on != address:
                continue
            self._leave_state(ts)
            if not expected and key in running:
                ts.suspicious += 1
                ts.last_worker_death = (address, reason)
            if ts.suspicious > self.allowed_failures:
                exc = KilledWorker(ts.key, address, reason, ts.suspicious)
                self._set_erred(ts, exc, None, out)
            else:
                self._to_queued(ts)
        self._lose_held(address, ws.has, out)
        self._fill_workers(out)
        return out

    def set_worker_status(self, address: str, status: str) -> list:
        """``running``, ``paused`` (memory pressure: no new tasks) or ``retiring`` (finish, then go)."""
        out: list = []
        ws = self.workers.get(address)
        if ws is None:
            return out
        ws.status = status
        self._idle_changed = True
        if status == "retiring":
            self._publish_all(address, out)  # it goes once they are published
            if not ws.processing and not self._holds_results(address):
                out.append(RetireWorker(address))
        self._fill_workers(out)
        return out

    def set_memory_paused(self, address: str, paused: bool) -> list:
        """The memory monitor pauses a worker (no new tasks) or resumes it; a retiring worker is left
        alone (it is leaving anyway)."""
        ws = self.workers.get(address)
        status = "paused" if paused else "running"
        if ws is None or ws.status in ("retiring", status):
            return []
        return self.set_worker_status(address, status)

    def retire_workers(self, addresses: Iterable[str]) -> list:
        """Retire workers: they take no new tasks, and each is let go (``RetireWorker``) once empty."""
        out: list = []
        for address in addresses:
            out.extend(self.set_worker_status(address, "retiring"))
        return out

    def secede(self, address: str, key: Key) -> list:
        """A running task left its thread slot (it waits on other tasks): free the slot."""
        out: list = []
        ws = self.workers.get(address)
        if ws is not None:
            ws.seceded += 1
            self._fill_workers(out)
        return out

    def rejoin(self, address: str, key: Key) -> list:
        ws = self.workers.get(address)
        if ws is not None and ws.seceded > 0:
            ws.seceded -= 1
        return []

    def task_finished(
        self,
        key: Key,
        worker: str,
        nbytes: int = 0,
        start: float = 0.0,
        stop: float = 0.0,
        attempt: Optional[int] = None,
        held: bool = False,
    ) -> list:
        """``key`` finished on ``worker``; ``held``: the worker kept the result (lineage.py)."""
        out: list = []
        ws = self.workers.get(worker)
        ts = self._accept_report(key, ws, stop, out, attempt)
        if ts is None:
            return out  # a stale result (cancelled, or rerun elsewhere): the shell discarded it
        ts.state = "memory"
        self.counts["memory"] += 1
        ts.nbytes = nbytes
        if ws is not None:
            ts.add_holder(worker)
            ws.has.add(key)
        if held and ws is not None:
            self._hold(ts, out)  # keeps run_spec, pins the dependencies
        elif ts.run_spec is not None:
            out.append(from_fields(ReleaseArguments, (ts.run_spec,)))
            ts.run_spec = None
        if stop >= start:  # (a clock that went back says nothing)
            self.prefix_durations.record(ts.prefix, stop - start)
        if ts.who_wants and not ts.held_depth:
            out.append(from_fields(Report, (key, tuple(ts.who_wants), "memory", None, None)))
        for dep_key in ts.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is not None:
                dep.discard_waiter(key)
                self._maybe_forget(dep, out)
        if ts.dependents:
            for dependent_key in list(ts.dependents):
                self._dependency_ready(self.tasks[dependent_key], key)
        self._maybe_forget(ts, out)
        self._fill_workers(out)
        return out

    def task_erred(
        self,
        key: Key,
        worker: str,
        exception: Any = None,
        traceback: Any = None,
        start: float = 0.0,
        stop: float = 0.0,
        attempt: Optional[int] = None,
    ) -> list:
        out: list = []
        ts = self._accept_report(key, self.workers.get(worker), stop, out, attempt)
        if ts is None:
            return out
        if ts.retries > 0:
            ts.retries -= 1
            self._to_queued(ts)
        else:
            self._set_erred(ts, exception, traceback, out)
        self._fill_workers(out)
        return out

    def task_rescheduled(
        self, key: Key, worker: str, stop: float = 0.0, attempt: Optional[int] = None
    ) -> list:
        """The task raised ``Reschedule``: back to the queue, neither an error nor a retry."""
        out: list = []
        ts = self._accept_report(key, self.workers.get(worker), stop, out, attempt)
        if ts is not None:
            self._to_queued(ts)
            self._fill_workers(out)
        return out

    def _accept_report(
        self,
        key: Key,
        ws: Optional[WorkerState],
        stop: float,
        out: list,
        attempt: Optional[int] = None,
    ):
        """A worker reported on ``key``: free its slot; return the task if the report is current (it
        then leaves ``processing``), or None for a stale one (after filling the freed slot)."""
        ts = self.tasks.get(key)
        if ts is None or ws is None or ts.state != "processing" or ts.processing_on != ws.address:
            if ws is not None:
                self._free_slot(ws, key, stop)
            self._fill_workers(out)
            return None
        if attempt is not None and attempt != ts.attempt:
            return None  # an earlier attempt's late report: the slot is the current attempt's
        self._free_slot(ws, key, stop)
        self._leave_state(ts)
        return ts

    def restart(self) -> list:
        """Forget every task (clients see their futures cancelled); workers stay registered."""
        out: list = []
        for ts in list(self.tasks.values()):
            if ts.who_wants:
                out.append(Report(ts.key, tuple(ts.who_wants), "cancelled"))
                ts.who_wants = NO_KEYS
        for ts in list(self.tasks.values()):
            self._forget(ts, out)
        for ws in self.workers.values():
            ws.processing.clear()
            ws.has.clear()
            ws.seceded = 0
            ws.available = dict(ws.resources)
        self.ready.clear()
        self.restricted.clear()
        self._publishing.clear()
        self._aside.clear()
        self._steals.clear()
        self._thieves_waiting.clear()
        return out
