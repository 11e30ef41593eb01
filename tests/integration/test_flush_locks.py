"""A coalesced flush on PostgreSQL holds the row locks of the jobs of each
store call until that call commits. Written in calls of ``max_write``
entries, the jobs of a call already written are free again while a later
call of the same flush waits; written as one call (the default), every job
of the flush stays locked as long as its slowest job makes it wait."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from jobtrack.store import open_store
from jobtrack.tracking import ProgressTracker


def _free(url: str, job_id: str) -> bool:
    """Whether another transaction could lock the job's row now."""
    with psycopg.connect(url) as conn:
        try:
            conn.execute("SELECT FROM jobs WHERE id = %s FOR UPDATE NOWAIT", (job_id,))
        except psycopg.errors.LockNotAvailable:
            return False
        return True


async def _waiting(url: str) -> None:
    """Until a backend of the database waits for a lock."""
    async with asyncio.timeout(10):
        while True:
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(("max_write", "first_free"), [(2, True), (4, False), (None, False)])
async def test_a_call_written_releases_its_jobs_while_a_later_call_waits(
    postgres_url: str, max_write: int | None, first_free: bool
) -> None:
    store = open_store(postgres_url)
    jobs = sorted([(await store.create_job("t", ["a"])).id for _ in range(4)])
    # the first two in id order go in the first call, the last two in the second
    tracker = ProgressTracker(store, flush_interval=60, max_write=max_write)
    receipts = [tracker.add(job, "a", item_key="k") for job in jobs]
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("SELECT FROM jobs WHERE id = %s FOR UPDATE", (jobs[-1],))
        flush = asyncio.create_task(tracker.flush(max_wait=30))
        await _waiting(postgres_url)  # the call writing the last job waits for it
        assert not flush.done()
        assert await asyncio.to_thread(_free, postgres_url, jobs[0]) is first_free
        assert await asyncio.to_thread(_free, postgres_url, jobs[1]) is first_free
        blocker.rollback()
    assert await flush
    assert await asyncio.gather(*receipts) == [True] * 4
    assert [(await store.get_job(job)).stage("a").completed_items for job in jobs] == [1] * 4
    await store.aclose()
