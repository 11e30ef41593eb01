"""Counting under real concurrency: separate OS processes, one SQLite file."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

from jobtrack.model import JobStatus, StageStatus
from jobtrack.store import SqliteJobStore

WRITERS = 16
PER_WRITER = 1000


def _writer(path: str, job_id: str, keys: list[str] | None, count: int) -> None:
    async def write() -> None:
        store = SqliteJobStore.open(path)
        try:
            if keys is None:
                for _ in range(count):
                    await store.increment(job_id, "thumbnail")
            else:
                for key in keys:
                    await store.increment(job_id, "thumbnail", item_key=key)
        finally:
            await store.aclose()

    asyncio.run(write())


def _run_writers(args: list[tuple[str, str, list[str] | None, int]]) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=a) for a in args]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0


async def test_sixteen_processes_count_exactly(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    store = SqliteJobStore.open(path)
    job = await store.create_job("t", ["thumbnail"])
    await asyncio.to_thread(
        _run_writers, [(path, job.id, None, PER_WRITER) for _ in range(WRITERS)]
    )
    stage = (await store.get_job(job.id)).stage("thumbnail")
    assert stage.completed_items == WRITERS * PER_WRITER
    await store.aclose()


async def test_every_key_delivered_twice_counts_once(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    store = SqliteJobStore.open(path)
    job = await store.create_job("t", ["thumbnail"])
    keys = [f"image-{i}" for i in range(800)]
    # Eight writers, each half of the keys, and every key in two writers.
    halves = [keys[:400], keys[400:]]
    await asyncio.to_thread(_run_writers, [(path, job.id, halves[i % 2], 0) for i in range(8)])
    stage = (await store.get_job(job.id)).stage("thumbnail")
    assert stage.completed_items == 800
    await store.seal_total(job.id, "thumbnail", total=800)
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    await store.aclose()


async def test_racing_last_items_complete_once(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    store = SqliteJobStore.open(path)
    job = await store.create_job("t", ["thumbnail"])
    await store.seal_total(job.id, "thumbnail", total=WRITERS * 50)
    await asyncio.to_thread(
        _run_writers,
        [(path, job.id, [f"{w}-{i}" for i in range(60)], 0) for w in range(WRITERS)],
    )
    done = await store.get_job(job.id)
    stage = done.stage("thumbnail")
    # The stage completed at its total; the items past it were not counted.
    assert (stage.status, stage.completed_items) == (StageStatus.COMPLETED, WRITERS * 50)
    assert done.status is JobStatus.COMPLETED
    await store.aclose()
