"""The SQLite schema: versioned migrations, applied once, the seed's index used."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobtrack.errors import StoreError
from jobtrack.pipeline.catalog import SqliteCatalog
from jobtrack.store import ChangeCursor, SqliteDatabase, SqliteJobStore
from jobtrack.store.sql import migrations
from jobtrack.store.sqlite.database import _statements
from jobtrack.store.sqlite.store import _Q


def test_migrations_apply_once_per_component(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / "jobs.db")
    assert database.schema_version("jobs") == 0
    store = SqliteJobStore(database)
    SqliteCatalog(database)
    assert (database.schema_version("jobs"), database.schema_version("catalog")) == (9, 1)
    # Opening again (another process, a restart) applies nothing more.
    assert database.migrate("jobs", "jobtrack.store.sqlite.migrations") == []
    again = SqliteDatabase(tmp_path / "jobs.db")
    assert again.migrate("catalog", "jobtrack.pipeline.catalog.migrations") == []
    tables = {
        row[0]
        for row in database.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert tables == {
        "schema_migrations",
        "jobs",
        "stages",
        "item_keys",
        "job_events",
        "change_seq",
        "job_items",
        "item_failures",
        "workers",
        "worker_throughput",
        "sqlite_sequence",
        "collections",
        "images",
        "artifacts",
    }
    del store
    database.close()
    again.close()


def test_the_stuck_query_uses_the_seeds_index(tmp_path: Path) -> None:
    store = SqliteJobStore.open(str(tmp_path / "jobs.db"))
    plan = store.database.connection.execute(
        "EXPLAIN QUERY PLAN " + _Q["find_stuck"],
        {"job_type": "collection-scan", "before": 0, "after": -1, "after_id": "", "limit": 100},
    ).fetchall()
    details = " ".join(row[-1] for row in plan)
    # A search on the seed's composite index, never a scan of the table.
    assert (
        "SEARCH jobs USING INDEX idx_stuck_jobs (job_type=? AND status=? AND updated_at>? AND"
        " updated_at<?)" in details
    ), details
    assert "SCAN jobs" not in details
    store.database.close()


def test_the_change_feed_uses_its_index(tmp_path: Path) -> None:
    store = SqliteJobStore.open(str(tmp_path / "jobs.db"))
    plan = store.database.connection.execute(
        "EXPLAIN QUERY PLAN " + _Q["list_changed"], {"after": 0, "limit": 500}
    ).fetchall()
    details = " ".join(row[-1] for row in plan)
    assert "SEARCH jobs USING INDEX idx_jobs_seq (seq>?)" in details, details
    last = store.database.connection.execute("EXPLAIN QUERY PLAN " + _Q["last_change"]).fetchall()
    assert " ".join(row[-1] for row in last) == "SEARCH jobs USING COVERING INDEX idx_jobs_seq"
    store.database.close()


async def test_existing_jobs_are_numbered_in_write_order(tmp_path: Path) -> None:
    """A database from before the change sequence: its jobs get a seq in the
    order of their last write, and the sequence carries on after them."""
    database = SqliteDatabase(tmp_path / "jobs.db")
    with database.write() as conn:
        for migration in migrations("jobtrack.store.sqlite.migrations")[:3]:
            for statement in _statements(migration.read()):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES ('jobs', ?, ?, 0)",
                (migration.version, migration.name),
            )
        for job_id, at in (("late", 2), ("early", 1)):
            conn.execute(
                "INSERT INTO jobs (id, job_type, created_at, updated_at) VALUES (?, 't', ?, ?)",
                (job_id, at, at),
            )
    store = SqliteJobStore(database)
    changed, cursor = await store.list_changed()
    assert [(job.id, job.seq) for job in changed] == [("early", 1), ("late", 2)]
    assert cursor == ChangeCursor(2)
    made = await store.create_job("t", ["a"])
    assert made.seq == 3 == (await store.last_change()).seq
    database.close()


def test_a_failed_commit_leaves_the_connection_usable(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / "jobs.db")
    conn = database.connection
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(StoreError, match="FOREIGN KEY"), database.write() as tx:
        tx.execute("INSERT INTO child VALUES (1)")  # fails only at COMMIT
    assert not conn.in_transaction
    with database.write() as tx:
        tx.execute("INSERT INTO parent VALUES (1)")
    assert conn.execute("SELECT count(*) FROM parent").fetchone() == (1,)
    database.close()


def test_the_connection_checkpoints_every_ten_thousand_pages(tmp_path: Path) -> None:
    # A ledger batch of keys in no order dirties about a page a key; with
    # SQLite's default of 1,000 pages every such batch was checkpointed.
    database = SqliteDatabase(tmp_path / "jobs.db")
    pragma = database.connection.execute
    assert pragma("PRAGMA journal_mode").fetchone() == ("wal",)
    assert pragma("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    assert pragma("PRAGMA wal_autocheckpoint").fetchone() == (10_000,)
    assert pragma("PRAGMA journal_size_limit").fetchone() == (64 * 1024 * 1024,)
    database.close()
