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
run's arenas: 10,000 of them (~1 MB) kept ~9 arenas of 1 MiB each alive. ``pack()`` (the scheduler
calls it once a large run was released) moves every record kept into one compressed pickle of its
columns, which lives outside the small-object arenas (~0.3 MB for 10,000 records, where the columns
took ~1.1 MB), and empties the columns in place; a read unpacks it again. Records that arrive later
fill the columns anew, and each takes the place of the oldest packed record once the stream is full;
the next ``pack()`` packs them together.
"""

from __future__ import annotations

import array
import math
import pickle
import zlib
from typing import Iterator, Optional

from ..keys import key_split

STREAM_LENGTH = 10_000  # dask keeps 100,000; this bounds the client process memory (load suites)
_MAX_PENDING_TRANSFERS = 10_000
_NO_TRANSFER = math.nan
_EMPTY_TIMES = array.array("d", (0.0, 0.0, _NO_TRANSFER, _NO_TRANSFER))


class TaskStream:
    """The newest ``maxlen`` records, oldest first when iterated (the dashboard reads it as a sequence)."""

    def __init__(self, maxlen: int = STREAM_LENGTH):
        self.maxlen = maxlen
        # [0]: tasks that ever finished or erred here (kept or not), the cluster's progress; [1]: the
        # slot the next record takes once all slots are used; [2]: packed records still kept (the
        # oldest); [3]: records in the packed buffer. An array, not int attributes: the int
        # object of a large run's last increment would live on after it, in one of the run's
        # allocator arenas, and keep that whole arena alive
        self._counters = array.array("q", (0, 0, 0, 0))
        self._transfers: dict = {}  # key -> (t0, t1), until its result arrives
        self._packed: Optional[bytes] = None  # pack(): the records of that moment, compressed
        self._keys: list = []
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
        n = len(self._keys)
        if counters[2] and n + counters[2] >= self.maxlen:  # the oldest packed record makes room
            counters[2] -= 1
            if not counters[2]:
                self._packed = None
        if n + counters[2] < self.maxlen:  # a new slot at the end, filled below
            i = n
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
        return len(self._keys) + self._counters[2]

    def pack(self) -> None:
        """Move every record into one compressed buffer (see the module docstring): after a large
        run is released, so that the objects it made do not keep its allocator arenas alive."""
        if not self._keys:
            return  # nothing arrived since the last packing
        columns = self._columns()
        # the arrays as bytes: pickling an array object looks its reconstructor up by name, and the
        # name string made then would stay in CPython's type attribute cache, in one of the run's arenas
        keys, workers, statuses, threads, nbytes, times = columns
        plain = (keys, workers, statuses, threads.tobytes(), nbytes.tobytes(), times.tobytes())
        try:
            packed = zlib.compress(pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL), 1)
        except Exception:  # a key pickle cannot take (never a dask key): keep the objects
            return
        self._packed = packed
        counters = self._counters
        counters[1] = 0
        counters[2] = counters[3] = len(columns[0])
        # emptied in place: new list or array objects made now would land in the run's arenas
        self._keys.clear()
        self._workers.clear()
        self._statuses.clear()
        del self._threads[:], self._nbytes[:], self._times[:]

    def _columns(self) -> tuple:
        """(keys, workers, statuses, threads, nbytes, times) of every record kept, oldest first."""
        first = self._counters[1]
        columns: tuple = (
            self._keys[first:] + self._keys[:first],
            self._workers[first:] + self._workers[:first],
            self._statuses[first:] + self._statuses[:first],
            self._threads[first:] + self._threads[:first],
            self._nbytes[first:] + self._nbytes[:first],
            self._times[4 * first :] + self._times[: 4 * first],
        )
        kept = self._counters[2]
        if kept and self._packed is not None:
            keys, workers, statuses, threads, nbytes, times = pickle.loads(
                zlib.decompress(self._packed)
            )
            packed = (
                keys,
                workers,
                statuses,
                array.array("Q", threads),
                array.array("q", nbytes),
                array.array("d", times),
            )
            skip = self._counters[3] - kept  # packed records that newer ones replaced
            columns = tuple(
                old[skip * (4 if j == 5 else 1) :] + new
                for j, (old, new) in enumerate(zip(packed, columns))
            )
        return columns

    @staticmethod
    def _record(columns: tuple, i: int) -> tuple:
        keys, workers, statuses, threads, nbytes, times = columns
        start, stop, t0, t1 = times[4 * i : 4 * i + 4]
        return (
            keys[i],
            workers[i],
            threads[i],
            start,
            stop,
            statuses[i],
            None if math.isnan(t0) else (t0, t1),
            nbytes[i],
        )

    def __iter__(self) -> Iterator[tuple]:
        columns = self._columns()
        return (self._record(columns, i) for i in range(len(columns[0])))

    def __reversed__(self) -> Iterator[tuple]:
        columns = self._columns()
        return (self._record(columns, i) for i in range(len(columns[0]) - 1, -1, -1))


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
