"""Adaptive scaling: a policy that turns observed cluster state into a target number of workers.

    every `interval` (thread "minidist-adaptive")
    cluster._adaptive_observe() ──► ClusterObservation ──► Adaptive.recommend() ──► ScalingDecision
                                                                                        │
    cluster._adaptive_apply(decision) ◄─────────────────────────────────────────────────┘

``recommend`` is a pure function of the observation, apart from one piece of memory: how many checks in a
row have asked for fewer workers (scale-down waits for ``wait_count`` of them, so a short lull between two
bursts of work does not tear workers down). The timer thread only glues the cluster to the policy: it
observes, asks, applies, and logs any exception without dying. The cluster owns every side effect.

How the target is computed:

1. work = sum over task prefixes of (queued + processing tasks) x mean duration of that prefix, with
   ``default_task_duration`` (0.5 s) for prefixes never seen finishing;
2. threads needed = work / target_duration, but no more than the number of tasks (a task uses one thread);
   workers needed = threads needed / threads per worker, rounded up; at least one while any work is left;
3. if workers have a memory limit, enough workers that their data fills at most 60% of it (growing at
   most twofold per check);
4. clamped into the bounds: ``minimum_cores``/``maximum_cores`` and ``minimum_memory``/``maximum_memory``
   converted to worker counts, then ``minimum``/``maximum`` (which win any conflict);
5. a target below the current count is held back until ``wait_count`` consecutive checks asked for fewer;
   then the highest of those recommendations is taken, and ``retire`` names the workers to close: idle
   workers without unique data first (longest idle first), then the least loaded, and a worker holding
   the only copy of some keys only when no other candidate is left.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import dataclass, field

from minidist.utils import parse_bytes, parse_timedelta

__all__ = ["Adaptive", "ClusterObservation", "ScalingDecision", "WorkerObservation"]

DEFAULT_TASK_DURATION = 0.5  # seconds, for task prefixes with no finished task yet
# Scale up when the workers' data would fill more than this share of their memory limits.
MEMORY_TARGET_FRACTION = 0.6
STOP_JOIN_TIMEOUT = 5.0  # seconds stop() waits for the timer thread


@dataclass(frozen=True)
class WorkerObservation:
    """One worker as the policy sees it."""

    name: str  # what the cluster uses to retire it (its name or address)
    nthreads: int
    memory_limit: int | None
    processing: int  # tasks assigned to it
    idle_for: float  # seconds since it last had work (0 if busy)
    unique_keys: int  # keys whose only copy lives on this worker (retiring it would lose them)
    nbytes: (
        int  # bytes of data it holds that the cluster needs it to keep (lost or moved if it went)
    )


@dataclass(frozen=True)
class ClusterObservation:
    """A snapshot of the cluster, taken by ``cluster._adaptive_observe()``."""

    now: float
    workers: tuple[WorkerObservation, ...]
    queued: int  # ready tasks not yet assigned
    processing: int  # tasks assigned to workers
    waiting: int  # tasks waiting on dependencies
    prefix_durations: dict = field(default_factory=dict)  # task prefix -> mean duration (s)
    queued_by_prefix: dict = field(default_factory=dict)  # prefix -> count of queued + processing
    threads_per_worker: int = 1
    memory_per_worker: int | None = None


@dataclass(frozen=True)
class ScalingDecision:
    target: int  # desired number of workers
    retire: tuple[str, ...] = ()  # workers to retire when scaling down (least useful first)


class Adaptive:
    """Scale a cluster between ``minimum`` and ``maximum`` workers according to its load.

    Accepts dask's keywords: ``interval`` and ``target_duration`` as seconds or strings ("1s", "100ms",
    "1 minute"), ``minimum_memory``/``maximum_memory`` as bytes or strings ("4GiB"). Other keywords are kept
    in ``self.kwargs`` (dask passes them to its ``workers_to_close``); ``logger=`` chooses where timer errors
    go (default ``logging.getLogger("minidist.cluster")``).

    Subclasses may override :meth:`recommend` (or :meth:`target` for the raw count alone). ``start()``
    must be called to run the timer; ``cluster.adapt()`` does that.
    """

    def __init__(
        self,
        cluster=None,
        interval="1s",
        minimum=0,
        maximum=math.inf,
        minimum_cores=None,
        maximum_cores=None,
        minimum_memory=None,
        maximum_memory=None,
        wait_count=3,
        target_duration="5s",
        default_task_duration=DEFAULT_TASK_DURATION,
        logger: logging.Logger | None = None,
        **kwargs,
    ):
        self.cluster = cluster
        # None means "the default", as in dask's own signature (which reads defaults from its config).
        interval = "1s" if interval is None else interval
        target_duration = "5s" if target_duration is None else target_duration
        minimum = 0 if minimum is None else minimum
        wait_count = 3 if wait_count is None else wait_count
        self.interval = parse_timedelta(interval)
        self.target_duration = parse_timedelta(target_duration)
        self.default_task_duration = parse_timedelta(default_task_duration)
        self.minimum = _count(minimum, "minimum")
        if self.minimum == math.inf:
            raise ValueError("minimum must be a finite number of workers")
        self.maximum = math.inf if maximum is None else _count(maximum, "maximum")
        self.minimum_cores = (
            None if minimum_cores is None else _count(minimum_cores, "minimum_cores")
        )
        self.maximum_cores = (
            None if maximum_cores is None else _count(maximum_cores, "maximum_cores")
        )
        self.minimum_memory = None if minimum_memory is None else parse_bytes(minimum_memory)
        self.maximum_memory = None if maximum_memory is None else parse_bytes(maximum_memory)
        self.wait_count = int(wait_count)
        self.kwargs = kwargs
        self.logger = logger or logging.getLogger("minidist.cluster")
        for low, high, what in (
            (self.minimum, self.maximum, ""),
            (self.minimum_cores, self.maximum_cores, "_cores"),
            (self.minimum_memory, self.maximum_memory, "_memory"),
        ):
            if low is not None and high is not None and low > high:
                raise ValueError(f"minimum{what}={low} is larger than maximum{what}={high}")
        if self.wait_count < 1:
            raise ValueError(f"wait_count must be at least 1, got {wait_count!r}")
        if self.interval <= 0 or self.target_duration <= 0:
            raise ValueError("interval and target_duration must be positive")

        # The policy's only memory: the recommendations of the current run of "fewer workers" checks.
        self._lower_targets: list[int] = []
        # What was decided, for users who want to see the policy at work: (time, {"status", "n", ...}).
        self.log: collections.deque = collections.deque(maxlen=1000)
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._last_error: str | None = None

    def __repr__(self):
        return f"<{type(self).__name__}: minimum={self.minimum} maximum={self.maximum}>"

    # ---- the policy ------------------------------------------------------------------------------

    def target(self, observed: ClusterObservation) -> int:
        """The number of workers the load calls for, before bounds and scale-down patience."""
        threads = _threads_per_worker(observed)
        counted = sum(observed.queued_by_prefix.values())
        work = sum(
            count * observed.prefix_durations.get(prefix, self.default_task_duration)
            for prefix, count in observed.queued_by_prefix.items()
        )
        # Tasks the prefix table misses (if any) count at the default duration.
        tasks = max(counted, observed.queued + observed.processing)
        work += (tasks - counted) * self.default_task_duration

        threads_needed = min(math.ceil(work / self.target_duration), tasks)
        wanted = math.ceil(threads_needed / threads)
        if tasks or observed.waiting:
            wanted = max(wanted, 1)
        memory = observed.memory_per_worker
        if memory:
            held = sum(w.nbytes for w in observed.workers)
            for_memory = math.ceil(held / (MEMORY_TARGET_FRACTION * memory))
            # At most double per check: byte counts can be off, and a jump to hundreds of processes
            # would hurt more than a few more checks to get there.
            wanted = max(wanted, min(for_memory, 2 * len(observed.workers)))
        return wanted

    def bounds(self, observed: ClusterObservation) -> tuple[int, float]:
        """(lowest, highest) worker counts allowed, with the cores and memory bounds converted."""
        threads = _threads_per_worker(observed)
        memory = observed.memory_per_worker
        low, high = self.minimum, self.maximum
        if self.minimum_cores is not None:
            low = max(low, math.ceil(self.minimum_cores / threads))
        if self.maximum_cores is not None:
            high = min(high, self.maximum_cores // threads)
        if memory:
            if self.minimum_memory is not None:
                low = max(low, math.ceil(self.minimum_memory / memory))
            if self.maximum_memory is not None:
                high = min(high, self.maximum_memory // memory)
        # The worker-count bounds are hard; converted ones give way to them when they conflict.
        high = max(self.minimum, high)
        low = min(low, high)
        return int(low), high

    def recommend(self, observed: ClusterObservation) -> ScalingDecision:
        """The decision for this check: a target count and, when it is lower, which workers to retire."""
        low, high = self.bounds(observed)
        wanted = int(min(max(self.target(observed), low), high))
        current = len(observed.workers)

        if wanted >= current:
            self._lower_targets.clear()
            return ScalingDecision(target=wanted)
        # Fewer wanted: wait for wait_count checks in a row, then go to the highest of their targets. Above
        # `high` (e.g. the bounds were just lowered) there is nothing to wait for.
        self._lower_targets.append(wanted)
        if len(self._lower_targets) < self.wait_count:
            wanted = int(min(current, high))
        else:
            wanted = int(min(max(self._lower_targets), high))
            self._lower_targets.clear()
        if wanted >= current:
            return ScalingDecision(target=current)
        return ScalingDecision(
            target=wanted, retire=self.workers_to_retire(observed, current - wanted)
        )

    def workers_to_retire(self, observed: ClusterObservation, n: int) -> tuple[str, ...]:
        """The ``n`` least useful workers: no unique keys before unique keys, then idle before busy."""

        def usefulness(w: WorkerObservation):
            return (w.unique_keys > 0, w.processing, w.unique_keys, -w.idle_for, w.nbytes, w.name)

        return tuple(w.name for w in sorted(observed.workers, key=usefulness)[:n])

    # ---- the timer -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the policy every ``interval`` in a daemon thread (the first check runs at once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        if self.cluster is None:
            raise ValueError("Adaptive.start() needs a cluster; pass Adaptive(cluster, ...)")
        self._stop_event = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop_event,), name="minidist-adaptive", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer and wait (a bounded time) for its thread; safe to call from the timer itself."""
        self._stop_event.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_JOIN_TIMEOUT)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            self._check_once()
            stop_event.wait(self.interval)

    def _check_once(self) -> None:
        try:
            observed = self.cluster._adaptive_observe()
            if observed is None:  # the cluster is closing or not ready: nothing to decide
                return
            current = len(observed.workers)
            decision = self.recommend(observed)
            if decision.target != current:
                status = "up" if decision.target > current else "down"
                entry = {"status": status, "n": decision.target, "workers": decision.retire}
                self.log.append((observed.now, entry))
            self.cluster._adaptive_apply(decision)
            self._last_error = None
        except Exception as e:
            # Keep the timer alive; log a repeated failure once in full, then quietly.
            error = f"{type(e).__name__}: {e}"
            level = logging.DEBUG if error == self._last_error else logging.ERROR
            self.logger.log(level, "Adaptive scaling check failed: %s", error, exc_info=True)
            self._last_error = error


def _count(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{what} must be a number of workers (>= 0), got {value!r}")
    return value if value == math.inf else int(value)


def _threads_per_worker(observed: ClusterObservation) -> int:
    if observed.threads_per_worker and observed.threads_per_worker > 0:
        return int(observed.threads_per_worker)
    if observed.workers:
        return max(1, round(sum(w.nthreads for w in observed.workers) / len(observed.workers)))
    return 1
