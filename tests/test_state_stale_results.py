"""SchedulerState and late reports: every hand-over of a task to a worker is an attempt, and a report
names the attempt it answers. A worker that ran a task, lost it (stolen away, or the worker was replaced
under the same address) and got it back reports twice; only the current attempt's result counts, since
that is the one its cache will hold."""

from __future__ import annotations

from minidist.scheduler.state import Execute, NewTask, SchedulerState


def executes(out) -> list:
    return [inst for inst in out if isinstance(inst, Execute)]


def test_a_late_report_of_an_earlier_attempt_is_not_taken_for_the_current_one():
    state = SchedulerState()
    state.add_worker("A", 1)
    [first] = executes(state.update_graph([NewTask("k", prefix="k")], "client", ["k"]))
    # the worker is replaced under the same address (thread workers are named by index), and the
    # task handed to it again
    state.remove_worker("A", "restarted", expected=True)
    [second] = executes(state.add_worker("A", 1))
    assert (first.worker, second.worker) == ("A", "A") and second.attempt > first.attempt

    assert not state.expects_result("k", "A", first.attempt)
    state.task_finished("k", "A", attempt=first.attempt)  # the first run's late report
    assert state.tasks["k"].state == "processing"  # still waiting for the current attempt
    assert "k" in state.workers["A"].processing

    assert state.expects_result("k", "A", second.attempt)
    state.task_finished("k", "A", attempt=second.attempt)
    assert state.tasks["k"].state == "memory" and state.tasks["k"].who_has == {"A"}


def test_a_late_error_of_an_earlier_attempt_does_not_fail_the_task():
    state = SchedulerState()
    state.add_worker("A", 1)
    [first] = executes(state.update_graph([NewTask("k", prefix="k")], "client", ["k"]))
    state.remove_worker("A", "restarted", expected=True)
    [second] = executes(state.add_worker("A", 1))
    state.task_erred("k", "A", ValueError("old"), None, attempt=first.attempt)
    assert state.tasks["k"].state == "processing"
    state.task_finished("k", "A", attempt=second.attempt)
    assert state.tasks["k"].state == "memory"
