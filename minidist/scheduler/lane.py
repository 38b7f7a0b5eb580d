"""The direct lane: a task submitted while a worker is idle goes from the submitting thread straight
into that worker's pipe, and the scheduler thread records it later, without a turn of its own.

A chain of submit -> result passes through the scheduler thread twice per task: to place the task and
to take its result. The first pass leaves the round trip when the placement is known in advance: with
nothing queued and a worker idle, the state would put a new task on that worker as its first attempt
(``SchedulerState.direct_worker``). So the scheduler thread offers a ticket for such a worker at the
end of a turn, and withdraws it first thing in its next turn::

    scheduler thread, end of a turn ──offer(handle)──► ticket: the worker, the frees held for it
    Client.submit of one task (a key new to the scheduler; no dependencies, restrictions, resources
    or buffers)
        ──send(): take the ticket (lane lock) ──► frame [held frees, ComputeTask attempt 1] ──► worker
                                               ──► a DirectTask left in the lane (still under the lock)
    scheduler thread, its next turn (the task's result, or any message or wake-up) ──withdraw()──►
        the DirectTask, recorded before the inbox and the workers' reports (handlers.py,
        record_direct_task): update_graph(sent_to=worker), the task is processing there, attempt 1,
        as if the state had sent it

While a ticket is out the scheduler thread sleeps in ``poll()``: it writes to no worker's pipe and the
state does not change, so what the ticket promises still holds when a client takes it. The frees held
for the worker (``delivery.py``) go ahead of the task in the same frame, as they would have with the
scheduler's own next batch. The scheduler thread is not woken for a DirectTask: the next turn comes
with the task's result, or with anything else that reaches the scheduler (which then finds the task
recorded first), or at the idle wake-up; woken at once, it made three threads runnable where two cores
are often all there is (the worker, the user thread, the scheduler), and measured slower. If the
worker dies meanwhile, the write fails (the task is posted as usual) or the task is requeued like any
task of a dead worker. Thread workers have no pipe: no lane.

A key must be new: a task the scheduler already holds under it (pure keys: the same call submitted
before, by any client) is shared, never run twice. A random key (``pure=False``) is new by
construction; any other one takes the ticket only if ``_new_key`` finds it new while the scheduler
thread sleeps (its books hold still), and if the submitting client has no release of that key still
waiting for the scheduler (``FutureBook.releasing``: the task would overtake the release and be
released as it starts).
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from ..comm.serialize import Payload
from ..messages import DirectTask, NewTask, ReleasePending

_INBOX_LOOKED_AT = (
    8  # messages in the inbox a pure key's check reads at most (more: not new enough)
)


class DirectLane:
    """One per scheduler: the ticket, offered and withdrawn by the scheduler thread, taken by at most
    one client thread (see the module docstring)."""

    def __init__(self, scheduler: Any):
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self.ticket: Any = None  # the worker handle offered (read without the lock as a hint)
        self._frees: Optional[list] = None  # the frees held for it when offered (Delivery.held)
        self._taken: Optional[DirectTask] = None  # what a client sent, until withdrawn
        self.out = False  # scheduler thread: a ticket was offered and not yet withdrawn
        self._last: Any = None  # offered and withdrawn unused: offered again if still idle
        self.sent = 0  # tasks that went this way

    # ------------------------------------------------------------------------- scheduler thread

    def withdraw(self) -> Optional[DirectTask]:
        """First thing in a turn: take the ticket back. If a client took it, the task it sent, for
        the turn to record before anything else (its result may be among this turn's reports)."""
        with self._lock:
            offered, taken = self.ticket, self._taken
            self.ticket = self._taken = None
        self.out = False
        frees, self._frees = self._frees, None
        if taken is None:
            self._last = offered
            return None
        if frees:  # they went ahead of the task
            self._scheduler.delivery.held.pop(self._last, None)
        self._last = None
        return taken

    def offer(self, handle: Any) -> None:
        """Last thing in a turn: offer a worker read this turn (or the one offered last) if a new
        task would go there now."""
        if handle is None:
            handle = self._last
            if handle is None:
                return
        scheduler = self._scheduler
        if (
            handle.conn is None
            or scheduler.workers.get(handle.address) is not handle
            or not scheduler.state.direct_worker(handle.address)
            or scheduler.failure is not None
            or scheduler.closing
        ):
            self._last = None
            return
        self._frees = scheduler.delivery.held.get(handle)
        self._last = handle
        self.out = True
        with self._lock:
            self.ticket = handle

    def close(self) -> Optional[DirectTask]:
        """The loop ended (closed, or failed): no ticket from now on (from any thread). The task a
        client sent and the loop never recorded, if any."""
        with self._lock:
            taken, self.ticket, self._taken = self._taken, None, None
        return taken

    # --------------------------------------------------------------------------- client threads

    def send(self, client_id: str, task: NewTask, may_exist: bool = False) -> bool:
        """Send ``task`` straight to the offered worker; False: no ticket is out, or the task needs
        the scheduler (the caller posts it as usual). ``may_exist``: its key is not random (a pure
        key, or one the caller gave), so it goes only if the scheduler holds nothing under it
        (``_new_key``); the caller has checked that it has no release of that key still waiting for
        the scheduler."""
        arguments = task.run_spec[2]  # (function_id, function, arguments)
        if (
            task.dependencies
            or task.workers
            or task.resources
            or (
                type(arguments) is not bytes
                and (type(arguments) is not Payload or arguments.buffers)
            )
        ):
            return False
        with self._lock:
            handle = self.ticket
            if handle is None or (may_exist and not self._new_key(task.key)):
                return False
            self.ticket = None
            message = handle.execute_message(task.key, task.run_spec, (), {}, 1)
            frees = self._frees
            try:
                handle.send_messages(frees + [message] if frees else [message])
            except (OSError, EOFError, ValueError):
                return False  # its pipe is closed: the worker is gone, the scheduler places it
            # before the lock is let go: the turn that withdraws the ticket (or the failure that
            # closes the lane) finds it
            self._taken = DirectTask(client_id, (task,), (task.key,), handle.address)
            self.sent += 1
        return True

    def _new_key(self, key) -> bool:
        """(Lane lock held, ticket out.) Whether a task under ``key`` would be new to the scheduler
        when the turn that withdraws the ticket records it, ahead of the inbox: its state holds no
        task of that key (waiting, queued, processing, in memory or erred: that one is shared, never
        run again), and nothing waiting in the inbox could bring or settle one first (a submission
        or a cancel by any client, an answer to a call...). Only batches of released keys may wait:
        the submitting client checked its own for this key, and another client's release of a key
        the state does not hold leaves the new task alone (that client does not want it).

        While the ticket is out the scheduler thread sleeps (it withdraws the ticket, under this
        lock, before it reads anything), so its books hold still while they are read here; the
        inbox only grows, and what joins it after this check was posted after this submission."""
        scheduler = self._scheduler
        if key in scheduler.state.tasks:
            return False
        inbox = scheduler.inbox
        if inbox:
            if len(inbox) > _INBOX_LOOKED_AT:
                return False
            for message in tuple(inbox):  # a copy: other threads may append meanwhile
                if type(message) is not ReleasePending:
                    return False
        return True
