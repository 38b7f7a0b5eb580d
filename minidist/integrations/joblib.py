"""A joblib backend: ``joblib.Parallel`` batches run as minidist tasks on the current client.

    import joblib
    import minidist.integrations.joblib  # registers the "minidist" backend with joblib
    with minidist.Client() as client, joblib.parallel_config(backend="minidist"):
        joblib.Parallel()(joblib.delayed(f)(x) for x in data)

joblib hands the backend callables that each run a batch of calls; every batch becomes one task
(``pure=False``: batches are never shared). joblib's auto-batching sizes batches from observed durations,
and its traceback wrapper carries worker tracebacks back. Importing this module registers the backend;
nothing happens to joblib otherwise. joblib is an optional extra.
"""

from __future__ import annotations

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend
from joblib._utils import _retrieve_traceback_capturing_wrapped_call, _TracebackCapturingWrapper

from ..context import get_client


class MinidistBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs joblib batches on a minidist client (the default one unless ``client=`` is given)."""

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, client=None, **kwargs):
        super().__init__(**kwargs)
        self.client = client
        self._futures: set = set()

    def configure(self, n_jobs=1, parallel=None, **backend_args):
        self.parallel = parallel
        if self.client is None:
            self.client = get_client()
        return self.effective_n_jobs(n_jobs)

    def effective_n_jobs(self, n_jobs) -> int:
        client = self.client if self.client is not None else get_client()
        return max(1, sum(client.nthreads().values()))

    def submit(self, func, callback=None):
        future = self.client.submit(_TracebackCapturingWrapper(func), pure=False)
        self._futures.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future):
        self._futures.discard(future)
        return _retrieve_traceback_capturing_wrapped_call(future.result())

    def abort_everything(self, ensure_ready: bool = True) -> None:
        futures, self._futures = list(self._futures), set()
        if futures:
            self.client.cancel(futures)

    def get_nested_backend(self):
        # joblib calls inside a task run sequentially on that task's thread
        return SequentialBackend(nesting_level=self.nesting_level + 1), None


joblib.register_parallel_backend("minidist", MinidistBackend)
