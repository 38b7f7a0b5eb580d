"""Held results: large results a process worker keeps to itself until someone outside needs them.

Writing a result into a fresh ``/dev/shm`` file costs a page allocation and a copy (milliseconds for a
few megabytes); a dependent that runs on the same worker needs neither. So when the scheduler allows it
(``ComputeTask.may_hold``: no client wants the key yet, and the chain of held results behind it is
short, ``scheduler/lineage.py``), a large result stays in the worker's cache as the object itself::

    task thread: result of at least HOLD_THRESHOLD bytes, held bytes under the budget?
        yes ──► runtime.data[key] = the object ──► TaskHeld (no payload)
        no  ──► serialised as ever (large buffers into shared memory) ──► TaskDone
    PublishKeys (receiving thread files it) ──► publisher thread: serialise once ──► Published ──► scheduler
    FreeKeys ──► dropped with the cache

Small results are always published: that costs little and keeps held chains short. The budget (a
quarter of the worker's memory limit, or ``DEFAULT_BUDGET`` without one) bounds what held values add to
the worker's private memory, which the memory monitor counts (shared memory it does not).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Optional

from ..messages import Published
from ..tracebacks import encode_error

HOLD_THRESHOLD = 1 << 20  # smaller results are published at once
DEFAULT_BUDGET = 512 << 20  # held bytes per worker without a memory limit
_MISSING = object()


def large_bytes(value: Any, depth: int = 2) -> int:
    """The bytes of a value's buffers (arrays, bytes, memoryviews, also in short containers), read from
    their sizes without pickling; 0 for anything else."""
    typ = type(value)
    if typ is bytes or typ is bytearray:
        return len(value)
    if typ is tuple or typ is list:
        if depth and len(value) <= 64:
            return sum(large_bytes(item, depth - 1) for item in value)
        return 0
    if typ is dict:
        if depth and len(value) <= 64:
            return sum(large_bytes(item, depth - 1) for item in value.values())
        return 0
    try:
        nbytes = getattr(value, "nbytes", None)  # NumPy arrays, memoryviews, pandas Series...
    except Exception:
        return 0
    return nbytes if type(nbytes) is int else 0


class HeldResults:
    """Which results this worker holds, their bytes against the budget, and their publication."""

    def __init__(self, runtime, encode: Callable[[Any], tuple], memory_limit: Optional[int]):
        self.runtime = runtime
        self.encode = encode  # the worker's result encoder: (payload, nbytes)
        self.budget = memory_limit // 4 if memory_limit else DEFAULT_BUDGET
        self.held: dict = {}  # key -> bytes
        self.held_bytes = 0
        self._lock = threading.Lock()
        self._requests: deque = deque()
        self._wake = threading.Condition(self._lock)
        self._publisher: Optional[threading.Thread] = None
        self.pool: Any = None  # the SegmentPool publications are written into (worker/process.py)

    def try_hold(self, key, value) -> Optional[int]:
        """Called by a task thread with its result: the bytes held, or None to publish it."""
        nbytes = large_bytes(value)
        if nbytes < HOLD_THRESHOLD:
            return None
        with self._lock:
            if self.held_bytes + nbytes - self.held.get(key, 0) > self.budget:
                return None
            self.held_bytes += nbytes - self.held.get(key, 0)
            self.held[key] = nbytes
        return nbytes

    def forget(self, keys) -> None:
        """The keys left the cache (freed or published)."""
        with self._lock:
            for key in keys:
                self.held_bytes -= self.held.pop(key, 0)

    def publish(self, keys) -> None:
        """Publish ``keys`` (from the thread that receives, which never sends: the publisher thread does)."""
        with self._wake:
            self._requests.extend(keys)
            if self._publisher is None:
                self._publisher = threading.Thread(
                    target=self._publish_loop, name="minidist-publish", daemon=True
                )
                self._publisher.start()
            self._wake.notify()

    def _publish_loop(self) -> None:
        while True:
            with self._wake:
                while not self._requests:
                    self._wake.wait()
                key = self._requests.popleft()
            self.runtime.report(self._publish(key))

    def _publish(self, key) -> Published:
        runtime = self.runtime
        value = runtime.data.get(key, _MISSING)
        if value is _MISSING or key not in self.held:
            return Published(key, None, 0)  # freed meanwhile: the scheduler knows already
        try:
            payload, nbytes = self.encode(value)
        except BaseException as exc:  # noqa: B036 - e.g. a result that cannot be pickled
            return Published(key, None, 0, encode_error(exc, exc.__traceback__))
        # dependents here read the published copy from now on (shared memory, not private memory)
        runtime.replace_cached(key, payload)
        self.forget((key,))
        return Published(key, payload, nbytes)
