"""Placement: which queued task goes to which worker, how many each may hold, and work stealing.

Mixed into ``SchedulerState`` (pure, like it). Three rules:

1. **Highest priority first.** Unrestricted queued tasks sit in a heap ordered by (user priority,
   submission order); tasks with worker restrictions or resources are scanned separately.
2. **Keep workers busy, not flooded.** A worker may hold its running tasks plus a prefetch queue, so a
   finished task is followed at once by the next without a round trip. How deep depends on how long
   the task's prefix usually takes: slow tasks get ``prefetch`` (2) extra, tiny ones enough to cover
   about ``PREFETCH_SECONDS`` of work (capped), which turns thousands of tiny tasks into a few large
   batched messages instead of a ping-pong per task.
3. **Data locality, then balance.** Among workers with room, prefer the one already holding most bytes
   of the task's dependencies, then the least loaded. A dependency that lives only in another worker's
   memory (a held result, ``lineage.py``) must be published first (the task waits aside until it is),
   so the worker needing no new publication comes first, and may take the task a little beyond its
   room when it is busy, or well beyond when publishing would cost the holder more than the work it
   would take off it. A held input that a dependent will read elsewhere (most of that dependent's
   other inputs run or are held on another worker) is published as soon as that is clear. A task
   without dependencies goes where most of its siblings (the other inputs of its dependents) run or
   are held, so their dependent need not move any of them. An idle worker steals prefetched (not yet
   started) tasks from the busiest one, so a deep prefetch never leaves a core idle.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from ..messages import from_fields
from .instructions import AskToRelease, Execute, RetireWorker
from .records import BUSY, RunningMeans

if TYPE_CHECKING:
    from .state import TaskState, WorkerState

# a task whose dependencies form a chain of this many results held by workers only publishes its own
# result (lineage.py): what a worker's death could make us recompute stays bounded
MAX_HELD_DEPTH = 3
PREFETCH_SECONDS = 0.005  # how much queued work a worker may hold for tasks known to be tiny
MAX_PREFETCH = 256
# what moving a held result to another worker costs per byte: its holder writes it into shared memory,
# the reader maps it and faults its pages in (about 0.25 ms per MB on this 2-core machine, fresh
# segments more, recycled ones less); a short task whose inputs would cost more stays with them
PUBLISH_SECONDS_PER_BYTE = 0.25e-9
# and per key published, whatever its size: the Publish and Published messages, the scheduler's turns
# for them, the dependent's wait aside and its second placement
PUBLISH_SECONDS = 0.3e-3
MAX_FAMILY = 64  # root placement looks at siblings only for dependents of at most this many inputs


def ready_entry(ts: TaskState) -> tuple:
    """A queued task's entry in the heap of ready tasks: the fields of its priority, then its key. Flat:
    a pop among 100,000 entries compares ~17 pairs of them, and ``(priority, key)`` pairs compare their
    nested priorities twice (equality, then order), which doubles the cost of a pop."""
    priority = ts.priority
    return (priority[0], priority[1], ts.key)


class Placement:
    # provided by SchedulerState
    tasks: dict
    workers: dict
    ready: list
    restricted: dict
    prefetch: int
    work_stealing: bool  # False (dask config distributed.scheduler.work-stealing): no steals
    prefix_durations: RunningMeans
    _retired: list
    _idle_changed: bool  # a worker emptied or arrived since the last fill: stealing may help
    _placement_held: bool  # state.hold_placement: fills wait for resume_placement
    _steals: dict  # key -> (victim, thief) for tasks a victim was asked to give back
    _thieves_waiting: set  # idle workers whose steal is in flight (they ask for nothing more)
    _aside: dict  # lineage.py: queued tasks waiting for a dependency to be published
    _publishing: dict  # lineage.py: held keys asked to be published
    _leave_state: Callable[[TaskState], None]
    _to_queued: Callable[[TaskState], None]
    _set_aside: Callable[[TaskState, str, list], None]
    _request_publication: Callable[[TaskState, list], None]
    cannot_start: Optional[
        tuple
    ]  # state.fail_pending: (exception, traceback) while no worker can start
    _set_erred: Callable[[TaskState, Any, Any, list], None]
    _holds_results: Callable[[str], bool]

    # ------------------------------------------------------------------------------------ capacity

    def prefetch_for(self, prefix: str, nthreads: int) -> int:
        """Extra queued tasks a worker may hold beyond its threads, for tasks of ``prefix``."""
        duration = self.prefix_durations.get(prefix)
        if duration is None or duration * 4 >= PREFETCH_SECONDS:
            return self.prefetch
        return max(
            self.prefetch, min(MAX_PREFETCH, int(PREFETCH_SECONDS / max(duration, 1e-6)) * nthreads)
        )

    def worker_capacity(self, ws: WorkerState, prefix: Optional[str] = None) -> int:
        """How many tasks ``ws`` may hold (running + queued); the largest if ``prefix`` is None."""
        base = ws.nthreads + ws.seceded
        if prefix is None:
            return base + max(self.prefetch, MAX_PREFETCH)
        return base + self.prefetch_for(prefix, ws.nthreads)

    def task_capacity(self, ws: WorkerState, ts: TaskState) -> int:
        """How many tasks ``ws`` may hold when it is given ``ts``. Root tasks of a graph (no
        dependencies, results other tasks consume) get the shallow prefetch: they are all ready at
        once, and a worker runs its queue in order, so a deep queue of them would run ahead of the
        graph's priorities (a reduction would make many chunks before summing any); durations learned
        from one graph's tiny tasks would also deepen another's large ones."""
        if ts.dependents and not ts.dependencies:
            return ws.nthreads + ws.seceded + self.prefetch
        return self.worker_capacity(ws, ts.prefix)

    def _has_room(self, ws: WorkerState, ts: TaskState) -> bool:
        return ws.status == "running" and len(ws.processing) < self.task_capacity(ws, ts)

    # ------------------------------------------------------------------------------------ choosing

    def _runnable_on(self, ts: TaskState, ws: WorkerState) -> bool:
        if ts.restrictions:
            if ws.address not in ts.restrictions and ws.name not in ts.restrictions:
                return False
        if ts.resources:
            for name, amount in ts.resources.items():
                if ws.available.get(name, 0) < amount:
                    return False
        return True

    def _score(self, ts: TaskState, ws: WorkerState) -> tuple:
        """Lower is better: fewest bytes other workers would have to publish for it (held results not
        yet asked for, lineage.py), then most dependency data held, then least loaded."""
        held = 0
        to_publish = 0
        for dep_key in ts.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is None:
                continue
            if ws.address in dep.who_has:
                held += dep.nbytes + 1
            elif dep.held_depth and dep_key not in self._publishing:
                to_publish += dep.nbytes + 1
        return (to_publish, -held, len(ws.processing) / max(ws.nthreads, 1))

    def _root_worker(
        self, ts: TaskState, candidates: list, running: list, limits: list
    ) -> WorkerState:
        """The worker for a task without dependencies: the one that runs or holds most of its
        *siblings* (the other dependencies of its dependents: the chunks one merge or one ``x + x.T``
        pair combines), so their dependent finds its inputs in one place rather than having half of
        them published, even beyond its room (by ``prefetch`` tasks, or the family's size); else the
        least loaded. Only small families are looked at, and about ``MAX_FAMILY`` siblings per task
        at most (a reduction of thousands of leaves gains nothing from it, and a chunk of a matrix
        product has as many dependents as its row has chunks: a full look would cost the square)."""
        if len(candidates) == 1:
            least = candidates[0]
        else:
            least = min(candidates, key=lambda w: len(w.processing) / w.nthreads)
        dependents = ts.dependents
        if not dependents or len(dependents) > MAX_FAMILY:
            return least
        tasks = self.tasks
        here: dict = {}
        family = 0
        for dependent in self._small_families(dependents):
            family = max(family, len(dependent.dependencies))
            for sibling_key in dependent.dependencies:
                sibling = tasks.get(sibling_key)
                if sibling is not None and sibling is not ts:
                    _count_place(sibling, here)
        if not here:
            return least
        beyond = max(self.prefetch, family - 1)  # room enough for the whole family
        best, most = least, here.get(least.address, 0)
        for ws, limit in zip(running, limits):
            count = here.get(ws.address, 0)
            if count > most and len(ws.processing) < limit + beyond:
                best, most = ws, count
        return best

    def _assign(
        self,
        ts: TaskState,
        ws: WorkerState,
        out: list,
        redirect: bool = True,
    ) -> None:
        """Hand ``ts`` to ``ws``, or (``redirect``) to a worker that needs no publication of its held
        dependencies, or to the one holding them when waiting for it costs less than publishing."""
        missing = []
        depth = 0  # the longest chain of held results among the dependencies
        for dep_key in ts.dependencies:
            dep = self.tasks[dep_key]
            if ws.address not in dep.who_has:
                if dep.held_depth:
                    # held by another worker only: rather than have it published, use a worker
                    # that needs no new publication, a little beyond its room (unless the chosen
                    # one is idle: an idle worker takes work, or stealing would bounce it back)
                    busy = redirect and ws.processing
                    other = self._no_publication_worker(ts, ws) if busy else None
                    holder = (
                        self._holder_to_wait_for(ts, ws) if other is None and redirect else None
                    )
                    if holder is not None:
                        # publishing would take longer than the holder's queue, or cost the holder
                        # more than the work it moves (a slice of a large held result): the task
                        # joins that queue, beyond the holder's room
                        other = holder
                    if other is not None:
                        self._assign(ts, other, out, redirect=False)
                    else:
                        self._set_aside(ts, ws.address, out)  # lineage.py
                    return
                missing.append(dep)
            elif dep.held_depth > depth:
                depth = dep.held_depth
        self.counts["queued"] -= 1  # type: ignore[attr-defined]
        self.counts["processing"] += 1  # type: ignore[attr-defined]
        ts.state = "processing"
        ts.processing_on = ws.address
        ws.processing[ts.key] = None
        ws.idle_clock[0] = BUSY
        if ts.resources:
            for name, amount in ts.resources.items():
                ws.available[name] = ws.available.get(name, 0) - amount
        for dep in missing:
            dep.add_holder(ws.address)
            ws.has.add(dep.key)
        ts.attempt += 1
        if depth:
            # ts's place is known now: held inputs of its dependents that will be read on another
            # worker are published at once, while ts runs, rather than once the dependent is placed
            # and set aside to wait for them (lineage.py does the same when ts is held)
            for moving in self._held_inputs_to_move(ts):
                self._request_publication(moving, out)
        out.append(
            from_fields(
                Execute,
                (
                    ws.address,
                    ts.key,
                    ts.run_spec,
                    tuple(ts.dependencies),
                    tuple([dep.key for dep in missing]) if missing else (),
                    ts.attempt,
                    not ts.who_wants and depth < MAX_HELD_DEPTH,  # may_hold
                ),
            )
        )

    def _small_families(self, dependent_keys) -> Iterator[TaskState]:
        """The dependents among ``dependent_keys`` that have at most ``MAX_FAMILY`` inputs, until
        about ``MAX_FAMILY`` inputs were looked at in all, whatever the graph's shape."""
        tasks = self.tasks
        looked = 0
        for key in dependent_keys:
            dependent = tasks.get(key)
            if dependent is None or len(dependent.dependencies) > MAX_FAMILY:
                continue
            if looked >= MAX_FAMILY:
                return
            looked += len(dependent.dependencies)
            yield dependent

    def _held_inputs_to_move(self, ts: TaskState) -> list:
        """The held inputs, not asked for yet, of ``ts``'s dependents that will have to move: those
        not on the worker that runs or holds a clear majority of that dependent's inputs, where it
        will run (each of rechunk's final chunks reads a slice of every merge, and the merges are
        on both workers). Only small families are looked at, about ``MAX_FAMILY`` inputs in all."""
        tasks = self.tasks
        moving = []
        for dependent in self._small_families(ts.dependents):
            where: dict = {}
            inputs = []
            for input_key in dependent.dependencies:
                inp = tasks.get(input_key)
                if inp is None:
                    continue
                inputs.append(inp)
                _count_place(inp, where)
            if len(where) < 2:
                continue
            ranked = sorted(where.values())
            if ranked[-1] == ranked[-2]:
                continue  # no clear place yet
            target = max(where, key=where.__getitem__)
            for inp in inputs:
                if inp.held_depth and target not in inp.who_has and inp.key not in self._publishing:
                    moving.append(inp)
        return moving

    def _holder_to_wait_for(self, ts: TaskState, ws: WorkerState) -> Optional[WorkerState]:
        """The worker holding most bytes of the held dependencies ``ts`` would need published to run
        on ``ws``, if ``ts`` had better join that worker's queue (beyond its room, and no idle
        worker steals it). Two reasons, each comparing what publishing them costs (their bytes at
        ``PUBLISH_SECONDS_PER_BYTE`` plus ``PUBLISH_SECONDS`` each):

        - it is more than the work the publication would let leave that worker: their unfinished
          dependents not queued there already (``ts`` among them), at ``ts``'s usual duration. The
          holder pays the publication, so an idle ``ws`` would save it nothing: rechunk's 1 ms
          slices of a 96 MB merge, a merge of three 4 MB slices two of which one worker holds,
          stay there; a thousand tasks reading one large result do not;
        - it takes longer than that worker's queue takes to drain (the usual durations of its
          tasks' prefixes), so that queue stays shorter than a publication takes.

        None: publish (also when how long tasks take is not known yet, or the holder's queue is as
        deep as any may be)."""
        durations = self.prefix_durations
        duration = durations.get(ts.prefix)
        if duration is None:
            return None
        tasks = self.tasks
        nbytes = 0
        needed = []
        by_holder: dict = {}  # address -> bytes it would publish
        for dep_key in ts.dependencies:
            dep = tasks.get(dep_key)
            if (
                dep is None
                or not dep.held_depth
                or ws.address in dep.who_has
                or dep_key in self._publishing
            ):
                continue
            nbytes += dep.nbytes
            needed.append(dep)
            for address in dep.who_has:
                by_holder[address] = by_holder.get(address, 0) + dep.nbytes
        holder, most = None, 0
        for address, held in by_holder.items():
            other = self.workers.get(address)
            if other is not None and other.status == "running" and held > most:
                holder, most = other, held
        if (
            holder is None
            or len(holder.processing) >= self.worker_capacity(holder)
            or not self._runnable_on(ts, holder)
        ):
            return None
        keys = 0
        movable = 1  # ts itself
        for dep in needed:
            if holder.address in dep.who_has:
                keys += 1
                if keys <= 4:  # a few inputs tell; each look reads up to MAX_FAMILY dependents
                    movable = max(movable, self._movable_dependents(dep, holder.address))
        if most * PUBLISH_SECONDS_PER_BYTE + keys * PUBLISH_SECONDS >= movable * duration:
            return holder
        budget = (nbytes * PUBLISH_SECONDS_PER_BYTE + len(needed) * PUBLISH_SECONDS) * max(
            holder.nthreads, 1
        )
        backlog = 0.0
        for key in holder.processing:
            queued = tasks.get(key)
            if queued is not None:
                backlog += durations.get(queued.prefix, 0.0)
                if backlog >= budget:
                    return None
        return holder

    def _movable_dependents(self, dep: TaskState, address: str) -> int:
        """About how many unfinished dependents of ``dep`` are not queued on ``address`` (counted
        among the first ``MAX_FAMILY``, scaled to all)."""
        waiters = dep.waiters
        looked = elsewhere = 0
        tasks = self.tasks
        for key in waiters:
            if looked >= MAX_FAMILY:
                break
            looked += 1
            waiter = tasks.get(key)
            if waiter is not None and waiter.processing_on != address:
                elsewhere += 1
        if looked == 0:
            return 0
        return elsewhere * len(waiters) // looked

    def _no_publication_worker(self, ts: TaskState, chosen: WorkerState) -> Optional[WorkerState]:
        """A running worker other than ``chosen`` for which no held dependency of ``ts`` must be newly
        published (each is held there or already asked for), with room for ``prefetch`` more tasks
        than usual: a publication costs more than a short wait in its queue."""
        tasks = self.tasks
        for ws in self.workers.values():
            if (
                ws is chosen
                or ws.status != "running"
                or len(ws.processing) >= self.task_capacity(ws, ts) + self.prefetch
                or not self._runnable_on(ts, ws)
            ):
                continue
            for dep_key in ts.dependencies:
                dep = tasks[dep_key]
                if dep.held_depth and ws.address not in dep.who_has:
                    if dep_key not in self._publishing:
                        break
            else:
                return ws
        return None

    # --------------------------------------------------------------------------------------- filling

    def _fail_queued(self, exception, traceback, out: list) -> None:
        """No worker exists nor can start (``fail_pending``): err every queued task at once."""
        queued = [entry[2] for entry in self.ready] + list(self.restricted) + list(self._aside)
        self.ready.clear()
        for key in queued:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "queued":
                self._set_erred(ts, exception, traceback, out)

    def _fill_workers(self, out: list) -> None:
        """Hand queued tasks to workers with room, highest priority first; then let idle workers steal."""
        if self._placement_held:
            return  # resume_placement fills once for the whole batch
        while self._retired:
            address = self._retired.pop()
            if not self._holds_results(address):  # else it goes once they are published
                out.append(RetireWorker(address))
        if not self.ready and not self.restricted and not self._idle_changed:
            return  # nothing queued and no worker just went idle: nothing to place or steal
        self._idle_changed = False
        running = [ws for ws in self.workers.values() if ws.status == "running"]
        if not running:
            if self.cannot_start is not None and not self.workers:
                exception, traceback = self.cannot_start
                self._fail_queued(exception, traceback, out)
            return
        if self.restricted:
            self._fill_restricted(running, out)
        ready, tasks, restricted, aside = self.ready, self.tasks, self.restricted, self._aside
        # A worker's capacity for a task depends only on the task's prefix and on whether it is a
        # graph's root (task_capacity), and nothing here changes either during one fill: the
        # capacities are computed once per kind of task instead of once per task and worker.
        capacities: dict = {}
        while ready:
            # peek, pop only what is placed or stale: a task no worker has room for stays in the
            # heap as it was (a pop and a push back would cost two heap walks per fill)
            key = ready[0][2]
            ts = tasks.get(key)
            if ts is None or ts.state != "queued" or key in restricted or key in aside:
                heapq.heappop(ready)  # stale entry (heap entries are dropped lazily)
                continue
            kind = (ts.prefix, bool(ts.dependents) and not ts.dependencies)
            limits = capacities.get(kind)
            if limits is None:
                limits = capacities[kind] = [self.task_capacity(ws, ts) for ws in running]
            candidates = [ws for ws, limit in zip(running, limits) if len(ws.processing) < limit]
            if not candidates:
                break
            heapq.heappop(ready)
            if ts.dependencies:
                if len(candidates) == 1:
                    ws = candidates[0]
                else:
                    ws = min(candidates, key=lambda w: self._score(ts, w))
            elif ts.dependents and len(running) > 1:
                ws = self._root_worker(ts, candidates, running, limits)
            elif len(candidates) == 1:
                ws = candidates[0]
            else:
                ws = min(candidates, key=lambda w: len(w.processing) / w.nthreads)
            self._assign(ts, ws, out)
        if not ready and len(running) > 1 and self.work_stealing:
            self._steal_for_idle(running, out)

    def _fill_restricted(self, running: list, out: list) -> None:
        for ts in sorted(self.restricted.values(), key=lambda t: t.priority):
            candidates = [w for w in running if self._has_room(w, ts) and self._runnable_on(ts, w)]
            if (
                not candidates
                and ts.loose
                and not any(self._runnable_on(ts, w) for w in self.workers.values())
            ):
                # allow_other_workers: none of the named workers exists, so any worker will do
                loose = ts.restrictions
                ts.restrictions = None
                candidates = [
                    w for w in running if self._has_room(w, ts) and self._runnable_on(ts, w)
                ]
                ts.restrictions = loose
            if not candidates:
                continue
            ws = min(candidates, key=lambda w: self._score(ts, w))
            del self.restricted[ts.key]
            self._assign(ts, ws, out)

    # -------------------------------------------------------------------------------------- stealing

    def _steal_for_idle(self, running: list, out: list) -> None:
        """Idle workers take prefetched tasks from the most loaded worker, in two steps.

        The scheduler's view of a worker lags behind it (results wait a little to share a message), so
        a task that looks queued here may already run there. Stealing therefore only asks the victim
        (``AskToRelease``) to give back tasks it has not started; ``queued_released`` requeues those
        it gave back, and an idle worker takes them then. A task never runs twice because of a steal.
        """
        if all(len(ws.processing) <= ws.nthreads + ws.seceded for ws in running):
            return  # nothing is queued behind a running task anywhere (a chain of single tasks)
        # a worker whose next tasks wait for a publication is about to be busy: it steals nothing
        expecting = {address for _, address in self._aside.values()} if self._aside else ()
        for thief in running:
            if (
                thief.processing
                or thief.address in self._thieves_waiting
                or thief.address in expecting
            ):
                continue
            victim = max(running, key=self._stealable_count)
            queued = self._stealable_count(victim)
            if victim is thief or queued < 1:
                return
            # half of the victim's queue, and at least one task: a single task queued behind a
            # long-running one (e.g. a task waiting on its own subtasks) must not wait for it
            keys: list = []
            for key in reversed(victim.processing):
                if len(keys) >= max(1, queued // 2):
                    break
                ts = self.tasks.get(key)
                if ts is None or ts.restrictions or ts.resources or key in self._steals:
                    continue
                if ts.dependencies and self._holder_to_wait_for(ts, thief) is not None:
                    continue  # its inputs would cost the thief more than the wait
                keys.append(key)
            if not keys:
                continue
            for key in keys:
                self._steals[key] = (victim.address, thief.address)
            self._thieves_waiting.add(thief.address)
            out.append(AskToRelease(victim.address, tuple(keys)))

    def _stealable_count(self, ws: WorkerState) -> int:
        """How many of a worker's tasks look queued behind its running ones and are not asked for yet."""
        asked = sum(1 for key in ws.processing if key in self._steals)
        return len(ws.processing) - ws.nthreads - ws.seceded - asked

    def queued_released(self, worker: str, released: tuple, kept: tuple) -> list:
        """The answer to ``AskToRelease``: requeue what ``worker`` gave back; the rest stays there."""
        out: list = []
        thieves: dict = {}
        for key in released + kept:
            claim = self._steals.pop(key, None)
            if claim is not None:
                self._thieves_waiting.discard(claim[1])
                thieves[key] = claim[1]
        for key in released:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "processing" and ts.processing_on == worker:
                self._leave_state(ts)
                self._to_queued(ts)
                thief = self.workers.get(thieves.get(key))
                if thief is not None and self._has_room(thief, ts):
                    # straight to the worker that asked: placement could send a task whose data
                    # the victim holds back to it, and the thief would ask again, and again
                    self._assign(ts, thief, out, redirect=False)
        self._idle_changed = True
        self._fill_workers(out)
        return out

    def _forget_steals(self, address: str) -> None:
        """A worker left: drop the steals it was asked for or waiting on."""
        for key, (victim, thief) in list(self._steals.items()):
            if address in (victim, thief):
                del self._steals[key]
                self._thieves_waiting.discard(thief)


def _count_place(ts: TaskState, counts: dict) -> None:
    """Count where ``ts`` runs, or else each worker that holds its result."""
    if ts.processing_on is not None:
        counts[ts.processing_on] = counts.get(ts.processing_on, 0) + 1
    else:
        for address in ts.who_has:
            counts[address] = counts.get(address, 0) + 1
