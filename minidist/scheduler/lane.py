"""The direct lane: a task submitted while a worker is idle goes from the submitting thread straight
into that worker's pipe, and the scheduler thread records it later, without a turn of its own.

A chain of submit -> result passes through the scheduler thread twice per task: to place the task and
to take its result. The first pass leaves the round trip when the placement is known in advance: with
nothing queued and a worker idle, the state would put a new task on that worker as its first attempt
(``SchedulerState.direct_worker``). So the scheduler thread offers a ticket for such a worker at the
end of a turn, and withdraws it first thing in its next turn::

    scheduler thread, end of a turn ──offer(handle)──► ticket: the worker, the frees held for it
    Client.submit of one task (a random key; no dependencies, restrictions, resources or buffers)
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
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from ..comm.serialize import Payload
from ..messages import DirectTask, NewTask


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

    def send(self, client_id: str, task: NewTask) -> bool:
        """Send ``task`` (a random key) straight to the offered worker; False: no ticket is out, or
        the task needs the scheduler (the caller posts it as usual)."""
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
            if handle is None:
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
