"""Cluster events on the client side: ``log_event``, ``get_events``, ``subscribe_topic``, and showing
what tasks ``minidist.print``/``minidist.warn`` (``task_output.py``).

Events live on the scheduler (``scheduler/published.py``), one bounded log per topic. A client that
is not itself inside a task runs one listener thread, which waits on the scheduler for the next events
(parked there, so nothing polls) and dispatches them::

    task: minidist.print(...) ──► log_event("print", msg) (task_output.py) ──► scheduler event log
    listener thread ◄── wait_events(after=n) ◄── answered when something is logged
        "print" → this process's stdout/stderr    "warn" → warnings.warn
        a subscribed topic → handler((time, msg)), on the listener thread

A task on a thread worker runs in the client's own process: it prints (or warns) there directly, and
listeners in that process skip its events; several clients of one cluster in one process show each
event once. (A process worker also prints to its own stdout, which it shares with the process that
started it, as dask's workers do.)
"""

from __future__ import annotations

import builtins
import itertools
import logging
import os
import pickle
import sys
import threading
import warnings
import weakref
from typing import Callable, Optional

logger = logging.getLogger("minidist.client")

_numbers = itertools.count(1)


class EventTopics:
    """The event calls and the listener of one client."""

    def __init__(self, client):
        self._client = client
        self.handlers: dict = {}  # topic -> handler
        self._thread: Optional[threading.Thread] = None
        self._stopped = False
        self.forwarding = False  # forward_logging() was called: re-emit forwarded records

    def _invoke(self, name: str, *args):
        client = self._client
        client._check_open()
        return client.operations.invoke(name, *args)

    # ------------------------------------------------------------------------------------ calls

    def log_event(self, topic, msg) -> None:
        """Record ``msg`` (any picklable value) under ``topic`` (or each topic of a list)."""
        self._invoke("log_event", topic, msg)

    def get_events(self, topic=None):
        """The events of ``topic`` as ``((time, msg), ...)``, oldest first; without a topic, a dict of
        every topic's events."""
        return self._invoke("get_events", topic)

    def subscribe_topic(self, topic, handler: Callable) -> None:
        """Call ``handler((time, msg))`` for each event later logged under ``topic`` (on this client's
        event thread)."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self.handlers[topic] = handler
        self.start()

    def unsubscribe_topic(self, topic) -> None:
        self.handlers.pop(topic, None)

    def forward_logging(self, logger_name=None, level=logging.NOTSET) -> None:
        """Re-emit here, on loggers of the same names, the records that ``logger_name`` (the root
        logger if None) logs on process workers, now and later ones, at ``level`` and up."""
        from .log_forwarding import ForwardLogging, plugin_name

        self.forwarding = True
        self.start()
        plugin = ForwardLogging(logger_name, level, os.getpid())
        self._client.register_plugin(plugin, name=plugin_name(logger_name))

    def unforward_logging(self, logger_name=None) -> None:
        """Stop forwarding ``logger_name`` (the root logger if None)."""
        from .log_forwarding import plugin_name

        self._client.unregister_worker_plugin(plugin_name(logger_name))

    # --------------------------------------------------------------------------------- listener

    @staticmethod
    def inside_task() -> bool:
        """Clients made inside tasks do not listen: what tasks print is for the user's clients."""
        return task_runtime() is not None

    def start(self) -> None:
        """Start listening (once); the client's close stops it."""
        if self._thread is not None or self._stopped:
            return
        client = self._client
        # where the stream stands now, asked before this returns: every event logged after the
        # client exists reaches it, however late its thread starts
        try:
            after, _ = client.operations.invoke("wait_events", client.id, None, 0)
        except ValueError:  # blocked_handlers refuses "subscribe_topic": no events for anyone
            logger.debug("event topics are blocked on this cluster; not listening")
            return
        # the thread holds the client weakly: a client dropped without close() can still be collected
        self._thread = threading.Thread(
            target=_listen,
            args=(weakref.ref(client), client.id, client.operations, after),
            name=f"minidist-events-{next(_numbers)}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Called by ``Client.close`` before it lets go of the cluster: the scheduler stops this
        client's listener and takes back the leases and locks it held (``client_leaving``)."""
        self._stopped = True
        thread, self._thread = self._thread, None
        try:
            self._client.operations.invoke("client_leaving", self._client.id)
        except Exception:
            pass  # the connection or the scheduler is gone: so is what the client held
        if thread is None:
            return
        if thread is not threading.current_thread():
            thread.join(10)

    def dispatch(self, topic, when: float, msg, cluster=None, number: int = 0) -> None:
        if topic == "print" and _first_sight((cluster, topic), number):
            _show_print(msg)
        elif topic == "warn" and _first_sight((cluster, topic), number):
            _show_warning(msg)
        elif topic == "forwarded-log-record" and self.forwarding:
            if _first_sight((cluster, topic), number):
                from .log_forwarding import re_emit

                re_emit(msg)
        handler = self.handlers.get(topic)
        if handler is not None:
            try:
                handler((when, msg))
            except Exception:
                logger.exception("the handler of event topic %r raised; still listening", topic)


def _listen(client_ref, client_id: str, operations, after: int) -> None:
    while True:
        try:
            # one wait until something is logged, with no timeout: the scheduler answers it None when
            # the client leaves or its connection ends, and errs it when the scheduler closes. A
            # thread that woke now and then would keep what it made at each wake-up alive across the
            # next wait, in whichever arena a large run had just filled (scheduler/failure.py).
            answer = operations.invoke("wait_events", client_id, after, None)
        except Exception:
            return  # the scheduler or the connection is gone
        if answer is None:  # the client is leaving (client_leaving)
            return
        after, events = answer
        client = client_ref()
        if client is None or client._closed:
            return
        cluster = getattr(client.scheduler, "cluster_id", None)
        for number, topic, when, msg in events:
            client._events.dispatch(topic, when, msg, cluster, number)
        del client


# ----------------------------------------------------------------------------- print and warn

# the newest event number shown in this process, per (cluster, topic): two clients of one cluster in
# one process show a task's print (or warning, or forwarded record) once
_shown: dict = {}
_shown_lock = threading.Lock()


def _first_sight(cluster, number: int) -> bool:
    with _shown_lock:
        if number <= _shown.get(cluster, 0):
            return False
        _shown[cluster] = number
        return True


def _show_print(msg) -> None:
    if not isinstance(msg, dict) or msg.get("pid") == os.getpid():
        return  # printed here already (a thread worker in this process)
    stream = sys.stderr if msg.get("file") == 2 else sys.stdout
    builtins.print(
        *msg.get("args", ()), sep=msg.get("sep", " "), end=msg.get("end", "\n"), file=stream
    )


def _show_warning(msg) -> None:
    if not isinstance(msg, dict) or msg.get("pid") == os.getpid():
        return
    try:
        message = pickle.loads(msg["message"])
        category = pickle.loads(msg["category"])
    except Exception:
        message, category = str(msg.get("message")), UserWarning
    warnings.warn(message, category, stacklevel=1)


def task_runtime():
    from .worker.runtime import current_key, current_runtime

    runtime = current_runtime()
    return runtime if runtime is not None and current_key() is not None else None
