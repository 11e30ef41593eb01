"""Counting under real concurrency: separate OS processes, one store.

Run against SQLite (one file, a connection per process) and PostgreSQL (a
database of its own, a connection per process).
"""

from __future__ import annotations

import asyncio
import multiprocessing

from jobtrack.model import JobStatus, StageStatus
from jobtrack.store import JobStore, open_store

WRITERS = 16
PER_WRITER = 1000
# 32 processes, one connection each: well inside PostgreSQL's default
# max_connections of 100, even beside other clients of the same server.
RACERS = 32


def _writer(url: str, job_id: str, keys: list[str] | None, count: int, out: object) -> None:
    """Runs in its own process: increments, then reports completion transitions."""

    async def write() -> list[str]:
        store = open_store(url)
        endings = []
        try:
            items: list[str | None] = [None] * count if keys is None else list(keys)
            for key in items:
                result = await store.increment(job_id, "thumbnail", item_key=key)
                if result.counted and result.job_status is JobStatus.COMPLETED:
                    assert result.stage.completed_at is not None
                    endings.append(result.stage.completed_at.isoformat())
        finally:
            await store.aclose()
        return endings

    out.put(asyncio.run(write()))  # type: ignore[attr-defined]


def _run_writers(args: list[tuple[str, str, list[str] | None, int]]) -> list[str]:
    """Start every writer at once; return every completion they saw."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_writer, args=(*a, results)) for a in args]
    for process in processes:
        process.start()
    endings = []
    for _ in processes:
        endings.extend(results.get(timeout=180))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return endings


async def new_job(url: str, *, total: int | None = None) -> tuple[JobStore, str]:
    store = open_store(url)
    job = await store.create_job("t", ["thumbnail"])
    if total is not None:
        await store.seal_total(job.id, "thumbnail", total=total)
    return store, job.id


async def test_sixteen_processes_count_exactly(store_url: str) -> None:
    store, job_id = await new_job(store_url)
    await asyncio.to_thread(
        _run_writers, [(store_url, job_id, None, PER_WRITER) for _ in range(WRITERS)]
    )
    stage = (await store.get_job(job_id)).stage("thumbnail")
    assert stage.completed_items == WRITERS * PER_WRITER
    await store.aclose()


async def test_every_key_delivered_twice_counts_once(store_url: str) -> None:
    store, job_id = await new_job(store_url)
    keys = [f"image-{i}" for i in range(800)]
    halves = [keys[:400], keys[400:]]  # every key in two writers of the eight
    await asyncio.to_thread(_run_writers, [(store_url, job_id, halves[i % 2], 0) for i in range(8)])
    assert (await store.get_job(job_id)).stage("thumbnail").completed_items == 800
    await store.seal_total(job_id, "thumbnail", total=800)
    assert (await store.get_job(job_id)).status is JobStatus.COMPLETED
    await store.aclose()


async def test_racing_last_items_complete_the_job_once(store_url: str) -> None:
    total = RACERS * 3
    store, job_id = await new_job(store_url, total=total)
    # 32 writers, 4 distinct items each: 128 items race for 96 places.
    endings = await asyncio.to_thread(
        _run_writers,
        [(store_url, job_id, [f"{w}-{i}" for i in range(4)], 0) for w in range(RACERS)],
    )
    job = await store.get_job(job_id)
    stage = job.stage("thumbnail")
    assert (stage.status, stage.completed_items) == (StageStatus.COMPLETED, total)
    assert job.status is JobStatus.COMPLETED
    # Exactly one increment saw the job complete, and its moment is the one kept.
    assert stage.completed_at is not None
    assert endings == [stage.completed_at.isoformat()]
    await store.aclose()
