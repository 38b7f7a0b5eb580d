"""One self-contained HTML page from task-stream records: ``performance_report`` and
``get_task_stream(plot="save")``.

No scripts, no stylesheets or fonts from elsewhere: inline CSS and SVG only, so the file opens offline
and can be mailed around. Sections::

    summary       time span, tasks, errors, workers, compute and transfer seconds
    task stream   one SVG row per (worker, thread); a bar per task coloured by prefix, transfers in
                  red; hover for key and duration (at most _MAX_BARS bars are drawn)
    per prefix    count, errors, total/mean/max compute time, with a bar of the share of the total
    workers       per worker, how many of its threads were busy over time (an SVG area chart)
"""

from __future__ import annotations

import hashlib
import html
import time
from typing import Optional

_MAX_BARS = 20_000
_WIDTH = 1000
_ROW = 14
_BINS = 120


def _colour(prefix: str) -> str:
    hue = int(hashlib.blake2b(prefix.encode(), digest_size=2).hexdigest(), 16) % 360
    return f"hsl({hue},60%,55%)"


def _compute(record) -> tuple:
    for interval in record["startstops"]:
        if interval["action"] == "compute":
            return interval["start"], interval["stop"]
    return record["start"], record["stop"]


def _summary(records: list, workers: dict, start: float, stop: float) -> str:
    compute = sum(b - a for a, b in map(_compute, records))
    transfer = sum(
        s["stop"] - s["start"]
        for r in records
        for s in r["startstops"]
        if s["action"] == "transfer"
    )
    errors = sum(1 for r in records if r["status"] != "OK")
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))
    rows = [
        ("started", when),
        ("duration", f"{stop - start:.3f} s"),
        ("tasks", f"{len(records):,}"),
        ("errors", f"{errors:,}"),
        ("workers (at the end)", f"{len(workers)} ({threads} threads)"),
        ("compute time", f"{compute:.3f} s"),
        ("transfer time", f"{transfer:.3f} s"),
    ]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='summary'>{cells}</table>"


def _task_stream(records: list, start: float, stop: float) -> str:
    if not records:
        return "<p>No task ran in this period.</p>"
    span = max(stop - start, 1e-9)
    lanes = sorted(
        {(str(r["worker"]), r["thread"]) for r in records}, key=lambda p: (p[0], str(p[1]))
    )
    rows = {lane: number for number, lane in enumerate(lanes)}
    drawn = records if len(records) <= _MAX_BARS else records[-_MAX_BARS:]
    height = len(rows) * _ROW + 20

    def x(t: float) -> float:
        return round((t - start) / span * _WIDTH, 2)

    parts = []
    for row, (worker, _) in enumerate(lanes):
        if row == 0 or lanes[row - 1][0] != worker:  # name each worker once, on its first thread
            parts.append(
                f"<text x='2' y='{row * _ROW + 10}' class='lane'>{html.escape(worker)}</text>"
            )
    for r in drawn:
        y = rows[(str(r["worker"]), r["thread"])] * _ROW
        for interval in r["startstops"]:
            transfer = interval["action"] == "transfer"
            fill = "#d62728" if transfer else _colour(r["prefix"])
            if r["status"] != "OK" and not transfer:
                fill = "#000"
            left, right = x(interval["start"]), x(interval["stop"])
            label = (
                f"{r['key']} ({r['prefix']}) {interval['action']} "
                f"{(interval['stop'] - interval['start']) * 1000:.2f} ms on {r['worker']}"
            )
            parts.append(
                f"<rect x='{left}' y='{y + 1}' width='{max(right - left, 0.5)}' height='{_ROW - 2}'"
                f" fill='{fill}'><title>{html.escape(label)}</title></rect>"
            )
    note = (
        f"<p class='note'>{len(records) - len(drawn):,} earlier tasks are not drawn.</p>"
        if len(drawn) < len(records)
        else ""
    )
    axis = f"<p class='note'>0 s to {span:.3f} s; a row per worker thread; red: transfers</p>"
    return (
        f"<svg viewBox='0 0 {_WIDTH} {height}' width='100%' class='stream'>{''.join(parts)}</svg>"
        + axis
        + note
    )


def _prefixes(records: list) -> str:
    stats: dict = {}
    for r in records:
        a, b = _compute(r)
        entry = stats.setdefault(r["prefix"], [0, 0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += r["status"] != "OK"
        entry[2] += b - a
        entry[3] = max(entry[3], b - a)
    total = sum(e[2] for e in stats.values()) or 1e-9
    rows = []
    for prefix, (count, errors, seconds, longest) in sorted(
        stats.items(), key=lambda item: -item[1][2]
    ):
        share = seconds / total * 100
        rows.append(
            f"<tr><td><span class='swatch' style='background:{_colour(prefix)}'></span>"
            f"{html.escape(prefix)}</td><td>{count:,}</td><td>{errors:,}</td>"
            f"<td>{seconds:.3f}</td><td>{seconds / count * 1000:.2f}</td><td>{longest * 1000:.2f}</td>"
            f"<td><div class='bar' style='width:{share:.1f}%'></div></td></tr>"
        )
    head = (
        "<tr><th>prefix</th><th>tasks</th><th>errors</th><th>total s</th><th>mean ms</th>"
        "<th>max ms</th><th>share of compute</th></tr>"
    )
    return f"<table class='prefixes'>{head}{''.join(rows)}</table>"


def _workers(records: list, workers: dict, start: float, stop: float) -> str:
    span = max(stop - start, 1e-9)
    width = span / _BINS
    busy: dict = {}
    for r in records:
        a, b = _compute(r)
        bins = busy.setdefault(str(r["worker"]), [0.0] * _BINS)
        first, last = int((a - start) / width), int((b - start) / width)
        for i in range(max(first, 0), min(last, _BINS - 1) + 1):
            low, high = start + i * width, start + (i + 1) * width
            bins[i] += max(0.0, min(b, high) - max(a, low)) / width
    charts = []
    for worker in sorted(set(busy) | set(workers)):
        bins = busy.get(worker, [0.0] * _BINS)
        threads = int(workers.get(worker, {}).get("nthreads", 0)) or max(1, round(max(bins)))
        step = _WIDTH / _BINS
        points = " ".join(
            f"{round(i * step, 1)},{round(40 - 38 * min(v / threads, 1.0), 1)} "
            f"{round((i + 1) * step, 1)},{round(40 - 38 * min(v / threads, 1.0), 1)}"
            for i, v in enumerate(bins)
        )
        used = sum(bins) / (_BINS * threads) * 100
        charts.append(
            f"<h3>{html.escape(worker)} <small>{threads} threads, {used:.0f}% busy</small></h3>"
            f"<svg viewBox='0 0 {_WIDTH} 40' width='100%' class='timeline'>"
            f"<polygon points='0,40 {points} {_WIDTH},40' fill='#4c78a8'/></svg>"
        )
    return "".join(charts) or "<p>No workers.</p>"


_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}
.summary th{color:#555;font-weight:normal}.note{color:#666;font-size:90%}
.stream{border:1px solid #ccc;background:#fafafa}.lane{font-size:9px;fill:#444}
.timeline{border:1px solid #ccc;background:#fafafa;height:40px}
.bar{background:#4c78a8;height:10px;min-width:1px}.prefixes td:last-child{width:30%}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}
h3{font-size:100%;margin:1em 0 .2em}h3 small{color:#666;font-weight:normal}
"""


def render_report(
    records: list,
    workers: dict,
    title: str,
    start: Optional[float] = None,
    stop: Optional[float] = None,
) -> str:
    """The whole page for ``records`` (dask-shaped task-stream dicts) and ``{address: info}``."""
    if start is None:
        start = min((r["start"] for r in records), default=time.time())
    if stop is None:
        stop = max((r["stop"] for r in records), default=start)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<h2>Summary</h2>{_summary(records, workers, start, stop)}"
        f"<h2>Task stream</h2>{_task_stream(records, start, stop)}"
        f"<h2>Per task prefix</h2>{_prefixes(records)}"
        f"<h2>Worker timeline</h2>{_workers(records, workers, start, stop)}"
        "</body></html>"
    )
