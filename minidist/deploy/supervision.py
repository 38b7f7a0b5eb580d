"""The memory monitor: a thread in the client process that keeps process workers under their memory limit.

    every MONITOR_INTERVAL (thread "minidist-memory-monitor")
    cluster.handles ─► process workers with a memory_limit ─► process_memory(pid)   (deploy/memory.py)
                                                                      │ memory_action(used, limit)
        OK after PAUSE ─► scheduler: status "running" ◄───────────────┤
        PAUSE          ─► scheduler: status "paused" (no new tasks) ◄─┤
        TERMINATE      ─► handle.memory_killed = True; SIGKILL ◄──────┘
                              │ the worker's pipe reaches EOF
                              ▼
        the scheduler removes it ─► its tasks requeued (KilledWorker after allowed_failures deaths)
                               ─► cluster._on_worker_lost ─► a replacement worker

Measuring from outside is what makes this dependable: a worker stuck in a C call or swapping still gets
measured and killed, and nothing in the worker has to cooperate. What counts is private memory (``rss -
shared``): results written to /dev/shm are not the worker's to answer for (see deploy/memory.py).

Status changes run on the scheduler thread and leave a retiring worker alone (it is leaving anyway). A
pause is logged once when it starts and once when it ends, in the cluster's log and the worker's own log,
and a termination in both as well, naming the usage and the limit. Thread workers are never monitored:
they share this process's memory, so their limit is reported but cannot be enforced per worker.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable, Optional

from ..messages import PauseWorker
from .memory import MemoryAction, format_bytes, memory_action, memory_kill_reason, process_memory

MONITOR_INTERVAL = 0.1  # seconds between two measurements of every worker (dask's monitor-interval)


class MemoryMonitor:
    """Measures process workers on a timer; pauses, resumes and terminates them (see module doc).

    ``workers()`` returns the process worker handles to watch; ``scheduler`` is the cluster's Scheduler;
    ``logger`` the cluster's log and ``worker_logger(address)`` each worker's own log.
    """

    def __init__(
        self,
        workers: Callable[[], list],
        scheduler,
        logger: logging.Logger,
        worker_logger: Callable[[str], logging.Logger],
        pause_fraction: Optional[float],
        terminate_fraction: Optional[float],
        interval: float = MONITOR_INTERVAL,
    ):
        self.workers = workers
        self.scheduler = scheduler
        self.logger = logger
        self.worker_logger = worker_logger
        self.pause_fraction = pause_fraction
        self.terminate_fraction = terminate_fraction
        self.interval = interval
        self.paused: set[str] = set()  # addresses this monitor paused
        # stop() writes a byte to this pipe; the thread sleeps in poll() on it (see _run)
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self._pipe_lock = threading.Lock()  # stop() may be called from two threads at once
        self._thread = threading.Thread(
            target=self._run, name="minidist-memory-monitor", daemon=True
        )

    def start(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        with self._pipe_lock:
            if not self._stopping:
                self._stopping = True
                os.write(self._wake_write, b"x")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # else the thread closes it as it ends (_run)
            self._close_pipe()

    def _close_pipe(self) -> None:
        with self._pipe_lock:
            if self._wake_read >= 0:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = -1

    def _run(self) -> None:
        # poll() on a pipe rather than Event.wait(): the wait holds no object made for it (Event.wait
        # makes a lock, an argument tuple and a bound method each time and keeps them while it
        # sleeps). A thread that wakes every 0.1 s for the life of the cluster would otherwise keep
        # a fresh object alive at all times in whatever allocator pool was current, which after a
        # large run is one of the run's arenas (1 MiB): it would never be given back
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        interval_ms = max(1, round(self.interval * 1000))
        while not poller.poll(interval_ms):  # readable once stop() wrote its byte
            try:
                self.check()
            except Exception:  # keep watching: one bad measurement must not end supervision
                self.logger.exception("Memory monitor check failed")
        self._close_pipe()

    def check(self) -> None:
        """Measure every watched worker once and act on what is found."""
        import psutil  # LocalCluster loaded it while its workers started

        watched = set()
        for handle in self.workers():
            limit = handle.memory_limit
            if not limit or handle.pid is None or handle.memory_killed:
                continue
            watched.add(handle.address)
            try:
                used = process_memory(handle.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # gone: the scheduler sees its pipe close and handles the death
            action = memory_action(used, limit, self.pause_fraction, self.terminate_fraction)
            if action is MemoryAction.TERMINATE:
                self._terminate(handle, used, limit)
            elif action is MemoryAction.PAUSE and handle.address not in self.paused:
                self._set_paused(handle, True, used, limit)
            elif action is MemoryAction.OK and handle.address in self.paused:
                self._set_paused(handle, False, used, limit)
        self.paused &= watched  # forget workers that are gone

    def _set_paused(self, handle, paused: bool, used: int, limit: int) -> None:
        address = handle.address
        if paused:
            self.paused.add(address)
            message = (
                "Worker %s is using %s, %.0f%% of its %s memory_limit: pausing it (no new tasks)"
            )
        else:
            self.paused.discard(address)
            message = "Worker %s is using %s, %.0f%% of its %s memory_limit: resuming it"
        args = (address, format_bytes(used), 100 * used / limit, format_bytes(limit))
        self.logger.warning(message, *args)
        self.worker_logger(address).warning(message, *args)
        self.scheduler.post(PauseWorker(address, paused))

    def _terminate(self, handle, used: int, limit: int) -> None:
        fraction = self.terminate_fraction or 1.0
        detail = memory_kill_reason(used, limit, fraction)
        handle.memory_kill_detail = detail
        handle.memory_killed = (
            True  # before the kill: the death reason reads it when the pipe closes
        )
        message = "Terminating worker %s for exceeding its memory limit (%s)"
        self.logger.warning(message, handle.address, detail)
        self.worker_logger(handle.address).warning(message, handle.address, detail)
        handle.kill()
