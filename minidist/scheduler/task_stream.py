"""The task stream: one record per finished or failed task, for the dashboard, ``get_task_stream`` and
``performance_report``.

The scheduler thread appends as results arrive::

    worker ─("transfer", key, t0, t1)─► TaskStream.transfer()   dependencies decoded on the worker
    worker ─("done"/"erred", ...)──────► TaskStream.finished()   one record, the transfer joined in

A record is a tuple ``(key, worker, thread, start, stop, status, transfer, nbytes)``; ``transfer`` is
``(start, stop)`` of decoding the dependency values the worker received, or None. ``records()`` turns
them into dask's dicts (``key``, ``worker``, ``thread``, ``status`` "OK"/"error", ``startstops`` with a
``compute`` and maybe a ``transfer`` interval, ``nbytes``) plus minidist's ``prefix``/``start``/``stop``.
"""

from __future__ import annotations

import collections
from typing import Optional

from ..keys import key_split

STREAM_LENGTH = 10_000  # dask keeps 100,000; this bounds the client process memory (load suites)
_MAX_PENDING_TRANSFERS = 10_000


class TaskStream(collections.deque):
    """A bounded deque of records, newest last (the dashboard reads it as one)."""

    def __init__(self, maxlen: int = STREAM_LENGTH):
        super().__init__(maxlen=maxlen)
        self._transfers: dict = {}  # key -> (t0, t1), until its result arrives

    def transfer(self, key, start: float, stop: float) -> None:
        if len(self._transfers) >= _MAX_PENDING_TRANSFERS:
            self._transfers.clear()  # results of workers that died never came: do not hoard
        self._transfers[key] = (start, stop)

    def finished(self, key, worker: str, thread, start, stop, status: str, nbytes: int = 0):
        self.append(
            (key, worker, thread, start, stop, status, self._transfers.pop(key, None), nbytes)
        )

    def discard_transfer(self, key) -> None:
        self._transfers.pop(key, None)


def select(stream, start: Optional[float] = None, stop: Optional[float] = None, count=None) -> list:
    """Scheduler thread: a copy of the raw records that ended at/after ``start`` and began
    at/before ``stop``, the newest ``count`` only if given. Formatting happens off this thread."""
    chosen = [
        r for r in stream if (start is None or r[4] >= start) and (stop is None or r[3] <= stop)
    ]
    if count is not None:
        chosen = chosen[-count:] if count > 0 else []
    return chosen


def as_dicts(records: list) -> list:
    """Raw records -> dask-shaped dicts (see the module docstring)."""
    out = []
    for key, worker, thread, start, stop, status, transfer, nbytes in records:
        startstops: tuple
        if transfer is not None:
            startstops = (
                {
                    "action": "transfer",
                    "start": transfer[0],
                    "stop": transfer[1],
                    "source": "scheduler",
                },
                {"action": "compute", "start": transfer[1], "stop": stop},
            )
        else:
            startstops = ({"action": "compute", "start": start, "stop": stop},)
        out.append(
            {
                "key": key,
                "worker": worker,
                "thread": thread,
                "status": "OK" if status == "ok" else "error",
                "startstops": startstops,
                "nbytes": nbytes,
                "metadata": {},
                "prefix": key_split(key),
                "start": start,
                "stop": stop,
            }
        )
    return out
