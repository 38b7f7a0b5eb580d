"""Client calls for plugins and code shipping: ``register_plugin``, ``unregister_worker_plugin``,
``unregister_scheduler_plugin``, ``register_worker_callbacks`` and ``upload_file`` (dask's names).

Plugins are pickled here (cloudpickle, so classes from ``__main__`` travel by value) and handed to the
operations of ``scheduler/plugin_ops.py``, which keep worker plugins for workers started later too.
Bad input fails here, before anything reaches the cluster: an object that is not a plugin, a method
that looks like a misspelt hook, a file to upload that is not .py/.zip/.egg or does not compile.
Mixed into ``Client``. What it uses (cloudpickle, the plugin and shipping modules) is imported by the
call that needs it, so ``from minidist import Client`` does not wait for it.
"""

from __future__ import annotations

import os


def _is_a(plugin, base_name: str) -> bool:
    """minidist's plugin classes or dask.distributed's (for programs moving between the two)."""
    return any(cls.__name__ == base_name for cls in type(plugin).__mro__)


class PluginClient:
    """The plugin calls of one client (built by ``Client``, which forwards the public methods)."""

    def __init__(self, calls):
        self._invoke = calls.invoke

    def register_plugin(self, plugin, name=None, idempotent=None):
        """Register a ``WorkerPlugin`` (runs on every worker, now and later) or a ``SchedulerPlugin``.

        ``name`` defaults to ``plugin.name`` or a fresh one; registering a name again replaces the
        plugin (its ``teardown``/``close`` runs), unless ``idempotent`` keeps the first.
        Returns ``{worker address: "OK"}`` for worker plugins.
        """
        from .comm.serialize import dumps_function
        from .worker.plugins import SCHEDULER_HOOKS, WORKER_HOOKS, check_hooks

        hooks: tuple
        others: tuple
        if _is_a(plugin, "WorkerPlugin"):
            kind, hooks, others = "worker", WORKER_HOOKS, SCHEDULER_HOOKS
        elif _is_a(plugin, "SchedulerPlugin"):
            kind, hooks, others = "scheduler", SCHEDULER_HOOKS, WORKER_HOOKS
        else:
            raise TypeError(
                f"register_plugin needs a minidist.WorkerPlugin or minidist.SchedulerPlugin "
                f"instance, not {plugin!r} of type {type(plugin).__name__}; inherit from one of them"
            )
        check_hooks(plugin, hooks, f"{kind.capitalize()}Plugin", tuple(set(others) - set(hooks)))
        if name is None:
            import uuid

            name = getattr(plugin, "name", None) or f"{type(plugin).__name__}-{uuid.uuid4()}"
        if idempotent is None:
            idempotent = bool(getattr(plugin, "idempotent", False))
        try:
            blob = dumps_function(plugin)
        except Exception as exc:
            raise TypeError(f"Could not pickle the plugin {plugin!r} to send it: {exc}") from exc
        installed = self._invoke(f"register_{kind}_plugin", blob, str(name), idempotent)
        if kind == "worker" and getattr(plugin, "restart_workers", False) is True:
            # UploadDirectory/PipInstall(restart_workers=True): fresh workers import afresh, and
            # install the plugin before their first task
            self._invoke("restart_workers", self._invoke("workers_matching"), None)
        return installed

    def unregister_worker_plugin(self, name, nanny=None):
        """Remove a worker plugin from every worker (its ``teardown`` runs) and from later workers."""
        return self._invoke("unregister_worker_plugin", name)

    def unregister_scheduler_plugin(self, name):
        """Remove a scheduler plugin (its ``close`` runs)."""
        return self._invoke("unregister_scheduler_plugin", name)

    def register_worker_callbacks(self, setup=None):
        """Run ``setup`` (which may take ``dask_worker``) on every worker, now and on later ones."""
        if setup is None:
            return None
        if not callable(setup):
            raise TypeError(f"register_worker_callbacks needs a callable, not {setup!r}")
        import uuid

        from .worker.shipping import WorkerCallbacks

        name = f"worker-callback-{getattr(setup, '__name__', 'setup')}-{uuid.uuid4().hex[:8]}"
        return self.register_plugin(WorkerCallbacks(setup), name=name)

    def upload_file(self, filename, load: bool = True):
        """Send a ``.py``, ``.zip`` or ``.egg`` file to every worker (and later ones) and make it
        importable there (imported at once with ``load``). Uploading a file of the same name again
        replaces it, and reloads the module."""
        from .worker.shipping import SHIPPABLE_FILES, UploadFile

        filename = os.fspath(filename)
        if not filename.endswith(SHIPPABLE_FILES):
            raise ValueError(f"upload_file takes a .py, .zip or .egg file, not {filename!r}")
        with open(filename, "rb") as f:
            data = f.read()
        return self.register_plugin(UploadFile.of_bytes(filename, data, load))
