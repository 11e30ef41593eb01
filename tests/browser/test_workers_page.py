"""The workers view and the overview's throughput chart in a real browser
(Debian's chromium through Playwright, as ``test_dashboard``): the chart
moves while a scan runs, and a SIGKILLed ``jobtrack worker`` shows as dead
within two heartbeats (plus the grace and one poll of the page).
Screenshots are kept in ``test-artifacts/``; with ``JOBTRACK_SCREENSHOT_DIR``
set, the overview's first screen is saved there too (``overview.png``, the
README's picture)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from jobtrack.pipeline.sample import generate_sample
from tests.api.server import Server, running_server
from tests.apps.harness import WorkerProcess
from tests.browser.test_dashboard import ARTIFACTS, browser
from tests.rabbitmq import require_server, scratch_vhost, vhost_url

__all__ = ["browser"]  # the fixture, shared with test_dashboard

INTERVAL = 1  # seconds between heartbeats


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    env = {"JOBTRACK_HEARTBEAT_INTERVAL": str(INTERVAL)}
    with running_server(tmp_path, env=env) as running:
        yield running


def _page(browser: Browser, server: Server, errors: list[str]) -> Page:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


def test_the_overview_chart_moves_while_a_scan_runs(browser: Browser, server: Server) -> None:
    generate_sample(server.root / "album", count=150, broken=3, max_megapixels=1.5)
    errors: list[str] = []
    page = _page(browser, server, errors)
    page.goto(server.url + "/#/overview")
    chart = page.locator("#overview-chart")
    expect(chart).to_have_attribute("data-last-hour-done", "0", timeout=15_000)
    with server.client() as client:
        started = client.post("/api/scans", json={"path": "album"})
        assert started.status_code == 202, started.text
        job_id = started.json()["id"]

    seen: list[int] = []
    deadline = time.monotonic() + 120
    while True:
        value = int(chart.get_attribute("data-last-hour-done") or 0)
        if not seen or value != seen[-1]:
            seen.append(value)
        with server.client() as client:
            status = client.get(f"/api/jobs/{job_id}").json()["status"]
        if status == "completed" and value >= 2 * 147:  # every thumbnail and cache counted
            break
        assert time.monotonic() < deadline, (seen, status)
        time.sleep(0.2)

    assert len([v for v in seen if v > 0]) >= 2, seen  # it grew while the scan ran
    assert seen == sorted(seen)
    assert seen[-1] == 2 * 147
    expect(page.locator("#throughput-totals")).to_contain_text("in the last minute")
    assert page.locator("#overview-chart svg polyline").count() >= 2  # thumbnail, cache
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "overview-throughput.png"), full_page=True)
    readme_shot(page, "overview.png")
    assert errors == []


def readme_shot(page: Page, name: str) -> None:
    """With ``JOBTRACK_SCREENSHOT_DIR`` set, save the page's first screen
    (1300x800) there as ``name`` too: the README's picture
    (``JOBTRACK_SCREENSHOT_DIR=docs/images``)."""
    folder = os.environ.get("JOBTRACK_SCREENSHOT_DIR")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1300, "height": 800})
    page.screenshot(path=str(Path(folder) / name))


@pytest.fixture
def vhost() -> Iterator[str]:
    require_server()
    with scratch_vhost("workerspage") as name:
        yield name


def test_a_sigkilled_worker_shows_as_dead_within_two_heartbeats(
    browser: Browser, server: Server, vhost: str, tmp_path: Path
) -> None:
    env = {
        "JOBTRACK_STORE_URL": f"sqlite:///{server.data_dir / 'jobtrack.db'}",
        "JOBTRACK_BROKER_URL": vhost_url(vhost),
        "JOBTRACK_DATA_DIR": str(server.data_dir),
        "JOBTRACK_HEARTBEAT_INTERVAL": str(INTERVAL),
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
    worker = WorkerProcess("tests.apps.simple:app", base | env, tmp_path / "worker.log")
    worker.start()
    assert worker.process is not None
    pid = worker.process.pid
    errors: list[str] = []
    page = _page(browser, server, errors)
    page.goto(server.url + "/#/workers")
    row = page.locator("#workers-view tr.worker", has_text=str(pid))
    expect(row).to_have_attribute("data-state", "live", timeout=15_000)

    worker.kill()
    killed = time.monotonic()
    expect(row).to_have_attribute("data-state", "dead", timeout=10_000)
    took = time.monotonic() - killed

    # Dead once more than two intervals (plus a quarter of one) passed since
    # its last beat, which came at most one interval before the kill; the
    # page asks every second.
    assert took < 2.25 * INTERVAL + 1.0 + 1.0, took
    expect(row.locator(".last-beat")).to_contain_text("dead since")
    with httpx.Client(base_url=server.url) as client:
        (mine,) = [w for w in client.get("/api/workers").json()["workers"] if w["pid"] == pid]
    assert mine["state"] == "dead"
    assert mine["dead_since"] == mine["beat_at"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "workers-dead.png"), full_page=True)
    assert errors == []
