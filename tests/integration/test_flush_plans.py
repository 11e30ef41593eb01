"""A flush on PostgreSQL goes through ``jobtrack_flush``: small batches on
generic plans, large ones on plans made for their arrays (migration 0009).
Both give what ``jobtrack_add_many`` gives, keys counted once, and the plan
mode the call sets is its own."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from jobtrack.store import open_store
from jobtrack.store.base import StageProgress

CALL = "SELECT * FROM {}(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


def _arrays(job_ids: list[str], keys: int, tag: str) -> tuple[Any, ...]:
    """One stage ``s`` per job, ``keys`` completed keys each (the first
    repeated, so that a key already claimed is met), in the store's layout."""
    ckeys = [f"{tag}-{job}-{n}" for job in job_ids for n in range(keys)]
    ckeys.insert(keys, f"{tag}-{job_ids[0]}-0")  # the first job's keys, then its first again
    counts = [keys] * len(job_ids)
    counts[0] += 1
    starts = [1]
    for count in counts[:-1]:
        starts.append(starts[-1] + count)
    nothing = [0] * len(job_ids)
    return (
        job_ids,
        ["s"] * len(job_ids),
        nothing,
        nothing,
        ckeys,
        starts,
        counts,
        [],
        [1] * len(job_ids),
        nothing,
    )


@pytest.mark.parametrize(("stages", "keys"), [(1, 1), (3, 50), (20, 150)])
async def test_jobtrack_flush_counts_as_add_many_and_keeps_the_plan_mode(
    postgres_url: str, stages: int, keys: int
) -> None:
    store = open_store(postgres_url)
    try:
        mine = [(await store.create_job("flush", ["s"])).id for _ in range(stages)]
        theirs = [(await store.create_job("flush", ["s"])).id for _ in range(stages)]
        for job_id in mine + theirs:
            await store.raise_total(job_id, "s", by=keys + 10)
    finally:
        await store.aclose()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        before = conn.execute("SHOW plan_cache_mode").fetchone()
        for _ in range(7):  # past the calls after which PL/pgSQL may keep a plan
            flushed = conn.execute(
                CALL.format("jobtrack_flush"), (*_arrays(mine, keys, "k"), "2026-01-01")
            ).fetchall()
        added = conn.execute(
            CALL.format("jobtrack_add_many"), (*_arrays(theirs, keys, "k"), "2026-01-01")
        ).fetchall()
        after = conn.execute("SHOW plan_cache_mode").fetchone()
    assert before == after
    # The last of the seven calls counted nothing new: every key was there.
    assert [row[1] for row in flushed] == [0] * stages
    assert [row[5] for row in flushed] == [keys] * stages
    assert [row[1] for row in added] == [keys] * stages
    assert [row[5] for row in added] == [keys] * stages


async def test_the_store_flushes_small_and_large_batches_exactly(postgres_url: str) -> None:
    store = open_store(postgres_url)
    try:
        jobs = [(await store.create_job("flush", ["s"])).id for _ in range(20)]
        for job_id in jobs:
            await store.raise_total(job_id, "s", by=1_000)
        small = [StageProgress(jobs[0], "s", completed_keys=[f"a{n}" for n in range(10)])]
        large = [
            StageProgress(job_id, "s", completed_keys=[f"b{n}" for n in range(150)])
            for job_id in jobs
        ]
        for batch in (small, small, large, large):
            await store.add_progress(batch)
        counts = [(await store.get_job(job_id)).stage("s").completed_items for job_id in jobs]
    finally:
        await store.aclose()
    assert counts == [160] + [150] * 19
