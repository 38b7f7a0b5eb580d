"""The shell around the coordination state: named operations for locks, queues, variables, datasets, events.

Part of ``SchedulerOperations`` (``scheduler/operations.py``, as ``operations.coordination``): local
clients and remote ones (TCP, or tasks in process workers) reach them by name through ``invoke``. Each operation runs one method of the pure state (``coordination.Coordination``,
``published.Published``) on the scheduler thread with a fresh ``concurrent.futures.Future`` as its
token, carries out the instructions it returns there, and then waits for the token on the *caller's*
thread::

    caller thread ── scheduler.call(run) ──► scheduler thread: state.method(..., token)
                                               Answer → token.set_result; Want/Unwant → posted
                                               UpdateGraph/Release (the messages clients send)
    caller thread ── token.result(timeout) ◄── answered now, or later by another client's operation
                     on timeout: scheduler.call(withdraw); if it was answered meanwhile, that answer wins

So a wait never blocks the scheduler thread. The state lives on the scheduler as ``coordination`` and
``published``, created on first use together with hooks that free the leases and locks held by tasks
of a worker that is removed (death, retirement) or by a remote client whose connection ends.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Optional

from ..messages import Release, UpdateGraph
from .coordination import Answer, Coordination, Owner, Packed, Unwant, Want
from .published import Published

_CALL_TIMEOUT = 60.0

# operation -> the handler name blocked_handlers refers to (dask's names)
COORDINATION_HANDLERS = {
    "semaphore_acquire": "semaphore_acquire",
    "semaphore_release": "semaphore_release",
    "semaphore_value": "semaphore_value",
    "multilock_acquire": "multi_lock_acquire",
    "multilock_release": "multi_lock_release",
    "event_set": "event_set",
    "event_clear": "event_clear",
    "event_is_set": "event_is_set",
    "event_wait": "event_wait",
    "queue_put": "queue_put",
    "queue_get": "queue_get",
    "queue_size": "queue_qsize",
    "queue_release": "queue_release",
    "variable_set": "variable_set",
    "variable_get": "variable_get",
    "variable_delete": "variable_delete",
    "dataset_publish": "publish_put",
    "dataset_get": "publish_get",
    "dataset_list": "publish_list",
    "dataset_unpublish": "publish_delete",
    "log_event": "log_event",
    "get_events": "events",
    "wait_events": "subscribe_topic",
    "client_leaving": "semaphore_release",
    "handoff_done": "variable_get",
}


def coordination_of(scheduler) -> Coordination:
    """The scheduler's coordination state (scheduler thread only), made on first use."""
    state = getattr(scheduler, "coordination", None)
    if state is None:
        state = scheduler.coordination = Coordination()
        scheduler.published = Published()

        def worker_removed(address: str) -> None:
            carry_out(scheduler, state.worker_removed(address))

        scheduler.worker_removed_hooks.append(worker_removed)

        def client_gone(client: str) -> None:  # its connection ended without a goodbye
            carry_out(scheduler, state.client_left(client))
            carry_out(scheduler, scheduler.published.forget_listener(client))

        scheduler.client_gone_hooks.append(client_gone)
    return state


def published_of(scheduler) -> Published:
    coordination_of(scheduler)
    return scheduler.published


def carry_out(scheduler, instructions: list) -> None:
    """Scheduler thread: answer tokens, and make owners want or let go of keys.

    Wants and releases are posted as the messages clients use (``UpdateGraph`` with no tasks,
    ``Release``); the loop handles them in this order before anything posted later, such as the
    getter's own want or a later release by the holder."""
    for inst in instructions:
        kind = type(inst)
        if kind is Answer:
            token = inst.token
            if token is not None and not token.done():
                token.set_result(inst.value)
        elif kind is Want:
            scheduler.post(UpdateGraph(inst.owner, (), tuple(inst.keys)))
        elif kind is Unwant:
            scheduler.post(Release(inst.owner, tuple(inst.keys)))


def _log_event(scheduler, topic, msg, now: float) -> None:
    """Scheduler thread: store the event, wake its listeners, and tell scheduler plugins (per topic)."""
    carry_out(scheduler, published_of(scheduler).log_event(topic, msg, now))
    if scheduler.plugins:
        for name in [topic] if isinstance(topic, str) else list(topic):
            scheduler.plugins.emit("log_event", name, msg)


def _blocks(timeout: Optional[float]) -> bool:
    return timeout is None or timeout > 0


class CoordinationOperations:
    """The coordination operations of one scheduler."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def _ask(self, method: str, *args, timeout: Optional[float] = 0, timed_out=None, on=None):
        """Run ``<state>.<method>(*args, token)`` on the scheduler thread and wait for its answer."""
        token: concurrent.futures.Future = concurrent.futures.Future()
        of = coordination_of if on is None else on

        def run(scheduler) -> None:
            carry_out(scheduler, getattr(of(scheduler), method)(*args, token))

        scheduler = self.scheduler
        # registered first: a close or a loop failure from here on errs the token (failure.py), so
        # the wait below needs no timeout of its own to notice one
        scheduler.awaited.add(token)
        try:
            scheduler.call(run).result(_CALL_TIMEOUT)  # raises what the state raised (bad input)
            try:
                return token.result(timeout)  # None: until answered
            except concurrent.futures.TimeoutError:
                pass
        finally:
            scheduler.awaited.discard(token)

        def give_up(scheduler) -> bool:
            withdrawn, answers = of(scheduler).withdraw(token)
            carry_out(scheduler, answers)  # waiters its leaving lets through
            return withdrawn

        withdrawn = self.scheduler.call(give_up).result(_CALL_TIMEOUT)
        return timed_out if withdrawn else token.result(0)

    def _read(self, function):
        return self.scheduler.call(function).result(_CALL_TIMEOUT)

    # ------------------------------------------------------------------------ semaphores, locks

    def semaphore_acquire(
        self, kind: str, name, max_leases: int, lease_id, owner: Owner, timeout=None
    ) -> bool:
        return self._ask(
            "semaphore_acquire",
            kind,
            name,
            max_leases,
            lease_id,
            Owner(*owner),
            _blocks(timeout),
            timeout=timeout,
            timed_out=False,
        )

    def semaphore_release(self, kind: str, name, lease_id) -> bool:
        return self._ask("semaphore_release", kind, name, lease_id, timeout=None)

    def semaphore_value(self, kind: str, name) -> int:
        return self._read(lambda s: coordination_of(s).semaphore_value(kind, name))

    def multilock_acquire(
        self, holder, owner: Owner, names: tuple, count: int, timeout=None
    ) -> bool:
        return self._ask(
            "multilock_acquire",
            holder,
            Owner(*owner),
            tuple(names),
            count,
            _blocks(timeout),
            timeout=timeout,
            timed_out=False,
        )

    def multilock_release(self, holder) -> bool:
        return self._ask("multilock_release", holder, timeout=None)

    # ------------------------------------------------------------------------------------ events

    def event_set(self, name) -> None:
        self._read(lambda s: carry_out(s, coordination_of(s).event_set(name)))

    def event_clear(self, name) -> None:
        self._read(lambda s: carry_out(s, coordination_of(s).event_clear(name)))

    def event_is_set(self, name) -> bool:
        return self._read(lambda s: coordination_of(s).event_is_set(name))

    def event_wait(self, name, timeout=None) -> bool:
        return self._ask("event_wait", name, timeout=timeout, timed_out=False)

    # ------------------------------------------------------------------------------------ queues

    def queue_put(self, name, maxsize: int, item: Packed, timeout=None) -> bool:
        return self._ask(
            "queue_put", name, maxsize, item, _blocks(timeout), timeout=timeout, timed_out=False
        )

    def queue_get(self, name, maxsize: int, client: str, count=None, timeout=None):
        """One Packed item (count None), a list of them, or None if none came in time."""
        return self._ask(
            "queue_get", name, maxsize, client, count, _blocks(timeout), timeout=timeout
        )

    def queue_size(self, name) -> int:
        return self._read(lambda s: coordination_of(s).queue_size(name))

    def queue_release(self, name) -> None:
        self._read(lambda s: carry_out(s, coordination_of(s).queue_release(name)))

    # --------------------------------------------------------------------------------- variables

    def variable_set(self, name, value: Packed) -> None:
        self._read(lambda s: carry_out(s, coordination_of(s).variable_set(name, value)))

    def variable_get(self, name, client: str, timeout=None) -> Optional[Packed]:
        return self._ask("variable_get", name, client, _blocks(timeout), timeout=timeout)

    def variable_delete(self, name) -> None:
        self._read(lambda s: carry_out(s, coordination_of(s).variable_delete(name)))

    # ---------------------------------------------------------------------------------- datasets

    def dataset_publish(self, values: dict, override: bool = False) -> None:
        self._read(lambda s: carry_out(s, published_of(s).publish(values, override)))

    def dataset_get(self, name, client: str) -> Optional[Packed]:
        return self._ask("get", name, client, on=published_of, timeout=None)

    def dataset_list(self) -> list:
        return self._read(lambda s: published_of(s).names())

    def dataset_unpublish(self, name) -> None:
        self._read(lambda s: carry_out(s, published_of(s).unpublish(name)))

    # ------------------------------------------------------------------------------ event topics

    def log_event(self, topic, msg) -> None:
        now = time.time()
        self._read(lambda s: _log_event(s, topic, msg, now))

    def get_events(self, topic=None) -> Any:
        return self._read(lambda s: published_of(s).get_events(topic))

    def wait_events(self, listener: str, after: Optional[int], timeout=None):
        """``(last event number, [(n, topic, time, msg), ...] logged after ``after``)``, waiting up to
        ``timeout`` for one; None once ``stop_listening(listener)`` was called."""
        return self._ask(
            "wait_events", listener, after, timeout=timeout, timed_out=(after, []), on=published_of
        )

    def handoff_done(self, owner: str, keys: tuple) -> None:
        """The receiving client holds its own futures now: the hand-off owner lets go of ``keys``."""
        self._read(lambda s: carry_out(s, [Unwant(owner, tuple(keys))]))

    def client_leaving(self, client: str) -> None:
        """``client`` closes: its leases and multi-locks go back and its event listener stops."""

        def leave(scheduler) -> None:
            carry_out(scheduler, coordination_of(scheduler).client_left(client))
            carry_out(scheduler, published_of(scheduler).stop_listening(client))

        self._read(leave)
