"""hypothesis drives SchedulerState alone: random events, checked invariants, no processes or sleeps.

A simulated cluster plays the shell's part: it keeps the tasks each worker was told to run and, when the
strategy says so, finishes (storing the result, or keeping it on the worker when allowed: a held
result), fails or loses them, and answers requests to publish held results. After every step the
invariants below must hold; at the end, once every client lets go, nothing may be left.
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from minidist.errors import KilledWorker, WorkerStartError
from minidist.scheduler.instructions import AskToRelease
from minidist.scheduler.placement import MAX_HELD_DEPTH
from minidist.scheduler.state import (
    Execute,
    Forget,
    FreeOnWorker,
    NewTask,
    Publish,
    ReleaseArguments,
    Report,
    RetireWorker,
    SchedulerState,
)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.state = SchedulerState(allowed_failures=2)
        self.running: dict[str, dict] = {}  # worker -> {key: may hold} as the shell sent them
        self.stored: set = set()  # keys whose value the shell stores (server.data)
        self.publish_asked: set = set()  # (worker, key) asked to publish, not answered yet
        self.steal_asks: list = []  # (victim, keys) asked back for an idle worker (work stealing)
        self.reports: dict = {}  # key -> last status reported to the client
        self.wanted: set = set()
        self.next_key = 0
        self.next_worker = 0
        self.forgotten: set = set()

    # ------------------------------------------------------------------------------------- plumbing

    def apply(self, instructions):
        for inst in instructions:
            if isinstance(inst, Execute):
                assert inst.worker in self.state.workers
                running = self.running.setdefault(inst.worker, {})
                assert inst.key not in running, "a task was sent twice to one worker"
                running[inst.key] = inst.may_hold
            elif isinstance(inst, AskToRelease):
                self.steal_asks.append((inst.worker, inst.keys))
            elif isinstance(inst, Publish):
                ts = self.state.tasks[inst.keys[0]]
                assert ts.held_depth and inst.worker in ts.who_has
                self.publish_asked.update((inst.worker, key) for key in inst.keys)
            elif isinstance(inst, FreeOnWorker):
                for key in inst.keys:
                    self.running.get(inst.worker, {}).pop(key, None)
            elif isinstance(inst, Report):
                assert "client" in inst.clients
                self.reports[inst.key] = inst.status
                if inst.status == "memory":  # the client reads it from the store
                    assert inst.key in self.stored, inst
            elif isinstance(inst, Forget):
                self.forgotten.add(inst.key)
                self.stored.discard(inst.key)
            elif isinstance(inst, RetireWorker):
                assert not any(w == inst.worker for w, _ in self.publish_asked)
                self.steal_asks = [(w, keys) for w, keys in self.steal_asks if w != inst.worker]
                self.apply(self.state.remove_worker(inst.worker, "retired", expected=True))
                self.running.pop(inst.worker, None)

    # ----------------------------------------------------------------------------------------- rules

    @rule(nthreads=st.integers(1, 3))
    def add_worker(self, nthreads):
        address = f"w{self.next_worker}"
        self.next_worker += 1
        self.running[address] = {}
        self.apply(self.state.add_worker(address, nthreads, name=address))

    @precondition(lambda self: len(self.state.workers) > 1)
    @rule(data=st.data())
    def retire_worker(self, data):
        address = data.draw(st.sampled_from(sorted(self.state.workers)))
        self.apply(self.state.retire_workers([address]))

    @precondition(lambda self: self.state.workers)
    @rule(data=st.data(), paused=st.booleans())
    def memory_pause(self, data, paused):
        address = data.draw(st.sampled_from(sorted(self.state.workers)))
        before = self.state.workers[address].status
        self.apply(self.state.set_memory_paused(address, paused))
        after = self.state.workers[address].status if address in self.state.workers else None
        if before == "retiring":
            assert after in ("retiring", None)  # the monitor leaves a retiring worker alone
        else:
            assert after == ("paused" if paused else "running")

    @invariant()
    def empty_retiring_workers_are_gone(self):
        for ws in self.state.workers.values():
            assert not (ws.status == "retiring" and not ws.processing), ws

    @precondition(lambda self: self.state.workers)
    @rule(data=st.data())
    def lose_worker(self, data):
        address = data.draw(st.sampled_from(sorted(self.state.workers)))
        self.running.pop(address, None)
        self.publish_asked = {(w, k) for w, k in self.publish_asked if w != address}
        self.steal_asks = [(w, keys) for w, keys in self.steal_asks if w != address]
        self.apply(self.state.remove_worker(address, "killed"))

    @rule(n=st.integers(1, 4), data=st.data())
    def submit(self, n, data):
        existing = [k for k, ts in self.state.tasks.items() if k in self.wanted]
        tasks = []
        for _ in range(n):
            key = f"t{self.next_key}"
            self.next_key += 1
            deps = (
                data.draw(st.lists(st.sampled_from(existing), max_size=3, unique=True))
                if existing
                else []
            )
            tasks.append(
                NewTask(
                    key, tuple(deps), run_spec=key, prefix="t", retries=data.draw(st.integers(0, 1))
                )
            )
            existing.append(key)
        keys = [t.key for t in tasks]
        self.wanted.update(keys)
        self.apply(self.state.update_graph(tasks, "client", keys))

    @precondition(lambda self: self.wanted)
    @rule(data=st.data())
    def submit_again(self, data):
        key = data.draw(st.sampled_from(sorted(self.wanted)))
        copy = NewTask(key, (), run_spec=("copy", key), prefix="t")
        out = self.state.update_graph([copy], "client", [key])
        if key in self.state.tasks and self.state.tasks[key].run_spec != copy.run_spec:
            # the existing task is shared: the copy's arguments are released at once
            assert ReleaseArguments(copy.run_spec) in out
        self.apply(out)

    @rule()
    def fail_pending(self):
        self.apply(self.state.fail_pending(WorkerStartError("no worker can start")))
        assert not any(
            ts.state in ("waiting", "queued", "processing") for ts in self.state.tasks.values()
        )

    @precondition(lambda self: self.wanted)
    @rule()
    def client_goes_away(self):
        self.apply(self.state.forget_client("client"))
        self.wanted.clear()
        assert not any("client" in ts.who_wants for ts in self.state.tasks.values())

    def finish(self, worker, key, held=False):
        if self.state.expects_result(key, worker) and not held:
            self.stored.add(key)  # the shell stores the value before the state hears of it
        self.apply(self.state.task_finished(key, worker, 8, 0.0, 0.1, held=held))

    @precondition(lambda self: any(self.running.values()))
    @rule(data=st.data(), ok=st.booleans(), hold=st.booleans())
    def finish_one(self, data, ok, hold):
        worker = data.draw(st.sampled_from(sorted(w for w, r in self.running.items() if r)))
        key = data.draw(st.sampled_from(sorted(self.running[worker])))
        may_hold = self.running[worker].pop(key)
        if ok:
            self.finish(worker, key, held=hold and may_hold)
        else:
            self.apply(self.state.task_erred(key, worker, ValueError(key), None, 0.0, 0.1))

    def answer_publication(self, worker, key, ok=True):
        self.publish_asked.discard((worker, key))
        if not self.state.expects_publication(key, worker):
            return  # forgotten, or its worker was lost meanwhile: the shell drops the value
        if ok:
            self.stored.add(key)
            self.apply(self.state.published(key, worker))
        else:
            self.apply(self.state.publication_failed(key, worker, ValueError(key), None))

    @precondition(lambda self: self.publish_asked)
    @rule(data=st.data(), ok=st.booleans())
    def publish_one(self, data, ok):
        worker, key = data.draw(st.sampled_from(sorted(self.publish_asked)))
        self.answer_publication(worker, key, ok)

    @precondition(lambda self: any(self.running.values()))
    @rule(data=st.data())
    def finish_a_batch(self, data):
        """One worker's batch of reports, as the shell handles it: placement held until the end."""
        worker = data.draw(st.sampled_from(sorted(w for w, r in self.running.items() if r)))
        keys = data.draw(st.lists(st.sampled_from(sorted(self.running[worker])), unique=True))
        self.state.hold_placement()
        for key in keys:
            if key not in self.running.get(worker, {}):
                continue  # freed by an earlier report of the batch (its dependent erred)
            may_hold = self.running[worker].pop(key)
            if data.draw(st.booleans()):
                self.finish(worker, key, held=may_hold and data.draw(st.booleans()))
            else:
                self.apply(self.state.task_erred(key, worker, ValueError(key), None, 0.0, 0.1))
        self.apply(self.state.resume_placement())

    @precondition(lambda self: self.steal_asks)
    @rule(data=st.data())
    def answer_steal(self, data):
        """The victim gives back the asked tasks it has not started (drawn), keeps the others."""
        victim, keys = self.steal_asks.pop(data.draw(st.integers(0, len(self.steal_asks) - 1)))
        running = self.running.get(victim, {})
        released = tuple(k for k in keys if k in running and data.draw(st.booleans()))
        for key in released:
            del running[key]
        kept = tuple(k for k in keys if k not in released)
        self.apply(self.state.queued_released(victim, released, kept))

    @precondition(lambda self: self.wanted)
    @rule(data=st.data())
    def release(self, data):
        key = data.draw(st.sampled_from(sorted(self.wanted)))
        self.wanted.discard(key)
        self.apply(self.state.client_releases("client", [key]))

    @precondition(
        lambda self: any(
            self.state.tasks[k].state == "erred" for k in self.wanted if k in self.state.tasks
        )
    )
    @rule(data=st.data())
    def retry(self, data):
        erred = sorted(
            k for k in self.wanted if k in self.state.tasks and self.state.tasks[k].state == "erred"
        )
        key = data.draw(st.sampled_from(erred))
        self.apply(self.state.retry([key]))

    @precondition(lambda self: self.wanted)
    @rule(data=st.data())
    def cancel(self, data):
        key = data.draw(st.sampled_from(sorted(self.wanted)))
        self.apply(self.state.cancel([key]))

    # ------------------------------------------------------------------------------------ invariants

    @invariant()
    def processing_matches_workers(self):
        state = self.state
        for ts in state.tasks.values():
            if ts.state == "processing":
                assert ts.processing_on in state.workers
                assert ts.key in state.workers[ts.processing_on].processing
        for ws in state.workers.values():
            for key in ws.processing:
                assert state.tasks[key].processing_on == ws.address
            assert len(ws.processing) <= state.worker_capacity(ws)

    @invariant()
    def nothing_runs_twice_at_once(self):
        seen: dict = {}
        for worker, running in self.running.items():
            for key in running:
                ts = self.state.tasks.get(key)
                if ts is not None and ts.state == "processing" and ts.processing_on == worker:
                    assert key not in seen
                    seen[key] = worker

    @invariant()
    def counts_match(self):
        actual: dict = {}
        for ts in self.state.tasks.values():
            actual[ts.state] = actual.get(ts.state, 0) + 1
        for name, count in self.state.counts.items():
            assert count == actual.get(name, 0), (name, count, actual)

    @invariant()
    def waiting_tasks_wait_on_pending_dependencies(self):
        for ts in self.state.tasks.values():
            if ts.state == "waiting":
                assert ts.waiting_on
                for dep in ts.waiting_on:
                    assert self.state.tasks[dep].state != "memory"
            if ts.state in ("queued", "processing"):
                for dep in ts.dependencies:
                    assert self.state.tasks[dep].state == "memory"
            if ts.state == "processing":  # a held dependency is read where it is held
                for dep in ts.dependencies:
                    held = self.state.tasks[dep]
                    assert not held.held_depth or ts.processing_on in held.who_has

    @invariant()
    def held_results_keep_their_lineage(self):
        state = self.state
        for ts in state.tasks.values():
            if ts.held_depth:
                assert ts.state == "memory" and ts.key not in self.stored, ts
                assert len(ts.who_has) == 1 and next(iter(ts.who_has)) in state.workers
                assert ts.run_spec is not None  # it can be computed again
                assert ts.held_depth <= MAX_HELD_DEPTH
                for dep in ts.dependencies:
                    assert dep in state.tasks  # pinned: nothing it was made from is forgotten
            elif ts.state == "memory":
                assert ts.key in self.stored, ts
            pinned_by = sum(1 for d in ts.dependents if state.tasks[d].held_depth)
            assert ts.pins == pinned_by, (ts, ts.pins, pinned_by)
        for key in state._publishing:
            ts = state.tasks[key]
            assert ts.held_depth
            assert (next(iter(ts.who_has)), key) in self.publish_asked
        for key, (held, _) in state._aside.items():
            assert state.tasks[key].state == "queued" and held in state._publishing

    @invariant()
    def links_agree(self):
        # dependents point back through their dependencies; waiters are dependents (records.py lets
        # the two share one set while they are equal)
        tasks = self.state.tasks
        for ts in tasks.values():
            for key in ts.dependents:
                assert key in tasks and ts.key in tasks[key].dependencies, (ts, key)
            for key in ts.waiters:
                assert key in ts.dependents, (ts, key, ts.waiters, ts.dependents)
            for key in ts.waiting_on:
                assert key in ts.dependencies, (ts, key)

    @invariant()
    def idle_workers_mean_no_runnable_work(self):
        state = self.state
        for ts in state.tasks.values():
            if ts.state == "queued" and ts.key not in state._aside:
                assert all(
                    len(w.processing) >= state.worker_capacity(w, ts.prefix)
                    for w in state.workers.values()
                    if w.status == "running"
                )

    def teardown(self):
        # settle: workers finish everything, then the client lets go of everything
        state = self.state
        if not any(w.status == "running" for w in state.workers.values()):
            self.add_worker(1)  # every worker may be retiring: someone must run what is queued
        for _ in range(500):
            if self.publish_asked:
                self.answer_publication(*min(self.publish_asked))
                continue
            pending = [(w, k) for w, r in self.running.items() for k in r]
            if pending:
                worker, key = pending[0]
                may_hold = self.running[worker].pop(key)
                self.finish(worker, key, held=may_hold)
            elif self.steal_asks:  # nothing left to give back
                victim, keys = self.steal_asks.pop()
                self.apply(state.queued_released(victim, (), keys))
            else:
                break
        for key in self.wanted:
            ts = state.tasks.get(key)
            if ts is not None:
                assert ts.state in ("memory", "erred"), ts
                expected = "memory" if ts.state == "memory" else "erred"
                assert not ts.held_depth
                assert self.reports.get(key) == expected
                if expected == "erred":
                    assert isinstance(
                        ts.exception, (ValueError, KilledWorker, KeyError, WorkerStartError)
                    )
        self.apply(state.client_releases("client", list(self.wanted)))
        assert not state.tasks, state.tasks
        for ws in state.workers.values():
            assert not ws.has and not ws.processing


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(
    max_examples=int(os.environ.get("MINIDIST_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
)
