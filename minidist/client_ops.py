"""Client operations that inspect or steer the cluster rather than submit work.

``run``, ``run_on_scheduler``, ``scheduler_info``, ``who_has``, ``restart``, logs... Each is a thin
wrapper over ``scheduler/operations.py`` (``self.operations``), which a local cluster serves in this
process and a remote one over its connection; ``blocked_handlers`` are honoured there. Mixed into
``Client``.
"""

from __future__ import annotations

import pickle
import time
from typing import Optional

from .comm.serialize import deserialize
from .errors import FutureTimeoutError
from .futures import futures_in
from .scheduler.operations import pack_call


class ClientOperations:
    """Mixin for ``Client``; expects ``self.operations`` and ``self.processes``."""

    def _invoke(self, name: str, *args, **kwargs):
        return self.operations.invoke(name, *args, **kwargs)

    def run(
        self,
        function,
        *args,
        workers=None,
        wait: bool = True,
        nanny: bool = False,
        on_error: str = "raise",
        **kwargs,
    ) -> dict:
        """Run ``function(*args, **kwargs)`` once on every worker (or on ``workers``), outside the task
        system; returns ``{worker address: result}``."""
        if on_error not in ("raise", "return", "ignore"):
            raise ValueError(f"on_error must be 'raise', 'return' or 'ignore', not {on_error!r}")
        blob, args_payload = pack_call(self.processes, function, args, kwargs)
        raw = self._invoke("run", blob, args_payload, workers)
        if not wait:
            return None  # type: ignore[return-value]
        results = {}
        for address, (ok, value) in raw.items():
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
        """Run ``function`` on the scheduler (it may take a ``dask_scheduler`` argument)."""
        blob, args_payload = pack_call(self.processes, function, args, kwargs)
        result = self._invoke("run_on_scheduler", blob, args_payload)
        return deserialize(result) if self.processes else result

    def nthreads(self, workers=None) -> dict:
        return self._invoke("nthreads", workers)

    ncores = nthreads

    def scheduler_info(self, **kwargs) -> dict:
        """dask's shape: ``{"type", "id", "address", "services", "started", "workers": {...}}``."""
        return self._invoke("scheduler_info")

    def who_has(self, futures=None) -> dict:
        """``{key: [worker addresses holding a copy]}`` (values also stay in the client process)."""
        keys = None if futures is None else [f.key for f in futures_in(futures)]
        return self._invoke("who_has", keys)

    def has_what(self, workers=None) -> dict:
        return self._invoke("has_what", workers)

    def processing(self, workers=None) -> dict:
        return self._invoke("processing", workers)

    def wait_for_workers(self, n_workers: int = 0, timeout: Optional[float] = None) -> None:
        """Block until at least ``n_workers`` workers can run tasks (a started process worker counts
        once it has said hello, not when its process exists)."""
        if not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"n_workers must be a non-negative int, not {n_workers!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            count = self._invoke("ready_workers")
            if count >= n_workers:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise FutureTimeoutError(
                    f"Only {count} of {n_workers} workers arrived within {timeout} s"
                )
            time.sleep(0.01)

    def restart(self, timeout=None, wait_for_workers: bool = True):
        """Replace every worker and forget all tasks; this client's futures become cancelled."""
        self._invoke("restart")
        return self

    def get_scheduler_logs(self, n: Optional[int] = None) -> list:
        return self._invoke("scheduler_logs", n)

    def get_worker_logs(self, n: Optional[int] = None, workers=None, nanny: bool = False) -> dict:
        return self._invoke("worker_logs", n, workers)

    def get_task_stream(self, start=None, stop=None, count=None) -> list:
        return self._invoke("task_stream")
