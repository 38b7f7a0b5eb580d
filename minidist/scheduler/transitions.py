"""The steps every event of ``SchedulerState`` is made of: a task leaves a state, is queued, errs (and
its dependents with it), is forgotten; a worker's slot is freed.

    events (state.py) ──► these steps ──► instructions appended to ``out`` (Report, Forget, FreeOnWorker)
                                     └──► placement (placement.py) fills the freed slots

Private to the scheduler package: nothing outside ``minidist/scheduler/`` calls them; every change from
outside is an event of ``SchedulerState``.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Hashable, Iterable, Iterator

from ..messages import NewTask, TaskColumns, from_fields
from .instructions import Forget, FreeOnWorker, ReleaseArguments, Report
from .placement import Placement, ready_entry
from .records import NO_KEYS, TaskState, WorkerState

Key = Hashable


class Transitions(Placement):
    # provided by SchedulerState
    counts: dict
    _sequence: Iterator[int]  # tasks in order of arrival (priority ties)
    _publishing: dict  # lineage.py
    _retire_holders: Callable[[Any], None]

    def _create_tasks(self, tasks: Iterable[NewTask], out: list) -> list[TaskState]:
        """A ``TaskState`` for each new task (update_graph links them next), in ``tasks``' order; a
        key that exists already is shared (pure keys: an equal task), this copy's arguments unused."""
        new: list[TaskState] = []
        known = self.tasks
        sequence = self._sequence
        if type(tasks) is TaskColumns and not tasks.special:
            # a map's or a graph's tasks with the default options, read from the columns: no
            # NewTask made for each (most of a large map's cost here)
            for key, dependencies, run_spec, prefix in zip(
                tasks.keys, tasks.dependencies, tasks.run_specs, tasks.prefixes
            ):
                if key in known:
                    if run_spec is not None:
                        out.append(ReleaseArguments(run_spec))
                    continue
                ts = TaskState(key, prefix)
                ts.run_spec = run_spec
                ts.priority = (0, next(sequence))  # priority 0, then first come first served
                if dependencies:
                    ts.dependencies = frozenset(dependencies)
                known[key] = ts
                new.append(ts)
            return new
        for spec in tasks:
            if spec.key in known:
                if spec.run_spec is not None:
                    out.append(ReleaseArguments(spec.run_spec))
                continue
            ts = TaskState(spec.key, spec.prefix)
            ts.run_spec = spec.run_spec
            ts.priority = (-spec.priority, next(sequence))
            ts.retries = spec.retries
            ts.restrictions = spec.workers or None
            ts.loose = spec.allow_other_workers
            ts.resources = spec.resources or None
            if spec.dependencies:
                ts.dependencies = frozenset(spec.dependencies)
            known[spec.key] = ts
            new.append(ts)
        return new

    def _free_slot(self, ws: WorkerState, key: Key, now: float) -> None:
        if key in ws.processing:
            del ws.processing[key]
            ts = self.tasks.get(key)
            if ts is not None and ts.resources and ts.processing_on == ws.address:
                for name, amount in ts.resources.items():
                    ws.available[name] = ws.available.get(name, 0) + amount
            if not ws.processing:
                ws.idle_clock[0] = now
                self._idle_changed = True
                if ws.status == "retiring":
                    self._retired.append(ws.address)

    def _leave_state(self, ts: TaskState) -> None:
        """Undo the bookkeeping of the task's current state."""
        state = ts.state
        if state in self.counts:
            self.counts[state] -= 1
        if state == "queued":
            self.restricted.pop(ts.key, None)  # heap entries are dropped lazily
            if self._aside:
                self._aside.pop(ts.key, None)
        elif state == "processing":
            ws = self.workers.get(ts.processing_on) if ts.processing_on else None
            if ws is not None and ts.key in ws.processing:
                del ws.processing[ts.key]
                if ts.resources:
                    for name, amount in ts.resources.items():
                        ws.available[name] = ws.available.get(name, 0) + amount
                if not ws.processing and ws.status == "retiring":
                    self._retired.append(ws.address)  # its last task was cancelled or forgotten
            ts.processing_on = None
        ts.state = "released"

    def _to_queued(self, ts: TaskState) -> None:
        ts.state = "queued"
        self.counts["queued"] += 1
        if ts.restrictions or ts.resources:
            self.restricted[ts.key] = ts
        else:
            heapq.heappush(self.ready, ready_entry(ts))

    def _dependency_ready(self, ts: TaskState, dep_key: Key) -> None:
        ts.dependency_arrived(dep_key)
        if ts.state == "waiting" and not ts.waiting_on:
            self.counts["waiting"] -= 1
            self._to_queued(ts)

    def _set_erred(self, ts: TaskState, exception: Any, traceback: Any, out: list) -> None:
        """Err ``ts`` and, transitively, every dependent waiting for it."""
        stack = [ts]
        while stack:
            t = stack.pop()
            if t.state == "erred" or self.tasks.get(t.key) is not t:
                continue  # already erred, or forgotten meanwhile (nobody wanted it)
            if t.state != "released":
                self._leave_state(t)
            t.state = "erred"
            self.counts["erred"] += 1
            t.exception = exception
            t.traceback = traceback
            if t.who_wants:
                out.append(Report(t.key, tuple(t.who_wants), "erred", exception, traceback))
            for dep_key in t.dependencies:
                dep = self.tasks.get(dep_key)
                if dep is not None and t.key in dep.waiters:
                    dep.discard_waiter(t.key)
                    self._maybe_forget(dep, out)
            for dependent_key in t.dependents:
                dependent = self.tasks.get(dependent_key)
                if dependent is not None and dependent.state in ("waiting", "queued", "released"):
                    stack.append(dependent)
        self._maybe_forget(ts, out)

    def _maybe_forget(self, ts: TaskState, out: list) -> None:
        if ts.who_wants or ts.waiters or ts.pins:
            return
        # nobody wants it and no pending dependent needs it: drop it whatever its state (a running
        # copy is told to stop and its result will be discarded)
        self._forget(ts, out)
        for dep_key in ts.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is not None:
                dep.discard_waiter(ts.key)
                dep.discard_dependent(ts.key)
                self._maybe_forget(dep, out)

    def _forget(self, ts: TaskState, out: list) -> None:
        if self.tasks.get(ts.key) is not ts:
            return
        worker = ts.processing_on
        self._leave_state(ts)
        if worker is not None and worker in self.workers:
            out.append(from_fields(FreeOnWorker, (worker, (ts.key,))))
        for w in ts.who_has:
            ws = self.workers.get(w)
            if ws is not None:
                ws.has.discard(ts.key)
                if w != worker:
                    out.append(FreeOnWorker(w, (ts.key,)))
        held = ts.held_depth
        if held:
            ts.held_depth = 0
            self._publishing.pop(ts.key, None)
            self._retire_holders(ts.who_has)  # a retiring holder waited for this one
        ts.who_has = NO_KEYS
        for dep_key in ts.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is not None:
                dep.discard_dependent(ts.key)
                dep.discard_waiter(ts.key)
                if held:
                    dep.pins -= 1  # its lineage is not needed any more
        del self.tasks[ts.key]
        ts.state = "forgotten"
        out.append(from_fields(Forget, (ts.key, ts.run_spec)))
