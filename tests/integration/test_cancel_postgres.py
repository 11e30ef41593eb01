"""Cancelling a job that is written all the time, on PostgreSQL: a walking
scan raises its totals for every batch of files, back to back. The cancel
waits for the writer's row lock, never conflicts with it, and wins at once."""

from __future__ import annotations

import asyncio
import contextlib

from jobtrack.model import JobStatus
from jobtrack.runtime.cancel import CancelOutcome, cancel_job
from jobtrack.store.postgres import PostgresJobStore


async def test_a_job_written_back_to_back_is_cancelled_at_once(postgres_url: str) -> None:
    scanner = PostgresJobStore(postgres_url, max_size=2)  # the scan's process, its own pool
    user = PostgresJobStore(postgres_url, max_size=2)
    try:
        job = await scanner.create_job("collection-scan", ["scan", "thumbnail"])
        raised = 0
        writing = asyncio.Event()

        async def walk() -> None:
            nonlocal raised
            while True:
                await scanner.raise_total(job.id, "scan", by=64)
                raised += 1
                if raised == 20:
                    writing.set()

        walker = asyncio.create_task(walk())
        await asyncio.wait_for(writing.wait(), 30)
        before = raised
        result = await cancel_job(user, job.id, message="cancelled by the user", source="cli")
        during = raised - before
        walker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await walker
        assert during > 0  # the scan really wrote while the cancel ran
        assert (result.outcome, result.job.status) == (CancelOutcome.CANCELLED, JobStatus.CANCELLED)
        assert [e.kind for e in await user.list_events(job.id)] == ["cancelled"]
        assert (await user.get_job(job.id)).status is JobStatus.CANCELLED
    finally:
        await scanner.aclose()
        await user.aclose()
