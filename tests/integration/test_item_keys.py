"""Item keys are kept only while their job runs: the table stays bounded."""

from __future__ import annotations

import psycopg

from jobtrack.model import JobStatus
from jobtrack.store import JobStore, SqliteJobStore, StageProgress, open_store


def keys_of(store: JobStore, url: str, job_id: str) -> int:
    sql = "SELECT count(*) FROM item_keys WHERE job_id = "
    if isinstance(store, SqliteJobStore):
        row = store.database.connection.execute(sql + "?", (job_id,)).fetchone()
    else:
        with psycopg.connect(url) as conn:
            row = conn.execute(sql + "%s", (job_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_keys_are_forgotten_when_the_job_ends(store_url: str) -> None:
    store = open_store(store_url)
    finishing = await store.create_job("t", ["a"])
    cancelled = await store.create_job("t", ["a"])
    running = await store.create_job("t", ["a"])
    await store.seal_total(finishing.id, "a", total=100)
    keys = [f"k{i}" for i in range(100)]
    await store.add_progress(
        [StageProgress(job.id, "a", completed_keys=keys) for job in (finishing, cancelled, running)]
    )
    assert (await store.get_job(finishing.id)).status is JobStatus.COMPLETED
    await store.end_job(cancelled.id, JobStatus.CANCELLED)
    assert [keys_of(store, store_url, j.id) for j in (finishing, cancelled, running)] == [0, 0, 100]
    # An ended job counts nothing more, so forgetting its keys loses nothing.
    [late] = await store.add_progress([StageProgress(finishing.id, "a", completed_keys=keys)])
    assert late.counted == 0
    assert keys_of(store, store_url, finishing.id) == 0
    await store.aclose()
