"""The change sequence on a real PostgreSQL: nextval's order is not the
order of commits, and the change feed's cursor still misses no write."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from jobtrack.store import ChangeCursor
from jobtrack.store.postgres import PostgresJobStore
from tests.postgres import database_url, new_schema


@pytest.fixture
async def schema_url(postgres_url: str) -> str:
    """A schema of its own: the feed sees this test's jobs alone."""
    database = postgres_url.rsplit("/", 1)[-1]
    return database_url(database, schema=new_schema(database))


@pytest.fixture
async def store(schema_url: str) -> AsyncIterator[PostgresJobStore]:
    opened = PostgresJobStore(schema_url, max_size=2)
    yield opened
    await opened.aclose()


async def test_a_lower_seq_committed_after_a_higher_one_still_reaches_the_feed(
    store: PostgresJobStore, schema_url: str
) -> None:
    slow_job = await store.create_job("t", ["a"])
    quick_job = await store.create_job("t", ["a"])
    start = (await store.list_changed()).cursor
    async with await psycopg.AsyncConnection.connect(schema_url) as slow:
        # A writer takes its seq first and holds its transaction open...
        await slow.execute("UPDATE jobs SET message = 'slow' WHERE id = %s", (slow_job.id,))
        held = await (
            await slow.execute("SELECT seq FROM jobs WHERE id = %s", (slow_job.id,))
        ).fetchone()
        assert held is not None
        # ...while another takes the next seq and commits.
        await store.increment(quick_job.id, "a")
        quick = await store.get_job(quick_job.id)
        assert quick.seq > held[0] > start.seq
        seen, cursor = await store.list_changed(after=start)
        assert [job.id for job in seen] == [quick_job.id]
        assert cursor.seq == quick.seq
        slow_xid = await (await slow.execute("SELECT pg_current_xact_id()::text")).fetchone()
        assert slow_xid is not None
        assert slow_xid[0] in cursor.snapshot.split(":")[2].split(",")  # in flight
        await slow.commit()
    # A cursor of the seq alone would miss it for ever; this one does not.
    assert (await store.list_changed(after=ChangeCursor(cursor.seq))).jobs == []
    [late], after = await store.list_changed(after=cursor)
    assert (late.id, late.seq, late.message) == (slow_job.id, held[0], "slow")
    assert late.seq < cursor.seq
    assert after.seq == cursor.seq  # the cursor never moves back
    assert (await store.list_changed(after=after)).jobs == []  # and it is read once


async def test_a_higher_xid_that_took_the_lower_seq_still_reaches_the_feed(
    store: PostgresJobStore, schema_url: str
) -> None:
    """A transaction that has its xid first and takes its seq last commits
    first; the other, younger xid but older seq, commits after the read. At
    the read it is in flight with an xid at or past the snapshot's xmax, so it
    is in no list of running xids: the cursor must still hold it back."""
    first_job = await store.create_job("t", ["a"])
    held_job = await store.create_job("t", ["a"])
    start = await store.last_change()
    async with (
        await psycopg.AsyncConnection.connect(schema_url) as early,
        await psycopg.AsyncConnection.connect(schema_url) as late,
    ):
        await early.execute("SELECT pg_current_xact_id()")  # the older xid, no seq yet
        await late.execute("UPDATE jobs SET message = 'late' WHERE id = %s", (held_job.id,))
        await early.execute("UPDATE jobs SET message = 'early' WHERE id = %s", (first_job.id,))
        await early.commit()  # the higher seq commits first
        seen, cursor = await store.list_changed(after=start)
        assert [(job.id, job.message) for job in seen] == [(first_job.id, "early")]
        await late.commit()  # the lower seq, after the read
    [caught], after = await store.list_changed(after=cursor)
    assert (caught.id, caught.message) == (held_job.id, "late")
    assert caught.seq < cursor.seq == after.seq
    assert (await store.list_changed(after=after)).jobs == []


async def test_a_transaction_that_wrote_more_than_a_page_is_read_whole(
    store: PostgresJobStore, schema_url: str
) -> None:
    """One transaction in flight at a read writes more jobs than a page
    holds: all of them come in the next read, none lost to the limit."""
    jobs = [await store.create_job("t", ["a"]) for _ in range(5)]
    start = await store.last_change()
    async with await psycopg.AsyncConnection.connect(schema_url) as slow:
        await slow.execute("UPDATE jobs SET message = 'slow' WHERE job_type = 't'")
        other = await store.create_job("t", ["a"])
        seen, cursor = await store.list_changed(after=start, limit=2)
        assert [job.id for job in seen] == [other.id]
        await slow.commit()
    caught, after = await store.list_changed(after=cursor, limit=2)
    assert sorted(job.id for job in caught) == sorted(job.id for job in jobs)
    assert {job.message for job in caught} == {"slow"}
    assert (await store.list_changed(after=after, limit=2)).jobs == []


async def test_a_feed_started_while_a_writer_is_in_flight_misses_nothing(
    store: PostgresJobStore, schema_url: str
) -> None:
    job = await store.create_job("t", ["a"])
    async with await psycopg.AsyncConnection.connect(schema_url) as slow:
        await slow.execute("UPDATE jobs SET message = 'slow' WHERE id = %s", (job.id,))
        other = await store.create_job("t", ["a"])
        start = await store.last_change()
        assert start.seq == other.seq
        assert start.snapshot
        await slow.commit()
    [late], _ = await store.list_changed(after=start)
    assert (late.id, late.message) == (job.id, "slow")


async def test_existing_jobs_are_numbered_by_the_migration_in_write_order(
    schema_url: str,
) -> None:
    """A database from before the change sequence: its jobs get a seq in the
    order of their last write, and the sequence carries on after them."""
    from jobtrack.store.sql import migrations

    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as conn:
        for migration in migrations("jobtrack.store.postgres.migrations")[:4]:
            await conn.execute(migration.read().encode())
        await conn.execute(
            "CREATE TABLE schema_migrations (component text NOT NULL, version integer NOT NULL,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (component, version))"
        )
        for version in (1, 2, 3, 4):
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, name) VALUES ('jobs', %s, 'x')",
                (version,),
            )
        for job_id, at in (("late", "2026-01-02"), ("early", "2026-01-01")):
            await conn.execute(
                "INSERT INTO jobs (id, job_type, created_at, updated_at) VALUES (%s, 't', %s, %s)",
                (job_id, at, at),
            )
    store = PostgresJobStore(schema_url, max_size=2)
    try:
        changed, cursor = await store.list_changed()
        assert [(job.id, job.seq) for job in changed] == [("early", 1), ("late", 2)]
        assert cursor.seq == 2
        made = await store.create_job("t", ["a"])
        assert made.seq == 3 == (await store.last_change()).seq
    finally:
        await store.aclose()
