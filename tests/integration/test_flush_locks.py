"""A flush on PostgreSQL and the row locks of its jobs. A transaction holds
the lock of every job it writes until it commits. With ``free_first`` (off
by default), a batch of keyed entries is written in two transactions: the jobs
no other transaction holds first, then the rest; so while the flush waits
for a job another transaction holds, the jobs it already wrote are free and
their counts visible. A batch with bare counts, or a store without
``free_first``, is one transaction: every job of the flush locked before
the one it waits for stays locked, and nothing of it is visible, until that
job is free."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from jobtrack.store import StageProgress, open_store
from jobtrack.store.postgres import PostgresJobStore


def _free(url: str, job_id: str) -> bool:
    """Whether another transaction could lock the job's row now."""
    with psycopg.connect(url) as conn:
        try:
            conn.execute("SELECT FROM jobs WHERE id = %s FOR UPDATE NOWAIT", (job_id,))
        except psycopg.errors.LockNotAvailable:
            return False
        return True


def _counted(url: str, job_id: str) -> int:
    """The stage's completed items as another connection sees them."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT completed_items FROM stages WHERE job_id = %s", (job_id,))
        found = row.fetchone()
        assert found is not None
        return int(found[0])


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


@pytest.mark.parametrize(
    ("free_first", "keyed", "written_first"),
    [(True, True, True), (False, True, False), (True, False, False)],
    ids=["free-first", "one-transaction", "bare-counts"],
)
async def test_the_jobs_written_are_free_while_the_flush_waits_for_a_held_one(
    postgres_url: str, free_first: bool, keyed: bool, written_first: bool
) -> None:
    store = open_store(postgres_url)
    assert isinstance(store, PostgresJobStore)
    assert store.free_first is False  # the default: one transaction
    store.free_first = free_first
    jobs = sorted([(await store.create_job("t", ["a"])).id for _ in range(4)])
    if keyed:
        batch = [StageProgress(job, "a", completed_keys=("k",)) for job in jobs]
    else:
        batch = [StageProgress(job, "a", completed=1) for job in jobs]
    with psycopg.connect(postgres_url) as blocker:
        blocker.execute("SELECT FROM jobs WHERE id = %s FOR UPDATE", (jobs[-1],))
        flush = asyncio.create_task(store.add_progress(batch))
        await _waiting(postgres_url)  # the write of the last job waits for it
        assert not flush.done()
        for job in jobs[:3]:
            assert await asyncio.to_thread(_free, postgres_url, job) is written_first
            assert await asyncio.to_thread(_counted, postgres_url, job) == int(written_first)
        assert await asyncio.to_thread(_counted, postgres_url, jobs[-1]) == 0
        blocker.rollback()
    results = await flush
    assert [(r.progress.job_id, r.counted) for r in results] == [(job, 1) for job in jobs]
    assert [(await store.get_job(job)).stage("a").completed_items for job in jobs] == [1] * 4
    await store.aclose()


async def test_a_keyed_batch_written_again_after_a_failure_counts_nothing_twice(
    postgres_url: str,
) -> None:
    store = open_store(postgres_url)
    jobs = [(await store.create_job("t", ["a"])).id for _ in range(3)]
    batch = [StageProgress(job, "a", completed_keys=("k1", "k2")) for job in jobs]
    assert [r.counted for r in await store.add_progress(batch)] == [2, 2, 2]
    assert [r.counted for r in await store.add_progress(batch)] == [0, 0, 0]
    assert [(await store.get_job(job)).stage("a").completed_items for job in jobs] == [2] * 3
    await store.aclose()


async def test_a_key_claimed_elsewhere_is_waited_for_without_holding_its_job(
    postgres_url: str,
) -> None:
    store = open_store(postgres_url)
    job = (await store.create_job("t", ["a"])).id
    with psycopg.connect(postgres_url) as other:
        # another writer claimed the same item's key and has not committed
        other.execute(
            "INSERT INTO item_keys (job_id, stage, item_key) VALUES (%s, 'a', 'k')", (job,)
        )
        flush = asyncio.create_task(
            store.add_progress([StageProgress(job, "a", completed_keys=("k",))])
        )
        await _waiting(postgres_url)  # the flush waits for the key
        # holding no lock of the job: the other writer takes it at once
        assert await asyncio.to_thread(_free, postgres_url, job)
        other.rollback()
    results = await flush
    assert [r.counted for r in results] == [1]
    assert (await store.get_job(job)).stage("a").completed_items == 1
    await store.aclose()
