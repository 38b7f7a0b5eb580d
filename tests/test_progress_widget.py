"""progress() in Jupyter: a live ipywidgets widget when ipywidgets is installed, plain text otherwise."""

from __future__ import annotations

import sys
import threading

import pytest

from conftest import wait_until
from minidist import Client, progress

ipywidgets = pytest.importorskip("ipywidgets", reason="ipywidgets is a test extra")

pytestmark = pytest.mark.timeout(60)

gate = threading.Event()


def held(x):
    gate.wait(30)
    return x


def fails(x):
    gate.wait(30)
    raise ValueError("no")


@pytest.fixture
def shown(monkeypatch):
    """What progress() hands to the notebook's display (the Jupyter front end is not here)."""
    import IPython.display

    displayed: list = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: displayed.append(obj))
    return displayed


def bars(widget) -> dict:
    """{group name: (value, max, style, label)} read from the widget's rows."""
    rows = {}
    for row in widget.children[1:]:
        caption, bar, label = row.children
        name = caption.value.removeprefix("<code>").removesuffix("</code>")
        rows[name] = (bar.value, bar.max, bar.bar_style, label.value)
    return rows


def test_progress_in_a_notebook_is_a_live_widget_and_does_not_block(shown):
    gate.clear()
    with Client(processes=False, n_workers=1, threads_per_worker=4, dashboard_address=None) as c:
        futures = c.map(held, range(6))
        progress(futures, notebook=True, interval="20ms")  # returns while every task still waits
        assert not any(f.done() for f in futures)
        [widget] = shown
        assert isinstance(widget, ipywidgets.VBox)
        assert bars(widget) == {"held": (0, 6, "", "0 / 6")}
        gate.set()
        assert wait_until(lambda: bars(widget)["held"][2] == "success")
        assert bars(widget)["held"][:2] == (6, 6)
        assert "Completed 6/6 tasks" in widget.children[0].value
        assert wait_until(
            lambda: not [t for t in threading.enumerate() if t.name == "minidist-progress"]
        )


def test_the_widget_marks_groups_with_errors(shown):
    gate.clear()
    with Client(processes=False, n_workers=1, threads_per_worker=4, dashboard_address=None) as c:
        futures = c.map(held, range(3)) + c.map(fails, range(2))
        progress(futures, notebook=True, interval="20ms")
        [widget] = shown
        gate.set()
        assert wait_until(lambda: bars(widget)["held"][2] == "success")
        assert wait_until(lambda: bars(widget)["fails"][2] == "danger")
        assert bars(widget)["fails"][3] == "2 / 2 (2 erred)"
        assert "(2 erred)" in widget.children[0].value


def test_without_ipywidgets_a_notebook_gets_text(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # as if it were not installed
    gate.set()
    with Client(processes=False, n_workers=1, dashboard_address=None) as c:
        futures = c.map(held, range(4))
        progress(futures, notebook=True, interval="20ms")  # blocks until done, as text
        assert all(f.done() for f in futures)
    out = capsys.readouterr().out
    assert "[minidist] 100% | 4/4 tasks done" in out
