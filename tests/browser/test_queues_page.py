"""The queues view in a real browser (Playwright, Debian's chromium): a
dead-lettered item is sent back from the page and then counted, exactly
once. ``jobtrack serve`` and ``jobtrack worker`` run a user's app on
RabbitMQ (a virtual host of this test) and one SQLite store; the screenshot
is kept in ``test-artifacts/``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from jobtrack import App, Settings
from jobtrack.broker import Delivery
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.store import SqliteJobStore
from jobtrack.store.ledger import LedgerItem
from tests import rabbitmq
from tests.api.server import TOKEN, running_server
from tests.browser.test_dashboard import ARTIFACTS, browser, chromium

__all__ = ["browser", "chromium"]  # the module's browser fixture, shared

pytestmark = pytest.mark.timeout(180)

QUEUE = "jobtrack.imports.rows"
REASON = "rejected by the test"
USER_APP = '''
"""A user's app with one job type, ``imports``, whose ``rows`` handler does nothing."""

from jobtrack.runtime import App

app = App()
imports = app.job_type("imports", ["rows"])


@imports.handler("rows")
def rows(item):
    """Nothing to do: the item is done."""
'''


@pytest.fixture
def vhost() -> Iterator[str]:
    rabbitmq.require_server()
    with rabbitmq.scratch_vhost("queues_page") as name:
        yield name


async def dead_lettered_job(settings: Settings) -> str:
    """A job of ``imports`` with 3 items, each counted but ``b``, whose
    message is rejected to the dead-letter queue; the job's id."""
    app = App(settings)
    app.job_type("imports", ["rows"])
    async with app:
        store = app.store
        job = await store.create_job("imports", ["rows"])
        await store.add_items(
            job.id, "rows", [LedgerItem(key) for key in ("a", "b", "c")], seal=True
        )
        for key in ("a", "c"):
            await store.increment(job.id, "rows", item_key=key)
        seen: asyncio.Event = asyncio.Event()

        async def reject(delivery: Delivery) -> None:
            await delivery.nack(requeue=False, reason=REASON)
            seen.set()

        await app.broker.publish(QUEUE, encode_item(ItemMessage(job.id, "imports", "rows", "b")))
        subscription = await app.broker.consume(QUEUE, reject, prefetch=1)
        async with asyncio.timeout(20):
            await seen.wait()
        await subscription.cancel()
        return job.id


def user_app(tmp_path: Path, vhost: str) -> tuple[dict[str, str], Settings, Path]:
    """The user's app written under ``tmp_path`` on a SQLite store there and
    RabbitMQ's ``vhost``: the server's environment, the settings to reach the
    same store and broker from the test, and the store's file."""
    (tmp_path / "myqueues.py").write_text(USER_APP, encoding="utf-8")
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    db = data_dir / "jobtrack.db"
    broker_url = rabbitmq.vhost_url(vhost)
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
        "JOBTRACK_APP": "myqueues:app",
        "JOBTRACK_STORE_URL": f"sqlite:///{db}",
        "JOBTRACK_BROKER_URL": broker_url,
    }
    settings = Settings(data_dir=data_dir, store_url=f"sqlite:///{db}", broker_url=broker_url)
    return env, settings, db


async def rows_of(db: Path, job_id: str) -> tuple[int, int]:
    store = SqliteJobStore.open(str(db))
    try:
        stage = (await store.get_job(job_id)).stages["rows"]
        return stage.completed_items, stage.failed_items
    finally:
        await store.aclose()


def test_a_dead_letter_sent_back_from_the_page_is_counted_once(
    browser: Browser, tmp_path: Path, vhost: str
) -> None:
    env, settings, db = user_app(tmp_path, vhost)
    with ThreadPoolExecutor(1) as thread:  # Playwright's loop runs in this one
        job_id = thread.submit(asyncio.run, dead_lettered_job(settings)).result()
        assert thread.submit(asyncio.run, rows_of(db, job_id)).result() == (2, 0)

        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        worker_log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobtrack", "worker", "--data-dir", str(settings.data_dir)],
            env=worker_env | env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        try:
            with running_server(tmp_path, env=env) as server:
                page: Page = browser.new_page(viewport={"width": 1300, "height": 800})
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(server.url + "/#/queues")
                page.fill("#token", TOKEN)
                page.dispatch_event("#token", "change")
                row = page.locator(f'#queues-table tr[data-queue="{QUEUE}"]')
                expect(row).to_contain_text("imports")
                expect(row.locator("td").nth(4)).to_have_text("1", timeout=30_000)  # the worker
                expect(row.locator("td").nth(7)).to_have_text("1")
                block = page.locator(f'#dead-letters [data-dead-queue="{QUEUE}"]')
                expect(block.locator("tbody tr")).to_have_count(1)
                expect(block).to_contain_text(REASON)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "queues-dead-letter.png"), full_page=True)
                block.locator("tbody input[type=checkbox]").check()
                block.locator("button.requeue").click()
                expect(page.locator("#message")).to_contain_text("sent back 1 dead letter")
                expect(row.locator("td").nth(7)).to_have_text("0", timeout=10_000)
                expect(block).to_have_count(0)
                deadline = time.monotonic() + 30
                while thread.submit(asyncio.run, rows_of(db, job_id)).result() != (3, 0):
                    assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                    time.sleep(0.1)
                time.sleep(2)  # and it stays counted once
                assert thread.submit(asyncio.run, rows_of(db, job_id)).result() == (3, 0)
                expect(row.locator("td").nth(3)).to_have_text("0")
                page.screenshot(path=str(ARTIFACTS / "queues.png"), full_page=True)
                assert errors == []
            events = thread.submit(asyncio.run, job_events(db, job_id)).result()
            assert [kind for kind, _ in events] == ["requeued"]
            assert "the API" in events[0][1]
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            worker_log.close()


async def job_events(db: Path, job_id: str) -> list[tuple[str, str]]:
    store = SqliteJobStore.open(str(db))
    try:
        return [(e.kind, e.message) for e in await store.list_events(job_id)]
    finally:
        await store.aclose()


def test_a_view_entered_again_keeps_one_timer_and_stops_polling_when_left(
    browser: Browser, tmp_path: Path
) -> None:
    """Only the params change (``#/queues`` → ``#/queues?x=1``): the router
    leaves the view before entering it again, so leaving it for the jobs
    view stops every poll of ``/api/queues``."""
    with running_server(tmp_path) as server:
        page: Page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        polls: list[float] = []
        page.on(
            "request",
            lambda request: (
                polls.append(time.monotonic()) if request.url.endswith("/api/queues") else None
            ),
        )
        page.goto(server.url + "/#/queues")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        expect(page.locator("#queues-note")).to_contain_text("memory://")
        for again in ("#/queues?x=1", "#/queues?x=2", "#/queues?x=3"):
            page.evaluate("(hash) => { location.hash = hash; }", again)
            page.wait_for_timeout(300)
        page.wait_for_timeout(4_500)  # two polls of one timer; four timers would make eight
        recent = [t for t in polls if t > time.monotonic() - 4.4]
        assert 1 <= len(recent) <= 3, len(recent)
        page.evaluate("() => { location.hash = '#/jobs'; }")
        page.wait_for_timeout(500)
        left = len(polls)
        page.wait_for_timeout(4_500)
        assert len(polls) == left  # no timer left behind
        assert errors == []
        page.close()


async def swapped_dead_letter(settings: Settings, job_id: str) -> None:
    """The queue's one dead letter dropped and another one dead-lettered:
    the count stays 1, the ids differ."""
    app = App(settings)
    app.job_type("imports", ["rows"])
    async with app:
        assert len(await app.broker.settle_dead(QUEUE, None, requeue=False)) == 1
        seen: asyncio.Event = asyncio.Event()

        async def reject(delivery: Delivery) -> None:
            await delivery.nack(requeue=False, reason=REASON)
            seen.set()

        await app.broker.publish(QUEUE, encode_item(ItemMessage(job_id, "imports", "rows", "x")))
        subscription = await app.broker.consume(QUEUE, reject, prefetch=1)
        async with asyncio.timeout(20):
            await seen.wait()
        await subscription.cancel()


def test_the_dead_letters_are_listed_again_when_their_ids_change_but_not_their_count(
    browser: Browser, tmp_path: Path, vhost: str
) -> None:
    env, settings, _db = user_app(tmp_path, vhost)
    with ThreadPoolExecutor(1) as thread, running_server(tmp_path, env=env) as server:
        job_id = thread.submit(asyncio.run, dead_lettered_job(settings)).result()
        page: Page = browser.new_page(viewport={"width": 1300, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/#/queues")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        block = page.locator(f'#dead-letters [data-dead-queue="{QUEUE}"]')
        expect(block.locator("tbody tr")).to_have_count(1, timeout=10_000)
        expect(block.locator("tbody tr")).to_contain_text(job_id[:8])
        expect(block.locator("tbody tr td").nth(6)).to_have_text("b")
        thread.submit(asyncio.run, swapped_dead_letter(settings, job_id)).result()
        expect(block.locator("tbody tr td").nth(6)).to_have_text("x", timeout=10_000)
        expect(block.locator("tbody tr")).to_have_count(1)
        assert errors == []
        page.close()
