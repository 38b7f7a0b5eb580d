"""Diagnostics of a run: ``get_task_stream``, ``performance_report`` and ``get_task_metadata``.

Each is a context manager over the scheduler's task stream (``scheduler/task_stream.py``), read through
the client's named operations, so it works for local and remote clients alike::

    with performance_report("report.html"):   enter: note the time
        ...work...                              exit:  task stream since then + workers
                                                       ─► dashboard/report.py ─► one HTML file
    with get_task_stream() as ts: ...           ts.data: dask-shaped records of the tasks in the block
    with get_task_metadata() as tm: ...         tm.state / tm.metadata: the tasks submitted in the block
                                                (a SchedulerPlugin collects their keys meanwhile)

``client.get_task_stream(start=, stop=, count=)`` takes timestamps or durations ago ("10 s").
"""

from __future__ import annotations

import time
import uuid
from typing import Optional

from .scheduler.plugins import SchedulerPlugin


def time_bound(value) -> Optional[float]:
    """A timestamp from ``value``: None, a timestamp, or a duration ago ("10 s", timedelta)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1e9:
        return float(value)
    from .utils import parse_timedelta

    return time.time() - parse_timedelta(value)


def client_task_stream(invoke, start=None, stop=None, count=None, plot=False, filename=None):
    """``Client.get_task_stream`` (``invoke``: the client's named-operation call): the records, and
    with ``plot="save"`` an HTML file written too."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"count must be a non-negative int, not {count!r}")
    records = invoke("task_stream", time_bound(start), time_bound(stop), count)
    if plot is False:
        return records
    if plot != "save":
        raise ValueError(
            "minidist draws no bokeh figures: use plot='save' to write the task stream to an "
            "HTML file (filename=), or plot=False for the records alone"
        )
    from .dashboard.report import render_report

    with open(filename or "task-stream.html", "w", encoding="utf-8") as f:
        f.write(render_report(records, invoke("scheduler_info")["workers"], "Task stream"))
    return records


def _client(client):
    if client is not None:
        return client
    from .default_clients import current_client_for_task, default_client

    return current_client_for_task() or default_client()


class get_task_stream:  # noqa: N801 - dask's name
    """Collect the task stream of the tasks that ran inside the block: ``ts.data``."""

    def __init__(self, client=None, plot=False, filename: str = "task-stream.html"):
        self.client = _client(client)
        self.plot = plot
        self.filename = filename
        self.data: list = []

    def __enter__(self):
        self.start = time.time()
        return self

    def __exit__(self, *exc_info) -> None:
        self.data.extend(
            self.client.get_task_stream(start=self.start, plot=self.plot, filename=self.filename)
        )

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, *exc_info) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.__exit__, *exc_info)


class performance_report:  # noqa: N801 - dask's name
    """Write a self-contained HTML report of the work done inside the block (viewable offline):
    summary, task stream, per-prefix durations and a timeline of each worker's use."""

    def __init__(
        self,
        filename: str = "dask-report.html",
        stacklevel: int = 1,
        mode=None,
        storage_options=None,
        client=None,
    ):
        self.filename = filename
        self.client = client

    def __enter__(self):
        self.client = _client(self.client)
        self.start = time.time()
        return self

    def __exit__(self, *exc_info) -> None:
        from .dashboard.report import render_report

        stop = time.time()
        records = self.client.get_task_stream(start=self.start)
        workers = self.client.scheduler_info()["workers"]
        html = render_report(records, workers, "minidist performance report", self.start, stop)
        with open(self.filename, "w", encoding="utf-8") as f:
            f.write(html)

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, *exc_info) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.__exit__, *exc_info)


class CollectTaskKeys(SchedulerPlugin):
    """Scheduler side of ``get_task_metadata``: remembers every key submitted while registered."""

    def __init__(self):
        self.keys: dict = {}

    def update_graph(self, scheduler, *, client=None, keys=None, tasks=None, **kwargs) -> None:
        for key in tasks or ():
            self.keys[key] = None


def _collected(name: str, dask_scheduler=None) -> dict:
    """On the scheduler: ``{key: state}`` of the keys the named collector saw (forgotten ones too)."""
    plugin = dask_scheduler.plugins.plugins[name]
    tasks = dask_scheduler.state.tasks
    return {key: tasks[key].state if key in tasks else "forgotten" for key in plugin.keys}


class get_task_metadata:  # noqa: N801 - dask's name
    """Collect the tasks submitted inside the block: ``tm.state`` ``{key: final state}`` and
    ``tm.metadata`` ``{key: {"worker", "startstops", "nbytes", "status"}}`` (from the task stream)."""

    def __init__(self, client=None):
        self.client = client
        self.name = f"task-metadata-{uuid.uuid4()}"
        self.state: dict = {}
        self.metadata: dict = {}

    def __enter__(self):
        self.client = _client(self.client)
        self.start = time.time()
        self.client.register_plugin(CollectTaskKeys(), name=self.name)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.state = self.client.run_on_scheduler(_collected, self.name)
        finally:
            self.client.unregister_scheduler_plugin(self.name)
        for record in self.client.get_task_stream(start=self.start):
            if record["key"] in self.state:
                self.metadata[record["key"]] = {
                    k: record[k] for k in ("worker", "thread", "status", "startstops", "nbytes")
                }
        for key in self.state:
            self.metadata.setdefault(key, {})

    async def __aenter__(self):
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.__enter__)

    async def __aexit__(self, *exc_info) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.__exit__, *exc_info)
