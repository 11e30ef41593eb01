"""The operator's views in a real browser (Playwright on Debian's chromium):
a job that starts appears at the top of the jobs' first page within a
second, while a later page stays as it was; a stuck job appears in the
watch list, then with the monitor's action once a monitor cycle has run;
the overview's counts link to their lists. Screenshots go to
``test-artifacts/``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.sync_api import Browser, Page, expect

from jobtrack import Item, JobType
from jobtrack.broker import InMemoryBroker
from jobtrack.jobs.reconciler import LedgerReconciler
from jobtrack.model import Job
from jobtrack.monitor import Monitor
from jobtrack.pipeline.sample import generate_sample
from jobtrack.store import SqliteJobStore
from jobtrack.store.ledger import LedgerItem
from tests.api.server import TOKEN, Server, running_server
from tests.browser.test_dashboard import ARTIFACTS, browser

__all__ = ["browser"]  # the fixture, shared with the dashboard's test

_T = TypeVar("_T")
PAGE = 50  # the jobs view's page size
STUCK_AFTER = 1


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path, env={"JOBTRACK_STUCK_AFTER": str(STUCK_AFTER)}) as running:
        yield running


def in_store(server: Server, work: Callable[[SqliteJobStore], Awaitable[_T]]) -> _T:
    """``work`` on the server's store, from a process of its own (as a
    worker writes it), run to its end in a thread of its own."""

    async def run() -> _T:
        store = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"))
        try:
            return await work(store)
        finally:
            await store.aclose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def open_page(browser: Browser, server: Server, route: str) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/{route}")
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    return page, errors


def test_a_job_that_starts_appears_at_the_top_of_the_first_page(
    browser: Browser, server: Server
) -> None:
    async def many(store: SqliteJobStore) -> list[Job]:
        return [await store.create_job("imports", ["rows"]) for _ in range(PAGE + 3)]

    async def one(store: SqliteJobStore) -> Job:
        return await store.create_job("imports", ["rows"])

    made = in_store(server, many)
    page, errors = open_page(browser, server, "#/jobs")
    rows = page.locator("#jobs tbody tr")
    expect(rows.first).to_have_attribute("data-job", made[-1].id, timeout=10_000)
    expect(rows).to_have_count(PAGE)
    oldest_shown = made[3].id
    expect(rows.last).to_have_attribute("data-job", oldest_shown)

    # A job started from the API: at the top within a second of the answer.
    generate_sample(server.root / "album", count=3, broken=0, max_megapixels=0.5)
    with server.client() as client:
        answer = client.post("/api/scans", json={"path": "album"})
    answered = time.monotonic()
    assert answer.status_code == 202, answer.text
    started_id = answer.json()["id"]

    expect(rows.first).to_have_attribute("data-job", started_id, timeout=1_000)
    assert time.monotonic() - answered < 1.0
    expect(rows).to_have_count(PAGE)  # the page keeps its size: the oldest row dropped off
    expect(rows.nth(1)).to_have_attribute("data-job", made[-1].id)
    expect(page.locator(f'#jobs tr[data-job="{oldest_shown}"]')).to_have_count(0)
    expect(page.locator("#new-jobs")).to_be_hidden()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jobs-live-first-page.png"), full_page=True)

    # A later page stays as it is, and counts the new jobs.
    page.click("#next")
    expect(page.locator("#page-label")).to_have_text("page 2")
    expect(rows).to_have_count(4)
    expect(rows.first).to_have_attribute("data-job", oldest_shown)
    in_store(server, one)
    expect(page.locator("#new-jobs")).to_have_text("1 new job — show", timeout=5_000)
    expect(rows.first).to_have_attribute("data-job", oldest_shown)
    expect(rows).to_have_count(4)
    assert errors == []


def _nothing(item: Item) -> None:
    """A handler that does nothing."""


def test_a_stuck_job_appears_in_the_watch_list_with_the_monitors_action(
    browser: Browser, server: Server
) -> None:
    imports = JobType("imports", ["rows"])
    imports.handler("rows")(_nothing)

    async def stalled(store: SqliteJobStore) -> Job:
        job = await store.create_job("imports", ["rows"])
        items = [LedgerItem("a", {}), LedgerItem("b", {})]
        await store.add_items(job.id, "rows", items, seal=True)
        return job

    async def monitor_cycle(store: SqliteJobStore) -> int:
        reconciler = LedgerReconciler(imports, store, InMemoryBroker())
        report = await Monitor(store, [reconciler], stuck_after=STUCK_AFTER).cycle()
        return report.redriven

    job = in_store(server, stalled)
    page, errors = open_page(browser, server, "#/overview")
    counts = page.locator('#counts tbody tr[data-type="imports"]')
    stuck_count = counts.locator('td[data-count="stuck"] a')
    expect(stuck_count).to_have_text("1", timeout=10_000)

    stuck_count.click()  # the count links to its list
    expect(page).to_have_url(f"{server.url}/#/watch?state=stuck&type=imports")
    row = page.locator(f'#watch tbody tr[data-job="{job.id}"]')
    expect(row.locator(".badge-stuck")).to_have_text("stuck", timeout=5_000)
    expect(row.locator("td.action")).to_have_text("none yet")
    expect(row).to_contain_text("not written for")

    assert in_store(server, monitor_cycle) == 1

    page.select_option("#watch-state", "")
    action = page.locator(f'#watch tbody tr[data-job="{job.id}"] td.action')
    expect(action).to_have_attribute("data-kind", "redriven", timeout=5_000)
    expect(action).to_contain_text("2 missing items published again (rows 2), round 1 of 3")
    expect(page.locator(f'#watch tbody tr[data-job="{job.id}"] .badge-redriving')).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "watch-list.png"), full_page=True)

    page.click('nav a[data-nav="overview"]')
    redriven = page.locator('#counts tbody tr[data-type="imports"] td[data-count="redriving"]')
    expect(redriven).to_have_text("1", timeout=5_000)
    page.screenshot(path=str(ARTIFACTS / "overview-counts.png"), full_page=True)
    assert errors == []


def test_the_jobs_view_finds_a_job_by_its_collection_path(browser: Browser, server: Server) -> None:
    async def scans(store: SqliteJobStore) -> list[Job]:
        return [
            await store.create_job(
                "collection-scan", ["scan"], attributes={"collection": {"id": name, "path": path}}
            )
            for name, path in (("c1", "/photos/Holidays_2026"), ("c2", "/photos/garden"))
        ]

    holidays, garden = in_store(server, scans)
    page, errors = open_page(browser, server, "#/jobs")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(2, timeout=10_000)
    page.fill("#job-search", "holidays_")
    expect(page).to_have_url(f"{server.url}/#/jobs?q=holidays_", timeout=5_000)
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job", holidays.id)
    page.fill("#job-search", garden.id[:8])
    expect(rows.first).to_have_attribute("data-job", garden.id, timeout=5_000)
    expect(rows).to_have_count(1)
    page.click('nav a[data-nav="overview"]')  # the overview lists every job
    expect(rows).to_have_count(2, timeout=5_000)
    expect(page.locator("#job-search")).to_have_value("")
    assert errors == []
