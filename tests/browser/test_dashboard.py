"""The dashboard in a real browser: Playwright drives Debian's chromium
(``make test`` installs it; Playwright's own browser download is not used).
The test opens the page, starts a scan, and watches every bar reach 100%;
the screenshot is kept in ``test-artifacts/``."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from jobtrack.pipeline.sample import generate_sample
from jobtrack.store import SqliteJobStore
from tests.api.server import TOKEN, Server, running_server

ARTIFACTS = Path(os.environ.get("JOBTRACK_TEST_ARTIFACTS", "test-artifacts"))
IMAGES, BROKEN = 40, 2


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no chromium on this machine (make test installs Debian's, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with running_server(tmp_path) as running:
        generate_sample(running.root / "album", count=IMAGES, broken=BROKEN, max_megapixels=1.0)
        yield running


def test_a_scan_started_from_the_page_fills_every_bar(browser: Browser, server: Server) -> None:
    page: Page = browser.new_page(viewport={"width": 1300, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.fill("#scan-path", "album")
    page.click("#scan-form button[type=submit]")
    expect(page.locator("#message")).to_contain_text("Scan started", timeout=30_000)
    row = page.locator("#jobs tbody tr").first
    for stage in ("scan", "thumbnail", "cache"):
        bar = row.locator(f'.stage[data-stage="{stage}"] [role=progressbar]')
        expect(bar).to_have_attribute("aria-valuenow", "100", timeout=120_000)
    expect(row.locator("td[data-status]")).to_have_attribute(
        "data-status", "completed", timeout=30_000
    )
    counts = row.locator('.stage[data-stage="cache"] .counts')
    expect(counts).to_contain_text(f"{IMAGES - BROKEN} + {BROKEN} failed / {IMAGES}")
    row.locator("a").first.click()
    expect(page.locator("#failures li")).to_have_count(BROKEN)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert errors == []


def test_everything_shown_is_escaped(browser: Browser, server: Server) -> None:
    hostile = '<img src=x onerror="window.pwned=1">'

    async def make() -> str:
        store = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"))
        try:
            job = await store.create_job(
                hostile, ["<b>stage</b>"], attributes={"collection": {"id": "c", "path": hostile}}
            )
            await store.increment(job.id, "<b>stage</b>")
            await store.add_event(job.id, "reconciled", hostile)
            return job.id
        finally:
            await store.aclose()

    with ThreadPoolExecutor(1) as thread:  # Playwright's loop runs in this one
        job_id = thread.submit(asyncio.run, make()).result()
    page = browser.new_page()
    page.goto(server.url)
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    expect(row).to_contain_text(hostile)  # shown as text...
    row.locator("a").first.click()
    expect(page.locator("#events")).to_contain_text(hostile)
    expect(page.locator("#activity-list")).to_contain_text(hostile)
    assert page.evaluate("window.pwned") is None  # ...never run
    assert page.locator("#jobs img, #events img, #activity-list img, #jobs b").count() == 0


def test_ten_thousand_jobs_page_and_update_in_place(browser: Browser, server: Server) -> None:
    async def make() -> list[str]:
        store = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"))
        try:
            return [(await store.create_job("bulk", ["work"])).id for _ in range(10_000)]
        finally:
            await store.aclose()

    async def progress(job_id: str, items: int) -> None:
        store = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"))
        try:
            await store.increment(job_id, "work", completed=items)
        finally:
            await store.aclose()

    with ThreadPoolExecutor(1) as thread:
        ids = thread.submit(asyncio.run, make()).result()
        page = browser.new_page()
        listed: list[str] = []
        page.on("request", lambda r: listed.append(r.url) if "/api/jobs?" in r.url else None)
        page.goto(server.url)
        expect(page.locator("#live")).to_have_text("live", timeout=15_000)
        rows = page.locator("#jobs tbody tr")
        expect(rows).to_have_count(50)
        expect(rows.first).to_have_attribute("data-job", ids[-1])  # newest first
        assert page.locator("#new-jobs").is_hidden()  # the snapshot is not news
        # The stream's first snapshot is cut at 1,000 of the 10,000 active
        # jobs, so the page is loaded once more; after that, never again.
        for _ in range(100):
            if len(listed) == 2:
                break
            page.wait_for_timeout(50)
        assert len(listed) == 2
        # A job on this page moves: its row changes in place, nothing reloads.
        thread.submit(asyncio.run, progress(ids[-3], 7)).result()
        counts = page.locator(f'#jobs tr[data-job="{ids[-3]}"] .counts')
        expect(counts).to_contain_text("7 / 0+")
        assert len(listed) == 2
        # A job created now appears at the top of the first page (no filter)
        # as it starts, the page kept at its size, and nothing reloads.
        fresh = thread.submit(asyncio.run, make_one(server)).result()
        expect(rows.first).to_have_attribute("data-job", fresh)
        expect(rows.nth(1)).to_have_attribute("data-job", ids[-1])
        expect(rows).to_have_count(50)
        assert page.locator("#new-jobs").is_hidden()
        assert len(listed) == 2
        # Paging: the next 50, older.
        page.click("#next")
        expect(page.locator("#page-label")).to_have_text("page 2")
        expect(rows.first).to_have_attribute("data-job", ids[-50])
        expect(rows).to_have_count(50)


async def make_one(server: Server) -> str:
    store = SqliteJobStore.open(str(server.data_dir / "jobtrack.db"))
    try:
        return (await store.create_job("bulk", ["work"])).id
    finally:
        await store.aclose()


def test_the_api_docs_render_from_the_server_alone(browser: Browser, server: Server) -> None:
    page: Page = browser.new_page(viewport={"width": 1300, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    elsewhere: list[str] = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith(server.url) or request.url.startswith("data:")
            else elsewhere.append(request.url)
        ),
    )
    page.goto(f"{server.url}/docs")
    # Swagger UI drew the operations of the OpenAPI document, under the page's CSP.
    expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=30_000)
    expect(page.locator('.opblock-summary-path[data-path="/api/jobs"]').first).to_be_visible()
    assert elsewhere == []
    assert errors == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs.png"))
