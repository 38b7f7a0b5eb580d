"""scale() and adapt() on real clusters: workers come and go, idle ones first, and no result is lost."""

from __future__ import annotations

import functools
import os
import signal
import time

import pytest

from conftest import wait_until
from minidist import Adaptive, Client, LocalCluster, SchedulerPlugin
from minidist.messages import RetireWorkers

pytestmark = pytest.mark.timeout(60)


# quiet clusters without a dashboard (any keyword may be given again)
cluster = functools.partial(
    LocalCluster, dashboard_address=None, silence_logs=False, threads_per_worker=1
)


def addresses(c) -> set:
    return set(c.scheduler_info["workers"])


def inc(x):
    return x + 1


def wait_for_file(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


def nap(x, seconds=0.3):
    time.sleep(seconds)
    return x


# -------------------------------------------------------------------------------------------- scale


def test_scale_up_then_down_retires_idle_workers_first_and_keeps_every_result(tmp_path):
    with cluster(n_workers=1) as c, Client(c) as client:
        c.scale(3)
        assert len(addresses(c)) == 3
        data = client.map(inc, range(30))  # results spread over the three workers' caches
        assert client.gather(data) == list(range(1, 31))
        # the youngest worker: without regard to work it would be the first to go
        busy_worker = max(c.scheduler_info["workers"].items(), key=lambda item: item[1]["name"])[0]
        release = tmp_path / "release"
        busy = client.submit(wait_for_file, str(release), workers=[busy_worker])
        assert wait_until(lambda: client.processing()[busy_worker] == [busy.key])

        c.scale(1)  # two of three go: the idle ones, not the one running a task
        assert wait_until(lambda: addresses(c) == {busy_worker})
        assert client.gather(data) == list(range(1, 31))
        c.scale(0)  # the busy one retires too, but only once its task is done
        assert addresses(c) == {busy_worker}
        assert c.scheduler_info["workers"][busy_worker]["status"] == "retiring"
        release.touch()
        assert busy.result(timeout=10) == "finished"
        assert wait_until(lambda: not addresses(c))

        # no worker left, yet every result is still there and feeds new work once one comes back
        assert client.gather(data) == list(range(1, 31))
        total = client.submit(sum, data)
        c.scale(1)
        assert total.result(timeout=10) == sum(range(1, 31))
        cluster_log = c.get_logs()["Cluster"]
        assert (
            "Scaling from 1 to 3 workers" in cluster_log
            and "Scaling from 3 to 1 workers" in cluster_log
        )
        assert cluster_log.count("Retired worker") == 3


class KeepWorkerTwo(SchedulerPlugin):
    """dask's hook: the cluster may not retire the worker named 2 when it shrinks by itself."""

    def valid_workers_downscaling(self, scheduler, workers):
        return [ws for ws in workers if str(ws.name) != "2"]


def names(c) -> set:
    return {str(w["name"]) for w in c.scheduler_info["workers"].values()}


def test_scheduler_plugins_choose_which_workers_scaling_down_may_retire():
    with cluster(n_workers=3, processes=False) as c, Client(c) as client:
        client.register_plugin(KeepWorkerTwo())
        c.scale(2)  # the youngest ("2") would go first; the plugin keeps it
        assert wait_until(lambda: names(c) == {"0", "2"})
        c.scale(0)  # only "2" stays: the plugin allows no other choice
        assert wait_until(lambda: names(c) == {"2"})
        client.retire_workers(names=[2])  # a user's explicit retirement is not vetted (as dask)
        assert wait_until(lambda: not names(c))


def test_scale_counts_cores_and_memory():
    with cluster(n_workers=1, processes=False, threads_per_worker=2, memory_limit="300MiB") as c:
        c.scale(cores=5)
        assert len(addresses(c)) == 3
        c.scale(memory="600MiB")
        assert len(addresses(c)) == 2
        c.scale(memory="1GiB")
        assert len(addresses(c)) == 4
        c.scale(1, cores=4)  # whichever asks for more, as dask
        assert len(addresses(c)) == 2
        c.scale()  # dask's default n=0
        assert not addresses(c)
        with pytest.raises(ValueError, match="non-negative"):
            c.scale(-1)
    with cluster(n_workers=1, processes=False, memory_limit=None) as c:
        with pytest.raises(ValueError, match="memory_limit"):
            c.scale(memory="1GiB")


def test_a_worker_dying_after_a_scale_down_is_replaced_up_to_the_new_size():
    with cluster(n_workers=3) as c, Client(c) as client:
        c.scale(2)
        assert len(addresses(c)) == 2
        victim = next(iter(c.scheduler_info["workers"].values()))["pid"]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(
            lambda: victim not in {w["pid"] for w in c.scheduler_info["workers"].values()}
        )
        client.wait_for_workers(2, timeout=30)
        assert client.submit(inc, 1).result(timeout=10) == 2
        assert len(addresses(c)) == 2


def test_a_worker_dying_while_a_scale_down_picks_whom_to_retire_is_replaced(monkeypatch):
    # scale(1) reads the active workers, then asks the scheduler to retire the surplus. The worker it
    # meant to keep died in between (found by the fault suites under load): its death was not
    # replaced, the two others still counting towards the target, and both then retired: the cluster
    # sat at 0 workers and tasks waited for ever. The death is placed in that window here.
    with cluster(n_workers=3) as c, Client(c) as client:
        workers = c.scheduler_info["workers"]
        # idle workers with empty caches retire youngest first: scale(1) keeps the oldest
        keeper = min(workers, key=lambda address: workers[address]["name"])
        ask = c.scheduler.ask

        def keeper_dies_first(kind, *fields):
            if kind is RetireWorkers and keeper in c.scheduler_info["workers"]:
                os.kill(workers[keeper]["pid"], signal.SIGKILL)
                assert wait_until(lambda: keeper not in c.scheduler_info["workers"], timeout=30)
            return ask(kind, *fields)

        monkeypatch.setattr(c.scheduler, "ask", keeper_dies_first)
        c.scale(1)
        assert wait_until(lambda: len(addresses(c)) == 1 and not addresses(c) & set(workers))
        assert client.submit(inc, 1).result(timeout=30) == 2


# -------------------------------------------------------------------------------------------- adapt


def test_adapt_returns_the_policy_and_a_second_call_replaces_the_first():
    with cluster(n_workers=0, processes=False) as c:
        first = c.adapt(minimum=1, maximum=2, interval="20ms")
        assert isinstance(first, Adaptive) and first.running
        assert wait_until(lambda: len(addresses(c)) == 1)
        second = c.adapt(minimum=3, maximum=3, interval="20ms")
        assert not first.running and second.running
        assert wait_until(lambda: len(addresses(c)) == 3)
    assert not second.running  # close stops it


def test_scale_stops_an_active_adapt():
    with cluster(n_workers=0, processes=False) as c:
        policy = c.adapt(minimum=2, maximum=4, interval="20ms")
        assert wait_until(lambda: len(addresses(c)) == 2)
        c.scale(1)
        assert not policy.running
        assert len(addresses(c)) == 1  # the policy's minimum no longer holds
        assert "Stopped adaptive scaling: scale() was called" in c.get_logs()["Cluster"]


def test_bad_adapt_keywords_fail_before_anything_changes():
    with cluster(n_workers=0, processes=False) as c:
        policy = c.adapt(minimum=1, maximum=1, interval="20ms")
        with pytest.raises(ValueError, match="minimum"):
            c.adapt(minimum=3, maximum=1)
        assert policy.running


class AlwaysTwo(Adaptive):
    def target(self, observed):
        return 2


def test_adapt_takes_a_users_policy_class():
    with cluster(n_workers=0, processes=False) as c:
        policy = c.adapt(Adaptive=AlwaysTwo, interval="20ms")
        assert isinstance(policy, AlwaysTwo)
        assert wait_until(lambda: len(addresses(c)) == 2)


@pytest.mark.parametrize("processes", [False, True])
def test_adapt_grows_under_load_and_shrinks_after(processes):
    with cluster(n_workers=0, processes=processes) as c, Client(c) as client:
        policy = c.adapt(
            minimum=0, maximum=3, interval="50ms", target_duration="100ms", wait_count=2
        )
        futures = client.map(nap, range(12))
        assert wait_until(lambda: len(addresses(c)) == 3, timeout=20)
        assert client.gather(futures) == list(range(12))
        assert wait_until(lambda: not addresses(c), timeout=20)
        assert [entry["status"] for _, entry in policy.log][:1] == ["up"]
        assert policy.log[-1][1] == {
            "status": "down",
            "n": 0,
            "workers": policy.log[-1][1]["workers"],
        }
        cluster_log = c.get_logs()["Cluster"]
        assert "Adaptive scaling from 0 to " in cluster_log and " to 0 workers" in cluster_log
