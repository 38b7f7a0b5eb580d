"""``client.forward_logging()``: log records emitted on process workers are re-emitted on the client.

On each worker (installed with ``client.run``) a ``logging.Handler`` on the chosen logger turns records
into plain dicts and queues them; a thread of its own sends each as a "forwarded-log-record" event
through the worker's task client (so ``emit`` never blocks the thread that logged). The client's event
listener (``client_events.py``) rebuilds each record and hands it to its logger of the same name::

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

    def _send_loop(self) -> None:
        import minidist

        minidist.Client  # noqa: B018 - loads the client side here, which tasks' clients need
        while True:
            record = self.records.get()
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


def install(logger_name, level, client_pid: int, dask_worker=None) -> bool:
    """On a worker (through ``client.run``): forward ``logger_name``'s records at ``level`` and up.
    Idempotent: a second call only changes the level. False where there is nothing to forward."""
    if os.getpid() == client_pid or dask_worker is None:
        return False
    handlers = getattr(dask_worker, "forwarding_handlers", None)
    if handlers is None:
        handlers = dask_worker.forwarding_handlers = {}
    handler = handlers.get(logger_name)
    if handler is None:
        handler = handlers[logger_name] = ForwardingHandler(dask_worker, level)
        logging.getLogger(logger_name).addHandler(handler)
    handler.setLevel(level)
    return True


def re_emit(attrs: dict) -> None:
    """On the client: hand a forwarded record to the logger of its name."""
    record = logging.makeLogRecord(attrs)
    logging.getLogger(record.name).handle(record)
