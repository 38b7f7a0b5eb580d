"""Logs per component: the cluster, the scheduler and each worker keep their own bounded buffer.

    in-process code                      worker process
    logs.cluster_logger.info(...)        logging.getLogger("minidist.worker").info(...)
    logs.scheduler_logger.warning(...)       │ WorkerLogShipper (a handler) keeps (created, levelno,
    logs.worker_logger(addr).info(...)       │ name, message) tuples; the worker sends drain() to the
          │                                  ▼ parent as WorkerLogs(records), every SHIP_INTERVAL
          │                      logs.add_remote_records(addr, tuples)
          ▼                                  │
    per-cluster loggers "minidist.<component>.<label>[.<worker address>]"
          │ handlers:
          ├─► LogBuffer (deque of formatted lines) ─► get_logs() / scheduler_lines(n) / worker_lines(...)
          └─► _Outlet: forwards to the user's logging config, echoes to stderr per silence_logs

Separation: each ClusterLogs owns child loggers named with a label unique in the process (the cluster's
name, with "-2", "-3"... added while another live cluster uses it), so two clusters never mix records.

Propagation: our loggers have ``propagate = False``, and the _Outlet handler forwards each record to the
component logger (``minidist.cluster``, ``minidist.scheduler`` or ``minidist.worker``) only when the user has
configured a handler somewhere on that chain (on ``minidist``, on the root, ...) and that logger's
effective level lets the record through. So:

- the user's logging config sees minidist records, at the levels it chose (``basicConfig()`` shows
  warnings, not every INFO line);
- with no config at all nothing is forwarded, so logging's "last resort" handler never prints a second copy;
- ``silence_logs=<level>`` echoes records at or above that level to stderr, unless the record was just
  printed to stderr/stdout by a handler of the user's config (no double printing either way);
  ``silence_logs=False`` (or None) echoes nothing. The root logger is never modified.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import traceback
from typing import Callable

__all__ = [
    "COMPONENT_LOGGERS",
    "DEFAULT_BUFFER_SIZE",
    "LOG_FORMAT",
    "ClusterLogs",
    "LogBuffer",
    "WorkerLogShipper",
]

COMPONENT_LOGGERS = ("minidist.cluster", "minidist.scheduler", "minidist.worker")
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
DEFAULT_BUFFER_SIZE = 10_000  # records kept per component
KEEP_CLOSED_WORKERS = 32  # buffers of workers that are gone, kept for get_logs (the newest ones)
SHIP_INTERVAL = 0.1  # seconds between two shipments of a worker process's records

_labels_in_use: set[str] = set()
_labels_lock = threading.Lock()


class LogBuffer(logging.Handler):
    """A handler keeping the last ``maxlen`` records as (created, level name, formatted line)."""

    def __init__(self, maxlen: int = DEFAULT_BUFFER_SIZE, fmt: str = LOG_FORMAT):
        super().__init__()
        self.setFormatter(logging.Formatter(fmt))
        self.entries: collections.deque = collections.deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.entries.append((record.created, record.levelname, line))

    def _snapshot(self) -> list:
        # emit() runs under self.lock (Handler.handle takes it); reading under it avoids racing appends.
        self.acquire()
        try:
            return list(self.entries)
        finally:
            self.release()

    def lines(
        self, n: int | None = None, start: float = 0.0, timestamps: bool = False
    ) -> list[tuple]:
        """Newest first, as dask's ``get_logs``: ``[(level, line), ...]`` or ``[(created, level, line)]``.

        ``n`` caps the count, ``start`` drops records created before that time.
        """
        picked: list[tuple] = []
        for created, level, line in reversed(self._snapshot()):
            if (n is not None and len(picked) >= n) or created < start:
                break
            picked.append((created, level, line) if timestamps else (level, line))
        return picked

    def text(self) -> str:
        """Every kept line, oldest first, one per line."""
        return "\n".join(line for _, _, line in self._snapshot())


class _Outlet(logging.Handler):
    """Forwards records to the user's logging config and echoes them to stderr (see module doc)."""

    def __init__(self, component: logging.Logger, echo_level: int | None):
        super().__init__()
        self.component = component
        self.echo_level = echo_level
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        printed = False
        if self.component.isEnabledFor(record.levelno) and _configured(self.component):
            self.component.handle(record)
            printed = _prints_to_console(self.component, record.levelno)
        if self.echo_level is not None and record.levelno >= self.echo_level and not printed:
            try:
                # sys.stderr looked up now, so a replaced stderr (pytest's capture, a notebook) is used
                sys.stderr.write(self.format(record) + "\n")
                sys.stderr.flush()
            except Exception:
                self.handleError(record)


def _chain(logger: logging.Logger):
    """The loggers a record handled by ``logger`` reaches: itself and its ancestors while they propagate."""
    current: logging.Logger | None = logger
    while current is not None:
        yield current
        if not current.propagate:
            break
        current = current.parent


def _configured(logger: logging.Logger) -> bool:
    return any(c.handlers for c in _chain(logger))


def _prints_to_console(logger: logging.Logger, levelno: int) -> bool:
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return any(
        isinstance(h, logging.StreamHandler)
        and getattr(h, "stream", None) in consoles
        and levelno >= h.level
        for c in _chain(logger)
        for h in c.handlers
    )


def _echo_level(silence_logs) -> int | None:
    """None (echo nothing) for False/None/0; WARNING for True; else the level, as an int or a name."""
    if silence_logs is None or silence_logs is False or silence_logs == 0:
        return None
    if silence_logs is True:
        return logging.WARNING
    if isinstance(silence_logs, int):
        return silence_logs
    if isinstance(silence_logs, str):
        level = logging.getLevelName(silence_logs.upper())
        if isinstance(level, int):
            return level
    raise ValueError(
        f"silence_logs={silence_logs!r} is not a logging level; use a level such as logging.WARNING "
        "or 'error' (records at or above it are shown on stderr), or False to show none"
    )


class _Tag(logging.Filter):
    """Sets ``record.worker`` on a worker's records, for handlers that want the address by itself."""

    def __init__(self, worker: str):
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


class _Component:
    """One logger of a cluster with its buffer and outlet handlers attached."""

    def __init__(
        self,
        logger_name: str,
        component: str,
        echo_level: int | None,
        buffer_size: int,
        worker: str | None = None,
        buffer: LogBuffer | None = None,
    ):
        self.logger = logging.getLogger(logger_name)
        self.tag = None if worker is None else _Tag(worker)
        self.buffer = LogBuffer(buffer_size) if buffer is None else buffer
        self.outlet = _Outlet(logging.getLogger(component), echo_level)
        levels = [logging.INFO, logging.getLogger(component).getEffectiveLevel()]
        if echo_level is not None:
            levels.append(echo_level)
        self.logger.setLevel(max(1, min(levels)))
        self.logger.propagate = False
        self.logger.addHandler(self.buffer)
        self.logger.addHandler(self.outlet)
        if self.tag is not None:
            self.logger.addFilter(self.tag)

    def detach(self) -> None:
        if self.tag is not None:
            self.logger.removeFilter(self.tag)
        self.logger.removeHandler(self.buffer)
        self.logger.removeHandler(self.outlet)
        # Back to a plain logger: whatever still logs here reaches the user's config as usual.
        self.logger.propagate = True
        self.logger.setLevel(logging.NOTSET)


class ClusterLogs:
    """The logs of one cluster: a logger and a bounded buffer for the cluster, the scheduler and each worker.

    ``silence_logs`` chooses what is echoed to stderr: records at or above a level (an int or a name),
    nothing for False/None. See the module doc for how this meets the user's own logging config.
    """

    def __init__(
        self,
        cluster_name: str,
        silence_logs=logging.WARNING,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ):
        self.cluster_name = str(cluster_name)
        self.echo_level = _echo_level(silence_logs)
        self.buffer_size = buffer_size
        self.label = _claim_label(self.cluster_name)
        self._lock = threading.Lock()
        self._closed = False
        self._cluster = self._component("minidist.cluster")
        self._scheduler = self._component("minidist.scheduler")
        self._workers: dict[str, _Component] = {}
        self._gone_workers: collections.OrderedDict[str, LogBuffer] = collections.OrderedDict()

    def __repr__(self):
        return f"<ClusterLogs {self.label!r}: {len(self._workers)} workers>"

    def _component(
        self, component: str, worker: str | None = None, buffer: LogBuffer | None = None
    ) -> _Component:
        name = f"{component}.{self.label}" + (f".{worker}" if worker else "")
        return _Component(name, component, self.echo_level, self.buffer_size, worker, buffer)

    # ---- loggers -------------------------------------------------------------------------------

    @property
    def cluster_logger(self) -> logging.Logger:
        return self._cluster.logger

    @property
    def scheduler_logger(self) -> logging.Logger:
        return self._scheduler.logger

    def worker_logger(self, worker_address: str) -> logging.Logger:
        """The logger of one worker (created on first use); its records name the worker's address."""
        return self._worker(worker_address).logger

    def _worker(self, address: str) -> _Component:
        address = str(address)
        with self._lock:
            component = self._workers.get(address)
            if component is None:
                # a worker back under the same address goes on in the buffer it had
                earlier = self._gone_workers.pop(address, None)
                component = self._component("minidist.worker", address, earlier)
                if self._closed:
                    component.detach()
                self._workers[address] = component
            return component

    def add_remote_records(self, worker_address: str, records) -> None:
        """Records shipped from a worker process, as (created, levelno, name, message) tuples.

        They land in that worker's buffer (and the user's config / stderr echo) as if logged here. A
        record of the worker's own logger (``minidist.worker...``) takes this worker's logger name, so
        its lines say which worker wrote them; other names (a library the task used) are kept.
        """
        if self._closed:
            return
        logger = self.worker_logger(worker_address)
        for created, levelno, name, message in records:
            if not logger.isEnabledFor(levelno):
                continue
            if name == "minidist.worker" or str(name).startswith("minidist.worker."):
                name = logger.name
            record = logging.LogRecord(name, levelno, "", 0, message, None, None)
            record.created = created
            record.msecs = (created - int(created)) * 1000
            logger.handle(record)  # filters (the worker tag) and handlers, as for a local record

    def close_worker(
        self, worker_address: str, ending: str | None = None, level: int = logging.INFO
    ) -> None:
        """A worker is gone: stop collecting for it; its lines stay in get_logs (the newest few workers).

        ``ending`` (e.g. ``"died: killed by SIGKILL"``) becomes the last line of its log, "Worker
        <address> <ending>": a worker killed from outside cannot say so itself.
        """
        if ending is not None and not self._closed:
            self.worker_logger(worker_address).log(level, "Worker %s %s", worker_address, ending)
        with self._lock:
            component = self._workers.pop(str(worker_address), None)
            if component is None:
                return
            component.detach()
            self._gone_workers[str(worker_address)] = component.buffer
            while len(self._gone_workers) > KEEP_CLOSED_WORKERS:
                self._gone_workers.popitem(last=False)

    # ---- reading -------------------------------------------------------------------------------

    def _worker_buffers(self) -> dict[str, LogBuffer]:
        with self._lock:
            buffers = dict(self._gone_workers)
            buffers.update((address, c.buffer) for address, c in self._workers.items())
            return buffers

    @property
    def worker_addresses(self) -> list[str]:
        """Addresses with logs: live workers and the most recent gone ones."""
        return list(self._worker_buffers())

    def get_logs(
        self, cluster: bool = True, scheduler: bool = True, workers=True
    ) -> dict[str, str]:
        """``{"Cluster": text, "Scheduler": text, "<worker address>": text, ...}``, lines oldest first.

        ``workers`` may also be a list of addresses to include only those.
        """
        logs = {}
        if cluster:
            logs["Cluster"] = self._cluster.buffer.text()
        if scheduler:
            logs["Scheduler"] = self._scheduler.buffer.text()
        if workers:
            wanted = None if workers is True else {str(w) for w in workers}
            for address, buffer in self._worker_buffers().items():
                if wanted is None or address in wanted:
                    logs[address] = buffer.text()
        return logs

    def cluster_lines(self, n: int | None = None) -> list[tuple[str, str]]:
        return self._cluster.buffer.lines(n)

    def scheduler_lines(self, n: int | None = None) -> list[tuple[str, str]]:
        """``[(level name, line), ...]``, newest first: what ``client.get_scheduler_logs(n)`` returns."""
        return self._scheduler.buffer.lines(n)

    def worker_lines(self, worker_address: str, n: int | None = None) -> list[tuple[str, str]]:
        """One worker's ``[(level name, line), ...]``, newest first (``client.get_worker_logs(n)``)."""
        buffer = self._worker_buffers().get(str(worker_address))
        return [] if buffer is None else buffer.lines(n)

    def close(self, workers_ending: str | None = None) -> None:
        """Remove every handler this object added; buffers stay readable. Safe to call twice.

        ``workers_ending`` becomes the last line of each live worker's log (see ``close_worker``).
        """
        with self._lock:
            if self._closed:
                return
            live = list(self._workers) if workers_ending is not None else []
        for address in live:
            self._workers[address].logger.info("Worker %s %s", address, workers_ending)
        with self._lock:
            self._closed = True
            components = [self._cluster, self._scheduler, *self._workers.values()]
        for component in components:
            component.detach()
        _release_label(self.label)


def _claim_label(cluster_name: str) -> str:
    # Dots would nest one cluster's loggers under another's name; a label is one segment.
    base = cluster_name.replace(".", "_") or "cluster"
    with _labels_lock:
        label, k = base, 1
        while label in _labels_in_use:
            k += 1
            label = f"{base}-{k}"
        _labels_in_use.add(label)
        return label


def _release_label(label: str) -> None:
    with _labels_lock:
        _labels_in_use.discard(label)


class WorkerLogShipper(logging.Handler):
    """Inside a worker process: keeps records as (created, levelno, name, message) tuples for the parent.

    The worker installs it (``install()``), and sends ``drain()`` to the parent now and then, which hands
    the tuples to ``ClusterLogs.add_remote_records``. Bounded: if nobody drains, the oldest go first.
    Messages are formatted here (arguments applied, tracebacks appended), so only strings travel.
    """

    def __init__(self, level: int = logging.NOTSET, maxlen: int = DEFAULT_BUFFER_SIZE):
        super().__init__(level)
        self.pending: collections.deque = collections.deque(maxlen=maxlen)
        self._installed_on: logging.Logger | None = None
        self._shipping: threading.Thread | None = None
        self._stop_shipping = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            elif record.exc_text:
                message += "\n" + record.exc_text
            if record.stack_info:
                message += "\n" + record.stack_info
        except Exception:
            self.handleError(record)
            return
        self.pending.append((record.created, record.levelno, record.name, message))

    def drain(self) -> list[tuple[float, int, str, str]]:
        """Take every record kept so far (oldest first)."""
        self.acquire()  # the lock emit() runs under
        try:
            taken = list(self.pending)
            self.pending.clear()
        finally:
            self.release()
        return taken

    def install(self, logger_name: str = "minidist.worker", level: int = logging.INFO) -> None:
        """Attach to ``logger_name`` (never the root) and let records from ``level`` on through it."""
        if not logger_name:
            raise ValueError("WorkerLogShipper never attaches to the root logger")
        logger = logging.getLogger(logger_name)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
        logger.addHandler(self)
        self._installed_on = logger

    def uninstall(self) -> None:
        if self._installed_on is not None:
            self._installed_on.removeHandler(self)
            self._installed_on = None

    def ship_every(self, send: Callable[[list], None], interval: float = SHIP_INTERVAL) -> None:
        """Hand the pending records to ``send`` every ``interval`` seconds while records wait.

        Runs in a daemon thread ("minidist-log-shipper") until ``stop_shipping()``; a failing ``send``
        (the parent hung up) ends it quietly.
        """
        if self._shipping is not None:
            return
        self._stop_shipping.clear()

        def ship_loop() -> None:
            while not self._stop_shipping.wait(interval):
                if self.pending and not self.ship(send):
                    return

        self._shipping = threading.Thread(
            target=ship_loop, name="minidist-log-shipper", daemon=True
        )
        self._shipping.start()

    def ship(self, send: Callable[[list], None]) -> bool:
        """Send what is pending now; False if ``send`` failed."""
        records = self.drain()
        if not records:
            return True
        try:
            send(records)
        except Exception:
            return False
        return True

    def stop_shipping(self, timeout: float = 1.0) -> None:
        thread, self._shipping = self._shipping, None
        self._stop_shipping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
