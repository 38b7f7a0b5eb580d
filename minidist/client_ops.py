"""Client operations that inspect or steer the cluster rather than submit work.

``run``, ``run_on_scheduler``, ``scheduler_info``, ``who_has``, ``restart``, logs... Each one runs on the
scheduler thread through ``scheduler.call`` so it sees a consistent state, and honours the cluster's
``blocked_handlers``. Mixed into ``Client``.
"""

from __future__ import annotations

import inspect
import pickle
import time
from typing import Optional

from .comm.serialize import deserialize, dumps_function, serialize
from .errors import FutureTimeoutError

_CALL_TIMEOUT = 60.0


def _accepts(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class ClientOperations:
    """Mixin for ``Client``; expects ``self.scheduler``, ``self.cluster`` and ``self.processes``."""

    def _call(self, function, *args, timeout: Optional[float] = _CALL_TIMEOUT):
        return self.scheduler.call(function, *args).result(timeout)

    def _workers_matching(self, workers) -> list:
        """Addresses for a list of worker addresses or names (all workers when None)."""
        handles = list(self.scheduler.workers.values())
        if workers is None:
            return [h.address for h in handles]
        if isinstance(workers, (str, int)):
            workers = [workers]
        wanted = {str(w) for w in workers}
        return [h.address for h in handles if h.address in wanted or str(h.name) in wanted]

    # ------------------------------------------------------------------------------------------- run

    def run(self, function, *args, workers=None, wait: bool = True, nanny: bool = False,
            on_error: str = "raise", **kwargs) -> dict:  # fmt: skip
        """Run ``function(*args, **kwargs)`` once on every worker (or on ``workers``), outside the task
        system; returns ``{worker address: result}``."""
        self.scheduler.check_handler("run_function")
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error must be 'raise', 'return' or 'ignore', not {on_error!r}")
        if self.processes:
            blob = dumps_function(function)
            args_payload = serialize((args, kwargs), None)
        else:
            blob, args_payload = function, (args, kwargs)
        targets = self._workers_matching(workers)

        def start(scheduler, future):
            scheduler.start_run(blob, args_payload, targets, future)

        import concurrent.futures

        answer: concurrent.futures.Future = concurrent.futures.Future()
        self.scheduler.call(start, answer)
        if not wait:
            return None  # type: ignore[return-value]
        raw = answer.result(_CALL_TIMEOUT)
        results = {}
        for address in targets:
            if address not in raw:
                continue
            ok, value = raw[address]
            if ok:
                results[address] = deserialize(value) if self.processes else value
                continue
            exc = value[0]
            if isinstance(exc, (bytes, bytearray)):
                exc = pickle.loads(exc)
            if on_error == "raise":
                raise exc
            if on_error == "return":
                results[address] = exc
        return results

    def run_on_scheduler(self, function, *args, **kwargs):
        """Run ``function`` on the scheduler thread (it may take a ``dask_scheduler`` argument)."""
        self.scheduler.check_handler("run_function")
        if _accepts(function, "dask_scheduler"):
            kwargs["dask_scheduler"] = self.scheduler
        return self._call(lambda scheduler: function(*args, **kwargs))

    # ------------------------------------------------------------------------------------- inspect

    def nthreads(self, workers=None) -> dict:
        addresses = set(self._workers_matching(workers))
        return {a: h.nthreads for a, h in self.scheduler.workers.items() if a in addresses}

    ncores = nthreads

    def scheduler_info(self, **kwargs) -> dict:
        """dask's shape: ``{"type", "id", "address", "services", "started", "workers": {...}}``."""
        return self.cluster.scheduler_info()

    def who_has(self, futures=None) -> dict:
        """``{key: [worker addresses holding a copy]}``; values also stay in the client process."""
        from .client import futures_in

        keys = None if futures is None else [f.key for f in futures_in(futures)]

        def collect(scheduler):
            tasks = scheduler.state.tasks
            chosen = tasks.keys() if keys is None else [k for k in keys if k in tasks]
            return {k: sorted(tasks[k].who_has) for k in chosen}

        return self._call(collect)

    def has_what(self, workers=None) -> dict:
        addresses = set(self._workers_matching(workers))
        return self._call(
            lambda s: {a: sorted(map(str, w.has)) for a, w in s.state.workers.items() if a in addresses}
        )

    def processing(self, workers=None) -> dict:
        addresses = set(self._workers_matching(workers))
        return self._call(
            lambda s: {a: list(w.processing) for a, w in s.state.workers.items() if a in addresses}
        )

    def wait_for_workers(self, n_workers: int = 0, timeout: Optional[float] = None) -> None:
        """Block until at least ``n_workers`` workers are connected."""
        if not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative int, not {n_workers!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self.scheduler.workers) < n_workers:
            if deadline is not None and time.monotonic() > deadline:
                raise FutureTimeoutError(
                    f"Only {len(self.scheduler.workers)} of {n_workers} workers arrived within {timeout} s"
                )
            time.sleep(0.01)

    def restart(self, timeout=None, wait_for_workers: bool = True) -> ClientOperations:
        """Replace every worker and forget all tasks; this client's futures become cancelled."""
        self.scheduler.check_handler("restart")
        self.cluster.restart(timeout=timeout)
        return self

    def get_scheduler_logs(self, n: Optional[int] = None) -> tuple:
        return self.cluster.logs.scheduler_lines(n)

    def get_worker_logs(self, n: Optional[int] = None, workers=None, nanny: bool = False) -> dict:
        addresses = self._workers_matching(workers) if workers is not None else None
        return self.cluster.logs.worker_lines_all(n, addresses)

    def get_task_stream(self, start=None, stop=None, count=None) -> list:
        return self._call(lambda s: s.stream_records())

    def call_stack(self, *args, **kwargs) -> dict:
        return {}
