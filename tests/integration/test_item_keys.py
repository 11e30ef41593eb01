"""Item keys are kept only while their job runs: the table stays bounded."""

from __future__ import annotations

import asyncio

import psycopg

from jobtrack.errors import StoreUnavailable
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


async def test_an_entry_that_counts_nothing_keeps_none_of_its_keys(store_url: str) -> None:
    """Keys are claimed before the entries are known to count (on PostgreSQL,
    before the job locks): those of an entry that counts nothing (an ended
    job, an ended stage) are not kept, and a key counted before makes the
    rest of the flush count once each."""
    store = open_store(store_url)
    ended_stage = await store.create_job("t", ["a", "b"])
    ended_job = await store.create_job("t", ["a"])
    running = await store.create_job("t", ["a"])
    await store.seal_total(ended_stage.id, "a", total=2)
    await store.add_progress([StageProgress(ended_stage.id, "a", completed_keys=("k0", "k1"))])
    await store.end_job(ended_job.id, JobStatus.CANCELLED)
    await store.add_progress([StageProgress(running.id, "a", completed_keys=("c1",))])
    results = await store.add_progress(
        [
            StageProgress(ended_stage.id, "a", completed_keys=("x1", "x2")),
            StageProgress(ended_stage.id, "b", completed_keys=("y1",), failed_keys=("y2",)),
            StageProgress(ended_job.id, "a", completed_keys=("z1",)),
            StageProgress(running.id, "a", completed_keys=("c1", "c2"), failed_keys=("c3",)),
        ]
    )
    assert [r.counted for r in results] == [0, 2, 0, 2]
    assert [keys_of(store, store_url, j.id) for j in (ended_stage, ended_job, running)] == [
        4,
        0,
        3,
    ]
    stage = (await store.get_job(running.id)).stage("a")
    assert (stage.completed_items, stage.failed_items) == (2, 1)
    assert not (await store.increment(ended_job.id, "a", item_key="z2")).counted
    assert keys_of(store, store_url, ended_job.id) == 0
    await store.aclose()


async def test_flushes_that_share_keys_in_any_order_never_deadlock(postgres_url: str) -> None:
    """Keys are claimed before the job locks, in one order whatever the order
    the caller sent them in and whether they were given as completed or as
    failed: two flushes that share keys wait for each other, never in a
    circle (a deadlock would surface as StoreUnavailable after a second)."""
    stores = [open_store(postgres_url), open_store(postgres_url)]
    first, second = (await stores[0].create_job("t", ["a"]), await stores[0].create_job("t", ["a"]))
    rounds = 150
    deadlocks = 0

    async def flush(store: JobStore, batch: list[StageProgress]) -> None:
        nonlocal deadlocks
        try:
            await store.add_progress(batch)
        except StoreUnavailable:
            deadlocks += 1

    for n in range(rounds):
        one, two = f"r{n}-a", f"r{n}-b"
        await asyncio.gather(
            flush(
                stores[0],
                [
                    StageProgress(first.id, "a", completed_keys=(two, one)),
                    StageProgress(second.id, "a", failed_keys=(one,)),
                ],
            ),
            flush(
                stores[1],
                [
                    StageProgress(first.id, "a", failed_keys=(one,), completed_keys=(two,)),
                    StageProgress(second.id, "a", completed_keys=(one,)),
                ],
            ),
        )
    for store in stores:
        await store.aclose()
    assert deadlocks == 0
    store = open_store(postgres_url)
    counted = [(await store.get_job(job.id)).stage("a").done_items for job in (first, second)]
    await store.aclose()
    assert counted == [2 * rounds, rounds]
