"""What the scheduler thread sends at the end of each loop turn, and in what order.

``Scheduler._serve`` (``scheduler/server.py``) gathers, in one turn, a batch of messages per worker
(``outgoing``) and a list of ``TaskStatus`` per client (``reports``); ``Delivery`` sends them::

    outgoing ──► batches with work (a task, a request): sent first, so idle workers start at once
    reports  ──► each client's session (futures resolve); threads waiting in ``result()`` are woken
                 last in the turn (``release_wakes``, right before ``poll()`` lets go of the GIL)
    outgoing ──► housekeeping only (ReleaseQueued, ReturnSegments): after the reports, as a client
                 waiting for its result should not pay for waking a worker for it
    frees of a client's release applied after its next submission went out (handlers.py,
    release_then_submit) ──► held: sent ahead of that worker's next batch, or ``FREE_DELAY`` later

Those frees are held because in a loop of submit -> result the key of each finished task is freed
while the next task is already on its way: sent at once, every round trip would cost a frame more for
the scheduler to write and the worker to read; held, the frees share the next task's frame. Only
those: a free that cancels work (``cancel``, a failed joblib batch) must reach its worker at once. A
held free goes ahead of anything sent to its worker later, so a worker never runs a task and then
frees its key by mistake. Other threads never call this: it is the scheduler thread's own.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from ..messages import FreeKeys, ReleaseQueued, ReturnSegments

# messages to workers that can wait for clients' reports
HOUSEKEEPING = (FreeKeys, ReleaseQueued, ReturnSegments)
FREE_DELAY = 0.01  # seconds a worker's frees wait at most for its next batch
FREE_DELAY_MS = int(FREE_DELAY * 1000) + 1  # the loop's poll() timeout while frees are held
_HELD_KEYS_LIMIT = 1000  # more frees than this for one worker go at once (the memory they hold)


def _has_work(batch: list) -> bool:
    """Whether ``batch`` holds more than housekeeping (a task, a request): it goes out first."""
    for message in batch:
        if type(message) not in HOUSEKEEPING:
            return True
    return False


class Delivery:
    """Sends one turn's batches and reports (see the module docstring)."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        # locks of client threads waiting in result() that this turn's reports resolve: released at
        # the end of the turn, just before poll() lets go of the GIL (FutureBook.report)
        self.wakes: list = []
        self.held: dict = {}  # handle -> [FreeKeys, ...] not sent yet (read by the loop: no call)
        self.held_since = 0.0  # monotonic time the oldest of them was held

    def send_held_if_due(self, quiet: bool) -> None:
        """At the end of a turn: send the held frees if they waited long enough (or nothing
        happened in this turn)."""
        if quiet or time.monotonic() - self.held_since >= FREE_DELAY:
            # emptied in place, not swapped for a new dict (see release_wakes)
            held = list(self.held.items())
            self.held.clear()
            for handle, batch in held:
                self.send(handle, batch)

    def forget(self, handle) -> None:
        """A worker was removed: what was held for it goes nowhere."""
        self.held.pop(handle, None)

    def send_work(self, outgoing: dict) -> None:
        """Send now the batches that hold more than housekeeping; the rest stay in ``outgoing``."""
        for handle, batch in list(outgoing.items()):
            if _has_work(batch):
                del outgoing[handle]
                self.send(handle, self._with_held(handle, batch))

    def hold(self, batches: dict, outgoing: dict) -> None:
        """``batches`` (handle -> messages) came from releasing keys whose tasks finished: what only
        frees waits for its worker's next batch; anything else joins ``outgoing``."""
        for handle, batch in batches.items():
            if not self._hold(handle, batch):
                outgoing.setdefault(handle, []).extend(batch)

    def deliver(self, outgoing: dict, reports: dict) -> None:
        """Work first, then clients' reports, then housekeeping."""
        later = []
        for handle, batch in outgoing.items():
            if not batch:
                continue
            batch = self._with_held(handle, batch)
            if _has_work(batch):
                self.send(handle, batch)
            else:
                later.append((handle, batch))
        scheduler = self.scheduler
        for client_id, items in reports.items():
            session = scheduler.sessions.get(client_id)
            if session is not None:
                try:
                    session.report(items, self.wakes)
                except Exception:
                    scheduler.logger.exception("could not report to client %s", client_id)
        for handle, batch in later:
            self.send(handle, batch)

    def release_wakes(self) -> None:
        """Wake the client threads this turn's reports resolved (see ``FutureBook.report``)."""
        # emptied in place: a new list made here, at the end of a large run, would live on and keep
        # one of the run's allocator arenas (1 MiB) from being given back
        wakes = self.wakes
        for waiter in wakes:
            waiter.release()
        wakes.clear()

    def send(self, handle, batch: list) -> None:
        if not batch or handle.address not in self.scheduler.workers:
            return
        try:
            handle.send_messages(batch)
        except (OSError, EOFError, ValueError):
            # a dead pipe: the EOF on its receiving side will remove the worker
            self.scheduler.logger.debug("could not send to %s", handle.address)

    def _with_held(self, handle, batch: list) -> list:
        held: Optional[list] = self.held.pop(handle, None)
        return held + batch if held else batch

    def _hold(self, handle, batch: list) -> bool:
        """Keep a batch of frees for its worker's next batch (or FREE_DELAY); False: not only frees."""
        keys = 0
        for message in batch:
            if type(message) is not FreeKeys:
                return False
            keys += len(message.keys)
        held = self.held.get(handle)
        if held is not None:
            batch = held + batch
        elif not self.held:
            self.held_since = time.monotonic()
        self.held[handle] = batch
        if keys > _HELD_KEYS_LIMIT:  # the memory they hold: not worth the wait
            self.send(handle, self.held.pop(handle))
        return True
