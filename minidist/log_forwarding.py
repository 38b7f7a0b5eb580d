"""``client.forward_logging()``: log records emitted on process workers are re-emitted on the client.

``forward_logging(name)`` registers a ``ForwardLogging`` worker plugin under "forward-logging-<name>", so
current and later workers forward; ``unforward_logging(name)`` unregisters it, and its teardown takes the
handler off. On each worker a ``logging.Handler`` on the chosen logger turns records into plain dicts and
queues them; a thread of its own sends each as a "forwarded-log-record" event through the worker's task
client (so ``emit`` never blocks the thread that logged). The client's event listener
(``client_events.py``) rebuilds each record and hands it to its logger of the same name::

    worker: logger.info(...) ──► ForwardingHandler.emit ──► queue ──► minidist-log-forward thread
              ──► log_event("forwarded-log-record", dict) ──► client listener ──► logger.handle(record)

Thread workers share the client's process and its loggers: their records are there already, so
nothing is installed on them.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
from typing import Optional

from .worker.plugins import WorkerPlugin

TOPIC = "forwarded-log-record"
_THREAD_NAME = "minidist-log-forward"


class ForwardingHandler(logging.Handler):
    def __init__(self, runtime, level):
        super().__init__(level)
        self.runtime = runtime
        self.records: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if threading.current_thread().name == _THREAD_NAME:
            return  # what sending itself logs would loop
        try:
            self.records.put(plain_record(record))
            if self._thread is None:
                with self._lock:
                    if self._thread is None:
                        self._thread = threading.Thread(
                            target=self._send_loop, name=_THREAD_NAME, daemon=True
                        )
                        self._thread.start()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.records.put(None)  # the sending thread ends once what was queued before is sent
        super().close()

    def _send_loop(self) -> None:
        import minidist

        minidist.Client  # noqa: B018 - loads the client side here, which tasks' clients need
        while True:
            record = self.records.get()
            if record is None:
                return  # closed: the plugin was unregistered
            try:
                self.runtime.task_clients.get().log_event(TOPIC, record)
            except Exception:
                return  # the cluster is gone: so is this worker, soon


def plain_record(record: logging.LogRecord) -> dict:
    """The record as a dict of picklable values, its message already formatted."""
    attrs = dict(record.__dict__)
    attrs["msg"] = record.getMessage()
    attrs["args"] = None
    if record.exc_info:
        attrs["exc_text"] = logging.Formatter().formatException(record.exc_info)
    attrs["exc_info"] = None
    for name, value in list(attrs.items()):
        try:
            pickle.dumps(value)
        except Exception:
            attrs[name] = repr(value)
    return attrs


def plugin_name(logger_name) -> str:
    return f"forward-logging-{logger_name or '<root>'}"


class ForwardLogging(WorkerPlugin):
    """On each process worker, now and later: forward ``logger_name``'s records at ``level`` and up
    (``client_pid``: the client's process, whose thread workers need nothing)."""

    def __init__(self, logger_name, level, client_pid: int):
        self.logger_name = logger_name
        self.level = level
        self.client_pid = client_pid
        self.handler: Optional[ForwardingHandler] = None

    def setup(self, worker) -> None:
        if os.getpid() != self.client_pid:
            self.handler = ForwardingHandler(worker, self.level)
            logging.getLogger(self.logger_name).addHandler(self.handler)

    def teardown(self, worker) -> None:
        if self.handler is not None:
            logging.getLogger(self.logger_name).removeHandler(self.handler)
            self.handler.close()
            self.handler = None


def re_emit(attrs: dict) -> None:
    """On the client: hand a forwarded record to the logger of its name."""
    record = logging.makeLogRecord(attrs)
    logging.getLogger(record.name).handle(record)
