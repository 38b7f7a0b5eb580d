"""The task stream: one record per finished or failed task, for the dashboard, ``get_task_stream`` and
``performance_report``.

The scheduler thread appends as results arrive::

    worker ─("transfer", key, t0, t1)─► TaskStream.transfer()   dependencies decoded on the worker
    worker ─("done"/"erred", ...)──────► TaskStream.finished()   one record, the transfer joined in

A record reads as a tuple ``(key, worker, thread, start, stop, status, transfer, nbytes)``; ``transfer`` is
``(start, stop)`` of decoding the dependency values the worker received, or None. ``records()`` turns
them into dask's dicts (``key``, ``worker``, ``thread``, ``status`` "OK"/"error", ``startstops`` with a
``compute`` and maybe a ``transfer`` interval, ``nbytes``) plus minidist's ``prefix``/``start``/``stop``.

The newest ``STREAM_LENGTH`` records are kept in columns (a ring of slots: lists for the key, worker and
status objects, which are referenced, not copied, and arrays of machine numbers for the rest) and made
into tuples only when read. A tuple and its floats per record, allocated while a large run churns
through memory and kept after it, would pin most of the run's allocator arenas, which could then never
be given back: after 100,000 tasks that was ~50 MB of the client's RSS for ~2.5 MB of records.

The keys are the tasks' own key objects, made while the run churned, so they too are spread over the
run's arenas: 10,000 of them (~1 MB) kept ~9 arenas of 1 MiB each alive. ``pack_keys()`` (the scheduler
calls it once a large run was released) pickles the key column into one bytes object, which lives
outside the small-object arenas, and drops the key objects; a read unpickles it again. Records that
arrive later hold their key objects until the next ``pack_keys()``.
"""

from __future__ import annotations

import array
import itertools
import math
import pickle
from typing import Iterator, Optional

from ..keys import key_split

STREAM_LENGTH = 10_000  # dask keeps 100,000; this bounds the client process memory (load suites)
_MAX_PENDING_TRANSFERS = 10_000
_NO_TRANSFER = math.nan
_EMPTY_TIMES = array.array("d", (0.0, 0.0, _NO_TRANSFER, _NO_TRANSFER))
_PACKED = object()  # in the key column: this slot's key is in the packed keys


class TaskStream:
    """The newest ``maxlen`` records, oldest first when iterated (the dashboard reads it as a sequence)."""

    def __init__(self, maxlen: int = STREAM_LENGTH):
        self.maxlen = maxlen
        # [0]: tasks that ever finished or erred here (kept or not), the cluster's progress; [1]: the
        # slot the next record takes once all slots are used. An array, not int attributes: the int
        # object of a large run's last increment would live on after it, in one of the run's
        # allocator arenas, and keep that whole arena alive
        self._counters = array.array("q", (0, 0))
        self._transfers: dict = {}  # key -> (t0, t1), until its result arrives
        self._keys: list = []
        self._packed: Optional[bytes] = None  # pack_keys(): the key column of that moment, pickled
        self._workers: list = []
        self._statuses: list = []
        self._threads = array.array("Q")
        self._nbytes = array.array("q")
        self._times = array.array("d")  # start, stop, transfer start, transfer stop (nan: none)

    @property
    def runs(self) -> int:
        return self._counters[0]

    def transfer(self, key, start: float, stop: float) -> None:
        if len(self._transfers) >= _MAX_PENDING_TRANSFERS:
            self._transfers.clear()  # results of workers that died never came: do not hoard
        self._transfers[key] = (start, stop)

    def finished(self, key, worker: str, thread, start, stop, status: str, nbytes: int = 0):
        counters = self._counters
        counters[0] += 1
        if self.maxlen <= 0:
            return
        transfer = self._transfers.pop(key, None)
        t0, t1 = transfer if transfer is not None else (_NO_TRANSFER, _NO_TRANSFER)
        if len(self._keys) < self.maxlen:  # a new slot at the end, filled below
            i = len(self._keys)
            self._keys.append(None)
            self._workers.append(None)
            self._statuses.append(None)
            self._threads.append(0)
            self._nbytes.append(0)
            self._times.extend(_EMPTY_TIMES)
        else:  # the oldest slot
            i = counters[1]
            counters[1] = (i + 1) % self.maxlen
        self._keys[i] = key
        self._workers[i] = worker
        self._statuses[i] = status
        times, j = self._times, 4 * i
        try:
            self._threads[i] = thread
            self._nbytes[i] = nbytes
            times[j] = start
            times[j + 1] = stop
        except (TypeError, ValueError, OverflowError):  # a peer's odd numbers: keep the record
            self._threads[i] = self._nbytes[i] = 0
            times[j] = times[j + 1] = 0.0
        times[j + 2] = t0
        times[j + 3] = t1

    def discard_transfer(self, key) -> None:
        self._transfers.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)

    def pack_keys(self) -> None:
        """Move the keys into one pickled bytes object (see the module docstring): after a large run
        is released, so that the key objects it made do not keep its allocator arenas alive."""
        if all(key is _PACKED for key in self._keys):
            return
        keys = self._key_column()
        try:
            packed = pickle.dumps(keys, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a key pickle cannot take (never a dask key): keep the objects
            return
        self._packed = packed
        # in place: a new list object made now would land in one of the released run's arenas
        self._keys[:] = itertools.repeat(_PACKED, len(keys))

    def _key_column(self) -> list:
        """Each slot's key (a fresh list if some are packed)."""
        if self._packed is None:
            return self._keys
        unpacked = pickle.loads(self._packed)  # slots added since the packing come after its own
        return [unpacked[i] if key is _PACKED else key for i, key in enumerate(self._keys)]

    def _record(self, i: int, keys: list) -> tuple:
        start, stop, t0, t1 = self._times[4 * i : 4 * i + 4]
        return (
            keys[i],
            self._workers[i],
            self._threads[i],
            start,
            stop,
            self._statuses[i],
            None if math.isnan(t0) else (t0, t1),
            self._nbytes[i],
        )

    def __iter__(self) -> Iterator[tuple]:
        n, first, keys = len(self._keys), self._counters[1], self._key_column()
        return (self._record((first + j) % n, keys) for j in range(n))

    def __reversed__(self) -> Iterator[tuple]:
        n, first, keys = len(self._keys), self._counters[1], self._key_column()
        return (self._record((first + j) % n, keys) for j in range(n - 1, -1, -1))


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
