"""The dashboard in a real browser (Debian chromium driven by Playwright): the test's helpers and the
docs screenshot.

Needs ``apt-get install chromium`` (``.ci/install-browser.sh``) and ``pip install playwright``; never
``playwright install``: we drive the system's /usr/bin/chromium, headless. ``open_browser()`` yields a page;
``status_state()`` reads what the status page shows; ``run_demo()`` is the scenario the test checks and the
screenshot shows: a real workload on a real client, held half-way by a gate so the picture (and the test)
can catch progress in mid-flight, then released. Run as a script to remake the picture in the docs::

    python tests/dashboard_browser.py docs/dashboard.png
"""

from __future__ import annotations

import contextlib
import os
import re
import time

CHROMIUM = os.environ.get("MINIDIST_CHROMIUM", "/usr/bin/chromium")  # Debian's package puts it here
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
GATE_TIMEOUT = (
    60  # seconds a gated task waits before giving up (a broken test must not hang workers)
)


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None when chromium and playwright are both installed."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"chromium is not installed at {CHROMIUM} (run: bash .ci/install-browser.sh)"
    return None


@contextlib.contextmanager
def open_browser(width: int = 1280, height: int = 900):
    """A fresh headless chromium page; closes the browser (and its processes) on exit.

    ``page.minidist_errors`` collects the JavaScript exceptions raised on the page.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.minidist_errors = page_errors
            yield page
        finally:
            browser.close()


def status_state(page) -> dict:
    """What the status page shows now: worker rows, "done / total" per prefix, task rectangles, banner."""
    return page.evaluate("""() => ({
        workers: [...document.querySelectorAll('#workers tbody tr[data-worker]')].map(r => r.dataset.worker),
        progress: Object.fromEntries([...document.querySelectorAll('#progress .progress-row')]
            .map(r => [r.dataset.prefix, r.querySelector('.count').textContent])),
        tasks_drawn: document.querySelectorAll('#stream rect.task').length,
        error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        updated: document.getElementById('updated').textContent,
    })""")


def done_total(state: dict, prefix: str) -> tuple[int, int] | None:
    """(done, total) of one progress bar, or None while the page has no bar for that prefix."""
    text = state["progress"].get(prefix)
    match = re.match(r"\s*(\d+) / (\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


def watch_status(page, condition, timeout: float = 30.0, interval: float = 0.1) -> dict:
    """Poll ``status_state(page)`` until ``condition(state)`` is true; returns the state or raises."""
    deadline = time.monotonic() + timeout
    state = status_state(page)
    while not condition(state):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the status page never reached the expected state; last: {state}")
        page.wait_for_timeout(interval * 1000)
        state = status_state(page)
    return state


# ---- the workload (plain functions: process workers import this module by name) --------------------


def load(x, gate=None):
    """A short task; the ones given a gate's result start only once the gate opened."""
    time.sleep(0.02)
    return x


def wait_for_gate(path):
    """Holds a thread until ``path`` exists: the workload's second half waits for it."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody opened the gate {path}")
        time.sleep(0.01)
    return 0


def double(x):
    time.sleep(0.01)
    return 2 * x


def explode(x):
    raise ValueError(f"task {x} fails on purpose (the dashboard shows it in red)")


def total(values):
    return sum(values)


def submit_demo(client, gate_path: str, n: int = 100) -> dict:
    """Half of the ``load`` tasks (and a ``double`` of each) run at once; the other half waits for the
    gate file; ``total`` sums them all."""
    gate = client.submit(wait_for_gate, gate_path)
    first = client.map(load, range(n))
    doubled = client.map(double, first)
    failing = client.map(explode, range(3))
    second = [client.submit(load, n + i, gate) for i in range(n)]
    summed = client.submit(total, first + second + doubled)
    # every future is kept: the bars count what clients hold, released tasks leave the page
    return {
        "gate": gate,
        "load": first + second,
        "double": doubled,
        "explode": failing,
        "total": summed,
        "n": 2 * n,
        "expected": sum(range(2 * n)) + 2 * sum(range(n)),
    }


def run_demo(page, client, gate_path: str, screenshot: str | None = None) -> dict:
    """Open /status, run the gated workload, check what the page shows at each stage.

    Returns the sequence of (done, total) the page showed for ``load`` and the last state. The screenshot
    (if asked) is taken half-way: workers busy, bars part-done, an erred prefix in red.
    """
    page.goto(client.dashboard_link)
    workers = set(client.scheduler_info()["workers"])
    watch_status(page, lambda s: set(s["workers"]) == workers and s["error"] is None)
    work = submit_demo(client, gate_path)
    n = work["n"]
    seen = []

    def record(state):
        value = done_total(state, "load")
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        return state

    # half-way: the first half done, the gate holding the rest, the failures counted
    half = watch_status(
        page,
        lambda s: (
            record(s)
            and done_total(s, "load") == (n // 2, n)
            and done_total(s, "double") == (n // 2, n // 2)
            and "erred" in s["progress"].get("explode", "")
            and s["tasks_drawn"] >= n // 2
        ),
    )
    if screenshot:
        page.wait_for_timeout(600)  # one more poll so the CPU and memory columns have settled
        page.screenshot(path=screenshot, full_page=True)
    with open(gate_path, "w"):
        pass
    assert work["total"].result(timeout=60) == work["expected"]
    final = watch_status(
        page,
        lambda s: (
            record(s) and done_total(s, "load") == (n, n) and done_total(s, "total") == (1, 1)
        ),
    )
    return {"seen": seen, "half": half, "final": final}


if __name__ == "__main__":
    import sys
    import tempfile

    from minidist import Client

    out = sys.argv[1] if len(sys.argv) > 1 else "dashboard.png"
    with tempfile.TemporaryDirectory() as tmp:
        with (
            Client(
                n_workers=2,
                threads_per_worker=2,
                memory_limit="1GiB",
                dashboard_address=":0",
                name="demo",
            ) as client,
            open_browser() as page,
        ):
            run_demo(page, client, os.path.join(tmp, "gate"), screenshot=out)
            if page.minidist_errors:
                raise SystemExit(f"JavaScript errors: {page.minidist_errors}")
    sys.stdout.write(f"saved {out}\n")
