"""``WorkerHandle``: what the scheduler thread needs of a worker, whatever kind it is.

The cluster (``deploy/workers.py``) makes one handle per worker: ``ProcessWorkerHandle`` for a worker
process behind a pipe, ``ThreadWorkerHandle`` for a thread pool in this process. The scheduler shell
(``scheduler/server.py``) only uses what this protocol lists, so it never asks which kind it drives::

    scheduler ──execute_message / send_messages / start_run──► handle ──► the worker
    scheduler ◄── batches of worker messages: from ``conn`` (selected on), or posted as WorkerReports
    the worker died (its ``conn`` reached EOF) ──► running_keys, death_reason, close

The cluster's own uses (stop, kill, memory figures, readiness) are the cluster's business and are not
part of this protocol.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from ..messages import ComputeTask, RunSpec


class WorkerHandle(Protocol):
    address: str
    name: Any
    nthreads: int
    resources: Optional[dict]
    memory_limit: Optional[int]
    started: bool  # it said hello (a worker that dies before that says nothing about its tasks)

    @property
    def pid(self) -> Optional[int]:
        """The worker's process (None for thread workers)."""
        ...

    @property
    def conn(self) -> Any:
        """The pipe the scheduler reads the worker's batches from; None: they are posted instead."""
        ...

    def execute_message(
        self,
        key,
        run_spec: RunSpec,
        dependencies,
        dep_values,
        attempt: int = 0,
        may_hold: bool = False,
    ) -> ComputeTask:
        """The message that runs a task on this worker (a process worker is sent a function once;
        ``may_hold``: it may keep a large result to itself, ``scheduler/lineage.py``)."""
        ...

    def send_messages(self, batch: list) -> None:
        """Deliver scheduler-to-worker messages; OSError/EOFError/ValueError if the worker is gone."""
        ...

    def start_run(self, run_id: int, function: Any, arguments: Any) -> None:
        """``client.run`` on this worker: it answers with a RunResult (OSError if it is gone)."""
        ...

    def on_hello(self, message: Any) -> None: ...

    def on_logs(self, records: list) -> None: ...

    def on_client_message(self, scheduler: Any, frame: bytes) -> None:
        """A frame from a client inside one of its tasks."""
        ...

    def running_keys(self, candidates: list) -> Optional[list]:
        """After a death: which of ``candidates`` it was running, or None if that cannot be told."""
        ...

    def death_reason(self) -> str: ...

    def ended_by_itself(self) -> bool:
        """After ``death_reason``: it exited or crashed on its own (or the memory monitor killed it),
        rather than being killed from outside."""
        ...

    def close(self) -> None:
        """Tell the worker to leave and hang up (the scheduler no longer talks to it)."""
        ...
