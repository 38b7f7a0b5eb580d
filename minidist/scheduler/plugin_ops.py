"""Plugin operations: register and unregister worker and scheduler plugins (and so uploaded files).

One ``PluginOperations`` per cluster, a part of its ``SchedulerOperations``; local and remote clients
send the plugin pickled (``blob``)::

    register_worker_plugin(blob, name) ─► under cluster.worker_setup.lock:
                                             worker_setup.add(name, blob)       future workers
                                             post run(install_plugin) ─────────► current workers
                                          ◄─ {address: "OK"}, or the first worker's error raised
    register_scheduler_plugin(blob, name) ─► scheduler thread: SchedulerPlugins.add (calls start)

See ``worker/plugins.py`` for why the lock makes "every worker, now and later" hold.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from typing import TYPE_CHECKING

from ..comm.serialize import loads_function
from ..worker.plugins import WorkerSetup, install_plugin, remove_plugin

if TYPE_CHECKING:
    from .operations import SchedulerOperations

PLUGIN_HANDLER_NAMES = {
    "register_worker_plugin": "register_worker_plugin",
    "unregister_worker_plugin": "unregister_worker_plugin",
    "register_scheduler_plugin": "register_scheduler_plugin",
    "unregister_scheduler_plugin": "unregister_scheduler_plugin",
}


class PluginOperations:
    """The plugin operations of one cluster, built on its ``SchedulerOperations``."""

    def __init__(self, operations: SchedulerOperations):
        self._scheduler = operations.scheduler
        self.worker_setup = WorkerSetup()  # the plugins every new worker installs (the cluster's)

    def _post_run(self, function, args: tuple) -> concurrent.futures.Future:
        """Start ``function(*args, dask_worker=...)`` on every worker there is when the scheduler
        thread gets to it; returns the answer future (``{address: (ok, value)}``)."""
        function_blob, arguments = self._scheduler.data_plane.pack_call(function, args, {})
        answer: concurrent.futures.Future = concurrent.futures.Future()

        def start(scheduler) -> None:
            scheduler.runs.start(list(scheduler.workers.values()), function_blob, arguments, answer)

        self._scheduler.call(start)
        return answer

    def _collect(self, answer: concurrent.futures.Future) -> dict:
        plane = self._scheduler.data_plane
        results = {}
        for address, (ok, value) in answer.result().items():
            if not ok:
                exc = value[0]
                raise pickle.loads(exc) if isinstance(exc, (bytes, bytearray)) else exc
            results[address] = plane.unpack_result(value)
        return results

    def register_worker_plugin(self, blob: bytes, name: str, idempotent: bool = False) -> dict:
        setup = self.worker_setup
        with setup.lock:
            if idempotent and name in setup:
                return {}
            setup.add(name, blob)
            answer = self._post_run(install_plugin, (name, blob))
        try:
            return self._collect(answer)  # waits outside the lock: workers may start meanwhile
        except BaseException:
            # a plugin whose setup fails is not kept: later workers would fail the same way
            with setup.lock:
                setup.remove(name)
                undo = self._post_run(remove_plugin, (name,))
            undo.result()
            raise

    def unregister_worker_plugin(self, name: str) -> dict:
        setup = self.worker_setup
        with setup.lock:
            if not setup.remove(name):
                raise ValueError(f"No worker plugin named {name!r} is registered")
            answer = self._post_run(remove_plugin, (name,))
        return self._collect(answer)

    def register_scheduler_plugin(self, blob: bytes, name: str, idempotent: bool = False) -> None:
        plugin = loads_function(blob)

        def add(scheduler) -> None:
            if idempotent and name in scheduler.plugins.plugins:
                return
            scheduler.plugins.add(name, plugin)

        self._scheduler.call(add).result()

    def unregister_scheduler_plugin(self, name: str) -> None:
        def remove(scheduler) -> None:
            if not scheduler.plugins.remove(name):
                raise ValueError(f"No scheduler plugin named {name!r} is registered")

        self._scheduler.call(remove).result()
