"""Many jobs of a user's type at once: 1,000 jobs of five items each,
written as the app's producer writes them while two real ``jobtrack worker`` processes run
on PostgreSQL and RabbitMQ (a database and a virtual host of this module's
own); every job completes with exact counts, its empty discovered stage
sealed by the workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import JobStatus, utc_now
from jobtrack.runtime import App
from jobtrack.store import JobQuery
from jobtrack.store.ledger import LedgerItem
from tests.apps.harness import WorkerProcess, counts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

APP = "tests.apps.tally:app"
JOBS = 1_000
ITEMS = 5


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started = [WorkerProcess(APP, env, tmp_path / f"worker-{n}.log") for n in range(2)]
    yield started
    for worker in started:
        if worker.running():
            worker.stop()


async def produce_many(app: App) -> list[str]:
    """:data:`JOBS` jobs of :data:`ITEMS` ``work`` items each (the same keys
    in every job: each job counts its own), written as a producer writes
    them (the ledger and the sealed total, then the messages), 50 jobs at a
    time, and their messages published together."""
    tally = app.get_type("tally")

    async def one(number: int) -> tuple[str, list[bytes]]:
        job = await app.store.create_job("tally", tally.stages)
        items = [LedgerItem(f"item-{n}", {"job": number}) for n in range(ITEMS)]
        await app.store.add_items(job.id, "work", items, seal=True)
        return job.id, [
            encode_item(ItemMessage(job.id, "tally", "work", item.key, item.payload))
            for item in items
        ]

    ids: list[str] = []
    for start in range(0, JOBS, 50):
        made = await asyncio.gather(*(one(n) for n in range(start, min(start + 50, JOBS))))
        ids.extend(job_id for job_id, _ in made)
        await app.broker.publish_many(
            tally.queue("work"), [body for _, bodies in made for body in bodies]
        )
    return ids


async def test_a_thousand_jobs_at_once_all_complete_with_exact_counts(
    app: App, workers: list[WorkerProcess]
) -> None:
    for worker in workers:
        worker.start("--concurrency", "16", "--prefetch", "64")
    ids = await produce_many(app)
    assert len(set(ids)) == JOBS

    deadline = time.monotonic() + 120
    while True:
        stats = await app.store.stats(stuck_before=utc_now() - timedelta(hours=1))
        if stats.jobs.get("completed", 0) == JOBS:
            break
        assert time.monotonic() < deadline, stats
        assert all(worker.running() for worker in workers)
        await asyncio.sleep(0.25)
    assert stats.jobs == {"completed": JOBS}
    assert stats.items["work"] == (JOBS * ITEMS, 0)

    seen = []
    for offset in range(0, JOBS, 200):
        page = await app.store.list_jobs(JobQuery(job_type="tally", limit=200, offset=offset))
        seen.extend(page)
    assert sorted(job.id for job in seen) == sorted(ids)
    for job in seen:
        assert job.status is JobStatus.COMPLETED, job.to_dict()
        assert counts(job, "work") == (ITEMS, ITEMS, 0, True), job.to_dict()
        assert counts(job, "extra") == (0, 0, 0, True), job.to_dict()
    for worker in workers:
        assert worker.stop() == 0
        assert "Traceback" not in worker.log.read_text()
