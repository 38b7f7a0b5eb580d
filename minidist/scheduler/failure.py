"""What happens when the scheduler thread's loop dies: nobody is left waiting.

``Scheduler._loop`` hands any exception that escapes its loop to :func:`fail` (still on the scheduler
thread, which then ends)::

    exception ─► fail() ─► Scheduler log (CRITICAL, with the traceback)
                        ─► scheduler.failure = SchedulerError naming the cause
                        ─► every session: its waiting keys err with it; keys in memory are reported
                           again (the failure may have cut off their report; values stay readable)
                        ─► refuse_inbox(): messages posted meanwhile are answered

After that ``Scheduler.post`` answers each message itself through :func:`refuse_inbox` (new tasks err at
once, futures waiting on a reply get the error) and ``close()`` works as usual. Answers that only a later
turn would give (a lock, queue or event wait: ``AwaitedAnswers``) err at once too, here and on close. The order that makes this race-free:
``post`` appends to the inbox *before* looking at ``failure``, and ``fail`` sets ``failure`` *before*
draining the inbox, so every message is answered by one side or the other.
"""

from __future__ import annotations

import concurrent.futures

from ..errors import SchedulerError
from ..messages import DirectTask, TaskStatus, UpdateGraph


def fail(scheduler, cause: BaseException) -> None:
    """The loop died (a bug): log it, err every future still waiting, refuse further work."""
    failure = SchedulerError(
        f"The scheduler thread failed ({type(cause).__name__}: {cause}), a bug in minidist; "
        "unfinished work is lost. The traceback is in the Scheduler log "
        "(cluster.get_logs()['Scheduler']); close this client and its cluster, and start new ones."
    )
    failure.__cause__ = cause
    scheduler.logger.critical(
        "The scheduler thread failed; every waiting future errs", exc_info=cause
    )
    scheduler.failure = failure
    if scheduler.lane is not None:  # no more tasks straight to workers (lane.py)
        sent = scheduler.lane.close()
        if sent is not None:
            scheduler.inbox.appendleft(sent)  # answered below with the rest
    reports: dict = {}
    for ts in list(scheduler.state.tasks.values()):
        item: tuple  # (key, status, exception, traceback), as Client.report takes them
        if ts.state == "memory" and ts.key in scheduler.data:
            item = TaskStatus(ts.key, "memory")
        elif ts.state == "erred":
            item = TaskStatus(ts.key, "erred", ts.exception, ts.traceback)
        else:
            item = TaskStatus(ts.key, "erred", failure, "")
        for client_id in ts.who_wants:
            reports.setdefault(client_id, []).append(item)
    _report(scheduler, reports)
    refuse_inbox(scheduler)
    scheduler.awaited.abandon(failure)


class AwaitedAnswers:
    """The tokens callers wait on for an answer that only a later scheduler turn gives (coordination
    operations, ``coordination_ops._ask``). The scheduler errs them all when it closes or its loop
    dies, so a waiter blocks on its token alone, with no timeout of its own: a thread that waits
    wakes only for its answer. (Waking now and then to look would also keep a few objects made at
    each look alive in whatever arena the allocator offered then, often one a large run had filled:
    that run's memory could not all go back.)"""

    def __init__(self):
        self._tokens: set = set()

    def add(self, token: concurrent.futures.Future) -> None:
        """Before the operation is posted: a close or failure after this errs the token."""
        self._tokens.add(token)

    def discard(self, token: concurrent.futures.Future) -> None:
        self._tokens.discard(token)

    def abandon(self, error: BaseException) -> None:
        """No answer will come: err every token still waited on."""
        for token in list(self._tokens):
            try:
                token.set_exception(error)
            except concurrent.futures.InvalidStateError:
                pass  # answered meanwhile: that answer stands


def refuse_inbox(scheduler) -> None:
    """After a failure: err what clients submit or call; drop everything else (releases, reports)."""
    failure = scheduler.failure
    reports: dict = {}
    inbox = scheduler.inbox
    while True:
        try:
            message = inbox.popleft()  # thread-safe: each message is taken by exactly one caller
        except IndexError:
            break
        kind = type(message)
        reply = getattr(message, "reply", None)  # Call, RetireWorkers...: a future someone waits on
        if reply is not None and reply.set_running_or_notify_cancel():
            reply.set_exception(failure)
        elif kind is UpdateGraph or kind is DirectTask:
            keys = dict.fromkeys([spec.key for spec in message.tasks] + list(message.wanted))
            items = [TaskStatus(key, "erred", failure, "") for key in keys]
            reports.setdefault(message.client, []).extend(items)
    _report(scheduler, reports)


def _report(scheduler, reports: dict) -> None:
    for client_id, items in reports.items():
        session = scheduler.sessions.get(client_id)
        if session is None:
            continue
        try:
            session.report(items)
        except Exception:
            scheduler.logger.exception("could not tell client %s about the failure", client_id)
