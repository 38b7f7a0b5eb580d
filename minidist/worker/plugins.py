"""Worker plugins: code that runs on every worker, now and on every worker started later.

``client.register_plugin(WorkerPlugin())``, ``register_worker_callbacks`` and ``upload_file`` all become
one thing, a pickled ``WorkerPlugin`` under a name, kept in the cluster's ``WorkerSetup`` list::

    client ─► operation "register_worker_plugin" ─► WorkerSetup.add(name, blob)   (for future workers)
                                                 └► run(install_plugin) on every current worker
    new worker ─► its init carries WorkerSetup.items() ─► install_plugin each, before its first task

On a worker, ``PluginSet`` (``runtime.plugins``) holds the installed plugins: ``setup(worker)`` runs at
install, ``teardown(worker)`` at uninstall or when the worker closes cleanly, and ``transition(key,
start, finish)`` around each task (``ready → executing``, then ``executing → memory`` or ``→ error``),
through a wrapper around the runtime's ``prepare``: workers without plugins pay nothing. A transition
hook that raises is logged on the worker's log and the task goes on.

``WorkerSetup`` has a lock the cluster holds from reading the list to registering a new worker with
the scheduler, and the operation holds while adding and posting the install: so a worker either
carries a plugin in its init or is among the workers the install reaches, never neither.
"""

from __future__ import annotations

import difflib
import logging
import shutil
import threading
from typing import Any, Optional

from ..errors import Reschedule

logger = logging.getLogger("minidist.worker")

WORKER_HOOKS = ("setup", "teardown", "transition")
SCHEDULER_HOOKS = (
    "start",
    "close",
    "before_close",
    "add_worker",
    "remove_worker",
    "transition",
    "update_graph",
    "restart",
    "add_client",
    "remove_client",
    "log_event",
    "valid_workers_downscaling",
)


class WorkerPlugin:
    """Base class of worker plugins (dask.distributed's interface).

    Override any of ``setup(worker)``, ``teardown(worker)`` and ``transition(key, start, finish,
    **kwargs)``. Give the class a ``name`` attribute to make registrations of it replace each other.
    """

    name: Optional[str] = None
    idempotent: bool = False

    def setup(self, worker) -> None:
        """Runs once per worker: at registration on current workers, at start on later ones."""

    def teardown(self, worker) -> None:
        """Runs when the plugin is unregistered or the worker closes cleanly (not when it is killed)."""

    def transition(self, key, start: str, finish: str, **kwargs) -> None:
        """A task on this worker changed state: ``ready → executing → memory | error``."""


def check_hooks(plugin, hooks: tuple, kind: str, other_hooks: tuple = ()) -> None:
    """TypeError naming ``plugin`` if it defines a method that looks like a misspelt hook, or a hook
    of the other kind of plugin (a scheduler hook on a worker plugin, say)."""
    cls = type(plugin)
    for attribute in dir(cls):
        if attribute.startswith("_") or attribute in hooks:
            continue
        if not callable(getattr(cls, attribute, None)):
            continue
        if attribute in other_hooks:
            raise TypeError(
                f"{kind} {cls.__name__!r} defines {attribute!r}, which is not a {kind} hook "
                f"({', '.join(hooks)}); it belongs to the other kind of plugin"
            )
        close = difflib.get_close_matches(attribute, hooks, n=1, cutoff=0.8)
        if close:
            raise TypeError(
                f"{kind} {cls.__name__!r} defines {attribute!r}, which is not a hook: did you mean "
                f"{close[0]!r}? Its hooks are {', '.join(hooks)}"
            )


def call_hook(function, *args, **kwargs):
    """Call a hook; if it is a coroutine function (dask allows async setup), run it to completion."""
    result = function(*args, **kwargs)
    if hasattr(result, "__await__"):
        import asyncio

        async def wait():
            return await result

        return asyncio.run(wait())
    return result


# ----------------------------------------------------------------------------- the cluster's list


class WorkerSetup:
    """The cluster's ordered ``{name: pickled plugin}``: what every new worker installs."""

    def __init__(self):
        self.lock = threading.RLock()
        self._items: dict = {}

    def add(self, name: str, blob: bytes) -> None:
        with self.lock:
            self._items.pop(name, None)  # a re-registration moves to the end, as it runs last
            self._items[name] = blob

    def remove(self, name: str) -> bool:
        with self.lock:
            return self._items.pop(name, None) is not None

    def items(self) -> list:
        with self.lock:
            return list(self._items.items())

    def __contains__(self, name) -> bool:
        return name in self._items


# ------------------------------------------------------------------------------- on each worker


class PluginSet:
    """The plugins installed on one worker (``runtime.plugins``)."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.plugins: dict = {}
        self._local_directory: Optional[str] = None
        self._original_prepare = runtime._prepare
        runtime._prepare = self._prepare  # transitions around every task from now on

    # read like dask's ``worker.plugins``: a mapping of name to plugin
    def __getitem__(self, name: str):
        return self.plugins[name]

    def __contains__(self, name) -> bool:
        return name in self.plugins

    def __iter__(self):
        return iter(list(self.plugins))

    def __len__(self) -> int:
        return len(self.plugins)

    def items(self) -> list:
        return list(self.plugins.items())

    @property
    def local_directory(self) -> str:
        """A directory of this worker's own (uploaded files go here); removed when it closes."""
        if self._local_directory is None:
            import tempfile

            self._local_directory = tempfile.mkdtemp(prefix="minidist-worker-")
        return self._local_directory

    def install(self, name: str, plugin) -> None:
        old = self.plugins.pop(name, None)
        if old is not None:
            self._teardown(name, old)
        if hasattr(plugin, "setup"):
            call_hook(plugin.setup, worker=self.runtime)
        self.plugins[name] = plugin

    def remove(self, name: str) -> bool:
        plugin = self.plugins.pop(name, None)
        if plugin is None:
            return False
        self._teardown(name, plugin)
        return True

    def close(self) -> None:
        for name in reversed(list(self.plugins)):
            self._teardown(name, self.plugins.pop(name))
        if self._local_directory is not None:
            shutil.rmtree(self._local_directory, ignore_errors=True)

    def _teardown(self, name: str, plugin) -> None:
        if not hasattr(plugin, "teardown"):
            return
        try:
            call_hook(plugin.teardown, worker=self.runtime)
        except Exception:
            logger.exception("teardown of worker plugin %r failed", name)

    def _transition(self, key, start: str, finish: str, **kwargs) -> None:
        for name, plugin in list(self.plugins.items()):
            hook = getattr(plugin, "transition", None)
            if hook is None:
                continue
            try:
                hook(key, start, finish, **kwargs)
            except Exception:
                logger.exception("transition hook of worker plugin %r failed on %r", name, key)

    def _prepare(self, run_spec) -> tuple:
        from .runtime import current_key

        function, args, kwargs = self._original_prepare(run_spec)
        key = current_key()
        transition = self._transition

        def call(*call_args, **call_kwargs) -> Any:
            transition(key, "ready", "executing")
            try:
                result = function(*call_args, **call_kwargs)
            except BaseException as exc:  # noqa: B036 - plugins see every failure, then it propagates
                if isinstance(exc, Reschedule):
                    transition(key, "executing", "rescheduled")
                else:
                    transition(key, "executing", "error", exception=exc)
                raise
            transition(key, "executing", "memory")
            return result

        return call, args, kwargs


def plugins_of(runtime) -> PluginSet:
    plugins = getattr(runtime, "plugins", None)
    if plugins is None:
        plugins = runtime.plugins = PluginSet(runtime)
    return plugins


def install_plugin(name: str, blob: bytes, dask_worker=None) -> str:
    """Run on a worker (through ``run``, or at start): unpickle and install one plugin."""
    from ..comm.serialize import loads_function

    plugin = loads_function(blob)
    plugins_of(dask_worker).install(name, plugin)
    return "OK"


def install_all(runtime, items: list) -> None:
    """A new worker installs the cluster's plugins before its first task; failures are logged."""
    for name, blob in items:
        try:
            install_plugin(name, blob, runtime)
        except Exception:
            logger.exception("worker plugin %r could not be installed on %s", name, runtime.address)


def remove_plugin(name: str, dask_worker=None) -> bool:
    plugins = getattr(dask_worker, "plugins", None)
    return plugins is not None and plugins.remove(name)


def close_plugins(runtime) -> None:
    """The worker is closing cleanly: tear every plugin down (``WorkerRuntime.close`` calls this)."""
    plugins = getattr(runtime, "plugins", None)
    if plugins is not None:
        plugins.close()
