"""hypothesis drives the coordination state alone (``scheduler/coordination.py``): random acquires,
releases, puts, gets, sets, give-ups and departures of clients and workers, checked after every step.

The invariants are the promises the shell relies on: a request is answered at most once and never
after it was withdrawn; a semaphore never has more holders than leases, and never keeps a waiter while
a lease is free; a queue never keeps a getter it could serve or a putter it has room for; the keys a
holder wants are exactly the keys of the values it holds, and a getter is made to want a value's keys
before the holder lets go of them.
"""

from __future__ import annotations

import collections
import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from minidist.scheduler.coordination import Answer, Coordination, Owner, Packed, Unwant, Want

CLIENTS = ("c1", "c2")
WORKERS = (None, "w1", "w2")
KEYS = ("k1", "k2", "k3")


class CoordinationMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.state = Coordination()
        self.tokens = itertools.count()
        self.answered: dict = {}  # token -> value
        self.parked: set = set()  # tokens waiting
        self.withdrawn: set = set()
        self.wants: dict = collections.defaultdict(collections.Counter)  # owner -> key -> count

    def apply(self, token, instructions: list) -> None:
        for inst in instructions:
            if type(inst) is Answer:
                assert inst.token not in self.answered, "a request was answered twice"
                assert inst.token not in self.withdrawn, "a withdrawn request was answered"
                self.answered[inst.token] = inst.value
                self.parked.discard(inst.token)
            elif type(inst) is Want:
                for key in inst.keys:
                    self.wants[inst.owner][key] = 1
            elif type(inst) is Unwant:
                for key in inst.keys:
                    assert self.wants[inst.owner][key], (
                        f"{inst.owner} let go of {key} it never held"
                    )
                    del self.wants[inst.owner][key]
        if token is not None and token not in self.answered:
            self.parked.add(token)

    def ask(self, method: str, *args) -> None:
        token = next(self.tokens)
        self.apply(token, getattr(self.state, method)(*args, token))

    # ------------------------------------------------------------------------------------ rules

    @rule(
        name=st.sampled_from(["s", "t"]),
        client=st.sampled_from(CLIENTS),
        worker=st.sampled_from(WORKERS),
        block=st.booleans(),
    )
    def acquire(self, name, client, worker, block):
        lease = f"lease-{next(self.tokens)}"  # not object(): a replay must draw the same leases
        self.ask("semaphore_acquire", "semaphore", name, 2, lease, Owner(client, worker), block)

    @rule(name=st.sampled_from(["s", "t"]), data=st.data())
    def release(self, name, data):
        sem = self.state.semaphores.get(("semaphore", name))
        if sem is None or not sem.leases:
            return
        lease = data.draw(st.sampled_from(sorted(sem.leases)))
        self.ask("semaphore_release", "semaphore", name, lease)

    @rule(
        client=st.sampled_from(CLIENTS),
        keys=st.lists(st.sampled_from(KEYS), max_size=2),
        block=st.booleans(),
    )
    def put(self, client, keys, block):
        self.ask("queue_put", "q", 2, Packed(b"x", tuple(dict.fromkeys(keys))), block)

    @rule(
        client=st.sampled_from(CLIENTS),
        count=st.sampled_from([None, True, 2]),
        block=st.booleans(),
    )
    def get(self, client, count, block):
        self.ask("queue_get", "q", 2, client, count, block)

    @rule(name=st.sampled_from(["v", "w"]), keys=st.lists(st.sampled_from(KEYS), max_size=2))
    def set_variable(self, name, keys):
        self.apply(None, self.state.variable_set(name, Packed(b"v", tuple(dict.fromkeys(keys)))))

    @rule(name=st.sampled_from(["v", "w"]), client=st.sampled_from(CLIENTS), block=st.booleans())
    def get_variable(self, name, client, block):
        self.ask("variable_get", name, client, block)

    @rule(name=st.sampled_from(["v", "w"]))
    def delete_variable(self, name):
        self.apply(None, self.state.variable_delete(name))

    @rule(data=st.data())
    def give_up(self, data):
        if not self.parked:
            return
        token = data.draw(st.sampled_from(sorted(self.parked)))
        withdrawn, answers = self.state.withdraw(token)
        assert withdrawn
        self.parked.discard(token)
        self.withdrawn.add(token)
        self.apply(None, answers)

    @rule(worker=st.sampled_from(WORKERS[1:]))
    def worker_removed(self, worker):
        self.apply(None, self.state.worker_removed(worker))

    @rule(client=st.sampled_from(CLIENTS))
    def client_left(self, client):
        self.apply(None, self.state.client_left(client))

    # ------------------------------------------------------------------------------- invariants

    @invariant()
    def semaphores_never_overbook_nor_idle(self):
        for sem in self.state.semaphores.values():
            assert len(sem.leases) <= sem.max_leases
            if sem.waiters:
                assert len(sem.leases) == sem.max_leases, "a waiter waits while a lease is free"

    @invariant()
    def queues_serve_what_they_can(self):
        for queue in self.state.queues.values():
            if queue.putters:
                assert queue.full(), "a putter waits while there is room"
            if queue.getters:
                _, _, count = queue.getters[0]
                assert len(queue.items) < (1 if count is None else count)

    @invariant()
    def holders_want_exactly_the_keys_they_hold(self):
        queue = self.state.queues.get("q")
        held = collections.Counter(k for item in (queue.items if queue else ()) for k in item.keys)
        assert set(self.wants["queue-q"]) == set(held)
        for name in ("v", "w"):
            value = self.state.variables.get(name)
            assert set(self.wants[f"variable-{name}"]) == set(value.keys if value else ())

    @invariant()
    def parked_requests_are_known_to_the_state(self):
        assert set(self.state._parked) == self.parked


CoordinationMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_coordination_state = CoordinationMachine.TestCase


def test_a_getter_that_gives_up_lets_the_one_behind_it_take_what_is_there():
    """Found by the machine above: a getter waiting for 2 items holds up a getter of 1 behind it; when the
    first gives up with one item in the queue, the second must get that item at once, not wait on."""
    state = Coordination()
    assert state.queue_get("q", 0, "c1", 2, True, "wants-two") == []
    put = state.queue_put("q", 0, Packed(b"x"), False, "put")
    assert put == [Answer("put", True)]
    assert state.queue_get("q", 0, "c2", None, True, "wants-one") == []  # behind the first
    withdrawn, answers = state.withdraw("wants-two")
    assert withdrawn and answers == [Answer("wants-one", Packed(b"x"))]
    assert state.queue_size("q") == 0 and not state._parked
    assert state.withdraw("wants-one") == (False, [])  # already answered
