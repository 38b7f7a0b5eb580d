"""A joblib backend: ``joblib.Parallel`` batches run as minidist tasks on the current client::

    import joblib
    from minidist import Client
    with Client() as client, joblib.parallel_config(backend="minidist"):
        joblib.Parallel()(joblib.delayed(f)(x) for x in data)

No import of this module is needed: creating a ``Client`` registers the backend with joblib (see
integrations/autoregister.py), and importing it by hand does the same. Data flow::

    joblib.Parallel ──BatchedCalls (auto-sized batch of calls)──► MinidistBackend.submit
        large arguments (ndarrays, DataFrames ... ≥ scatter_threshold) ──► client.scatter, once per call
        batch ──► client.submit(_run_batch, wrapped batch, *scattered futures)   (one task, pure=False)
    task done ──► future's done-callback ──► joblib's callback ──► retrieve_result_callback ──► results

joblib's auto-batching grows batches until each lasts a good fraction of a second, so 10,000 tiny calls
become a few dozen tasks. joblib's traceback wrapper carries a call's error back with its worker
traceback; when a call fails or the caller stops iterating, ``abort_everything`` cancels the tasks not
yet finished. Scattered values are released when the ``Parallel`` call ends.
"""

from __future__ import annotations

import threading
from typing import Any

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend
from joblib._utils import _retrieve_traceback_capturing_wrapped_call, _TracebackCapturingWrapper

from ..context import get_client
from ..keys import random_token
from ..utils import sizeof

# Arguments at least this large are scattered once per Parallel call instead of being sent with every
# batch (a GridSearchCV's X and y, a random forest's training data).
DEFAULT_SCATTER_THRESHOLD = 1_000_000

_PLAIN_TYPES = (int, float, complex, bool, str, type(None))


class _Shared:
    """Stands for the n-th scattered value inside a batch that travels to a worker."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (_Shared, (self.index,))


def _swap(value, values: tuple):
    return values[value.index] if type(value) is _Shared else value


def _run_batch(batch, *shared_values):
    """On the worker: put the scattered values back into the calls, then run the batch."""
    if shared_values:
        calls = getattr(batch.func, "items", None)
        if calls is not None:
            batch.func.items = [
                (
                    func,
                    tuple(_swap(a, shared_values) for a in args),
                    {k: _swap(v, shared_values) for k, v in kwargs.items()},
                )
                for func, args, kwargs in calls
            ]
    return batch()


class MinidistBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs joblib batches on a minidist client (the default one unless ``client=`` is given).

    ``scatter_threshold``: arguments of at least this many bytes go to the cluster once per
    ``Parallel`` call (process workers only; thread workers share the caller's objects anyway).
    """

    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    default_n_jobs = -1

    def __init__(self, client=None, scatter_threshold: int = DEFAULT_SCATTER_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        self.client = client
        self.scatter_threshold = scatter_threshold
        self._lock = threading.Lock()
        self._futures: set = set()
        self._shared: dict[int, tuple[Any, Any]] = {}  # id(value) -> (value, its Future)

    # ---- joblib's backend protocol ----------------------------------------------------------------

    def configure(self, n_jobs=1, parallel=None, **backend_args):
        self.parallel = parallel
        if self.client is None:
            self.client = get_client()
        return self.effective_n_jobs(n_jobs)

    def effective_n_jobs(self, n_jobs) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        client = self.client if self.client is not None else get_client()
        threads = max(1, sum(client.nthreads().values()))
        if n_jobs is None or n_jobs < 0:
            return threads
        return min(n_jobs, threads)  # more jobs than threads would only queue on the workers

    def submit(self, func, callback=None):
        shared = self._share_large_arguments(func) if self.client.processes else []
        future = self.client.submit(
            _run_batch,
            _TracebackCapturingWrapper(func),
            *shared,
            key=f"joblib-batch-{random_token()}",
            pure=False,
        )
        with self._lock:
            self._futures.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future):
        with self._lock:
            self._futures.discard(future)
        return _retrieve_traceback_capturing_wrapped_call(future.result())

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed or the caller stopped: cancel every batch not yet finished."""
        with self._lock:
            futures, self._futures = list(self._futures), set()
        if futures:
            self.client.cancel(futures)
        self._release_shared()

    def stop_call(self) -> None:
        self._release_shared()

    def terminate(self) -> None:
        self.abort_everything()
        super().terminate()

    def get_nested_backend(self):
        # joblib calls inside a task run sequentially on that task's thread
        return SequentialBackend(nesting_level=self.nesting_level + 1), None

    # ---- scattering shared inputs -----------------------------------------------------------------

    def _share_large_arguments(self, batch) -> list:
        """Replace large arguments of the batch's calls by ``_Shared`` markers; their futures, in order."""
        calls = getattr(batch, "items", None)
        if not calls:
            return []
        futures: list = []
        positions: dict[int, int] = {}  # id(value) -> index into futures, for this batch

        def share(value):
            if isinstance(value, _PLAIN_TYPES) or sizeof(value) < self.scatter_threshold:
                return value
            ident = id(value)
            if ident not in positions:
                positions[ident] = len(futures)
                futures.append(self._scattered(value))
            return _Shared(positions[ident])

        batch.items = [
            (func, tuple(share(a) for a in args), {k: share(v) for k, v in kwargs.items()})
            for func, args, kwargs in calls
        ]
        return futures

    def _scattered(self, value):
        """The future of ``value`` on the cluster, scattered on first sight in this Parallel call."""
        with self._lock:
            known = self._shared.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        future = self.client.scatter(value, hash=False)
        with self._lock:
            # the value itself is kept so that its id cannot be reused by another object meanwhile
            self._shared[id(value)] = (value, future)
        return future

    def _release_shared(self) -> None:
        with self._lock:
            self._shared.clear()  # dropping the futures releases the values on the cluster


def register() -> None:
    """Register the ``"minidist"`` backend with joblib (idempotent)."""
    joblib.register_parallel_backend("minidist", MinidistBackend)


register()
