"""Held results: large results that stay in the memory of the worker that made them, and the lineage that
makes them safe to lose.

A process worker may keep a large result to itself instead of writing it into shared memory (the
``Execute`` says whether it may: nobody outside wants the key, and the chain of held results behind it is
short). Such a key is in memory with ``held_depth > 0``, one holder in ``who_has`` and nothing in the
scheduler's store; a dependent on the same worker reads the object itself::

    finished, held ──► held_depth = 1 + deepest held dependency; each dependency pinned (pins += 1)
      a client wants it / a dependent must run elsewhere (or will: most of its other inputs are
      on another worker) / its worker retires
        ──► Publish(holder) ──► published(): an ordinary result from then on; pins released
      its worker dies ──► still needed: back to waiting or queued (run_spec and pinned dependencies
                          were kept, recursively); not needed: forgotten; pins released in cascade

Pinned keys are never forgotten, so a lost held result can always be recomputed; the depth bound
(``placement.MAX_HELD_DEPTH``) keeps that lineage, and the memory it keeps, short. Mixed into
``SchedulerState`` like the other private steps; every change from outside is an event.
"""

from __future__ import annotations

import heapq
from typing import Any, Hashable, Iterable

from .instructions import Publish, ReleaseArguments, Report
from .placement import ready_entry
from .records import TaskState
from .transitions import Transitions

Key = Hashable


class Lineage(Transitions):
    # provided by SchedulerState
    _publishing: dict  # held key -> queued tasks set aside until it is published
    _aside: dict  # key of a task set aside -> (the held key it waits for, the worker it was for)

    # ------------------------------------------------------------------------------------- queries

    def expects_publication(self, key: Key, worker: str) -> bool:
        """True if ``worker`` holds ``key`` and nobody published it yet (the shell stores the value)."""
        ts = self.tasks.get(key)
        return ts is not None and ts.held_depth > 0 and worker in ts.who_has

    def _holds_results(self, address: str) -> bool:
        ws = self.workers.get(address)
        if ws is None:
            return False
        tasks = self.tasks
        return any((ts := tasks.get(key)) is not None and ts.held_depth for key in ws.has)

    # ---------------------------------------------------------------------------------------- events

    def published(self, key: Key, worker: str) -> list:
        """``worker`` published its held ``key``: the scheduler stores its value from now on."""
        out: list = []
        ts = self.tasks.get(key)
        if ts is not None and ts.held_depth and worker in ts.who_has:
            self._unhold(ts, out)
            if ts.who_wants:
                out.append(Report(key, tuple(ts.who_wants), "memory"))
            self._maybe_forget(ts, out)
            self._retire_holders((worker,))
        self._fill_workers(out)
        return out

    def publication_failed(self, key: Key, worker: str, exception: Any, traceback: Any) -> list:
        """``worker`` could not publish ``key`` (its result cannot be pickled): the key errs, with
        the dependents waiting for it, as a task whose result cannot be sent does."""
        out: list = []
        ts = self.tasks.get(key)
        if ts is not None and ts.held_depth and worker in ts.who_has:
            self._unhold(ts, out, keep_spec=True)
            self._set_erred(ts, exception, traceback, out)
            self._retire_holders((worker,))
        self._fill_workers(out)
        return out

    # ------------------------------------------------------------------------------------ the steps

    def _hold(self, ts: TaskState, out: list) -> None:
        """``ts`` finished and its worker kept the result: keep its lineage (run_spec, dependencies)."""
        depth = 0
        for dep_key in ts.dependencies:
            dep = self.tasks[dep_key]
            dep.pins += 1
            if dep.held_depth > depth:
                depth = dep.held_depth
        ts.held_depth = depth + 1
        if ts.who_wants:  # a client came to want it while it ran
            self._request_publication(ts, out)
        # held inputs (this one or its siblings) that a dependent will read on another worker, now
        # that this one's place is known (placement.py): their workers publish them now, beside
        # their next task, rather than once that dependent is placed and set aside to wait
        for moving in self._held_inputs_to_move(ts):
            self._request_publication(moving, out)

    def _unhold(self, ts: TaskState, out: list, keep_spec: bool = False) -> None:
        """``ts`` is published (or erred, ``keep_spec``: a retry runs it again): its lineage can go."""
        ts.held_depth = 0
        if ts.run_spec is not None and not keep_spec:
            out.append(ReleaseArguments(ts.run_spec))
            ts.run_spec = None
        set_aside: list[TaskState] = self._publishing.pop(ts.key, [])
        for waiting in set_aside:
            key = waiting.key
            if self._aside.get(key, (None,))[0] == ts.key and self.tasks.get(key) is waiting:
                del self._aside[key]
                self._requeue(waiting)
        for dep_key in ts.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is not None:
                dep.pins -= 1
                self._maybe_forget(dep, out)

    def _request_publication(self, ts: TaskState, out: list) -> None:
        if ts.key not in self._publishing:
            self._publishing[ts.key] = []
            for holder in ts.who_has:
                out.append(Publish(holder, (ts.key,)))

    def _set_aside(self, ts: TaskState, address: str, out: list) -> None:
        """``ts`` was to run on ``address``, which lacks held dependencies: ask their holders to publish
        them; ``ts`` stays queued, out of the queue, until the first of them is published."""
        first = None
        for dep_key in ts.dependencies:
            dep = self.tasks[dep_key]
            if dep.held_depth and address not in dep.who_has:
                self._request_publication(dep, out)
                if first is None:
                    first = dep_key
        self.restricted.pop(ts.key, None)
        self._aside[ts.key] = (first, address)
        self._publishing[first].append(ts)

    def _requeue(self, ts: TaskState) -> None:
        if ts.restrictions or ts.resources:
            self.restricted[ts.key] = ts
        else:
            heapq.heappush(self.ready, ready_entry(ts))

    def _retire_holders(self, addresses: Iterable[str]) -> None:
        """Retiring workers that waited for their held results to go may go once empty."""
        for address in addresses:
            ws = self.workers.get(address)
            if ws is not None and ws.status == "retiring" and not ws.processing:
                self._retired.append(address)

    def _publish_all(self, address: str, out: list) -> None:
        """A retiring worker hands over what it holds before it goes."""
        ws = self.workers[address]
        for key in ws.has:
            ts = self.tasks.get(key)
            if ts is not None and ts.held_depth:
                self._request_publication(ts, out)

    def _lose_held(self, address: str, keys: Iterable[Key], out: list) -> None:
        """The worker ``address`` died (or left) with the only copy of held results: recompute those
        still needed (their lineage is pinned), forget the others."""
        tasks = self.tasks
        lost = {}
        for key in keys:
            ts = tasks.get(key)
            if ts is not None and ts.held_depth and not ts.who_has:
                lost[key] = ts
        if not lost:
            return
        # needed: wanted by a client or a pending dependent, pinned by a held result still alive, or
        # the lineage of a needed one
        needed: set = set()

        def need(ts: TaskState) -> None:
            if ts.key in needed:
                return
            needed.add(ts.key)
            for dep_key in ts.dependencies:
                if dep_key in lost:
                    need(lost[dep_key])

        for ts in lost.values():
            lost_pinners = sum(1 for d in ts.dependents if d in lost)
            if ts.who_wants or ts.waiters or ts.pins > lost_pinners:
                need(ts)
        for ts in lost.values():
            self._leave_state(ts)  # memory -> released
            self._publishing.pop(ts.key, None)  # tasks set aside for it wait for it below
            ts.held_depth = 0
            for dep_key in ts.dependencies:
                dep = tasks[dep_key]
                dep.pins -= 1
                if ts.key in needed:
                    dep.add_waiter(ts.key)
        for key in needed:
            ts = lost[key]
            for dependent_key in ts.waiters:
                dependent = tasks.get(dependent_key)
                if dependent is None:
                    continue
                if dependent.state == "queued":
                    self._leave_state(dependent)
                    dependent.state = "waiting"
                    self.counts["waiting"] += 1
                if dependent.state == "waiting":
                    dependent.add_waiting_on(key)
            for dep_key in ts.dependencies:
                if tasks[dep_key].state != "memory":
                    ts.add_waiting_on(dep_key)
            if ts.waiting_on:
                ts.state = "waiting"
                self.counts["waiting"] += 1
            else:
                self._to_queued(ts)
        for ts in lost.values():
            if ts.key not in needed:
                self._maybe_forget(ts, out)
