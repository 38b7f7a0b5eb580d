"""Placement of graph tasks by SchedulerState: which worker each task goes to, driven event by event
(no workers run anything), so the rules are checked exactly rather than through timings."""

from __future__ import annotations

from collections import deque

from minidist.scheduler.instructions import Publish
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


def test_the_chunks_one_merge_combines_start_on_one_worker():
    # like rechunk's merges of 8 chunks each: the siblings may go beyond a worker's room
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    groups, size = 3, 8
    tasks = [NewTask(f"x-{g}-{i}", prefix="x") for g in range(groups) for i in range(size)]
    tasks += [
        NewTask(f"merge-{g}", tuple(f"x-{g}-{i}" for i in range(size)), prefix="merge")
        for g in range(groups)
    ]
    ran = run_graph(state, tasks, [f"merge-{g}" for g in range(groups)], 12 * MiB)

    for g in range(groups):
        assert len({ran[f"x-{g}-{i}"] for i in range(size)}) == 1, g
    assert {ran[f"x-{g}-0"] for g in range(groups)} == {"A", "B"}


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


def learn_duration(state: SchedulerState, prefix: str, seconds: float) -> None:
    """Let the scheduler see one task of ``prefix`` take ``seconds``."""
    [execute] = executes(state.update_graph([NewTask(f"{prefix}-warm", prefix=prefix)], "c"))
    state.task_finished(execute.key, execute.worker, 8, 0.0, seconds, attempt=execute.attempt)


def held_graph(state: SchedulerState, held_bytes: int, slices: int) -> tuple:
    """A large result kept by its worker, then ``slices`` short tasks that read it: the worker
    holding it, and the instructions of every step (each task finished as it was handed out, each
    publication made as it was asked for)."""
    tasks = [NewTask("big", prefix="big")]
    tasks += [NewTask(f"slice-{i}", ("big",), prefix="slice") for i in range(slices)]
    out = state.update_graph(tasks, "client", [f"slice-{i}" for i in range(slices)])
    [make] = executes(out)
    holder = make.worker
    assert make.may_hold
    out = state.task_finished("big", holder, held_bytes, 0.0, 0.05, make.attempt, held=True)
    everything = list(out)
    handed = deque(out)
    while handed:
        inst = handed.popleft()
        if isinstance(inst, Publish):  # the holder publishes at once
            out = [o for key in inst.keys for o in state.published(key, inst.worker)]
        elif isinstance(inst, Execute):
            out = state.task_finished(inst.key, inst.worker, 8, 0.0, 0.001, inst.attempt)
        else:
            continue
        everything += out
        handed.extend(out)
    return holder, everything


def test_short_tasks_wait_for_the_worker_holding_their_large_input_rather_than_have_it_published():
    # rechunk's splits: a slice of a 96 MB merge takes 1 ms; publishing the merge for the idle
    # worker would cost ~25 ms of writing and reading, more than the holder needs for all of them
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    learn_duration(state, "slice", 0.001)
    holder, instructions = held_graph(state, 96 * MiB, slices=24)

    assert not [inst for inst in instructions if isinstance(inst, Publish)]
    ran_on = {inst.worker for inst in instructions if isinstance(inst, Execute)}
    assert ran_on == {holder}
    assert all(state.tasks[f"slice-{i}"].state == "memory" for i in range(24))


def test_an_idle_worker_still_has_a_small_held_input_published_for_it():
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    learn_duration(state, "slice", 0.001)
    holder, instructions = held_graph(state, 2 * MiB, slices=24)

    assert Publish(holder, ("big",)) in instructions
    assert all(state.tasks[f"slice-{i}"].state == "memory" for i in range(24))


def test_many_short_tasks_on_one_large_held_input_still_spread_once_the_wait_is_longer():
    # 200 slices of 1 ms: the holder's queue would take 200 ms, far more than the 25 ms of
    # publishing the 96 MB input, so past ~25 queued slices the input is published for the other
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    learn_duration(state, "slice", 0.001)
    holder, instructions = held_graph(state, 96 * MiB, slices=200)

    assert Publish(holder, ("big",)) in instructions
    ran = [inst.worker for inst in instructions if isinstance(inst, Execute)]
    assert 30 <= ran.count(holder) <= 170


def test_a_cheap_task_joins_the_busy_worker_holding_most_of_its_inputs_rather_than_have_them_published():
    # rechunk's last step: a 2 ms merge of three 4 MB slices, two held by a worker busy for a while
    # and one by an idle worker. Publishing the two for the idle worker would cost their holder
    # more than the merge itself: the merge joins the holder's queue, and only the one slice the
    # idle worker holds is published
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    learn_duration(state, "merge", 0.002)
    learn_duration(state, "long", 0.2)
    slices = [NewTask(f"slice-{i}", prefix="slice", workers=frozenset({"A"})) for i in range(2)]
    slices += [NewTask("slice-2", prefix="slice", workers=frozenset({"B"}))]
    merge = NewTask("merge", ("slice-0", "slice-1", "slice-2"), prefix="merge")
    out = state.update_graph(slices + [merge], "client", ["merge"])
    handed = {inst.key: inst for inst in executes(out)}
    assert {handed[f"slice-{i}"].worker for i in range(3)} == {"A", "B"}
    # A gets long tasks as well, which fill its room once its slices are done
    longs = [NewTask(f"long-{i}", prefix="long", workers=frozenset({"A"})) for i in range(3)]
    out = state.update_graph(longs, "client", [task.key for task in longs])
    everything = list(out)
    for key in ("slice-2", "slice-0", "slice-1"):
        inst = handed[key]
        everything += state.task_finished(
            key, inst.worker, 4 * MiB, 0.0, 0.001, inst.attempt, held=True
        )
    assert len(state.workers["A"].processing) >= 3  # the long tasks, and B is idle

    publications = [inst for inst in everything if isinstance(inst, Publish)]
    assert publications == [Publish("B", ("slice-2",))]
    everything += state.published("slice-2", "B")
    [execute] = [inst for inst in executes(everything) if inst.key == "merge"]
    assert execute.worker == "A"
    assert execute.missing_deps == ("slice-2",)


def rechunk_like(state: SchedulerState, merge_on: list, chunks: int) -> tuple:
    """rechunk's shape: merges pinned to workers, ``chunks`` slices of each (run where their merge
    is) and final chunks reading one slice of every merge. Every task finishes as handed out, each
    worker's in turn, large results held when allowed and published when asked for. The Execute of
    every task, and the keys asked to be published with the step at which they were."""
    tasks = [
        NewTask(f"merge-{m}", prefix="merge", workers=frozenset([on]))
        for m, on in enumerate(merge_on)
    ]
    tasks += [
        NewTask(f"slice-{m}-{c}", (f"merge-{m}",), prefix="slice", workers=frozenset([on]))
        for m, on in enumerate(merge_on)
        for c in range(chunks)
    ]
    tasks += [
        NewTask(f"final-{c}", tuple(f"slice-{m}-{c}" for m in range(len(merge_on))), prefix="f")
        for c in range(chunks)
    ]
    handed = deque(state.update_graph(tasks, "client", [f"final-{c}" for c in range(chunks)]))
    executed: dict = {}
    steps: dict = {}  # key -> the step it finished at; ("asked", key) -> when asked to publish it
    step = 0
    while handed:
        inst = handed.popleft()
        step += 1
        if isinstance(inst, Publish):
            out = [o for key in inst.keys for o in state.published(key, inst.worker)]
        elif isinstance(inst, Execute):
            executed[inst.key] = inst
            held = inst.may_hold and inst.key[0] != "f"  # as a worker does: results >= 1 MiB
            out = state.task_finished(
                inst.key, inst.worker, 4 * MiB, 0.0, 0.001, inst.attempt, held=held
            )
            steps[inst.key] = step
        else:
            continue
        for o in out:
            if isinstance(o, Publish):
                for key in o.keys:
                    steps.setdefault(("asked", key), step)
        handed.extend(out)
    return executed, steps


def test_a_held_slice_a_final_chunk_on_the_other_worker_reads_is_published_before_it_is_placed():
    # two merges on A, one on B: each final chunk will run on A, where two of its three slices
    # are, so B publishes its slice as soon as that is clear, beside its next task, rather than
    # once the final chunk is placed and set aside to wait for it (a round trip on its path)
    state = SchedulerState()
    state.add_worker("A", 1)
    state.add_worker("B", 1)
    executed, steps = rechunk_like(state, ["A", "A", "B"], chunks=8)

    assert all(state.tasks[f"final-{c}"].state == "memory" for c in range(8))
    on_a = [c for c in range(8) if executed[f"final-{c}"].worker == "A"]
    assert len(on_a) >= 4  # where most of their inputs are (B, idle meanwhile, may take some)
    for c in on_a:
        piece = executed[f"slice-2-{c}"]
        ready_at = max(steps[f"slice-{m}-{c}"] for m in range(3))  # when final-c could be placed
        assert piece.may_hold
        assert steps.get(("asked", piece.key), ready_at) < ready_at, c
    # the slices of the two merges on A are read there: held, not written out as they finish
    assert all(executed[f"slice-{m}-{c}"].may_hold for m in (0, 1) for c in range(8))
