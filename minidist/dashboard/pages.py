"""Server-rendered dashboard pages: /info, /logs/<component>, error and redirect pages.

The live pages (/status, /worker/<w>) are static HTML + JavaScript that poll JSON; these ones are rendered
once per request from a snapshot dict (see ``server.py`` for its shape) and the ``get_logs()`` dict. All
text from the engine goes through ``escape``: a task key or log line can never break or script the page.
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote

from minidist import utils


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def script_json(value) -> str:
    """JSON safe to embed inside a <script> element (no ``</script>`` or ``<!--`` can close it)."""
    text = json.dumps(value, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def worker_path(prefix: str, ident) -> str:
    """The URL path of a worker's page (addresses contain ``/`` and ``:``, so quote everything)."""
    return f"{prefix}/worker/{quote(str(ident), safe='')}"


def logs_path(prefix: str, component) -> str:
    return f"{prefix}/logs/{quote(str(component), safe='')}"


def format_bytes(n) -> str:
    return "–" if n is None else utils.format_bytes(n)


def nav_links(prefix: str, worker: str | None = None, home: str | None = None) -> str:
    """The links of the top bar: the cluster's pages, or on a worker's own server its pages and home."""
    p = escape(prefix)
    if worker is None:
        return (
            f'<a href="{p}/status">Status</a><a href="{p}/info">Info</a>'
            f'<a href="{p}/json/status.json">JSON</a>'
        )
    links = f'<a href="{p}/status">Worker</a><a href="{p}/info">Info</a>'
    if home:
        links += f'<a href="{escape(home)}" class="home">Cluster dashboard</a>'
    return links


def _layout(prefix: str, name: str, title: str, body: str, nav: str | None = None) -> bytes:
    p = escape(prefix)
    nav = nav_links(prefix) if nav is None else nav
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · {escape(name)}</title>
<link rel="icon" href="{p}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{p}/static/dashboard.css">
</head><body>
<nav class="top"><span class="brand">{escape(name)}</span>
{nav}</nav>
<main>
{body}
</main></body></html>
""".encode()


def error_page(
    prefix: str, name: str, code: int, phrase: str, message: str, nav: str | None = None
) -> bytes:
    body = (
        f'<h1>{code} {escape(phrase)}</h1>\n<p class="error">{escape(message)}</p>\n'
        f'<p><a href="{escape(prefix)}/status">Back to the status page</a></p>'
    )
    return _layout(prefix, name, f"{code} {phrase}", body, nav)


def redirect_page(location: str) -> bytes:
    loc = escape(location)
    return f'<!DOCTYPE html><html><body><a href="{loc}">{loc}</a></body></html>'.encode()


def _worker_rows(prefix: str, workers: list) -> str:
    rows = []
    for w in workers:
        address, name = w.get("address", ""), w.get("name", "")
        own = w.get("dashboard")
        own_link = f' <a href="{escape(own)}">(own dashboard)</a>' if own else ""
        memory = format_bytes(w.get("memory"))
        limit = format_bytes(w.get("memory_limit")) if w.get("memory_limit") else "no limit"
        rows.append(
            "<tr>"
            f'<td><a href="{escape(worker_path(prefix, address))}">{escape(name)}</a>{own_link}</td>'
            f"<td><code>{escape(address)}</code></td>"
            f"<td>{escape(w.get('status', ''))}</td>"
            f"<td class=num>{escape(w.get('nthreads', ''))}</td>"
            f"<td class=num>{escape(w.get('processing', ''))}</td>"
            f"<td class=num>{escape(w.get('in_memory', ''))}</td>"
            f"<td class=num>{memory} / {limit}</td>"
            f"<td class=num>{escape(w.get('pid') if w.get('pid') is not None else '–')}</td>"
            f'<td><a href="{escape(logs_path(prefix, address))}">logs</a></td>'
            "</tr>"
        )
    if not rows:
        rows.append('<tr><td colspan=9 class="muted">no workers</td></tr>')
    return "\n".join(rows)


def info_page(prefix: str, name: str, snap: dict, logs, nav: str | None = None) -> bytes:
    """Cluster facts, the worker table and links to every component's logs.

    ``logs`` is the ``get_logs()`` dict, or the exception that ``logs()`` raised (shown in red).
    """
    cluster = snap.get("cluster", {})
    facts = [
        ("Name", cluster.get("name", "")),
        ("Scheduler", cluster.get("scheduler_address", "")),
        ("Status", cluster.get("status", "")),
        ("Workers", cluster.get("n_workers", "")),
        ("Threads", cluster.get("threads", "")),
        (
            "Memory limit",
            format_bytes(cluster.get("memory_limit"))
            if cluster.get("memory_limit")
            else "no limit",
        ),
    ]
    fact_html = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts)
    if isinstance(logs, BaseException):
        logs_html = (
            f'<p class="error">Could not read the logs: {escape(type(logs).__name__)}: '
            f"{escape(logs)}</p>"
        )
    elif not logs:
        logs_html = '<p class="muted">no log components</p>'
    else:
        items = "".join(
            f'<li><a href="{escape(logs_path(prefix, c))}">{escape(c)}</a> '
            f'<span class="muted">({len(str(text).splitlines())} lines)</span></li>'
            for c, text in logs.items()
        )
        logs_html = f"<ul>{items}</ul>"
    body = f"""<h1>Cluster</h1>
<table class="facts">{fact_html}</table>
<h2>Workers</h2>
<table class="grid"><thead><tr><th>Name</th><th>Address</th><th>Status</th><th>Threads</th>
<th>Processing</th><th>In memory</th><th>Memory</th><th>PID</th><th>Logs</th></tr></thead>
<tbody>{_worker_rows(prefix, snap.get("workers", []))}</tbody></table>
<h2>Logs</h2>
{logs_html}"""
    return _layout(prefix, name, "Info", body, nav)


def logs_page(prefix: str, name: str, component: str, text: str, nav: str | None = None) -> bytes:
    content = escape(text) if text else '<span class="muted">(no log records yet)</span>'
    body = (
        f"<h1>Logs: {escape(component)}</h1>\n"
        f'<p><a href="{escape(prefix)}/info">All components</a></p>\n'
        f'<pre class="logs">{content}</pre>'
    )
    return _layout(prefix, name, f"Logs {component}", body, nav)


def repr_html(title: str, snap: dict, dashboard_link: str | None = None) -> str:
    """A small HTML summary for ``Client._repr_html_`` / ``LocalCluster._repr_html_`` in notebooks.

    Self-contained (inline styles only, notebooks strip <style> blocks in some viewers); ``snap`` is a
    snapshot dict as served by /json/status.json (only "cluster" and "workers" are read).
    """
    cluster = snap.get("cluster", {})
    workers = snap.get("workers", [])
    memory = sum(w.get("memory") or 0 for w in workers)
    limit = cluster.get("memory_limit")
    facts = [
        ("Scheduler", cluster.get("scheduler_address", "")),
        ("Status", cluster.get("status", "")),
        ("Workers", cluster.get("n_workers", len(workers))),
        ("Threads", cluster.get("threads", sum(w.get("nthreads") or 0 for w in workers))),
        ("Memory", f"{format_bytes(memory)} / {format_bytes(limit) if limit else 'no limit'}"),
    ]
    if dashboard_link:
        link = escape(dashboard_link)
        facts.append(("Dashboard", f'<a href="{link}" target="_blank">{link}</a>'))
    cell = 'style="text-align:left;padding:2px 12px 2px 0"'
    rows = "".join(
        f"<tr><th {cell}>{escape(k)}</th><td {cell}>{v if k == 'Dashboard' else escape(v)}</td></tr>"
        for k, v in facts
    )
    return (
        f'<div style="font-family:system-ui,sans-serif"><strong>{escape(title)}</strong>'
        f"<table>{rows}</table></div>"
    )
