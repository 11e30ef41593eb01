"""A real store that fails every progress write with an error that is not
an outage (SQLite's "attempt to write a readonly database", PostgreSQL's
``read_only_sql_transaction`` during a failover): the tracker keeps the
items, refuses none, and counts each exactly once when the store writes
again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest

from jobtrack.store import JobStore, SqliteJobStore, open_store
from jobtrack.tracking import ProgressTracker

READ_ONLY_TRIGGER = """
CREATE FUNCTION jobtrack_test_read_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cannot execute UPDATE in a read-only transaction'
        USING ERRCODE = 'read_only_sql_transaction';
END $$;
CREATE TRIGGER jobtrack_test_read_only BEFORE UPDATE ON stages
    FOR EACH ROW EXECUTE FUNCTION jobtrack_test_read_only();
"""


def read_only_switch(store: JobStore, url: str) -> Callable[[bool], None]:
    """A function that makes the store refuse writes (True) or take them again."""
    if isinstance(store, SqliteJobStore):
        connection = store.database.connection

        def sqlite(on: bool) -> None:
            connection.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")

        return sqlite

    def postgres(on: bool) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            if on:
                conn.execute(READ_ONLY_TRIGGER)
            else:
                conn.execute("DROP TRIGGER jobtrack_test_read_only ON stages")
                conn.execute("DROP FUNCTION jobtrack_test_read_only()")

    return postgres


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "per-item"])
async def test_a_read_only_store_keeps_the_items_and_counts_them_once(
    store_url: str, coalesce: bool
) -> None:
    store = open_store(store_url)
    job = await store.create_job("t", ["a"])
    read_only = read_only_switch(store, store_url)
    tracker = ProgressTracker(store, coalesce=coalesce, flush_interval=0.01, retry_after=0.05)
    read_only(True)
    try:
        receipts = [tracker.add(job.id, "a", item_key=f"image-{i}") for i in range(100)]
        await asyncio.sleep(0.5)  # writes fail meanwhile, and are retried
        # Every item is held (none dropped or refused): seen whole between two
        # retries, since a retry in flight holds one or two items off the count.
        async with asyncio.timeout(10):
            while tracker.pending != 100:  # noqa: ASYNC110 (the tracker's state, no event)
                await asyncio.sleep(0.005)
        assert tracker.dropped == 0
        assert [r.done() for r in receipts] == [False] * 100
        assert (await store.get_job(job.id)).stage("a").completed_items == 0
    finally:
        read_only(False)
    assert await asyncio.wait_for(asyncio.gather(*receipts), timeout=30) == [True] * 100
    assert [r.refused for r in receipts] == [None] * 100
    again = [tracker.add(job.id, "a", item_key=f"image-{i}") for i in range(100)]
    assert await asyncio.wait_for(asyncio.gather(*again), timeout=30) == [True] * 100
    assert await tracker.flush(max_wait=5.0)
    assert (await store.get_job(job.id)).stage("a").completed_items == 100
    await store.aclose()
