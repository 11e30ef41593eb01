"""The stuck-job query on PostgreSQL goes through the seed's index, and the
reads of jobs reach their stages through the stages' primary key."""

from __future__ import annotations

import psycopg

from jobtrack.store import open_store
from jobtrack.store.postgres.store import _Q, PostgresJobStore


async def test_the_stuck_query_uses_the_seeds_index(postgres_url: str) -> None:
    await _migrated(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        # 50,000 jobs, most of them ended, as in a store that has run a while.
        conn.execute(
            """
            INSERT INTO jobs (id, job_type, status, created_at, updated_at)
            SELECT 'j' || n, CASE WHEN n % 10 = 0 THEN 'other' ELSE 'collection-scan' END,
                   CASE WHEN n % 50 = 0 THEN 'in_progress' ELSE 'completed' END,
                   now() - n * interval '1 second', now() - n * interval '1 second'
            FROM generate_series(1, 50000) n
            """
        )
        _three_stages_each(conn)
        params: dict[str, object] = {"job_type": "collection-scan", "limit": 100}
        params |= {"before": "2100-01-01", "after": "1970-01-01", "after_id": ""}
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + _Q["find_stuck"], params).fetchall()
        )
    # Either index reaches the active jobs alone: the seeds' (type, status,
    # updated) or the partial one of the active jobs (the watch list's).
    assert any(
        f"{scan} {index}" in plan
        for scan in ("Index Scan using", "Bitmap Index Scan on")
        for index in ("idx_stuck_jobs", "idx_jobs_active")
    ), plan
    assert "Index Scan using stages_pkey on stages" in plan, plan
    assert "Seq Scan" not in plan, plan


def _three_stages_each(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        """
        INSERT INTO stages (job_id, name, position)
        SELECT id, name, position - 1 FROM jobs,
               unnest(array['scan', 'thumbnail', 'cache']) WITH ORDINALITY AS s (name, position)
        """
    )
    conn.execute("ANALYZE jobs")
    conn.execute("ANALYZE stages")


async def test_the_job_reads_join_the_stages_on_their_key(postgres_url: str) -> None:
    await _migrated(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        conn.execute(
            """
            INSERT INTO jobs (id, job_type, status, created_at, updated_at)
            SELECT 'j' || n, 'collection-scan', 'completed',
                   now() - n * interval '1 second', now() - n * interval '1 second'
            FROM generate_series(1, 50000) n
            """
        )
        _three_stages_each(conn)
        params: dict[str, object] = {"status": None, "job_type": None, "updated_since": None}
        params |= {"active": False, "search": None, "id_prefix": None, "pattern": "%"}
        params |= {"search_types": [], "search_paths": []}
        listed = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + _Q["list_jobs"], params | {"limit": 50, "offset": 0}
            ).fetchall()
        )
        one = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + _Q["read_job"], {"job_id": "j77"})
        )
    assert "Index Scan using idx_jobs_created on jobs" in listed, listed
    assert "Index Scan using stages_pkey on stages" in listed, listed
    assert "Seq Scan" not in listed, listed
    assert "jobs_pkey" in one, one
    assert "stages_pkey" in one, one
    assert "Seq Scan" not in one, one


async def test_the_change_feed_uses_its_index(postgres_url: str) -> None:
    await _migrated(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        conn.execute(
            """
            INSERT INTO jobs (id, job_type, status, created_at, updated_at)
            SELECT 'j' || n, 'collection-scan', 'completed',
                   now() - n * interval '1 second', now() - n * interval '1 second'
            FROM generate_series(1, 50000) n
            """
        )
        conn.execute("ANALYZE jobs")
        newest = conn.execute("SELECT max(seq) FROM jobs").fetchone()
        assert newest is not None
        snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
        assert snapshot is not None
        params = {"after": newest[0] - 5, "snapshot": snapshot[0], "limit": 500}
        plan = "\n".join(
            row[0] for row in conn.execute("EXPLAIN " + _Q["list_changed"], params).fetchall()
        )
        last = "\n".join(row[0] for row in conn.execute("EXPLAIN " + _Q["last_change"]))
    # The jobs past the seq on idx_jobs_seq, those of transactions the last
    # read did not see on idx_jobs_xid.
    assert "idx_jobs_seq" in plan, plan
    assert "idx_jobs_xid" in plan, plan
    assert "Seq Scan on jobs" not in plan, plan
    assert "Index Only Scan Backward using idx_jobs_seq" in last, last


async def test_the_overview_counts_read_the_events_of_the_active_jobs_only(
    postgres_url: str,
) -> None:
    await _migrated(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs CASCADE")
        # 10,000 jobs, 2,000 of them active, 50,000 events.
        conn.execute(
            """
            INSERT INTO jobs (id, job_type, status, created_at, updated_at)
            SELECT 'j' || n, 'type' || (n % 5),
                   CASE WHEN n <= 2000 THEN 'in_progress' ELSE 'completed' END,
                   now() - n * interval '1 second', now() - n * interval '1 second'
            FROM generate_series(1, 10000) n
            """
        )
        conn.execute(
            """
            INSERT INTO job_events (job_id, at, kind)
            SELECT 'j' || (1 + n % 10000), now(),
                   (array['waiting', 'redriven', 'reconciled', 'started', 'cancelled'])[1 + n % 5]
            FROM generate_series(0, 49999) n
            """
        )
        conn.execute("ANALYZE jobs")
        conn.execute("ANALYZE job_events")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN (ANALYZE, TIMING OFF) " + _Q["count_by_type"], {"before": "2100-01-01"}
            ).fetchall()
        )
    # The events are read once per active job (2,000 loops), not per job.
    assert "loops=2000" in plan, plan
    assert "loops=10000" not in plan, plan
    assert "JIT:" not in plan, plan  # priced below the planner's JIT threshold


async def test_the_stores_connections_run_without_jit(postgres_url: str) -> None:
    store = open_store(postgres_url)
    assert isinstance(store, PostgresJobStore)
    try:
        await store.list_jobs()  # the direct connection
        async with store.connection() as pooled:
            pooled_jit = await (await pooled.execute("SHOW jit")).fetchone()
        hot = await store._hot_connection()
        hot_jit = await (await hot.execute("SHOW jit")).fetchone()
    finally:
        await store.aclose()
    assert (pooled_jit, hot_jit) == (("off",), ("off",))


async def _migrated(url: str) -> None:
    """The store's schema made (or brought up to date) at ``url``."""
    store = open_store(url)
    await store.list_jobs()
    await store.aclose()
