"""The adaptive scaling policy on chosen examples, and its timer driven by a small fake cluster.

The fake cluster implements only the policy's own contract (``_adaptive_observe`` returning a
ClusterObservation, ``_adaptive_apply`` taking a ScalingDecision); it stands for no part of the engine.
"""

from __future__ import annotations

import logging
import math
import threading

import pytest

from minidist.deploy.adaptive import (
    Adaptive,
    ClusterObservation,
    ScalingDecision,
    WorkerObservation,
)

WAIT = 10  # seconds any condition below may take; they normally take milliseconds


def worker(name, processing=0, idle_for=0.0, unique_keys=0, nbytes=0, nthreads=2):
    return WorkerObservation(name, nthreads, None, processing, idle_for, unique_keys, nbytes)


def observation(workers=(), by_prefix=None, durations=None, waiting=0, threads=2, memory=None):
    by_prefix = by_prefix or {}
    return ClusterObservation(
        now=0.0,
        workers=tuple(workers),
        queued=sum(by_prefix.values()),
        processing=0,
        waiting=waiting,
        prefix_durations=durations or {},
        queued_by_prefix=by_prefix,
        threads_per_worker=threads,
        memory_per_worker=memory,
    )


def test_keywords_take_dask_forms():
    adaptive = Adaptive(
        interval="100ms",
        minimum=1,
        maximum=10,
        minimum_memory="4GiB",
        maximum_memory=64 * 2**30,
        target_duration="1 minute",
        wait_count=5,
        worker_key=None,
    )
    assert adaptive.interval == pytest.approx(0.1)
    assert adaptive.target_duration == 60.0
    assert (adaptive.minimum, adaptive.maximum, adaptive.wait_count) == (1, 10, 5)
    assert adaptive.minimum_memory == 4 * 2**30
    assert adaptive.kwargs == {"worker_key": None}
    assert Adaptive().maximum == math.inf and Adaptive().cluster is None
    defaults = Adaptive(
        interval=None, minimum=None, maximum=None, wait_count=None, target_duration=None
    )
    assert (defaults.interval, defaults.minimum, defaults.maximum) == (1.0, 0, math.inf)
    assert (defaults.wait_count, defaults.target_duration) == (3, 5.0)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"minimum": 5, "maximum": 2}, "minimum=5 is larger than maximum=2"),
        ({"minimum_cores": 9, "maximum_cores": 4}, "minimum_cores=9"),
        ({"minimum": -1}, "minimum must be"),
        ({"minimum": math.inf}, "minimum must be a finite"),
        ({"wait_count": 0}, "wait_count"),
        ({"interval": "soon"}, "duration"),
        ({"interval": 0}, "positive"),
    ],
)
def test_nonsense_keywords_are_a_clear_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Adaptive(**kwargs)


def test_target_is_work_over_target_duration_over_threads():
    adaptive = Adaptive(target_duration="5s")
    # 100 tasks x 1 s = 100 s of work; in 5 s that needs 20 threads, 10 workers of 2 threads
    observed = observation(by_prefix={"inc": 100}, durations={"inc": 1.0})
    assert adaptive.recommend(observed) == ScalingDecision(target=10)


def test_unknown_prefixes_count_half_a_second_each():
    adaptive = Adaptive(target_duration="1s")
    observed = observation(by_prefix={"new": 8}, threads=1)
    assert adaptive.recommend(observed).target == 4


def test_never_more_threads_than_tasks():
    adaptive = Adaptive(target_duration="1s")
    observed = observation(by_prefix={"slow": 3}, durations={"slow": 100.0}, threads=1)
    assert adaptive.recommend(observed).target == 3


def test_one_worker_stays_while_tasks_wait():
    adaptive = Adaptive(wait_count=1)
    observed = observation(workers=[worker("a"), worker("b")], waiting=5)
    assert adaptive.recommend(observed) == ScalingDecision(target=1, retire=("a",))


def test_cores_and_memory_bounds_become_worker_counts():
    load = {"inc": 1000}
    adaptive = Adaptive(maximum_cores=8, minimum_cores=3)
    assert adaptive.recommend(observation(by_prefix=load, threads=4)).target == 2
    assert adaptive.recommend(observation(threads=4)).target == 1
    adaptive = Adaptive(maximum_memory="10GB", minimum_memory="3GB")
    assert adaptive.recommend(observation(by_prefix=load, memory=2 * 10**9)).target == 5
    assert adaptive.recommend(observation(memory=2 * 10**9)).target == 2


def test_minimum_and_maximum_win_over_cores_bounds():
    adaptive = Adaptive(minimum=2, maximum=3, maximum_cores=4)
    assert adaptive.recommend(observation(by_prefix={"inc": 1000}, threads=4)).target == 2


def test_memory_held_by_workers_asks_for_more_workers_at_most_twofold():
    adaptive = Adaptive()
    full = [worker(f"w{i}", nbytes=900) for i in range(2)]  # 90% of a 1000-byte limit each
    assert adaptive.recommend(observation(workers=full, memory=1000)).target == 3
    full = [worker(f"w{i}", nbytes=9000) for i in range(2)]
    assert adaptive.recommend(observation(workers=full, memory=1000)).target == 4


def test_scale_down_waits_wait_count_checks_then_retires_least_useful_first():
    adaptive = Adaptive(wait_count=3)
    workers = [
        worker("holds-data", idle_for=50.0, unique_keys=2),
        worker("busy", processing=3),
        worker("idle-short", idle_for=1.0),
        worker("idle-long", idle_for=30.0),
    ]
    idle = observation(workers=workers)
    assert adaptive.recommend(idle) == ScalingDecision(target=4)
    assert adaptive.recommend(idle) == ScalingDecision(target=4)
    assert adaptive.recommend(idle) == ScalingDecision(
        target=0, retire=("idle-long", "idle-short", "busy", "holds-data")
    )


def test_a_worker_with_unique_keys_stays_while_others_can_go():
    adaptive = Adaptive(minimum=2, wait_count=1)
    workers = [
        worker("unique", unique_keys=1),
        worker("busy", processing=5),
        worker("idle", idle_for=9),
    ]
    assert adaptive.recommend(observation(workers=workers)).retire == ("idle",)


def test_above_maximum_scales_down_at_once():
    adaptive = Adaptive(maximum=1, wait_count=3)
    observed = observation(workers=[worker("a"), worker("b", idle_for=5.0)], by_prefix={"x": 100})
    assert adaptive.recommend(observed) == ScalingDecision(target=1, retire=("b",))


# ---- the timer -----------------------------------------------------------------------------------


class FakeCluster:
    """Answers observations from a list and records decisions; signals after each apply."""

    def __init__(self, observe=None):
        self.observe = observe or (
            lambda: observation(by_prefix={"inc": 40}, durations={"inc": 1.0})
        )
        self.applied: list[ScalingDecision] = []
        self.changed = threading.Condition()

    def _adaptive_observe(self):
        return self.observe()

    def _adaptive_apply(self, decision):
        with self.changed:
            self.applied.append(decision)
            self.changed.notify_all()

    def wait_for_applies(self, n):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.applied) >= n, timeout=WAIT)


def adaptive_threads():
    return [t for t in threading.enumerate() if t.name == "minidist-adaptive"]


@pytest.mark.timeout(30)
def test_start_runs_the_policy_on_a_timer_and_stop_ends_the_thread():
    cluster = FakeCluster()
    adaptive = Adaptive(cluster, interval="10ms")
    adaptive.start()
    try:
        cluster.wait_for_applies(3)
        assert adaptive.running
        assert [t.daemon for t in adaptive_threads()] == [True]
        assert cluster.applied[0] == ScalingDecision(target=4)
        assert adaptive.log[0] == (0.0, {"status": "up", "n": 4, "workers": ()})
    finally:
        adaptive.stop()
    assert not adaptive.running
    assert adaptive_threads() == []


@pytest.mark.timeout(30)
def test_errors_are_logged_and_do_not_kill_the_timer(caplog):
    calls = []

    def observe():
        calls.append(None)
        if len(calls) <= 2:
            raise RuntimeError("scheduler not ready")
        return observation()

    cluster = FakeCluster(observe)
    adaptive = Adaptive(cluster, interval="10ms")
    with caplog.at_level(logging.DEBUG, logger="minidist.cluster"):
        adaptive.start()
        try:
            cluster.wait_for_applies(1)
        finally:
            adaptive.stop()
    failures = [r for r in caplog.records if "scheduler not ready" in r.getMessage()]
    assert [r.name for r in failures] == ["minidist.cluster", "minidist.cluster"]
    # the first failure in full, the same one repeated more quietly
    assert [r.levelno for r in failures] == [logging.ERROR, logging.DEBUG]
    assert failures[0].exc_info is not None


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
        self.got_one = threading.Event()

    def emit(self, record):
        self.records.append(record)
        self.got_one.set()


@pytest.mark.timeout(30)
def test_errors_go_to_the_logger_given():
    recorder = Recorder()
    logger = logging.getLogger("minidist.cluster.test-adaptive-own-logger")
    logger.addHandler(recorder)
    adaptive = Adaptive(FakeCluster(observe=lambda: 1 / 0), interval="10ms", logger=logger)
    adaptive.start()
    try:
        assert recorder.got_one.wait(WAIT)
    finally:
        adaptive.stop()
        logger.removeHandler(recorder)
    assert "ZeroDivisionError" in recorder.records[0].getMessage()


@pytest.mark.timeout(30)
def test_no_observation_means_no_decision():
    seen = threading.Event()

    def observe():
        seen.set()
        return None

    cluster = FakeCluster(observe)
    adaptive = Adaptive(cluster, interval="10ms")
    adaptive.start()
    try:
        assert seen.wait(WAIT)
    finally:
        adaptive.stop()
    assert cluster.applied == []


@pytest.mark.timeout(30)
def test_the_cluster_may_stop_the_policy_from_inside_apply():
    """cluster.scale() stops an active adapt; that may happen while the timer applies a decision."""
    cluster = FakeCluster()
    adaptive = Adaptive(cluster, interval="10ms")

    def apply_and_stop(decision):
        adaptive.stop()
        FakeCluster._adaptive_apply(cluster, decision)

    cluster._adaptive_apply = apply_and_stop
    adaptive.start()
    cluster.wait_for_applies(1)
    for thread in adaptive_threads():
        thread.join(WAIT)
    assert adaptive_threads() == []
    assert len(cluster.applied) == 1


@pytest.mark.timeout(30)
def test_a_subclass_can_replace_the_decision():
    class Fixed(Adaptive):
        def recommend(self, observed):
            return ScalingDecision(target=7)

    cluster = FakeCluster()
    adaptive = Fixed(cluster, interval="10ms")
    adaptive.start()
    adaptive.start()  # a second start while running is a no-op
    try:
        cluster.wait_for_applies(2)
        assert len(adaptive_threads()) == 1
    finally:
        adaptive.stop()
    assert set(cluster.applied) == {ScalingDecision(target=7)}


def test_start_without_a_cluster_says_so():
    with pytest.raises(ValueError, match="needs a cluster"):
        Adaptive().start()


def test_threads_per_worker_falls_back_to_the_workers_own():
    adaptive = Adaptive(target_duration="1s")
    workers = [worker("a", processing=1, nthreads=4)]
    assert adaptive.recommend(observation(workers, by_prefix={"x": 16}, threads=0)).target == 2
