"""A pytest plugin that runs dask's own test suite with every compute sent to one client.

How `docs/dask.md` ("dask's own tests on minidist") was made: each test's `compute`, `persist` and
`dask.compute` go to a minidist (or, to compare, a dask.distributed) client started once for the
session, whatever scheduler the test names (dask's `assert_eq` asks for "sync"), except a scheduler
*function* a test passes itself (tests that count calls of their own). Usage, from any directory
outside the repository (so its `setup.cfg` does not configure the run)::

    cd /tmp && DASK_SUITE_CLIENT=minidist-threads PYTHONPATH=/path/to/minidist/docs:/path/to/minidist \\
        python -m pytest -p dask_suite_plugin -p no:cacheprovider -q -p no:warnings \\
        --rootdir=/tmp --junitxml=threads.xml "$(python -c 'import dask, os; \\
        print(os.path.dirname(dask.__file__))')/dataframe/tests/test_shuffle.py"

`DASK_SUITE_CLIENT` is one of `minidist-threads`, `minidist-procs`, `distributed-threads`,
`distributed-procs` or `none` (dask's own schedulers, as the suite asks). The clients have 2 workers
of 2 threads. The run's summary ends with how many computes went to the client.
"""

from __future__ import annotations

import os

import dask.base

CLIENT = os.environ.get("DASK_SUITE_CLIENT", "minidist-threads")
_client = None
_dask_get_scheduler = dask.base.get_scheduler
_routed = 0


def _to_the_client(get=None, scheduler=None, collections=None, cls=None):
    """dask's scheduler lookup (`dask.base.get_scheduler`), answering the session's client."""
    global _routed
    own_function = callable(scheduler) and not hasattr(scheduler, "__self__")
    if _client is None or (own_function and "minidist" not in repr(scheduler)):
        return _dask_get_scheduler(get=get, scheduler=scheduler, collections=collections, cls=cls)
    _routed += 1
    return _client.get


def pytest_configure(config):
    global _client
    if CLIENT == "none":
        return
    library, workers = CLIENT.split("-")
    if library == "minidist":
        from minidist import Client
    else:
        from distributed import Client
    _client = Client(
        processes=workers == "procs", n_workers=2, threads_per_worker=2, dashboard_address=None
    )
    dask.base.get_scheduler = _to_the_client


def pytest_unconfigure(config):
    if _client is not None:
        dask.base.get_scheduler = _dask_get_scheduler
        _client.close()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"dask_suite_plugin: client={CLIENT}, computes sent to it: {_routed}"
    )
