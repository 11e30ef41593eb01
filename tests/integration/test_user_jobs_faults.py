"""Faults on a user's job type, with real ``jobtrack worker`` processes on
PostgreSQL and RabbitMQ (a database and a virtual host of this module's
own): messages purged from the queue mid-run are re-driven by
``jobtrack monitor --once`` from the ledger, exactly those, at most
``--max-redrives`` times each; handlers that raise fail their items with
their errors, retried first when the error is retryable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from jobtrack.model import JobStatus
from jobtrack.runtime import App
from tests.apps.harness import (
    WorkerProcess,
    counts,
    ended,
    monitor_once,
    produce,
)
from tests.apps.tally import MAX_ATTEMPTS
from tests.apps.tally import app as tally_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

APP = "tests.apps.tally:app"
WORK = tally_app.get_type("tally").queue("work")


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    started = WorkerProcess(APP, env, tmp_path / "worker.log")
    yield started
    if started.running():
        started.stop()


async def purge(env: dict[str, str], queue: str) -> int:
    """Purge ``queue`` of the test's virtual host; how many messages it held."""
    connection = await aio_pika.connect(env["JOBTRACK_BROKER_URL"])
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        result = await declared.purge()
        assert result.message_count is not None
        return result.message_count
    finally:
        await connection.close()


async def settled(app: App, job_id: str, queue: str) -> None:
    """Wait until ``queue`` holds nothing, in flight or ready, and the job's
    counts have not moved for a second."""
    deadline = time.monotonic() + 60
    last: tuple[int, int] | None = None
    still_since = time.monotonic()
    while True:
        stage = (await app.store.get_job(job_id)).stage("work")
        now = (stage.completed_items, stage.failed_items)
        if now != last or await app.broker.in_flight(queue):
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 1.0:
            return
        assert time.monotonic() < deadline, now
        await asyncio.sleep(0.1)


async def test_purged_messages_are_redriven_from_the_ledger_and_the_job_completes(
    env: dict[str, str], app: App, worker: WorkerProcess
) -> None:
    items = 60
    worker.start("--concurrency", "2", "--prefetch", "2")
    payloads: dict[str, Any] = {f"page-{n:02d}": {"seconds": 0.1} for n in range(items)}
    [job_id] = await produce(app, "tally", "work", [payloads])
    async with asyncio.timeout(60):  # some work counted, much left
        while (await app.store.get_job(job_id)).stage("work").completed_items < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    purged = await purge(env, WORK)
    assert purged > 0
    await settled(app, job_id, WORK)
    stuck = await app.store.get_job(job_id)
    missing = [item.key for item in await app.store.missing_items(job_id, "work")]
    assert len(missing) == items - stuck.stage("work").completed_items == purged

    report = monitor_once(APP, env, "--stuck-after", "0.001", "--max-redrives", "2")
    assert (report["redriven"], report["items_redriven"]) == (1, len(missing)), report
    [event] = [e for e in await app.store.list_events(job_id) if e.kind == "redriven"]
    assert (event.data["round"], event.data["items"]) == (1, len(missing))
    job = await ended(app.store, job_id)
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    assert counts(job, "work") == (items, items, 0, True)
    assert counts(job, "extra") == (0, 0, 0, True)
    assert await app.store.list_failures(job_id) == []
    assert worker.stop() == 0
    assert "Traceback" not in worker.log.read_text()


async def test_items_purged_every_round_are_published_max_redrives_times_then_fail(
    env: dict[str, str], app: App
) -> None:
    items, rounds = 20, 2
    payloads = {f"page-{n:02d}": None for n in range(items)}
    [job_id] = await produce(app, "tally", "work", [payloads])
    published = [await purge(env, WORK)]
    for _ in range(rounds):
        report = monitor_once(APP, env, "--stuck-after", "0.001", "--max-redrives", str(rounds))
        assert (report["redriven"], report["items_redriven"]) == (1, items), report
        published.append(await purge(env, WORK))
    assert published == [items] * (rounds + 1)  # each item: produced once, re-driven twice
    report = monitor_once(APP, env, "--stuck-after", "0.001", "--max-redrives", str(rounds))
    assert (report["failed"], report["items_failed"], report["redriven"]) == (1, items, 0), report
    job = await app.store.get_job(job_id)
    assert job.status is JobStatus.FAILED, job.to_dict()
    events = [e for e in await app.store.list_events(job_id) if e.kind == "redriven"]
    assert [(e.data["round"], e.data["items"]) for e in events] == [(1, items), (2, items)]
    failures = await app.store.list_failures(job_id)
    assert [(f.key, f.error, f.attempts) for f in failures] == [
        (key, f"not done after {rounds} re-drives", 1) for key in sorted(payloads)
    ]
    assert await purge(env, WORK) == 0


async def test_handlers_that_raise_fail_their_items_and_retryable_errors_are_retried(
    app: App, worker: WorkerProcess
) -> None:
    payloads: dict[str, Any] = {f"page-{n:02d}": {"parts": 1} for n in range(20)}
    payloads |= {"bad-1": {"fail": True, "parts": 3}, "bad-2": {"fail": True}}
    payloads |= {"flaky-1": {"flaky": 2, "parts": 2}, "flaky-2": {"flaky": MAX_ATTEMPTS}}
    payloads |= {"lost-1": {"flaky": MAX_ATTEMPTS + 1}}
    worker.start("--concurrency", "2")
    [job_id] = await produce(app, "tally", "work", [payloads])
    job = await ended(app.store, job_id)
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    assert counts(job, "work") == (len(payloads), len(payloads) - 3, 3, True)
    assert counts(job, "extra") == (22, 22, 0, True)  # 20 pages, flaky-1's 2
    failures = await app.store.list_failures(job_id)
    assert [(f.stage, f.key, f.error, f.attempts, f.payload) for f in failures] == [
        ("work", "bad-1", "ValueError: told to fail bad-1", 1, {"fail": True, "parts": 3}),
        ("work", "bad-2", "ValueError: told to fail bad-2", 1, {"fail": True}),
        (
            "work",
            "lost-1",
            f"ConnectionError: flaky lost-1 (attempt {MAX_ATTEMPTS})",
            MAX_ATTEMPTS,
            {"flaky": MAX_ATTEMPTS + 1},
        ),
    ]
    assert worker.stop() == 0
    log = " ".join(worker.log.read_text().split())  # the log's lines as they were wrapped
    assert "Traceback" not in log
    tried = {
        key: [
            n for n in range(1, MAX_ATTEMPTS + 1) if f"{key} of job {job_id}: attempt {n} of" in log
        ]
        for key in ("flaky-1", "flaky-2", "lost-1", "bad-1")
    }
    assert tried == {"flaky-1": [1], "flaky-2": [1, 2], "lost-1": [1, 2], "bad-1": []}, log[-3000:]
