"""Events (log_event, get_events, subscribe_topic) and minidist.print/warn from tasks."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings

import pytest

import minidist
from conftest import parked, wait_until, wake_ups
from minidist import Client, LocalCluster, get_worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[False, True], ids=["threads", "processes"])
def cluster(request):
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=request.param, dashboard_address=None
    ) as c:
        yield c


def log_from_task(x):
    get_worker().log_event("progress", {"step": x})
    return x


def print_and_warn(x):
    minidist.print("value is", x)
    minidist.warn(f"careful with {x}", RuntimeWarning)
    return x


def test_events_from_clients_and_tasks_reach_subscribers(cluster):
    with Client(cluster) as client, Client(cluster.scheduler_address) as other:
        seen = []
        other.subscribe_topic("progress", seen.append)
        client.log_event("progress", {"step": 0})
        assert client.gather(client.map(log_from_task, [1, 2])) == [1, 2]
        assert wait_until(lambda: len(seen) == 3)
        assert sorted(msg["step"] for _, msg in seen) == [0, 1, 2]
        events = other.get_events("progress")
        assert [msg for _, msg in events] == [msg for _, msg in seen]
        assert all(isinstance(when, float) for when, _ in events)
        client.log_event(["a", "b"], "both")
        assert client.get_events()["a"][0][1] == "both" and client.get_events("b")
        assert client.get_events("nothing") == ()
        other.unsubscribe_topic("progress")
        client.log_event("progress", "unseen")
        assert wait_until(lambda: len(other.get_events("progress")) == 4)
        assert len(seen) == 3


def test_a_failing_handler_does_not_stop_the_listener(cluster, caplog):
    with Client(cluster) as client:
        seen = []

        def picky(event):
            if event[1] == "bad":
                raise ValueError("cannot take it")
            seen.append(event[1])

        client.subscribe_topic("t", picky)
        client.log_event("t", "bad")
        client.log_event("t", "good")
        assert wait_until(lambda: seen == ["good"])
        assert "the handler of event topic 't' raised" in caplog.text


def test_print_and_warn_in_a_task_reach_the_client(cluster, capsys):
    with Client(cluster) as client, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert client.submit(print_and_warn, 7).result() == 7
        assert wait_until(lambda: "value is 7" in capsys.readouterr().out)
        assert wait_until(lambda: any("careful with 7" in str(w.message) for w in caught))
        assert [w.category for w in caught if "careful" in str(w.message)] == [RuntimeWarning]


def test_print_outside_a_task_is_the_builtin(capsys):
    minidist.print("plain", 1, sep="-")
    assert capsys.readouterr().out == "plain-1\n"


def test_blocked_event_handlers_leave_clients_working():
    with (
        LocalCluster(
            n_workers=1,
            processes=False,
            dashboard_address=None,
            blocked_handlers=["subscribe_topic", "log_event"],
        ) as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(sum, [1, 2]).result() == 3
        with pytest.raises(ValueError, match="'log_event' handler has been explicitly disallowed"):
            client.log_event("t", 1)


def log_on_worker(message):
    import logging

    logging.getLogger("forwarded.test").warning("from the worker: %s", message)
    return message


def test_forward_logging_re_emits_worker_records_on_the_client(caplog):
    with (
        LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.forward_logging("forwarded.test")
        with caplog.at_level("WARNING", logger="forwarded.test"):
            assert client.submit(log_on_worker, "hello").result() == "hello"
            assert wait_until(lambda: "from the worker: hello" in caplog.text)
        [record] = [r for r in caplog.records if r.name == "forwarded.test"]
        assert record.levelname == "WARNING" and record.process != os.getpid()


def test_workers_started_later_forward_too_and_unforward_logging_stops_it(caplog):
    with (
        LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
        caplog.at_level("WARNING", logger="forwarded.test"),
    ):
        client.forward_logging("forwarded.test")
        first = set(client.scheduler_info()["workers"])
        cluster.scale(2)
        client.wait_for_workers(2, timeout=20)
        [newest] = set(client.scheduler_info()["workers"]) - first
        assert client.submit(log_on_worker, "late", workers=[newest]).result() == "late"
        assert wait_until(lambda: "from the worker: late" in caplog.text)

        client.unforward_logging("forwarded.test")
        assert client.run(lambda: len(logging.getLogger("forwarded.test").handlers)) == {
            address: 0 for address in client.scheduler_info()["workers"]
        }
        client.submit(log_on_worker, "after", pure=False).result()
        client.log_event("marker", "sent after the task's record would have been")
        assert wait_until(lambda: client.get_events("marker"))
        assert "from the worker: after" not in caplog.text


def test_an_idle_clients_event_listener_sleeps_until_something_is_logged(cluster):
    # It used to wake every half second to see whether the scheduler had closed (the scheduler now
    # errs every awaited answer when it closes, scheduler/failure.py). A thread that wakes now and
    # then keeps what each wake-up made alive, in whichever allocator arena a large run had just
    # filled: 10-16% of a client's memory stayed after a 100,000-task run was released.
    before = set(threading.enumerate())
    with Client(cluster) as client, Client(cluster.scheduler_address) as remote:
        listeners = [
            thread
            for thread in set(threading.enumerate()) - before
            if thread.name.startswith("minidist-events")
        ]
        assert len(listeners) == 2  # one per client: in this process, and over TCP
        seen: list = []
        client.subscribe_topic("topic", seen.append)
        remote.subscribe_topic("topic", seen.append)
        client.log_event("topic", "each listener shows it, then waits for the next")
        assert wait_until(lambda: len(seen) == 2 and all(map(parked, listeners)))
        start = [wake_ups(thread) for thread in listeners]
        time.sleep(2.5)  # a window to count wake-ups in, not a wait for something
        # at most going to sleep, if the wait above saw it just before, and a wait for the GIL on the
        # way (a busy machine): it used to wake 5 times in this window
        assert all(wake_ups(t) - n <= 2 for t, n in zip(listeners, start))
        client.log_event("topic", "still listening")
        assert wait_until(lambda: len(seen) == 4)
        assert [msg for _, msg in seen[2:]] == ["still listening"] * 2
