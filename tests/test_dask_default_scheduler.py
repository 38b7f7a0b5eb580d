"""A Client is dask's default scheduler while it is open, as with dask.distributed; closing it puts
back what was there before; ``set_as_default=False`` opts out; ``import minidist`` leaves dask alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

dask = pytest.importorskip("dask", reason="dask is a test extra: pip install -e '.[test]'")
import dask.bag as db  # noqa: E402

from minidist import Client  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def where_it_ran(_):
    """The name of the minidist worker running this, or "local" outside minidist."""
    try:
        from minidist import get_worker

        return get_worker().address
    except ValueError:
        return "local"


def ran_on() -> set:
    # delayed, not bag: a bag's own default scheduler is a process pool that would outlive the test
    return set(dask.compute(*[dask.delayed(where_it_ran)(i) for i in range(4)]))


def new_client(**kwargs) -> Client:
    return Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None, **kwargs
    )


def test_closing_the_client_restores_dask_s_own_scheduler():
    assert dask.config.get("scheduler", None) is None
    assert ran_on() == {"local"}
    with new_client() as client:
        assert ran_on() == set(client.scheduler_info()["workers"])
    assert dask.config.get("scheduler", None) is None
    assert ran_on() == {"local"}


def test_a_previous_setting_comes_back_and_clients_stack():
    with dask.config.set(scheduler="sync"):
        first = new_client()
        second = new_client()
        assert ran_on() == set(second.scheduler_info()["workers"])
        second.close()
        assert ran_on() == set(first.scheduler_info()["workers"])
        first.close()
        assert dask.config.get("scheduler") == "sync"


def test_closing_clients_out_of_order_keeps_the_newest_open_one():
    first = new_client()
    second = new_client()
    first.close()
    assert ran_on() == set(second.scheduler_info()["workers"])
    second.close()
    assert dask.config.get("scheduler", None) is None


def test_a_scheduler_chosen_while_the_client_is_open_is_left_alone():
    client = new_client()
    try:
        dask.config.set(scheduler="threads")
        assert ran_on() == {"local"}
    finally:
        client.close()
        assert dask.config.get("scheduler") == "threads"
        dask.config.refresh()  # back to dask's defaults for the next tests
        dask.config.config.pop("scheduler", None)


def test_set_as_default_false_opts_out():
    with new_client(set_as_default=False) as client:
        assert dask.config.get("scheduler", None) is None
        assert ran_on() == {"local"}
        x = db.from_sequence(range(4), npartitions=2).map(where_it_ran)
        assert set(x.compute(scheduler=client)) == set(client.scheduler_info()["workers"])


def test_importing_minidist_does_not_import_dask():
    code = "import sys, minidist; minidist.Future; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


_CLIENT_BEFORE_DASK = """
import importlib.util, sys
from minidist import Client, get_worker

def where_it_ran(i):
    return get_worker().address

with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
    assert "dask" not in sys.modules, "Client() imported dask"
    assert importlib.util.find_spec("dask") is not None  # a probe must not use up the hook
    import dask
    import dask.bag as db

    ran_on = set(db.from_sequence(range(4), npartitions=2).map(where_it_ran).compute())
    assert ran_on <= set(client.scheduler_info()["workers"]), ran_on
    print("ran on minidist")
assert dask.config.get("scheduler", None) is None  # put back on close
import joblib  # the other package a Client waits for: then nothing of minidist stays on sys.meta_path
assert not [f for f in sys.meta_path if type(f).__module__.startswith("minidist")], sys.meta_path
"""


def test_a_client_made_before_dask_is_imported_becomes_its_scheduler_at_that_import():
    """minidist never imports dask itself (no 0.1-0.3 s at Client(), no import on a background
    thread that could deadlock with the program's own imports): it waits for the program's import."""
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT_BEFORE_DASK], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ran on minidist"
