"""Tests of minidist.progress: key prefixes, finding futures, and what the bars and lines look like."""

from __future__ import annotations

import io
import re
import sys
import time
import uuid

import pytest
from dask.utils import key_split as dask_key_split
from hypothesis import given, settings
from hypothesis import strategies as st

from minidist import Client, progress
from minidist.progress import (
    TerminalDisplay,
    TextDisplay,
    _Tally,
    futures_of,
    key_split,
    render_bar,
    render_bars,
    render_text_line,
    render_text_summary,
)

pytestmark = pytest.mark.timeout(60)

ANSI = re.compile(r"\x1b\[[0-9]*[A-Za-z]")


@pytest.mark.parametrize(
    "key, prefix",
    [
        ("inc-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d", "inc"),
        ("x", "x"),
        ("x-1", "x"),
        ("x-1-2-3", "x"),
        (("x-2", 1), "x"),
        (("x-1a2b3c4d", 0), "x"),
        ("('x-2', 1)", "x"),
        ("('x', 1)", "x"),
        ("hello-world-1", "hello-world"),
        (b"hello-world-1", "hello-world"),
        ("ae05086432ca935f6eba409a8ecd4896", "data"),
        ("<module.submodule.myclass object at 0xdaf372", "myclass"),
        ("x-abcdefab", "x"),
        ("_(x)", "x"),
        (f"f-{uuid.uuid4()}", "f"),
        ("lambda-9f86d081884c7d659a2feaa0c55ad015", "lambda"),
        ("sum-aggregate-9f86d081884c7d659a2feaa0c55ad015", "sum-aggregate"),
        (None, "Other"),
        ((), "Other"),
        ("", "Other"),
    ],
)
def test_key_split(key, prefix):
    assert key_split(key) == prefix


KEY_WORDS = st.sampled_from(
    [
        "inc",
        "add",
        "x",
        "sum",
        "aggregate",
        "abcdefab",
        "1",
        "2a",
        "_(y)",
        "('z'",
        "0)",
        "ae05086432ca935f6eba409a8ecd4896",
        "<a.b c",
    ]
)


@settings(deadline=None)  # no speed goal per example (a loaded machine misses 200 ms)
@given(st.lists(KEY_WORDS, min_size=1, max_size=4).map("-".join), st.booleans())
def test_key_split_agrees_with_dask(key, as_tuple):
    key = (key, 0) if as_tuple else key
    assert key_split(key) == dask_key_split(key)


class StandIn:
    """The public face of a future (key, status, done) for the pure helpers; no engine involved."""

    def __init__(self, key, status="pending"):
        self.key = key
        self.status = status

    def done(self):
        return self.status in ("finished", "error", "cancelled")


class PersistedCollection:
    """What a collection persisted on a client looks like: a graph whose values are futures."""

    def __init__(self, graph):
        self.graph = graph

    def __dask_graph__(self):
        return self.graph


def test_futures_of_walks_containers_in_order_and_deduplicates_by_key():
    a, b, c, d, e = (StandIn(f"f-{i}") for i in range(5))
    again = StandIn("f-0")  # another handle on the same key
    found = futures_of([a, (b, {"x": c, "y": [d]}), {e}, again, 3, "text", None, a])
    assert found == [a, b, c, d, e]


def test_futures_of_finds_futures_in_persisted_collections():
    f1, f2, f3 = StandIn(("x-1", 0)), StandIn(("x-1", 1)), StandIn("y-2")
    collection = PersistedCollection({("x-1", 0): f1, ("x-1", 1): f2})
    assert futures_of(collection) == [f1, f2]
    assert futures_of([f3, collection]) == [f3, f1, f2]
    assert futures_of(PersistedCollection({})) == []


def test_futures_of_real_dask_collection_without_futures_is_empty():
    import dask

    assert futures_of(dask.delayed(sum)([1, 2])) == []
    assert futures_of([]) == [] and futures_of(StandIn) == []  # a class is not a future


def test_render_bar():
    assert (
        render_bar("inc", _Tally(total=10, done=5), width=20)
        == "inc [##########          ]  50% 5/10"
    )
    line = render_bar("x", _Tally(total=4, done=4, erred=1, cancelled=2), width=8, name_width=5)
    assert line == "x     [########] 100% 4/4 (1 erred, 2 cancelled)"
    assert render_bar("", _Tally(total=0), width=4) == "[####] 100% 0/0"


def test_render_bars_has_one_line_per_prefix_and_a_total():
    tallies = {"inc": _Tally(total=10, done=10), "sum-aggregate": _Tally(total=2, done=0)}
    lines = render_bars(tallies, elapsed=1.25, width=10)
    assert lines == [
        "inc           [##########] 100% 10/10",
        "sum-aggregate [          ]   0% 0/2",
        "Running 10/12 tasks | 1.2s",
    ]
    tallies["sum-aggregate"].done = 2
    tallies["sum-aggregate"].erred = 1
    assert render_bars(tallies, 75, 10)[-1] == "Completed 12/12 tasks (1 erred) | 1m15s"


def test_render_text_line_and_summary():
    tallies = {"inc": _Tally(total=3, done=1), "add": _Tally(total=1, done=1, erred=1)}
    assert render_text_line(tallies, 2.0) == "[minidist]  50% | 2/4 tasks done (1 erred) | 2.0s"
    assert render_text_summary(tallies) == ["  inc 1/3", "  add 1/1 (1 erred)"]


def test_terminal_display_redraws_in_place():
    out = io.StringIO()
    display = TerminalDisplay(out, complete=True, width=60)
    tallies = {"inc": _Tally(total=4), "add": _Tally(total=2)}
    display.update(tallies, 0.0)
    tallies["inc"].done = 4
    display.update(tallies, 0.5)
    tallies["add"].done = 2
    display.finish(tallies, 1.0)
    text = out.getvalue()
    assert (
        text.count("\x1b[3F") == 2
    )  # moved back over the 3 lines (2 bars + total) before each redraw
    final = ANSI.sub("", text.rsplit("\x1b[3F", 1)[1]).splitlines()
    assert final[0].startswith("inc [") and final[0].endswith("100% 4/4")
    assert final[2] == "Completed 6/6 tasks | 1.0s"


def test_terminal_display_without_complete_erases_the_bars():
    out = io.StringIO()
    display = TerminalDisplay(out, complete=False, width=60)
    tallies = {"inc": _Tally(total=1)}
    display.update(tallies, 0.0)
    tallies["inc"].done = 1
    display.finish(tallies, 0.1)
    assert out.getvalue().endswith("\x1b[2F\x1b[J")


@pytest.mark.parametrize("complete", [True, False])
def test_text_display_prints_a_few_lines_not_one_per_tick(complete):
    out = io.StringIO()
    display = TextDisplay(out, complete=complete)
    tallies = {"inc": _Tally(total=1000), "add": _Tally(total=1000)}
    for done in range(0, 1000, 5):  # 200 ticks
        tallies["inc"].done = tallies["add"].done = done
        display.update(tallies, done / 100)
    tallies["inc"].done = tallies["add"].done = 1000
    display.finish(tallies, 10.0)
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
    percents = [int(m) for m in re.findall(r"\[minidist\]\s+(\d+)%", out.getvalue())]
    assert percents == [0, 25, 50, 75, 100]
    assert lines[-1 if not complete else -3].endswith("2000/2000 tasks done | 10.0s")
    assert lines[-2:] == (["  inc 1000/1000", "  add 1000/1000"] if complete else lines[-2:])
    assert len(lines) == (7 if complete else 5)


def test_progress_and_the_scheduler_share_one_key_split():
    from minidist import keys

    assert key_split is keys.key_split  # the bars and the dashboard's prefixes cannot disagree


# ---- end to end, on real clients ------------------------------------------------------------------


def slow_inc(x):
    time.sleep(0.005)
    return x + 1


def broken(x):
    raise ValueError(x)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def run_progress(client, monkeypatch, stream) -> tuple[list, list, str]:
    """Submit two prefixes (one erring) and run progress() until it returns; (futures, failures, output)."""
    monkeypatch.setattr(sys, "stdout", stream)
    futures = client.map(slow_inc, range(60))
    failures = client.map(broken, range(2))
    started = time.monotonic()
    progress(futures, [failures], interval="20ms")
    assert time.monotonic() - started < 30
    return futures, failures, stream.getvalue()


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_progress_on_a_real_client_prints_plain_lines_and_returns_when_all_are_done(
    processes, monkeypatch
):
    with Client(
        processes=processes, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        futures, failures, text = run_progress(client, monkeypatch, io.StringIO())
        assert all(f.done() for f in futures + failures)
        assert [f.status for f in failures] == ["error", "error"]
        assert client.gather(futures) == list(range(1, 61))
    lines = text.splitlines()
    assert "\x1b" not in text and 2 <= len(lines) <= 8  # a few lines, not one per tick
    assert lines[-3].startswith("[minidist] 100% | 62/62 tasks done (2 erred) | ")
    assert lines[-2:] == ["  slow_inc 60/60", "  broken   2/2 (2 erred)"]


def test_progress_on_a_real_client_draws_terminal_bars_per_prefix(monkeypatch):
    with Client(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as client:
        _, _, text = run_progress(client, monkeypatch, FakeTerminal())
    final = ANSI.sub("", text.rsplit("\x1b[3F", 1)[-1]).splitlines()
    assert final[0].startswith("slow_inc [") and final[0].endswith("100% 60/60")
    assert final[1].startswith("broken   [") and final[1].endswith("100% 2/2 (2 erred)")
    assert final[2].startswith("Completed 62/62 tasks (2 erred) | ")


def test_progress_with_multi_false_draws_one_bar(monkeypatch):
    with Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        monkeypatch.setattr(sys, "stdout", FakeTerminal())
        futures = client.map(slow_inc, range(10))
        progress(futures, multi=False, interval="20ms")
        text = sys.stdout.getvalue()
    final = ANSI.sub("", text).splitlines()[-2:]
    assert final[0].startswith("[") and final[0].endswith("100% 10/10")
    assert final[1].startswith("Completed 10/10 tasks")


def test_progress_groups_by_a_callable_and_refuses_spans(monkeypatch):
    with Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        monkeypatch.setattr(sys, "stdout", FakeTerminal())
        futures = client.map(slow_inc, range(6), key=[f"item-{i}" for i in range(6)])
        progress(
            futures, group_by=lambda key: "odd" if int(key[-1]) % 2 else "even", interval="20ms"
        )
        text = sys.stdout.getvalue()
        with pytest.raises(ValueError, match="'prefix' or a callable"):
            progress(futures, group_by="spans")
    final = ANSI.sub("", text).splitlines()[-3:]
    assert [line.split(" [")[0].strip() for line in final[:2]] == ["even", "odd"]
    assert final[0].endswith("100% 3/3") and final[1].endswith("100% 3/3")
