"""``Worker``: minidist's worker runtime with hooks, the base class for ``LocalCluster(worker_class=...)``.

A subclass runs in every worker (in the worker process with ``processes=True``, in the cluster's process
with ``processes=False``), and tasks reach it with ``get_worker()``::

    worker starts ─► __init__ (task threads ready) ─► setup()
    each task     ─► before_task(key) ─► the task's function ─► after_task(key, error)  (on its thread)
    worker leaves ─► close(): task threads stopped ─► teardown()

    class Counting(Worker):
        def setup(self):
            self.done = 0
        def after_task(self, key, error):
            self.done += 1

    LocalCluster(worker_class=Counting)   # tasks see get_worker().done

Hook rules:

- ``setup()`` runs once, before the worker takes any task. If it raises, the worker does not start: with
  ``processes=False`` the exception reaches the caller of ``LocalCluster()``/``scale()``; with processes the
  traceback lands in the worker's log (``cluster.get_logs()``) and the process exits.
- ``before_task`` and ``after_task`` run on the task's thread around the function call. An exception
  from ``before_task`` errs the task (its function is not called); ``after_task`` gets the exception the
  task raised (or None) and cannot change the result, but an exception it raises errs the task.
- ``teardown()`` runs once when the worker closes cleanly (scale down, restart, cluster close); it does
  not run when the process is killed or dies. Its exceptions are logged, not raised.
- ``self.logger`` writes to this worker's own log (``cluster.get_logs()[address]``).
- Set ``runs_in_threads = True`` on the class to make ``processes`` default to False.

The class must be importable by the worker processes (a module on ``sys.path``) or defined in
``__main__`` (it is then sent by value with cloudpickle).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from ..worker.pending import unpack_run_spec
from ..worker.runtime import WorkerRuntime, current_key


class Worker(WorkerRuntime):
    """A worker runtime with ``setup``/``teardown``/``before_task``/``after_task`` hooks (see module doc)."""

    runs_in_threads = False

    def __init__(
        self,
        *args,
        prepare: Optional[Callable] = None,
        logger: Optional[logging.Logger] = None,
        **kwargs,
    ):
        self.logger = logger or logging.getLogger("minidist.worker")
        self._torn_down = False
        self._teardown_lock = threading.Lock()  # close() may be called from two threads at once
        kwargs["prepare"] = self._with_hooks(prepare or unpack_run_spec)
        super().__init__(*args, **kwargs)
        self.worker_object = self  # what get_worker() returns inside tasks
        try:
            self.setup()
        except BaseException:
            self._torn_down = True  # setup failed: there is nothing to tear down
            super().close(timeout=1.0)
            raise

    # ---------------------------------------------------------------------------------------- hooks

    def setup(self) -> None:
        """Runs once, before the first task."""

    def teardown(self) -> None:
        """Runs once, when the worker closes cleanly."""

    def before_task(self, key) -> None:
        """Runs on the task's thread just before the task's function."""

    def after_task(self, key, error: Optional[BaseException]) -> None:
        """Runs on the task's thread just after the function; ``error`` is what it raised, or None."""

    # ---------------------------------------------------------------------------------- machinery

    def _with_hooks(self, prepare: Callable) -> Callable:
        """Wrap the runtime's ``prepare`` so the function it returns calls the task hooks around itself."""

        def prepare_with_hooks(run_spec) -> tuple:
            function, args, kwargs = prepare(run_spec)
            key = current_key()

            def call(*call_args, **call_kwargs) -> Any:
                self.before_task(key)
                try:
                    result = function(*call_args, **call_kwargs)
                except BaseException as exc:  # noqa: B036 - the hook sees every failure, then it propagates
                    self.after_task(key, exc)
                    raise
                self.after_task(key, None)
                return result

            return call, args, kwargs

        return prepare_with_hooks

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout=timeout)
        with self._teardown_lock:
            if self._torn_down:
                return
            self._torn_down = True
        try:
            self.teardown()
        except Exception:
            self.logger.exception("teardown() of worker %s failed", self.address)

    # what get_worker() offers on plain workers, so tasks can use either
    @property
    def executing_count(self) -> int:
        return len(self.executing)

    @property
    def client(self):
        """The client this worker's tasks share (``get_client()`` inside a task returns it too)."""
        if self.task_clients is None:
            raise ValueError(f"Worker {self.address!r} belongs to no cluster, so it has no client")
        return self.task_clients.get()

    def log_event(self, topic, msg) -> None:
        """Record an event on the scheduler (``client.get_events``/``subscribe_topic`` see it)."""
        self.client.log_event(topic, msg)

    def get_current_task(self):
        """The key of the task running on this thread (None outside a task)."""
        return current_key()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.address!r}, name: {self.name}, threads: {self.nthreads}>"
        )
