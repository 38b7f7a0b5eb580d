"""Scheduler plugins: user code called by the scheduler thread as tasks and workers come and go.

``client.register_plugin(SchedulerPlugin())`` lands here (``SchedulerPlugins.add``, on the scheduler
thread, which calls ``start(scheduler)``). The scheduler shell (``scheduler/server.py``) then calls::

    update_graph(scheduler, client=, keys=, tasks=)      a client submitted tasks
    transition(key, start, finish)                       released → waiting, queued → processing,
                                                         processing → memory | erred, ... → forgotten
    add_worker(scheduler, worker=address)                remove_worker(scheduler, worker=address)
    restart(scheduler)                                   before_close(), close()   (the scheduler closes)
    add_client(scheduler, client=id)                     remove_client(scheduler, client=id)
    log_event(topic, msg)                                (client.log_event, once per topic)

Hooks run on the scheduler thread: keep them short. A hook that raises is logged on the scheduler's
log and the scheduler goes on; only ``start`` failing is reported to the registering client.
``scheduler`` is minidist's ``Scheduler`` (``state``, ``workers``, ``data``).
"""

from __future__ import annotations

import logging
from typing import Optional

from ..worker.plugins import SCHEDULER_HOOKS, call_hook


class SchedulerPlugin:
    """Base class of scheduler plugins (dask.distributed's interface); override the hooks you need."""

    name: Optional[str] = None
    idempotent: bool = False

    def start(self, scheduler) -> None:
        """Runs once, when the plugin is registered."""

    def close(self) -> None:
        """Runs when the plugin is unregistered or the scheduler closes."""

    def update_graph(self, scheduler, *, client=None, keys=None, tasks=None, **kwargs) -> None:
        """A client submitted ``tasks`` (keys); ``keys`` are those it wants."""

    def transition(self, key, start: str, finish: str, *args, **kwargs) -> None:
        """A task changed state."""

    def add_worker(self, scheduler, worker: str) -> None:
        """A worker joined."""

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        """A worker left (retired, restarted or died)."""

    def restart(self, scheduler) -> None:
        """``client.restart()`` forgot every task."""

    def add_client(self, scheduler, client: str) -> None:
        """A client connected (in this process or over the network)."""

    def remove_client(self, scheduler, client: str) -> None:
        """A client closed, or its connection ended."""

    def log_event(self, topic: str, msg) -> None:
        """An event was logged under ``topic`` (``client.log_event``)."""

    def before_close(self) -> None:
        """The scheduler is closing; ``close`` follows."""


class SchedulerPlugins:
    """The plugins of one scheduler, in registration order. Touched only on the scheduler thread."""

    def __init__(self, scheduler, logger: logging.Logger):
        self.scheduler = scheduler
        self.logger = logger
        self.plugins: dict = {}
        scheduler.worker_removed_hooks.append(self._worker_removed)

    def _worker_removed(self, address: str) -> None:
        if self.plugins:
            self.emit("remove_worker", self.scheduler, worker=address)

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def add(self, name: str, plugin) -> None:
        old = self.plugins.pop(name, None)
        if old is not None:
            self._call(name, old, "close")
        if hasattr(plugin, "start"):
            call_hook(plugin.start, self.scheduler)  # raises to the registering client
        self.plugins[name] = plugin

    def remove(self, name: str) -> bool:
        plugin = self.plugins.pop(name, None)
        if plugin is None:
            return False
        self._call(name, plugin, "close")
        return True

    def close(self) -> None:
        for name in reversed(list(self.plugins)):
            self._call(name, self.plugins.pop(name), "close")

    def _call(self, name: str, plugin, hook: str, *args, **kwargs) -> None:
        method = getattr(plugin, hook, None)
        if method is None:
            return
        try:
            call_hook(method, *args, **kwargs)
        except Exception:
            self.logger.exception("%s hook of scheduler plugin %r failed", hook, name)

    def emit(self, hook: str, *args, **kwargs) -> None:
        """Call ``hook`` on every plugin that has it."""
        for name, plugin in list(self.plugins.items()):
            self._call(name, plugin, hook, *args, **kwargs)

    def downscaling_allowed(self, workers: list) -> list:
        """The workers among ``workers`` (worker states) that the plugins let the cluster retire when it
        shrinks: each ``valid_workers_downscaling(scheduler, workers)`` narrows the previous answer, as
        in dask. A plugin that raises is logged and ignored."""
        for name, plugin in list(self.plugins.items()):
            method = getattr(plugin, "valid_workers_downscaling", None)
            if method is None:
                continue
            try:
                workers = list(call_hook(method, self.scheduler, workers))
            except Exception:
                self.logger.exception(
                    "valid_workers_downscaling of scheduler plugin %r failed", name
                )
        return workers

    # the shell's hooks, each a one-liner there
    def transition(self, key, start: str, finish: str) -> None:
        self.emit("transition", key, start, finish)

    def update_graph(self, client: str, keys, tasks) -> None:
        self.emit("update_graph", self.scheduler, client=client, keys=set(keys), tasks=list(tasks))
        for key in tasks:
            self.emit("transition", key, "released", "waiting")


__all__ = ["SCHEDULER_HOOKS", "SchedulerPlugin", "SchedulerPlugins"]
