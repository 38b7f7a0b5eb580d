"""Placement of graph tasks by SchedulerState: which worker each task goes to, driven event by event
(no workers run anything), so the rules are checked exactly rather than through timings."""

from __future__ import annotations

from collections import deque

from minidist.scheduler.state import Execute, NewTask, SchedulerState

MiB = 2**20


def executes(out) -> list:
    return [inst for inst in out if isinstance(inst, Execute)]


def run_graph(state: SchedulerState, tasks: list, wanted: list, nbytes: int) -> dict:
    """Submit ``tasks`` and finish every task handed out, oldest first, each with an ``nbytes``
    result; the worker each key ran on."""
    ran: dict = {}
    handed = deque(executes(state.update_graph(tasks, "client", wanted)))
    while handed:
        execute = handed.popleft()
        ran[execute.key] = execute.worker
        handed.extend(
            executes(
                state.task_finished(execute.key, execute.worker, nbytes, attempt=execute.attempt)
            )
        )
    return ran


def test_the_inputs_of_one_dependent_start_on_the_same_worker():
    # like the chunks x[i, j] and x[j, i] that one task of (x + x.T) adds: without looking at the
    # siblings, consecutive roots alternate between the two workers and every pair is split, so half
    # the inputs would have to move
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    pairs = 16
    tasks = []
    for i in range(pairs):
        tasks += [NewTask(f"x-{i}-a", prefix="x"), NewTask(f"x-{i}-b", prefix="x")]
    tasks += [NewTask(f"add-{i}", (f"x-{i}-a", f"x-{i}-b"), prefix="add") for i in range(pairs)]
    ran = run_graph(state, tasks, [f"add-{i}" for i in range(pairs)], 8 * MiB)

    assert all(ran[f"x-{i}-a"] == ran[f"x-{i}-b"] for i in range(pairs))
    # and the pairs are still shared out between the workers
    roots_on_a = sum(ran[f"x-{i}-a"] == "A" for i in range(pairs))
    assert pairs // 4 <= roots_on_a <= pairs - pairs // 4


def test_a_large_family_of_roots_is_placed_by_load_alone():
    # one reduction over many leaves: siblings are everyone, so they say nothing (and are not scanned)
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    leaves = [NewTask(f"leaf-{i}", prefix="leaf") for i in range(200)]
    total = NewTask("total", tuple(f"leaf-{i}" for i in range(200)), prefix="total")
    ran = run_graph(state, [*leaves, total], ["total"], 8)
    on_a = sum(ran[f"leaf-{i}"] == "A" for i in range(200))
    assert 80 <= on_a <= 120
