"""ProgressTracker: best effort, never raises, keeps what failed for retry."""

from __future__ import annotations

import asyncio
import logging

import pytest

from jobtrack.errors import StoreError, StoreUnavailable
from jobtrack.model import StageStatus
from jobtrack.store import Increment, InMemoryJobStore
from jobtrack.tracking import ProgressTracker


class FlakyStore(InMemoryJobStore):
    """An in-memory store that can be switched off, or broken for good, and
    that yields to the event loop on every call, as a networked store would."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.broken = False
        self.calls = 0

    async def increment(
        self,
        job_id: str,
        stage: str,
        *,
        completed: int | None = None,
        failed: int = 0,
        item_key: str | None = None,
    ) -> Increment:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("store is down")
        if self.broken:
            raise StoreError("disk I/O error")
        return await super().increment(
            job_id, stage, completed=completed, failed=failed, item_key=item_key
        )


async def test_counts_completed_and_failed_items() -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store)
    assert await tracker.increment(job.id, "a", item_key="1")
    assert await tracker.increment(job.id, "a", item_key="2", failed=True)
    assert await tracker.increment(job.id, "a", item_key="1")  # known already: taken
    stage = (await store.get_job(job.id)).stage("a")
    assert (stage.completed_items, stage.failed_items) == (1, 1)


async def test_unknown_job_and_stage_are_warnings(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store)
    with caplog.at_level(logging.WARNING):
        assert not await tracker.increment("missing", "a")
        assert not await tracker.increment(job.id, "nope")
    assert tracker.pending == 0
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "progress not recorded: job 'missing' not found",
        f"progress not recorded: job {job.id!r} has no stage 'nope'",
    ]


async def test_store_down_keeps_increments_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    await store.seal_total(job.id, "a", total=5)
    tracker = ProgressTracker(store, retry_after=0.0)
    store.down = True
    with caplog.at_level(logging.WARNING):
        for i in range(3):
            assert not await tracker.increment(job.id, "a", item_key=str(i))
    assert tracker.pending == 3
    assert any("will retry" in r.getMessage() for r in caplog.records)
    store.down = False
    # The next increment first drains what was kept, oldest first.
    assert await tracker.increment(job.id, "a", item_key="3")
    assert tracker.pending == 0
    assert await tracker.increment(job.id, "a", item_key="4")
    final = (await store.get_job(job.id)).stage("a")
    assert (final.completed_items, final.status) == (5, StageStatus.COMPLETED)


async def test_flush_gives_up_after_timeout_without_losing_anything() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, retry_after=0.01, max_retry_after=0.02)
    store.down = True
    await tracker.increment(job.id, "a")
    assert not await tracker.flush(max_wait=0.1)
    assert tracker.pending == 1
    store.down = False
    assert await tracker.flush(max_wait=1.0)
    assert tracker.pending == 0
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_pending_buffer_is_bounded() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, max_pending=2, retry_after=60)
    store.down = True
    for i in range(5):
        await tracker.increment(job.id, "a", item_key=str(i))
    assert (tracker.pending, tracker.dropped) == (2, 3)


async def test_logs_progress_every_50_items(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=120)
    tracker = ProgressTracker(store)
    with caplog.at_level(logging.INFO, logger="jobtrack.tracking.tracker"):
        for i in range(120):
            await tracker.increment(job.id, "a", item_key=str(i))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"job {job.id} stage a: 50/120 items (0 failed)",
        f"job {job.id} stage a: 100/120 items (0 failed)",
    ]


async def test_disabled_tracker_writes_nothing() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, enabled=False)
    assert not await tracker.increment(job.id, "a")
    assert store.calls == 0


async def test_permanent_store_errors_are_logged_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store)
    store.broken = True
    with caplog.at_level(logging.ERROR):
        assert not await tracker.increment(job.id, "a")
    assert tracker.pending == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"progress write for job {job.id} stage a refused; reconciliation will count it"
    ]


async def test_concurrent_consumers_retry_without_losing_or_doubling() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, retry_after=0.0)
    store.down = True
    for i in range(8):
        await tracker.increment(job.id, "a", item_key=f"kept-{i}")
    store.down = False
    results = await asyncio.gather(
        *(tracker.increment(job.id, "a", item_key=f"new-{i}") for i in range(8)),
        tracker.retry_pending(),
        tracker.retry_pending(),
    )
    assert results[:8] == [True] * 8
    assert tracker.pending == 0
    assert (await store.get_job(job.id)).stage("a").completed_items == 16
