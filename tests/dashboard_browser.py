"""Helper for the real-browser dashboard test and the docs screenshot (Debian chromium + Playwright).

Needs ``apt-get install chromium`` and ``pip install playwright`` (never ``playwright install``: we drive the
system's /usr/bin/chromium). ``open_browser()`` yields a Playwright page; ``watch_status()`` polls the status
page until a condition on its DOM holds. Run as a script to screenshot a dashboard fed a synthetic snapshot::

    python tests/dashboard_browser.py docs/dashboard.png
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

CHROMIUM = os.environ.get("MINIDIST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_available() -> bool:
    """True when both the chromium binary and the playwright package are installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(CHROMIUM) or shutil.which("chromium") is not None


@contextlib.contextmanager
def open_browser(width: int = 1280, height: int = 900):
    """A fresh headless chromium page; closes the browser (and its processes) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page_errors: list[str] = []
            page.minidist_errors = page_errors  # JavaScript exceptions raised on the page
            yield page
        finally:
            browser.close()


def status_state(page) -> dict:
    """What the status page currently shows: worker rows, per-prefix counts, task rectangles, banner."""
    return page.evaluate("""() => ({
        workers: [...document.querySelectorAll('#workers tbody tr[data-worker]')].map(r => r.dataset.worker),
        progress: Object.fromEntries([...document.querySelectorAll('#progress .progress-row')]
            .map(r => [r.dataset.prefix, r.querySelector('.count').textContent])),
        tasks_drawn: document.querySelectorAll('#stream rect.task').length,
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        updated: document.getElementById('updated').textContent,
    })""")


def watch_status(page, condition, timeout: float = 20.0, interval: float = 0.2) -> dict:
    """Poll ``status_state(page)`` until ``condition(state)`` is true; returns the state or raises."""
    deadline = time.monotonic() + timeout
    state = status_state(page)
    while not condition(state):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the status page never reached the expected state; last: {state}")
        page.wait_for_timeout(interval * 1000)
        state = status_state(page)
    return state


def _demo_snapshot():
    """A synthetic, moving snapshot in the engine's shape (for the script mode below)."""
    started = time.time()

    def snapshot():
        now = time.time()
        elapsed = now - started
        workers = [
            {
                "address": f"inproc://127.0.0.1/{1000 + i}",
                "name": str(i),
                "nthreads": 2,
                "processing": 2,
                "executing": 2,
                "memory": int((150 + 90 * i) * 2**20),
                "memory_limit": 2**30,
                "cpu": 80.0 + 5 * i,
                "pid": 4000 + i,
                "status": "running",
                "in_memory": 12 + i,
                "dashboard": None,
            }
            for i in range(4)
        ]
        stream = []
        for j in range(int(elapsed * 40)):
            prefix = ("load", "inc", "add", "sum")[j % 4]
            start = started + j / 40
            stream.append(
                {
                    "key": f"{prefix}-{j:032x}",
                    "prefix": prefix,
                    "worker": workers[j % 4]["address"],
                    "thread": (j // 4) % 2,
                    "start": start,
                    "stop": start + 0.09,
                    "status": "error" if j % 97 == 96 else "ok",
                }
            )
        by_prefix = {
            p: {
                "waiting": max(0, 200 - int(elapsed * 10)),
                "queued": 4,
                "processing": 4,
                "memory": int(elapsed * 10),
                "erred": 1 if p == "sum" else 0,
                "released": 0,
            }
            for p in ("load", "inc", "add", "sum")
        }
        totals = {k: sum(c[k] for c in by_prefix.values()) for k in next(iter(by_prefix.values()))}
        return {
            "time": now,
            "cluster": {
                "name": "LocalCluster",
                "scheduler_address": "inproc://127.0.0.1/1",
                "n_workers": 4,
                "threads": 8,
                "memory_limit": 4 * 2**30,
                "status": "running",
            },
            "workers": workers,
            "tasks": {"by_prefix": by_prefix, "totals": totals},
            "task_stream": [t for t in stream if t["stop"] <= now][-2000:],
        }

    return snapshot


if __name__ == "__main__":
    import sys

    from minidist.dashboard.server import DashboardServer

    out = sys.argv[1] if len(sys.argv) > 1 else "dashboard.png"
    server = DashboardServer(
        ":0", _demo_snapshot(), lambda: {"Cluster": "", "Scheduler": "started"}
    )
    server.start()
    try:
        with open_browser() as page:
            page.goto(server.link)
            watch_status(page, lambda s: s["tasks_drawn"] > 100 and s["workers"])
            page.screenshot(path=out, full_page=True)
            if page.minidist_errors:
                raise SystemExit(f"JavaScript errors: {page.minidist_errors}")
    finally:
        server.close()
    sys.stdout.write(f"saved {out}\n")
