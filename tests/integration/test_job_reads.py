"""Reading a job is one statement: one round trip on PostgreSQL (on the
store's direct connection, prepared, with no pool checkout), one statement
with no ``BEGIN`` on SQLite; and the direct connection survives a broken
connection and a cancelled read."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobtrack.errors import JobNotFound
from jobtrack.store import JobQuery, SqliteJobStore
from jobtrack.store.postgres import PostgresJobStore
from jobtrack.store.postgres import store as postgres_store
from jobtrack.store.sqlcore import Fetch, Row

STAGES = ["scan", "thumbnail", "cache"]


class _RoundTrips:
    """Counts the exchanges with the server of every psycopg async
    connection: each statement's ``execute`` (and the pool's check of a
    connection) waits once on its connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        wait = psycopg.AsyncConnection.wait

        async def counted(conn: psycopg.AsyncConnection[Any], *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await wait(conn, *args, **kwargs)

        monkeypatch.setattr(psycopg.AsyncConnection, "wait", counted)


async def test_a_postgres_read_of_a_job_is_one_round_trip(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresJobStore(postgres_url)
    try:
        job = await store.create_job("reads", STAGES, attributes={"source": "x"})
        for _ in range(3):  # the direct connection made, the statements prepared
            await store.get_job(job.id)
            await store.list_jobs()
        trips = _RoundTrips(monkeypatch)
        read = await store.get_job(job.id)
        assert trips.count == 1
        listed = await store.list_jobs(JobQuery(job_type="reads"))
        assert trips.count == 2
        later = job.updated_at + timedelta(seconds=1)
        stuck = await store.find_stuck("reads", updated_before=later)
        assert trips.count == 3
        with pytest.raises(JobNotFound):
            await store.get_job("no-such-job")
        assert trips.count == 4
    finally:
        await store.aclose()
    assert read == job
    assert list(read.stages) == STAGES
    assert listed == [job]
    assert stuck == [job]


async def test_concurrent_postgres_reads_take_pooled_connections(postgres_url: str) -> None:
    store = PostgresJobStore(postgres_url, max_size=4)
    try:
        jobs = [await store.create_job("concurrent", STAGES) for _ in range(8)]
        for _ in range(5):
            read = await asyncio.gather(*(store.get_job(job.id) for job in jobs))
            assert read == jobs
    finally:
        await store.aclose()


async def test_a_read_on_a_broken_direct_connection_runs_again_on_a_pooled_one(
    postgres_url: str,
) -> None:
    store = PostgresJobStore(postgres_url)
    try:
        job = await store.create_job("broken", STAGES)
        await store.get_job(job.id)
        assert store._hot is not None
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._hot.info.backend_pid,))
        assert await store.get_job(job.id) == job
        assert await store.get_job(job.id) == job  # on a new direct connection
    finally:
        await store.aclose()


def _sleep() -> Generator[Fetch, list[Row], None]:
    yield Fetch("test_sleep")


async def test_a_cancelled_read_leaves_no_statement_on_the_direct_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(postgres_store._Q, "test_sleep", "SELECT pg_sleep(2)")
    store = PostgresJobStore(postgres_url)
    try:
        job = await store.create_job("cancelled", STAGES)
        await store.get_job(job.id)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.read(_sleep()), 0.2)
        assert await asyncio.wait_for(store.get_job(job.id), 1.5) == job
    finally:
        await store.aclose()


async def test_a_sqlite_read_of_a_job_is_one_statement(tmp_path: Path) -> None:
    store = SqliteJobStore.open(str(tmp_path / "jobs.db"))
    try:
        job = await store.create_job("reads", STAGES)
        statements: list[str] = []
        store.database.connection.set_trace_callback(statements.append)
        read = await store.get_job(job.id)
        listed = await store.list_jobs()
        with pytest.raises(JobNotFound):
            await store.get_job("no-such-job")
        store.database.connection.set_trace_callback(None)
    finally:
        await store.aclose()
    assert read == job
    assert listed == [job]
    assert len(statements) == 3, statements
    assert not any(s.split()[0].upper() in {"BEGIN", "COMMIT"} for s in statements)
