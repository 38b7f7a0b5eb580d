"""Progress bars for futures: ``minidist.progress(...)``, as ``dask.distributed.progress``.

::

    progress(x, [y, z], persisted_array)
        └─ futures_of(...)  ─► Future objects (deduplicated by key), grouped by key_split(key)
        └─ every `interval`: look at the futures still pending (.done(), .status) ─► _Tally per group
        └─ a display draws the tallies:
              terminal (stdout is a tty): bars redrawn in place, one per task prefix (multi=True)
              Jupyter with ipywidgets: a live widget, updated by a thread "minidist-progress"; progress()
                  returns at once, as dask's does
              anything else (a file, a pipe, a notebook without ipywidgets): a few plain lines, at each
                  quarter and at the end
        └─ returns (or the thread ends) when every future is done (finished, erred or cancelled)

ipywidgets is imported only when a notebook asks for a bar. Only the public Future API is used (``.key``, ``.status``, ``.done()``), so this module needs nothing from
the engine but ``keys.key_split``, the one prefix rule that the scheduler and the dashboard also use.
It writes to ``sys.stdout`` (or displays the widget): the user asked for the output.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from html import escape

from minidist.keys import key_split
from minidist.utils import parse_timedelta

__all__ = ["progress", "futures_of", "key_split"]


def _is_future(obj) -> bool:
    # Duck-typed on the public API so this module does not import the engine. ``done`` is looked up on
    # the class: dask's Delayed answers every attribute on its instances (``d.done`` is a new Delayed).
    return (
        not isinstance(obj, type)
        and callable(getattr(type(obj), "done", None))
        and hasattr(obj, "key")
        and hasattr(obj, "status")
    )


def _is_dask_collection(obj) -> bool:
    return not isinstance(obj, type) and callable(getattr(obj, "__dask_graph__", None))


def futures_of(obj) -> list:
    """The futures in ``obj``: nested lists/tuples/sets/dicts, and dask collections persisted on a client
    (whose graph values are futures). Order of first appearance; one future per key."""
    found: list = []
    keys: set = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if _is_future(item):
            if item.key not in keys:
                keys.add(item.key)
                found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif isinstance(item, (set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif _is_dask_collection(item):
            graph = item.__dask_graph__()
            if graph:
                stack.extend(reversed(list(graph.values())))
    return found


@dataclass
class _Tally:
    """How many futures of one group are done, and how many of those erred or were cancelled."""

    total: int = 0
    done: int = 0
    erred: int = 0
    cancelled: int = 0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def _tally_total(tallies: dict[str, _Tally]) -> _Tally:
    total = _Tally()
    for t in tallies.values():
        total.total += t.total
        total.done += t.done
        total.erred += t.erred
        total.cancelled += t.cancelled
    return total


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _problems(tally: _Tally) -> str:
    parts = [f"{tally.erred} erred"] * bool(tally.erred)
    parts += [f"{tally.cancelled} cancelled"] * bool(tally.cancelled)
    return f" ({', '.join(parts)})" if parts else ""


def render_bar(name: str, tally: _Tally, width: int = 40, name_width: int = 0) -> str:
    """One bar: ``"inc  [##########          ]  50% 5/10 (1 erred)"``."""
    filled = int(round(width * tally.fraction))
    label = f"{name:<{name_width}} " if name_width else (f"{name} " if name else "")
    return (
        f"{label}[{'#' * filled}{' ' * (width - filled)}] {int(tally.fraction * 100):3d}% "
        f"{tally.done}/{tally.total}{_problems(tally)}"
    )


def render_bars(tallies: dict[str, _Tally], elapsed: float, width: int = 40) -> list[str]:
    """The terminal picture: one bar per group, then a line with the total and the elapsed time."""
    name_width = max((len(name) for name in tallies), default=0)
    lines = [render_bar(name, t, width, name_width) for name, t in tallies.items()]
    total = _tally_total(tallies)
    status = "Completed" if total.done == total.total else "Running"
    lines.append(
        f"{status} {total.done}/{total.total} tasks{_problems(total)} | {format_seconds(elapsed)}"
    )
    return lines


def render_text_line(tallies: dict[str, _Tally], elapsed: float) -> str:
    """One plain progress line for non-terminal output."""
    total = _tally_total(tallies)
    return (
        f"[minidist] {int(total.fraction * 100):3d}% | {total.done}/{total.total} tasks done"
        f"{_problems(total)} | {format_seconds(elapsed)}"
    )


def render_text_summary(tallies: dict[str, _Tally]) -> list[str]:
    """Per-group lines printed once at the end of plain-text output."""
    name_width = max((len(name) for name in tallies), default=0)
    return [
        f"  {name:<{name_width}} {t.done}/{t.total}{_problems(t)}" for name, t in tallies.items()
    ]


class TerminalDisplay:
    """Redraws the bars in place with ANSI cursor movement (the line count never changes)."""

    def __init__(self, stream, complete: bool = True, width: int | None = None):
        self.stream = stream
        self.complete = complete
        self.width = width
        self.drawn = 0  # lines currently on screen

    def _bar_width(self, tallies) -> int:
        columns = self.width or shutil.get_terminal_size((80, 24)).columns
        name_width = max((len(name) for name in tallies), default=0)
        return max(10, min(40, columns - name_width - 30))

    def update(self, tallies: dict[str, _Tally], elapsed: float) -> None:
        lines = render_bars(tallies, elapsed, self._bar_width(tallies))
        self._rewind()
        self.stream.write("".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self.drawn = len(lines)

    def _rewind(self):
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F")  # to the start of the first line drawn

    def finish(self, tallies: dict[str, _Tally], elapsed: float) -> None:
        if self.complete:
            self.update(tallies, elapsed)
        else:  # leave no trace
            self._rewind()
            self.stream.write("\x1b[J")
            self.stream.flush()
            self.drawn = 0


class TextDisplay:
    """Prints a line when the work starts, at each quarter done, and at the end (a few lines in all)."""

    STEPS = 4

    def __init__(self, stream, complete: bool = True):
        self.stream = stream
        self.complete = complete
        self.step = -1  # the last quarter reported

    def update(self, tallies: dict[str, _Tally], elapsed: float) -> None:
        total = _tally_total(tallies)
        step = int(total.fraction * self.STEPS) if total.done < total.total else self.STEPS
        if step > self.step and step < self.STEPS:
            self.step = step
            self.stream.write(render_text_line(tallies, elapsed) + "\n")
            self.stream.flush()

    def finish(self, tallies: dict[str, _Tally], elapsed: float) -> None:
        lines = [render_text_line(tallies, elapsed)]
        if self.complete and len(tallies) > 1:
            lines += render_text_summary(tallies)
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()


class WidgetDisplay:
    """Jupyter: a title line, then one ipywidgets bar per group (name, bar, "done/total")."""

    def __init__(self, tallies: dict[str, _Tally], complete: bool = True):
        import ipywidgets  # only here: an optional extra, and slow to import

        self.complete = complete
        self.title = ipywidgets.HTML(value="<b>Starting</b>")
        self.bars: dict = {}
        rows = []
        for name, tally in tallies.items():
            bar = ipywidgets.IntProgress(
                value=0, min=0, max=max(tally.total, 1), layout=ipywidgets.Layout(width="50%")
            )
            label = ipywidgets.HTML(value=f"0 / {tally.total}")
            caption = ipywidgets.HTML(
                value=f"<code>{escape(name or 'tasks')}</code>",
                layout=ipywidgets.Layout(width="14em"),
            )
            self.bars[name] = (bar, label)
            rows.append(ipywidgets.HBox([caption, bar, label]))
        self.widget = ipywidgets.VBox([self.title, *rows])

    def update(self, tallies: dict[str, _Tally], elapsed: float) -> None:
        for name, tally in tallies.items():
            bar, label = self.bars[name]
            bar.value = tally.done
            label.value = escape(f"{tally.done} / {tally.total}{_problems(tally)}")
            if tally.erred or tally.cancelled:
                bar.bar_style = "danger"
        total = _tally_total(tallies)
        status = "Completed" if total.done == total.total else "Running"
        text = f"{status} {total.done}/{total.total} tasks{_problems(total)} | {format_seconds(elapsed)}"
        self.title.value = f"<b>{escape(text)}</b>"

    def finish(self, tallies: dict[str, _Tally], elapsed: float) -> None:
        self.update(tallies, elapsed)
        for name, tally in tallies.items():
            bar, _ = self.bars[name]
            bar.bar_style = "danger" if tally.erred or tally.cancelled else "success"
        if not self.complete:
            self.widget.close()


def _widget_display(tallies: dict[str, _Tally], complete: bool):
    """A WidgetDisplay shown in the notebook, or None when ipywidgets is not installed."""
    try:
        display = WidgetDisplay(tallies, complete)
        from IPython.display import display as show
    except ImportError:
        return None
    show(display.widget)
    return display


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    shell = (
        ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    )
    return shell is not None and "ZMQ" in type(shell).__name__


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    *futures, notebook=None, multi=True, complete=True, group_by="prefix", interval="100ms"
) -> None:
    """Show the progress of futures (or persisted collections) until all are done.

    In a terminal it draws live bars, one per task prefix with ``multi=True`` (one for all otherwise),
    and blocks like dask's terminal bar. In Jupyter (or with ``notebook=True``) with ipywidgets installed
    it shows a live widget and returns at once, as dask's widget does; without ipywidgets, and anywhere
    else, it prints a few plain lines. ``complete=False`` erases the bars at the end (terminal, widget) or
    skips the per-prefix summary (text). A future that errs counts as done. ``group_by``: ``"prefix"``
    (a bar per task prefix, as dask's default) or a callable from a key to its bar's name.
    """
    if group_by == "prefix":
        group_of = key_split
    elif callable(group_by):
        group_of = group_by
    else:
        raise ValueError(
            f"progress(group_by={group_by!r}): use 'prefix' or a callable taking a key "
            "(minidist has no spans, dask's other grouping)"
        )
    found = futures_of(futures)
    if not found:
        return
    seconds = parse_timedelta(interval)
    if notebook is None:
        notebook = _in_notebook()
    groups: dict[str, _Tally] = {}
    pending = []
    for future in found:
        name = str(group_of(future.key)) if multi else ""
        groups.setdefault(name, _Tally()).total += 1
        pending.append((future, groups[name]))
    if notebook:
        widget = _widget_display(groups, complete)
        if widget is not None:
            threading.Thread(
                target=_follow,
                args=(pending, groups, widget, seconds),
                name="minidist-progress",
                daemon=True,
            ).start()
            return
    stream = sys.stdout
    if _isatty(stream) and not notebook:
        display: TerminalDisplay | TextDisplay = TerminalDisplay(stream, complete)
    else:
        display = TextDisplay(stream, complete)
    try:
        _follow(pending, groups, display, seconds)
    except KeyboardInterrupt:
        stream.write("\n")  # do not leave the cursor inside a bar
        raise


def _follow(pending: list, groups: dict[str, _Tally], display, seconds: float) -> None:
    """Count futures as they finish and redraw every ``seconds`` until none is pending."""
    started = time.monotonic()
    while True:
        still = []
        for future, tally in pending:  # a done future stays done: count it once, then forget it
            if future.done():
                tally.done += 1
                status = future.status
                tally.erred += status == "error"
                tally.cancelled += status == "cancelled"
            else:
                still.append((future, tally))
        pending = still
        elapsed = time.monotonic() - started
        if not pending:
            display.finish(groups, elapsed)
            return
        display.update(groups, elapsed)
        time.sleep(seconds)
