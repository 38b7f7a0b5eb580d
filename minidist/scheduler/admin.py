"""Cluster operations beyond ``run``/``who_has``: retire, restart or copy to workers, sizes, stacks,
versions, metadata. Part of ``SchedulerOperations`` (``scheduler/operations.py``, which builds one and
dispatches these names to it), so local and remote clients reach them by the same names and
``blocked_handlers`` apply::

    client.retire_workers(...) ─► operations.invoke("retire_workers") ─► cluster._scale_to(retire=...)
    client.replicate(...)      ─► run(cache_values) on chosen workers ─► SchedulerState.cached()
    client.call_stack()        ─► run(task_stacks) on every worker
    client.get_versions()      ─► versions here and run(package_versions) on every worker

What they mean in minidist, where every result already lives in the client process (see
docs/moving.md): retiring a worker waits for the tasks it is running and loses nothing; ``replicate``
fills worker caches (placement then prefers those workers); ``rebalance`` has nothing to move.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Optional

from ..keys import key_split
from ..versions import package_versions
from ..worker.admin import cache_values, task_stacks

if TYPE_CHECKING:
    from .operations import SchedulerOperations

ADMIN_HANDLER_NAMES = {
    "retire_workers": "retire_workers",
    "restart_workers": "restart_workers",
    "replicate": "replicate",
    "rebalance": "rebalance",
    "nbytes": "nbytes",
    "call_stack": "call_stack",
    "versions": "versions",
    "get_metadata": "get_metadata",
    "set_metadata": "set_metadata",
}

_NO_DEFAULT = ("minidist", "no default")  # plain data, so it crosses a connection unchanged


class AdminOperations:
    """The administrative operations of one cluster, built on its ``SchedulerOperations``."""

    def __init__(self, operations: SchedulerOperations):
        self._ops = operations

    _metadata_lock = threading.Lock()

    # ---------------------------------------------------------------------------------- run helper

    def _run_everywhere(self, function, *args, workers=None) -> dict:
        """``{address: result}`` of ``function(*args, dask_worker=...)`` on workers; raises the first error."""
        plane = self._ops.scheduler.data_plane
        blob, args_payload = plane.pack_call(function, args, {})
        results = {}
        for address, (ok, value) in self._ops.run(blob, args_payload, workers).items():
            if not ok:
                exc = value[0]
                if isinstance(exc, (bytes, bytearray)):
                    import pickle

                    exc = pickle.loads(exc)
                raise exc
            results[address] = plane.unpack_result(value)
        return results

    # ---------------------------------------------------------------------------------- sizes, stacks

    def nbytes(self, keys=None, summary: bool = True) -> dict:
        """Bytes of each key in memory (by key prefix with ``summary``), as the workers measured them."""

        def collect(scheduler):
            tasks = scheduler.state.tasks
            chosen = tasks.keys() if keys is None else [k for k in keys if k in tasks]
            return {k: tasks[k].nbytes for k in chosen if tasks[k].state == "memory"}

        sizes = self._ops.on_scheduler(collect)
        if not summary:
            return sizes
        by_prefix: dict = {}
        for key, size in sizes.items():
            prefix = key_split(key)
            by_prefix[prefix] = by_prefix.get(prefix, 0) + size
        return by_prefix

    def call_stack(self, keys=None) -> dict:
        """``{worker: {key: [frame lines]}}`` for tasks running now (only workers running some)."""
        wanted = None if keys is None else list(keys)
        stacks = self._run_everywhere(task_stacks, wanted)
        return {address: found for address, found in stacks.items() if found}

    def versions(self, packages=()) -> dict:
        """Package versions here (the scheduler) and on every worker."""
        packages = tuple(packages or ())
        return {
            "scheduler": package_versions(packages),
            "workers": self._run_everywhere(package_versions, packages),
        }

    # -------------------------------------------------------------------------------------- metadata

    def set_metadata(self, keys, value) -> None:
        """Store ``value`` under a path of keys; intermediate dicts are made on demand (as dask)."""
        keys = _key_path(keys)
        with self._metadata_lock:
            node = self._metadata_root()
            for key in keys[:-1]:
                child = node.get(key)
                if not isinstance(child, dict):
                    child = node[key] = {}
                node = child
            node[keys[-1]] = value

    def get_metadata(self, keys, default=_NO_DEFAULT):
        keys = _key_path(keys)
        with self._metadata_lock:
            node = self._metadata_root()
            try:
                for key in keys:
                    node = node[key]
            except (KeyError, TypeError):
                if default != _NO_DEFAULT:
                    return default
                raise KeyError(
                    f"No metadata under {list(keys)!r}; set it with client.set_metadata first"
                ) from None
            return node

    def _metadata_root(self) -> dict:
        root = getattr(self._ops.cluster, "metadata", None)
        if root is None:
            root = self._ops.cluster.metadata = {}
        return root

    # ----------------------------------------------------------------------------------- workers

    def retire_workers(self, workers=None, names=None, close_workers: bool = True) -> dict:
        """Stop giving tasks to these workers; they finish what they run, then leave (and are not
        replaced). Returns ``{address: worker info}`` of those retired. Without ``workers``/``names``,
        retires idle workers, keeping at least one.

        With ``close_workers`` (the default) this waits until they are gone; otherwise it returns once
        they are marked retiring (the cluster still stops each once it is empty).
        """
        if workers is not None and names is not None:
            raise TypeError("retire_workers takes workers= or names=, not both")
        info = self._ops.cluster.identity()["workers"]
        if workers is None and names is None:
            chosen = self._ops.on_scheduler(_idle_workers)
        else:
            chosen = self._ops.workers_matching(workers if workers is not None else names)
        if not chosen:
            return {}
        retired = {address: info[address] for address in chosen if address in info}
        active = self._ops.on_scheduler(
            lambda s: [a for a, ws in s.state.workers.items() if ws.status != "retiring"]
        )
        still = [a for a in active if a not in retired]
        self._ops.cluster._scale_to(
            len(still), retire=list(retired), why="retire_workers", by_scaling=False
        )
        if close_workers:
            self._wait_gone(list(retired))
        return retired

    def _wait_gone(self, addresses: list, timeout: Optional[float] = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(a in self._ops.scheduler.workers for a in addresses):
            if self._ops.scheduler._closing:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"workers {addresses} did not leave within {timeout} s")
            time.sleep(0.02)

    def restart_workers(self, workers, timeout=None) -> dict:
        """Replace each of ``workers`` (addresses or names) by a fresh worker of the same name.

        Tasks they were running are requeued without counting against the task (a restart is not a
        crash); results are kept (they live in the client process). Returns ``{given: "OK" | "removed"}``
        keyed by what was passed, as dask.
        """
        if isinstance(workers, (str, int)):
            workers = [workers]
        if workers is None:
            raise TypeError("restart_workers needs a list of worker addresses or names")
        outcome = {}
        for given in workers:
            found = self._ops.workers_matching([given])
            if not found:
                outcome[given] = "removed"
                continue
            self._ops.cluster._restart_worker(found[0], timeout=timeout)
            outcome[given] = "OK"
        return outcome

    # ------------------------------------------------------------------------------- data placement

    def replicate(self, keys, n=None, workers=None) -> dict:
        """Copy the values of ``keys`` into the caches of ``n`` workers (all, or all of ``workers``).

        Returns ``{key: number of workers holding it}``. Keys not in memory raise KeyError.
        """
        targets = self._ops.workers_matching(workers)
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"replicate needs n >= 1, not {n!r}")
        holders = self._ops.on_scheduler(lambda s: _holders(s, keys))
        plan: dict = {}  # address -> {key: stored value}
        for key, held_by in holders.items():
            want = len(targets) if n is None else min(n, len(targets))
            extra = [a for a in targets if a not in held_by][: max(0, want - len(held_by))]
            for address in extra:
                plan.setdefault(address, {})[key] = self._ops.scheduler.data[key]
        for address, values in plan.items():
            self._run_everywhere(cache_values, values, workers=[address])
            self._ops.on_scheduler(lambda s, a=address, k=list(values): s.state.cached(a, k))
        return self._ops.on_scheduler(lambda s: {k: len(v) for k, v in _holders(s, keys).items()})

    def rebalance(self, keys=None, workers=None) -> None:
        """Nothing to move: worker memory holds only caches of values kept in the client process.
        Checks that ``keys`` are in memory, as dask does."""
        if keys:
            self._ops.on_scheduler(lambda s: _holders(s, keys))


def _key_path(keys) -> tuple:
    path = tuple(keys) if isinstance(keys, (list, tuple)) else (keys,)
    if not path:
        raise ValueError("metadata needs at least one key")
    return path


def _idle_workers(scheduler) -> list:
    idle = [a for a, ws in scheduler.state.workers.items() if ws.status != "retiring"]
    idle = [a for a in idle if not scheduler.state.workers[a].processing]
    running = [a for a, ws in scheduler.state.workers.items() if ws.status != "retiring"]
    if len(idle) == len(running):
        idle = idle[1:]  # keep one worker
    return idle


def _holders(scheduler, keys) -> dict:
    """``{key: set of workers caching it}``; KeyError naming keys that are not in memory."""
    tasks = scheduler.state.tasks
    missing = [k for k in keys if k not in tasks or tasks[k].state != "memory"]
    if missing:
        raise KeyError(f"Not in memory (finished and still held by a client): {missing[:5]!r}")
    return {k: set(tasks[k].who_has) for k in keys}
