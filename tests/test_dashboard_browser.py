"""The status page in a real browser (Debian chromium + Playwright) while a real workload runs.

CI installs chromium first (.ci/install-browser.sh) and sets CI, so there a missing browser is a failure;
on a developer's machine without chromium the test is skipped with the reason.
"""

from __future__ import annotations

import os

import pytest
from dashboard_browser import browser_missing, open_browser, run_demo, status_state

from minidist import Client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def page():
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    with open_browser() as page:
        yield page


def test_status_page_shows_the_workers_and_progress_moving(page, tmp_path):
    shot = tmp_path / "dashboard.png"
    with Client(
        n_workers=2, threads_per_worker=2, memory_limit="1GiB", dashboard_address=":0"
    ) as client:
        result = run_demo(page, client, str(tmp_path / "gate"), screenshot=str(shot))
        workers = client.scheduler_info()["workers"]

        seen = result["seen"]  # (done, total) of the "load" bar, each change the page showed
        assert seen[-1] == (200, 200) and (100, 200) in seen
        assert seen == sorted(seen)  # progress only moves forward
        half, final = result["half"], result["final"]
        assert set(half["workers"]) == set(final["workers"]) == set(workers)
        assert "3 erred" in final["progress"]["explode"]
        assert final["tasks_drawn"] >= 200 and final["error"] is None
        assert final["updated"].startswith("updated")
        assert shot.stat().st_size > 20_000  # a real picture, not a blank page

        # a worker's row links its page, which fills in from its own JSON
        page.click("#workers tbody tr[data-worker] a")
        page.wait_for_url("**/worker/**")
        page.wait_for_function("document.querySelectorAll('#recent tbody tr td code').length > 0")
        title = page.text_content("#worker-title")
        assert title.startswith("Worker ") and page.is_hidden("#error")
        assert not page.minidist_errors, page.minidist_errors


def test_a_lost_server_shows_in_the_red_banner_and_the_last_picture_stays(page):
    with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
        page.goto(client.dashboard_link)
        page.wait_for_function(
            "document.querySelectorAll('#workers tbody tr[data-worker]').length == 1"
        )
        # the page keeps polling a server that went away: it says so in red, keeps the last picture
        client.cluster.services.dashboard.close()
        page.wait_for_selector("#error:not([hidden])")
        state = status_state(page)
        assert "Dashboard error" in state["error"] and state["updated"] == "not updated"
        assert len(state["workers"]) == 1
    assert not page.minidist_errors, page.minidist_errors
