"""Coordination state: named locks, semaphores, events, queues and variables shared by every client.

A pure state machine, like ``SchedulerState``: the shell (``scheduler/coordination_ops.py``) calls a
method on the scheduler thread and carries out the instructions it returns::

    client op ──► SchedulerOperations.<name> ──scheduler.call──► Coordination.<method>(..., token)
                                                                   │ instructions
        Answer(token, value)  ──► the caller's concurrent Future is resolved (now, or later: parked)
        Want(owner, keys)     ──► SchedulerState.update_graph((), owner, keys): the keys stay alive
        Unwant(owner, keys)   ──► SchedulerState.client_releases(owner, keys)

A request that must wait (a lock that is held, an empty queue, an unset event) is *parked*: its token
is kept and answered by a later event, so the scheduler thread never blocks. A waiter that gives up
calls ``withdraw(token)``; since everything runs on one thread, a token is either answered or withdrawn,
never both.

Values travel as ``Packed(data, keys)``: ``data`` is opaque here (pickled by the client), ``keys`` are
the futures inside it. Whatever holds a value (a variable, a queue item) wants those keys under an owner
of its own (``variable-<name>``, ``queue-<name>``), so their results outlive the client that sent them;
a getter is made to want them before the holder lets go.
"""

from __future__ import annotations

import collections
from typing import Any, Hashable, NamedTuple, Optional

Key = Hashable

# ------------------------------------------------------------------------------------- vocabulary


class Packed(NamedTuple):
    """A value in transit: opaque ``data`` and the keys of the futures inside it."""

    data: Any
    keys: tuple = ()


class Answer(NamedTuple):
    """Resolve the request ``token`` with ``value``."""

    token: Any
    value: Any


class Owner(NamedTuple):
    """Who holds a lease or a multi-lock: it goes back when this client closes or this worker goes."""

    client: str
    worker: Optional[str] = None  # set when a task took it


class Want(NamedTuple):
    """``owner`` (a client id or a holder's pseudo-client) now needs ``keys`` kept."""

    owner: str
    keys: tuple


class Unwant(NamedTuple):
    """``owner`` no longer needs ``keys``."""

    owner: str
    keys: tuple


# ------------------------------------------------------------------------------------------ state


class _Semaphore:
    __slots__ = ("max_leases", "leases", "waiters")

    def __init__(self, max_leases: int):
        self.max_leases = max_leases
        self.leases: dict = {}  # lease id -> its holder's Owner
        self.waiters: collections.deque = collections.deque()  # (token, lease id, Owner)


class _Queue:
    __slots__ = ("maxsize", "items", "getters", "putters")

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.items: collections.deque = collections.deque()  # Packed
        self.getters: collections.deque = collections.deque()  # (token, client, count)
        self.putters: collections.deque = collections.deque()  # (token, Packed)

    def full(self) -> bool:
        return self.maxsize > 0 and len(self.items) >= self.maxsize


class _KeyHolds:
    """How many held values of one owner refer to each key: Want on the first, Unwant after the last."""

    def __init__(self):
        self.counts: dict = collections.defaultdict(collections.Counter)

    def hold(self, owner: str, keys: tuple, out: list) -> None:
        if not keys:
            return
        counts = self.counts[owner]
        fresh = tuple(k for k in keys if counts[k] == 0)
        counts.update(keys)
        if fresh:
            out.append(Want(owner, fresh))

    def let_go(self, owner: str, keys: tuple, out: list) -> None:
        if not keys:
            return
        counts = self.counts[owner]
        gone = []
        for key in keys:
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
                gone.append(key)
        if not counts:
            del self.counts[owner]
        if gone:
            out.append(Unwant(owner, tuple(gone)))


class Coordination:
    """Every named primitive of one cluster. Methods return lists of instructions (see above)."""

    def __init__(self):
        self.semaphores: dict[tuple, _Semaphore] = {}  # (kind, name): Lock("x") is ("lock", "x")
        self.multilocks: dict = {}  # lock name -> holder id
        self.multilock_held: dict = {}  # holder id -> names it holds
        self.multilock_waiters: collections.deque = collections.deque()  # (token, id, names, n)
        self.multilock_owners: dict = {}  # holder id -> Owner (while it holds or waits)
        self.events: dict = {}  # name -> bool
        self.event_waiters: dict = collections.defaultdict(list)  # name -> tokens
        self.queues: dict[str, _Queue] = {}
        self.variables: dict[str, Packed] = {}
        self.variable_waiters: dict = collections.defaultdict(list)  # name -> [(token, client)]
        self.holds = _KeyHolds()
        self._parked: dict = {}  # token -> how to withdraw it

    # ------------------------------------------------------------------------------ semaphores

    def semaphore_acquire(
        self, kind: str, name, max_leases: int, lease_id, owner: Owner, block: bool, token
    ) -> list:
        sem = self.semaphores.get((kind, name))
        if sem is None:
            sem = self.semaphores[(kind, name)] = _Semaphore(max_leases)
        elif sem.max_leases != max_leases:
            raise ValueError(
                f"Semaphore {name!r} exists with max_leases={sem.max_leases}, not {max_leases}; "
                "every Semaphore of one name must agree"
            )
        if len(sem.leases) < sem.max_leases:
            sem.leases[lease_id] = owner
            return [Answer(token, True)]
        if not block:
            return [Answer(token, False)]
        sem.waiters.append((token, lease_id, owner))
        self._parked[token] = ("semaphore", (kind, name))
        return []

    def semaphore_release(self, kind: str, name, lease_id, token) -> list:
        """Answers True if the lease was held (and waiters may now get theirs), else False."""
        sem = self.semaphores.get((kind, name))
        if sem is None or lease_id not in sem.leases:
            return [Answer(token, False)]
        del sem.leases[lease_id]
        out = [Answer(token, True)]
        self._grant_leases(sem, out)
        return out

    def semaphore_value(self, kind: str, name) -> int:
        sem = self.semaphores.get((kind, name))
        return len(sem.leases) if sem is not None else 0

    def _grant_leases(self, sem: _Semaphore, out: list) -> None:
        while sem.waiters and len(sem.leases) < sem.max_leases:
            token, lease_id, owner = sem.waiters.popleft()
            self._parked.pop(token, None)
            sem.leases[lease_id] = owner
            out.append(Answer(token, True))

    # ------------------------------------------------------------------------------ multi-locks

    def multilock_acquire(
        self, holder, owner: Owner, names: tuple, count: int, block: bool, token
    ) -> list:
        self.multilock_owners[holder] = owner
        if self._take_multilock(holder, names, count):
            return [Answer(token, True)]
        if not block:
            return [Answer(token, False)]
        self.multilock_waiters.append((token, holder, names, count))
        self._parked[token] = ("multilock", None)
        return []

    def _take_multilock(self, holder, names: tuple, count: int) -> bool:
        free = [n for n in names if self.multilocks.get(n, holder) == holder]
        if len(free) < count:
            return False
        taken = free[:count]
        for name in taken:
            self.multilocks[name] = holder
        self.multilock_held[holder] = tuple(taken)
        return True

    def multilock_release(self, holder, token) -> list:
        names = self.multilock_held.pop(holder, None)
        if names is None:
            return [Answer(token, False)]
        for name in names:
            if self.multilocks.get(name) == holder:
                del self.multilocks[name]
        self.multilock_owners.pop(holder, None)
        out = [Answer(token, True)]
        self._grant_multilocks(out)
        return out

    def _grant_multilocks(self, out: list) -> None:
        waiting, self.multilock_waiters = self.multilock_waiters, collections.deque()
        for waiter, other, wanted, count in waiting:
            if self._take_multilock(other, wanted, count):
                self._parked.pop(waiter, None)
                out.append(Answer(waiter, True))
            else:
                self.multilock_waiters.append((waiter, other, wanted, count))

    # ------------------------------------------------------------------------------------ events

    def event_set(self, name) -> list:
        self.events[name] = True
        tokens = self.event_waiters.pop(name, [])
        for token in tokens:
            self._parked.pop(token, None)
        return [Answer(token, True) for token in tokens]

    def event_clear(self, name) -> list:
        self.events[name] = False
        return []

    def event_is_set(self, name) -> bool:
        return self.events.get(name, False)

    def event_wait(self, name, token) -> list:
        if self.events.get(name, False):
            return [Answer(token, True)]
        self.event_waiters[name].append(token)
        self._parked[token] = ("event", name)
        return []

    # ------------------------------------------------------------------------------------ queues

    def _queue(self, name, maxsize: int) -> _Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = _Queue(maxsize)
        return queue

    def queue_put(self, name, maxsize: int, item: Packed, block: bool, token) -> list:
        queue = self._queue(name, maxsize)
        out: list = []
        if not queue.full() and not queue.putters:
            self._enqueue(name, queue, item, out)
            out.append(Answer(token, True))
            self._serve_getters(name, queue, out)
        elif block:
            queue.putters.append((token, item))
            self._parked[token] = ("queue-put", name)
        else:
            out.append(Answer(token, False))
        return out

    def queue_get(self, name, maxsize: int, client: str, count, block: bool, token) -> list:
        """``count`` None: one item; an int: that many, as a list; True: all there are now (no wait)."""
        queue = self._queue(name, maxsize)
        out: list = []
        if count is True:
            items = list(queue.items)
            queue.items.clear()
            self._hand_over(name, client, items, out)
            out.append(Answer(token, items))
            self._admit_putters(name, queue, out)
            return out
        queue.getters.append((token, client, count))
        self._parked[token] = ("queue-get", name)
        self._serve_getters(name, queue, out)
        if token in self._parked and not block:
            self._withdraw_now(token, out)
            out.append(Answer(token, None))
        return out

    def queue_size(self, name) -> int:
        queue = self.queues.get(name)
        return len(queue.items) if queue is not None else 0

    def queue_release(self, name) -> list:
        """Forget the queue and the futures in it (waiters stay parked on a fresh one)."""
        queue = self.queues.pop(name, None)
        out: list = []
        if queue is None:
            return out
        for item in queue.items:
            self.holds.let_go(f"queue-{name}", item.keys, out)
        if queue.getters or queue.putters:
            fresh = self.queues[name] = _Queue(queue.maxsize)
            fresh.getters, fresh.putters = queue.getters, queue.putters
            self._admit_putters(name, fresh, out)
        return out

    def _enqueue(self, name, queue: _Queue, item: Packed, out: list) -> None:
        queue.items.append(item)
        self.holds.hold(f"queue-{name}", item.keys, out)

    def _hand_over(self, name, client: str, items: list, out: list) -> None:
        keys = tuple(k for item in items for k in item.keys)
        if keys:
            out.append(Want(client, keys))  # the getter holds them before the queue lets go
            self.holds.let_go(f"queue-{name}", keys, out)

    def _serve_getters(self, name, queue: _Queue, out: list) -> None:
        while queue.getters:
            token, client, count = queue.getters[0]
            needed = 1 if count is None else count
            if len(queue.items) < needed:
                break
            queue.getters.popleft()
            self._parked.pop(token, None)
            items = [queue.items.popleft() for _ in range(needed)]
            self._hand_over(name, client, items, out)
            out.append(Answer(token, items[0] if count is None else items))
            self._admit_putters(name, queue, out)

    def _admit_putters(self, name, queue: _Queue, out: list) -> None:
        while queue.putters and not queue.full():
            token, item = queue.putters.popleft()
            self._parked.pop(token, None)
            self._enqueue(name, queue, item, out)
            out.append(Answer(token, True))
        if queue.getters and queue.items:
            self._serve_getters(name, queue, out)

    # --------------------------------------------------------------------------------- variables

    def variable_set(self, name, value: Packed) -> list:
        out: list = []
        owner = f"variable-{name}"
        self.holds.hold(owner, value.keys, out)  # the new value's keys first: old and new may share
        old = self.variables.get(name)
        self.variables[name] = value
        if old is not None:
            self.holds.let_go(owner, old.keys, out)
        for token, client in self.variable_waiters.pop(name, []):
            self._parked.pop(token, None)
            if value.keys:
                out.append(Want(client, value.keys))
            out.append(Answer(token, value))
        return out

    def variable_get(self, name, client: str, block: bool, token) -> list:
        value = self.variables.get(name)
        if value is not None:
            out: list = [Want(client, value.keys)] if value.keys else []
            out.append(Answer(token, value))
            return out
        if not block:
            return [Answer(token, None)]
        self.variable_waiters[name].append((token, client))
        self._parked[token] = ("variable", name)
        return []

    def variable_delete(self, name) -> list:
        out: list = []
        old = self.variables.pop(name, None)
        if old is not None:
            self.holds.let_go(f"variable-{name}", old.keys, out)
        return out

    # ------------------------------------------------------------------------------ withdrawal

    def withdraw(self, token) -> tuple[bool, list]:
        """The waiter behind ``token`` gave up: whether it was still waiting (False: already answered,
        or never parked), and the answers its leaving allows (see ``_withdraw_now``)."""
        if token not in self._parked:
            return False, []
        out: list = []
        self._withdraw_now(token, out)
        return True, out

    def _withdraw_now(self, token, out: list) -> None:
        """Forget the waiter behind ``token``. A queue's getters are served in order, so one that
        waited for more items than there are holds up those behind it: when it goes, they may be
        served at once (answers appended to ``out``)."""
        kind, where = self._parked.pop(token)
        if kind == "semaphore":
            sem = self.semaphores[where]
            sem.waiters = collections.deque(w for w in sem.waiters if w[0] is not token)
        elif kind == "multilock":
            self.multilock_waiters = collections.deque(
                w for w in self.multilock_waiters if w[0] is not token
            )
        elif kind == "event":
            self.event_waiters[where] = [t for t in self.event_waiters[where] if t is not token]
        elif kind == "variable":
            waiters = self.variable_waiters[where]
            self.variable_waiters[where] = [w for w in waiters if w[0] is not token]
        elif kind in ("queue-get", "queue-put"):
            queue = self.queues[where]
            if kind == "queue-get":
                queue.getters = collections.deque(w for w in queue.getters if w[0] is not token)
                self._serve_getters(where, queue, out)
            else:
                queue.putters = collections.deque(w for w in queue.putters if w[0] is not token)

    # ------------------------------------------------------------------------ owners that go

    def worker_removed(self, address: str) -> list:
        """A worker left or died: what its tasks held goes back, and their parked requests are
        dropped (whoever asked is gone, so a lease granted to them would never be released)."""
        return self._owners_gone(lambda owner: owner.worker == address)

    def client_left(self, client: str) -> list:
        """A client closed: what it held goes back (its waits were its own, and have ended)."""
        return self._owners_gone(lambda owner: owner.client == client)

    def _owners_gone(self, gone) -> list:
        out: list = []
        for sem in self.semaphores.values():
            for token, _lease, owner in list(sem.waiters):
                if gone(owner):
                    self._withdraw_now(token, out)
                    out.append(Answer(token, False))
            dead = [lease for lease, owner in sem.leases.items() if gone(owner)]
            for lease in dead:
                del sem.leases[lease]
            if dead:
                self._grant_leases(sem, out)
        holders = [h for h, owner in self.multilock_owners.items() if gone(owner)]
        if holders:
            for token, holder, _names, _count in list(self.multilock_waiters):
                if holder in holders:
                    self._withdraw_now(token, out)
                    out.append(Answer(token, False))
            for holder in holders:
                self.multilock_owners.pop(holder, None)
                for name in self.multilock_held.pop(holder, ()):
                    if self.multilocks.get(name) == holder:
                        del self.multilocks[name]
            self._grant_multilocks(out)
        return out
