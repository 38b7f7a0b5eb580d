"""Properties of the adaptive scaling policy, on random observations (no cluster, no threads, no clock)."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from minidist.deploy.adaptive import Adaptive, ClusterObservation, WorkerObservation

PREFIXES = ["inc", "add", "load", "sum"]

worker_strategy = st.builds(
    WorkerObservation,
    name=st.just(""),  # named by position below, so names are unique without filtering
    nthreads=st.integers(1, 4),
    memory_limit=st.none() | st.integers(1, 10**9),
    processing=st.integers(0, 20),
    idle_for=st.floats(0, 100),
    unique_keys=st.integers(0, 3),
    nbytes=st.integers(0, 10**9),
)
workers_strategy = st.lists(worker_strategy, max_size=12).map(
    lambda ws: tuple(dataclasses.replace(w, name=f"w{i}") for i, w in enumerate(ws))
)


@st.composite
def observations(draw, workers=workers_strategy):
    queued_by_prefix = draw(st.dictionaries(st.sampled_from(PREFIXES), st.integers(0, 200)))
    total = sum(queued_by_prefix.values())
    processing = draw(st.integers(0, total))
    return ClusterObservation(
        now=draw(st.floats(0, 1e6)),
        workers=draw(workers),
        queued=total - processing,
        processing=processing,
        waiting=draw(st.integers(0, 100)),
        prefix_durations=draw(st.dictionaries(st.sampled_from(PREFIXES), st.floats(0, 60))),
        queued_by_prefix=queued_by_prefix,
        threads_per_worker=draw(st.integers(1, 8)),
        memory_per_worker=draw(st.none() | st.integers(10**8, 10**10)),
    )


@st.composite
def policies(draw):
    minimum = draw(st.integers(0, 6))
    maximum = draw(st.just(math.inf) | st.integers(minimum, 15))
    cores = draw(st.none() | st.tuples(st.integers(0, 20), st.integers(0, 60)).map(sorted))
    memory = draw(st.none() | st.tuples(st.integers(0, 10**10), st.integers(0, 10**10)).map(sorted))
    return Adaptive(
        minimum=minimum,
        maximum=maximum,
        minimum_cores=cores and cores[0],
        maximum_cores=cores and cores[1],
        minimum_memory=memory and memory[0],
        maximum_memory=memory and memory[1],
        wait_count=draw(st.integers(1, 5)),
        target_duration=draw(st.floats(0.01, 60)),
    )


@settings(max_examples=200, deadline=None)
@given(policies(), st.lists(observations(), min_size=1, max_size=8))
def test_target_never_leaves_minimum_maximum(adaptive, sequence):
    for observed in sequence:
        decision = adaptive.recommend(observed)
        assert isinstance(decision.target, int)
        assert adaptive.minimum <= decision.target <= adaptive.maximum


@settings(max_examples=200, deadline=None)
@given(policies(), st.lists(observations(), min_size=1, max_size=8))
def test_retire_list_matches_the_target_and_spares_unique_data(adaptive, sequence):
    for observed in sequence:
        decision = adaptive.recommend(observed)
        names = [w.name for w in observed.workers]
        current = len(names)
        assert len(decision.retire) == max(0, current - decision.target)
        assert len(set(decision.retire)) == len(decision.retire)
        assert set(decision.retire) <= set(names)
        kept = [w for w in observed.workers if w.name not in decision.retire]
        retired = [w for w in observed.workers if w.name in decision.retire]
        if any(w.unique_keys for w in retired):
            # a worker holding the only copy of a key goes only when every other candidate went first
            assert all(w.unique_keys for w in kept)


@settings(max_examples=200, deadline=None)
@given(policies(), observations())
def test_scale_down_waits_for_wait_count_checks_in_a_row(adaptive, observed):
    low, high = adaptive.bounds(observed)
    raw = min(max(adaptive.target(observed), low), high)
    current = len(observed.workers)
    decisions = [adaptive.recommend(observed) for _ in range(adaptive.wait_count)]
    if raw < current:
        # held at the current count (or at once at the maximum, if above it) until the last check
        held = min(current, high)
        assert [d.target for d in decisions[:-1]] == [held] * (adaptive.wait_count - 1)
        assert decisions[-1].target == raw
    else:
        assert [d.target for d in decisions] == [raw] * adaptive.wait_count


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 5), st.lists(worker_strategy, min_size=1, max_size=12), st.integers(0, 4))
def test_a_check_that_wants_more_resets_the_wait(wait_count, workers, lower_checks_before):
    adaptive = Adaptive(wait_count=wait_count)
    workers = tuple(dataclasses.replace(w, name=f"w{i}") for i, w in enumerate(workers))
    idle = ClusterObservation(now=0.0, workers=workers, queued=0, processing=0, waiting=0)
    # so much work that this check asks for more workers, not fewer
    busy = dataclasses.replace(idle, queued=10**6, queued_by_prefix={"inc": 10**6})
    for _ in range(min(lower_checks_before, wait_count - 1)):
        assert adaptive.recommend(idle).target == len(workers)
    assert adaptive.recommend(busy).target >= len(workers)
    held = [adaptive.recommend(idle).target for _ in range(wait_count - 1)]
    assert held == [len(workers)] * (wait_count - 1)
    assert adaptive.recommend(idle).target == 0


@settings(max_examples=200, deadline=None)
@given(policies(), observations())
def test_converges_under_steady_load(adaptive, observed):
    """Applying each decision to a simulated cluster under a constant load reaches a fixed point."""
    held_bytes = sum(w.nbytes for w in observed.workers)
    threads = observed.threads_per_worker
    names = [w.name for w in observed.workers]
    counter = 0
    targets = []
    for _ in range(adaptive.wait_count * 3 + 12):
        # the data stays the same in total and spreads over whoever is there
        shares = [held_bytes // max(1, len(names))] * len(names)
        if shares:
            shares[0] += held_bytes - sum(shares)
        workers = tuple(
            WorkerObservation(n, threads, None, processing=1, idle_for=0.0, unique_keys=0, nbytes=b)
            for n, b in zip(names, shares)
        )
        decision = adaptive.recommend(dataclasses.replace(observed, workers=workers))
        targets.append(decision.target)
        names = [n for n in names if n not in decision.retire]
        while len(names) < decision.target:
            counter += 1
            names.append(f"new-{counter}")
    settled = targets[-(adaptive.wait_count + 1) :]
    assert len(set(settled)) == 1
    assert settled[-1] == len(names)


@settings(max_examples=100, deadline=None)
@given(policies(), st.lists(observations(), min_size=1, max_size=6))
def test_recommend_is_deterministic(adaptive, sequence):
    twin = Adaptive(
        minimum=adaptive.minimum,
        maximum=adaptive.maximum,
        minimum_cores=adaptive.minimum_cores,
        maximum_cores=adaptive.maximum_cores,
        minimum_memory=adaptive.minimum_memory,
        maximum_memory=adaptive.maximum_memory,
        wait_count=adaptive.wait_count,
        target_duration=adaptive.target_duration,
    )
    assert [adaptive.recommend(o) for o in sequence] == [twin.recommend(o) for o in sequence]
