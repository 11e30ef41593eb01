"""ProgressTracker: best effort, never raises, keeps what failed for retry.

Every behaviour is checked in both ways of writing: coalesced (the default)
and per item.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from jobtrack.errors import InvalidRequest, StoreError, StoreUnavailable
from jobtrack.model import StageStatus
from jobtrack.store import Increment, InMemoryJobStore, ProgressResult, StageProgress
from jobtrack.tracking import ProgressTracker
from jobtrack.tracking.coalescer import Coalescer, counted_split
from jobtrack.tracking.progress_log import ProgressLog
from jobtrack.tracking.receipt import Outcome


class FlakyStore(InMemoryJobStore):
    """An in-memory store that can be switched off, or broken for good, and
    that yields to the event loop on every call, as a networked store would."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.broken = False
        self.writes = 0

    async def _fail(self) -> None:
        self.writes += 1
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("store is down")
        if self.broken:
            raise StoreError("disk I/O error")

    async def increment(
        self,
        job_id: str,
        stage: str,
        *,
        completed: int | None = None,
        failed: int = 0,
        item_key: str | None = None,
    ) -> Increment:
        await self._fail()
        return await super().increment(
            job_id, stage, completed=completed, failed=failed, item_key=item_key
        )

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        await self._fail()
        return await super().add_progress(batch)


@pytest.fixture(params=[True, False], ids=["coalesced", "per-item"])
def coalesce(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def tracker_for(store: InMemoryJobStore, coalesce: bool, **options: float) -> ProgressTracker:
    return ProgressTracker(store, coalesce=coalesce, flush_interval=0.001, **options)  # type: ignore[arg-type]


async def test_counts_completed_and_failed_items(coalesce: bool) -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce)
    assert await tracker.increment(job.id, "a", item_key="1")
    assert await tracker.increment(job.id, "a", item_key="2", failed=True)
    assert await tracker.increment(job.id, "a", item_key="1")  # known already: durable
    stage = (await store.get_job(job.id)).stage("a")
    assert (stage.completed_items, stage.failed_items) == (1, 1)
    assert await tracker.flush(max_wait=1.0)


async def test_unknown_job_and_stage_are_warnings(
    caplog: pytest.LogCaptureFixture, coalesce: bool
) -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce)
    with caplog.at_level(logging.WARNING):
        assert not await tracker.increment("missing", "a")
        assert not await tracker.increment(job.id, "nope")
    assert tracker.pending == 0
    assert [r.getMessage() for r in caplog.records] == [
        "progress not recorded: job 'missing' not found",
        f"progress not recorded: job {job.id!r} has no stage 'nope'",
    ]
    assert await tracker.flush(max_wait=1.0)


async def test_store_down_keeps_items_and_writes_them_when_back(
    caplog: pytest.LogCaptureFixture, coalesce: bool
) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    await store.seal_total(job.id, "a", total=5)
    tracker = tracker_for(store, coalesce, retry_after=0.01)
    store.down = True
    with caplog.at_level(logging.WARNING):
        receipts = [tracker.add(job.id, "a", item_key=str(i)) for i in range(3)]
        await asyncio.sleep(0.05)  # writes and retries fail meanwhile
    assert tracker.pending == 3
    for receipt in receipts:  # not durable: pending (coalesced) or kept (per item)
        assert not receipt.done() or not await receipt
    assert any(
        "will retry" in r.getMessage() or "next try" in r.getMessage() for r in caplog.records
    )
    store.down = False
    receipts += [tracker.add(job.id, "a", item_key=str(i)) for i in range(3, 5)]
    assert await tracker.flush(max_wait=2.0)
    assert tracker.pending == 0
    final = (await store.get_job(job.id)).stage("a")
    assert (final.completed_items, final.status) == (5, StageStatus.COMPLETED)


async def test_flush_gives_up_after_max_wait_without_losing_anything(coalesce: bool) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce, retry_after=0.01, max_retry_after=0.02)
    store.down = True
    tracker.add(job.id, "a")
    await asyncio.sleep(0.02)
    assert not await tracker.flush(max_wait=0.1)
    assert tracker.pending == 1
    store.down = False
    assert await tracker.flush(max_wait=1.0)
    assert tracker.pending == 0
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_pending_items_are_bounded(coalesce: bool) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce, max_pending=2, retry_after=60)
    store.down = True
    for i in range(5):
        tracker.add(job.id, "a", item_key=str(i))
        await asyncio.sleep(0.01)
    assert (tracker.pending, tracker.dropped) == (2, 3)


async def test_logs_progress_every_50_items(
    caplog: pytest.LogCaptureFixture, coalesce: bool
) -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=120)
    tracker = tracker_for(store, coalesce)
    with caplog.at_level(logging.INFO, logger="jobtrack.tracking"):
        for i in range(120):
            await tracker.increment(job.id, "a", item_key=str(i))
    assert [r.getMessage() for r in caplog.records] == [
        f"job {job.id} stage a: 50/120 items (0 failed)",
        f"job {job.id} stage a: 100/120 items (0 failed)",
    ]


async def test_disabled_tracker_writes_nothing(coalesce: bool) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, coalesce=coalesce, enabled=False)
    assert not await tracker.increment(job.id, "a")
    assert not await tracker.add(job.id, "a")
    assert store.writes == 0


async def test_a_store_error_on_every_write_is_kept_not_dropped(
    caplog: pytest.LogCaptureFixture, coalesce: bool
) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce, retry_after=60)
    store.broken = True
    with caplog.at_level(logging.WARNING):
        assert not await tracker.increment(job.id, "a")
    assert tracker.pending == 1
    assert not [r for r in caplog.records if getattr(r, "action", "") == "progress_refused"]
    assert [getattr(r, "action", "") for r in caplog.records][-1] == "progress_write_failed"
    store.broken = False
    assert await tracker.flush(max_wait=1.0)
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_per_item_concurrent_retries_neither_lose_nor_double() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, coalesce=False, retry_after=0.0)
    store.down = True
    for i in range(8):
        await tracker.increment(job.id, "a", item_key=f"kept-{i}")
    store.down = False
    results = await asyncio.gather(
        *(tracker.increment(job.id, "a", item_key=f"new-{i}") for i in range(8))
    )
    assert results == [True] * 8
    assert await tracker.flush(max_wait=1.0)
    assert tracker.pending == 0
    assert (await store.get_job(job.id)).stage("a").completed_items == 16


async def test_coalesced_items_reach_the_store_in_one_write() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a", "b"])
    tracker = ProgressTracker(store, flush_interval=0.05)
    receipts = [tracker.add(job.id, "a", item_key=f"{i % 700}") for i in range(1000)]
    receipts += [tracker.add(job.id, "b", failed=True) for _ in range(10)]
    assert await asyncio.gather(*receipts) == [True] * 1010
    assert store.writes == 1  # one add_progress for 1,010 items over two stages
    a, b = (await store.get_job(job.id)).stages.values()
    assert (a.completed_items, b.failed_items) == (700, 10)


async def test_a_full_batch_flushes_before_the_interval() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, flush_interval=60, max_batch=100)
    receipts = [tracker.add(job.id, "a") for _ in range(100)]
    assert await asyncio.wait_for(asyncio.gather(*receipts), timeout=5) == [True] * 100
    assert (await store.get_job(job.id)).stage("a").completed_items == 100
    assert await tracker.flush(max_wait=1.0)


async def test_a_refused_stage_fails_only_its_own_receipts() -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, flush_interval=0.01)
    good, bad = tracker.add(job.id, "a"), tracker.add(job.id, "zzz")
    assert (await good, await bad) == (True, False)
    assert await tracker.flush(max_wait=1.0)


async def test_a_coalesced_increment_writes_now_and_never_waits_for_the_store() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, flush_interval=60)  # the interval never comes
    assert await asyncio.wait_for(tracker.increment(job.id, "a"), timeout=5)
    store.down = True
    assert not await asyncio.wait_for(tracker.increment(job.id, "a"), timeout=5)
    assert tracker.pending == 1  # kept for later
    store.down = False
    assert await tracker.flush(max_wait=5)
    assert (await store.get_job(job.id)).stage("a").completed_items == 2


async def test_a_cancelled_flush_keeps_its_items() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, flush_interval=60)
    receipt = tracker.add(job.id, "a", item_key="x")
    gate = asyncio.Event()

    async def stalled(batch: Sequence[StageProgress]) -> list[ProgressResult]:
        await gate.wait()
        raise AssertionError("not reached")

    real = store.add_progress
    store.add_progress = stalled  # type: ignore[method-assign]
    flushing = asyncio.create_task(tracker.flush_if_due())
    await asyncio.sleep(0.01)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert (tracker.pending, receipt.done()) == (1, False)
    store.add_progress = real  # type: ignore[method-assign]
    assert await tracker.flush(max_wait=5)
    assert await receipt
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


@pytest.mark.parametrize("key", ["", "nul\x00key", "k" * 1001])
async def test_keys_no_store_can_hold_are_refused_alone(key: str, coalesce: bool) -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce)
    bad, good = tracker.add(job.id, "a", item_key=key), tracker.add(job.id, "a", item_key="ok")
    assert (await bad, await good) == (False, True)
    assert await tracker.flush(max_wait=1.0)
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


class PickyStore(InMemoryJobStore):
    """An in-memory store whose engine fails any batch holding a poison job
    id (as a driver error that no screening foresaw), and that records the
    size of every batch it is given."""

    def __init__(self, poison: str = "poison") -> None:
        super().__init__()
        self.poison = poison
        self.batches: list[list[StageProgress]] = []
        self.down_after: int | None = None  # unavailable from this call on

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        self.batches.append(list(batch))
        await asyncio.sleep(0)
        if self.down_after is not None and len(self.batches) > self.down_after:
            raise StoreUnavailable("store is down")
        if any(p.job_id == self.poison for p in batch):
            raise StoreError("engine says no")
        return await super().add_progress(batch)


async def test_a_batch_the_store_fails_is_split_until_only_the_bad_entry_is_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = PickyStore()
    jobs = [await store.create_job("t", ["a"]) for _ in range(7)]
    tracker = ProgressTracker(store, flush_interval=60)
    receipts = [tracker.add(job.id, "a", item_key="k") for job in jobs[:3]]
    poison = tracker.add("poison", "a", item_key="k")
    receipts += [tracker.add(job.id, "a", item_key="k") for job in jobs[3:]]
    with caplog.at_level(logging.WARNING, logger="jobtrack.tracking"):
        assert await tracker.flush(max_wait=1.0)
    assert await asyncio.gather(*receipts) == [True] * 7
    assert not await poison
    assert poison.refused == "engine says no"
    for job in jobs:
        assert (await store.get_job(job.id)).stage("a").completed_items == 1
    refusals = [r for r in caplog.records if getattr(r, "action", "") == "progress_refused"]
    assert len(refusals) == 1
    assert "'poison'" in refusals[0].getMessage()
    assert len(store.batches) == 1 + 2 * 3  # a bisection: log2(8) rounds of two writes


async def test_a_store_that_fails_every_entry_alone_is_down_not_refusing() -> None:
    store = PickyStore()
    jobs = [await store.create_job("t", ["a"]) for _ in range(3)]
    tracker = ProgressTracker(store, flush_interval=60, retry_after=60)
    receipts = [tracker.add(job.id, "a", item_key="k") for job in jobs]
    original = store.add_progress

    async def broken(batch: Sequence[StageProgress]) -> list[ProgressResult]:
        store.batches.append(list(batch))
        raise StoreError("disk I/O error")

    store.add_progress = broken  # type: ignore[method-assign]
    assert await tracker.flush_if_due() == 3  # kept for the next try, none refused
    assert len(store.batches) == 1 + 2 + 2  # split down to each entry alone
    assert [r.done() for r in receipts] == [False, False, False]
    store.add_progress = original  # type: ignore[method-assign]
    assert await tracker.flush(max_wait=1.0)
    assert await asyncio.gather(*receipts) == [True, True, True]
    assert [r.refused for r in receipts] == [None, None, None]
    for job in jobs:
        assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_a_store_outage_during_the_split_keeps_only_what_was_not_written() -> None:
    store = PickyStore()
    jobs = [await store.create_job("t", ["a"]) for _ in range(3)]
    tracker = ProgressTracker(store, flush_interval=60, retry_after=60)
    receipts = [tracker.add(jobs[0].id, "a"), tracker.add(jobs[1].id, "a")]
    poison = tracker.add("poison", "a")
    receipts.append(tracker.add(jobs[2].id, "a"))
    store.down_after = 2  # the whole batch fails, its first half is written, then down
    await tracker.flush_if_due()
    assert [r.done() for r in receipts] == [True, True, False]
    assert (await receipts[0], await receipts[1]) == (True, True)
    assert tracker.pending == 2  # the entries not written: the poison one and the last
    store.down_after = None
    assert await tracker.flush(max_wait=1.0)
    assert await asyncio.gather(*receipts) == [True, True, True]
    assert not await poison
    counts = [(await store.get_job(job.id)).stage("a").completed_items for job in jobs]
    assert counts == [1, 1, 1]  # unkeyed: written once each, never twice


async def test_a_refused_item_says_why_on_its_receipt(coalesce: bool) -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce)
    good = tracker.add(job.id, "a", item_key="ok")
    nul = tracker.add("job\x00", "a", item_key="x")
    missing = tracker.add(job.id, "zzz", item_key="x")
    key = tracker.add(job.id, "a", item_key="bad\udc80")
    assert [await r for r in (good, nul, missing, key)] == [True, False, False, False]
    assert good.refused is None
    assert nul.refused is not None
    assert "NUL" in nul.refused
    assert missing.refused == f"job {job.id!r} has no stage 'zzz'"
    assert key.refused is not None
    assert "surrogate" in key.refused
    assert await tracker.flush(max_wait=1.0)
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_a_dropped_item_is_not_refused() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, max_pending=1, retry_after=60)
    store.down = True
    tracker.add(job.id, "a", item_key="1")
    dropped = tracker.add(job.id, "a", item_key="2")
    assert not await dropped
    assert dropped.refused is None  # not the store's verdict: reconciliation counts it


async def test_pending_items_stay_bounded_while_a_flush_fails() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a", "b"])
    tracker = ProgressTracker(store, flush_interval=60, max_pending=10, retry_after=60)
    gate = asyncio.Event()
    real = store.add_progress

    async def failing(batch: Sequence[StageProgress]) -> list[ProgressResult]:
        await gate.wait()
        raise StoreUnavailable("store is down")

    store.add_progress = failing  # type: ignore[method-assign]
    first = [tracker.add(job.id, "a", item_key=str(i)) for i in range(10)]
    flushing = asyncio.create_task(tracker.flush_if_due())
    await asyncio.sleep(0.01)  # the flush holds the ten items, in flight
    late = [tracker.add(job.id, "b", item_key=str(i)) for i in range(10)]
    gate.set()
    await flushing
    assert tracker.pending == 10
    assert tracker.dropped == 10
    assert [r.done() for r in late] == [True] * 10
    assert not any(r.done() for r in first)
    store.add_progress = real  # type: ignore[method-assign]
    assert await tracker.flush(max_wait=1.0)
    assert await asyncio.gather(*first) == [True] * 10
    stages = (await store.get_job(job.id)).stages
    assert (stages["a"].completed_items, stages["b"].completed_items) == (10, 0)


async def test_a_stage_past_the_increment_bound_is_split_across_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jobtrack.store.base

    monkeypatch.setattr(jobtrack.store.base, "MAX_INCREMENT", 10)
    store = PickyStore()
    job = await store.create_job("t", ["a", "b"])
    coalescer = Coalescer(store, ProgressLog(50), flush_interval=60, max_entry=10)
    receipts = [coalescer.add(job.id, "a", item_key=str(i), failed=i % 5 == 0) for i in range(23)]
    receipts += [coalescer.add(job.id, "a", item_key=None, failed=False) for _ in range(4)]
    receipts.append(coalescer.add(job.id, "b", item_key=None, failed=True))
    assert await coalescer.flush()
    assert await asyncio.gather(*receipts) == [True] * 28
    assert all(p.items <= 10 for batch in store.batches for p in batch)
    a, b = (await store.get_job(job.id)).stages.values()
    assert (a.completed_items, a.failed_items, b.failed_items) == (22, 5, 1)
    await coalescer.aclose(max_wait=1.0)


async def test_a_per_item_receipt_resolves_once_its_kept_item_is_written() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, coalesce=False, retry_after=0.0)
    store.down = True
    receipt = tracker.add(job.id, "a", item_key="x")
    await asyncio.sleep(0.01)
    assert tracker.pending == 1
    assert not receipt.done()  # kept for retry: not durable, and not refused either
    store.down = False
    assert await tracker.flush(max_wait=1.0)
    assert await receipt
    assert receipt.refused is None
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


class KeyPoisonStore(PickyStore):
    """A PickyStore whose engine fails any batch holding an entry with a
    poison item key, rather than a poison job id."""

    async def add_progress(self, batch: Sequence[StageProgress]) -> list[ProgressResult]:
        self.batches.append(list(batch))
        await asyncio.sleep(0)
        if self.down_after is not None and len(self.batches) > self.down_after:
            raise StoreUnavailable("store is down")
        if any(self.poison in p.completed_keys for p in batch):
            raise StoreError("engine says no")
        return await InMemoryJobStore.add_progress(self, batch)


async def test_a_store_fault_on_one_job_keeps_its_items_and_counts_them_once(
    coalesce: bool,
) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce, retry_after=0.01)
    store.broken = True  # a StoreError on every write: read-only failover, say
    receipts = [tracker.add(job.id, "a", item_key=str(i)) for i in range(100)]
    await asyncio.sleep(0.05)  # the first writes fail meanwhile
    assert store.writes > 0
    assert tracker.pending == 100
    assert [r.done() for r in receipts] == [False] * 100  # neither refused nor durable
    store.broken = False
    assert await asyncio.wait_for(asyncio.gather(*receipts), timeout=5) == [True] * 100
    assert [r.refused for r in receipts] == [None] * 100
    receipts = [tracker.add(job.id, "a", item_key=str(i)) for i in range(100)]  # again
    assert await asyncio.wait_for(asyncio.gather(*receipts), timeout=5) == [True] * 100
    assert await tracker.flush(max_wait=1.0)
    assert (await store.get_job(job.id)).stage("a").completed_items == 100


async def test_a_data_error_is_still_refused_for_good(coalesce: bool) -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = tracker_for(store, coalesce, retry_after=0.01)

    async def bad_data(*args: object, **kwargs: object) -> list[ProgressResult]:
        raise InvalidRequest("PostgreSQL refused the data: value out of range")

    store.add_progress = bad_data  # type: ignore[method-assign]
    store.increment = bad_data  # type: ignore[method-assign,assignment]
    receipt = tracker.add(job.id, "a", item_key="x")
    assert not await asyncio.wait_for(receipt, timeout=5)
    assert receipt.refused == "PostgreSQL refused the data: value out of range"
    assert tracker.pending == 0
    assert await tracker.flush(max_wait=1.0)


async def test_a_per_item_kept_write_is_retried_without_further_items() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, coalesce=False, retry_after=0.01)
    store.down = True
    receipt = tracker.add(job.id, "a", item_key="x")
    await asyncio.sleep(0.05)
    assert (tracker.pending, receipt.done()) == (1, False)
    store.down = False  # nobody reports an item or flushes: the writer retries alone
    assert await asyncio.wait_for(receipt, timeout=5)
    assert tracker.pending == 0
    assert (await store.get_job(job.id)).stage("a").completed_items == 1
    assert await tracker.flush(max_wait=1.0)


async def test_a_per_item_writer_stops_its_retries_on_close() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, coalesce=False, retry_after=0.01)
    store.down = True
    receipt = tracker.add(job.id, "a", item_key="x")
    await asyncio.sleep(0.02)
    assert not await tracker.flush(max_wait=0.05)
    assert (await receipt, receipt.refused) == (False, None)  # not written, not refused
    writes = store.writes
    await asyncio.sleep(0.1)
    assert store.writes == writes  # no retry runs on after close
    assert [t.get_name() for t in asyncio.all_tasks() if "progress" in t.get_name()] == []


async def test_a_per_item_write_failing_alone_while_others_are_written_is_refused() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, coalesce=False, retry_after=0.01)
    real = store.increment

    async def picky(job_id: str, stage: str, **kwargs: object) -> Increment:
        if kwargs.get("item_key") == "poison":
            await asyncio.sleep(0)
            raise StoreError("engine says no")
        return await real(job_id, stage, **kwargs)  # type: ignore[arg-type]

    store.increment = picky  # type: ignore[method-assign]
    poison = tracker.add(job.id, "a", item_key="poison")
    await asyncio.sleep(0.005)
    good = [tracker.add(job.id, "a", item_key=str(i)) for i in range(3)]
    assert await asyncio.wait_for(asyncio.gather(*good), timeout=5) == [True] * 3
    assert not await asyncio.wait_for(poison, timeout=5)
    assert poison.refused == "engine says no"
    assert tracker.pending == 0
    assert await tracker.flush(max_wait=1.0)


async def test_a_write_begun_before_a_failure_proves_nothing_about_the_item() -> None:
    store = FlakyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, coalesce=False, retry_after=0.01)
    real = store.increment
    read_only = False
    slow_started, slow_go = asyncio.Event(), asyncio.Event()

    async def failover(job_id: str, stage: str, **kwargs: object) -> Increment:
        if kwargs.get("item_key") == "slow":  # began before the store turned read-only
            slow_started.set()
            await slow_go.wait()
            return await real(job_id, stage, **kwargs)  # type: ignore[arg-type]
        if read_only:
            raise StoreError("cannot execute UPDATE in a read-only transaction")
        return await real(job_id, stage, **kwargs)  # type: ignore[arg-type]

    store.increment = failover  # type: ignore[method-assign]
    slow = tracker.add(job.id, "a", item_key="slow")
    await slow_started.wait()
    read_only = True
    item = tracker.add(job.id, "a", item_key="item")
    await asyncio.sleep(0.005)  # it failed and is kept
    slow_go.set()
    assert await asyncio.wait_for(slow, timeout=5)  # the earlier write finishes after
    await asyncio.sleep(0.1)  # retries against the read-only store
    assert not item.done()  # kept, not refused: nothing started since went through
    read_only = False
    assert await asyncio.wait_for(item, timeout=5)
    assert item.refused is None
    assert (await store.get_job(job.id)).stage("a").completed_items == 2
    assert await tracker.flush(max_wait=1.0)


async def test_a_fold_split_across_entries_keeps_a_refusal_past_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jobtrack.store.base

    monkeypatch.setattr(jobtrack.store.base, "MAX_INCREMENT", 10)
    store = KeyPoisonStore(poison="k15")
    job = await store.create_job("t", ["a"])
    coalescer = Coalescer(store, ProgressLog(50), flush_interval=60, max_entry=10, retry_after=60)
    receipts = [coalescer.add(job.id, "a", item_key=f"k{i}", failed=False) for i in range(30)]
    # entries k0-9, k10-19 (poison), k20-29: the whole write fails, k0-9 is
    # written, then k10-29 fails, k10-19 fails alone (refused), k20-29 meets an outage
    store.down_after = 4
    assert not await coalescer.flush()
    assert [len(b) for b in store.batches] == [3, 1, 2, 1, 1]
    # one receipt per fold: the refusal wins, at once, though k20-29 waits
    assert await asyncio.gather(*receipts) == [False] * 30
    assert {r.refused for r in receipts} == {"engine says no"}
    assert coalescer.pending == 10
    assert (await store.get_job(job.id)).stage("a").completed_items == 10
    store.down_after = None
    assert await coalescer.flush()  # k20-29 is still written, for nobody
    assert {r.refused for r in receipts} == {"engine says no"}
    assert (await store.get_job(job.id)).stage("a").completed_items == 20
    later = coalescer.add(job.id, "a", item_key="k30", failed=False)
    assert await coalescer.flush()
    assert (await later, later.refused) == (True, None)
    await coalescer.aclose(max_wait=1.0)


async def test_a_fold_split_across_entries_is_refused_when_one_entry_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jobtrack.store.base

    monkeypatch.setattr(jobtrack.store.base, "MAX_INCREMENT", 10)
    store = KeyPoisonStore(poison="k15")
    job = await store.create_job("t", ["a"])
    coalescer = Coalescer(store, ProgressLog(50), flush_interval=60, max_entry=10)
    receipts = [coalescer.add(job.id, "a", item_key=f"k{i}", failed=False) for i in range(30)]
    assert await coalescer.flush()
    assert await asyncio.gather(*receipts) == [False] * 30
    assert {r.refused for r in receipts} == {"engine says no"}
    assert (await store.get_job(job.id)).stage("a").completed_items == 20
    await coalescer.aclose(max_wait=1.0)


async def test_a_batch_mate_only_answered_as_missing_does_not_make_a_fault_the_entrys() -> None:
    store = PickyStore()
    job = await store.create_job("t", ["a"])
    tracker = ProgressTracker(store, flush_interval=60, retry_after=60)
    real = store.add_progress
    read_only = True

    async def read_only_but_finds_no_ghost(
        batch: Sequence[StageProgress],
    ) -> list[ProgressResult]:
        store.batches.append(list(batch))
        if read_only and any(p.job_id != "ghost" for p in batch):
            raise StoreError("cannot execute UPDATE in a read-only transaction")
        return await real(batch)  # the ghost is answered: no such job

    store.add_progress = read_only_but_finds_no_ghost  # type: ignore[method-assign]
    ghost = tracker.add("ghost", "a", item_key="k")
    receipt = tracker.add(job.id, "a", item_key="k")
    assert await tracker.flush_if_due() == 1  # the real job's item is kept
    assert (await ghost, ghost.refused) == (False, "job 'ghost' not found")
    assert not receipt.done()
    read_only = False
    assert await tracker.flush(max_wait=1.0)
    assert (await receipt, receipt.refused) == (True, None)
    assert (await store.get_job(job.id)).stage("a").completed_items == 1


async def test_a_lower_max_batch_flushes_before_the_interval() -> None:
    # A consumer holds at most its prefetch in items waiting for their count:
    # with the window full and the interval long, only max_batch starts a flush.
    store = InMemoryJobStore()
    job = await store.create_job("t", ["s"])
    tracker = ProgressTracker(store, flush_interval=3600.0)
    assert tracker.max_batch == 50_000
    receipts = [tracker.add(job.id, "s", item_key=f"k{n}") for n in range(4)]
    tracker.max_batch = 4  # already reached: flushes now
    assert await asyncio.wait_for(receipts[-1].wait(), 5.0) is True
    assert (await store.get_job(job.id)).stages["s"].completed_items == 4
    with pytest.raises(InvalidRequest, match="max_batch"):
        tracker.max_batch = 0
    assert await tracker.flush(max_wait=1.0)


async def test_a_flush_bigger_than_max_write_is_written_in_calls_of_max_write() -> None:
    store = PickyStore()
    jobs = [await store.create_job("t", ["a"]) for _ in range(12)]
    coalescer = Coalescer(store, ProgressLog(50), flush_interval=60, max_write=5)
    receipts = [coalescer.add(job.id, "a", item_key="k", failed=False) for job in jobs]
    assert await coalescer.flush()
    assert [len(b) for b in store.batches] == [5, 5, 2]
    assert [p.job_id for b in store.batches for p in b] == [job.id for job in jobs]
    assert await asyncio.gather(*receipts) == [True] * 12
    assert [(await store.get_job(j.id)).stage("a").completed_items for j in jobs] == [1] * 12
    await coalescer.aclose(max_wait=1.0)


async def test_an_outage_in_a_later_call_keeps_that_call_and_the_rest() -> None:
    store = PickyStore()
    jobs = [await store.create_job("t", ["a"]) for _ in range(12)]
    coalescer = Coalescer(store, ProgressLog(50), flush_interval=60, max_write=5, retry_after=60)
    receipts = [coalescer.add(job.id, "a", item_key="k", failed=False) for job in jobs]
    store.down_after = 1  # the first call is written, the second meets an outage
    assert not await coalescer.flush()
    assert [len(b) for b in store.batches] == [5, 5]
    assert [r.done() for r in receipts] == [True] * 5 + [False] * 7
    assert coalescer.pending == 7
    store.down_after = None
    assert await coalescer.flush()
    assert [len(b) for b in store.batches] == [5, 5, 5, 2]
    assert await asyncio.gather(*receipts) == [True] * 12
    assert [(await store.get_job(j.id)).stage("a").completed_items for j in jobs] == [1] * 12
    await coalescer.aclose(max_wait=1.0)


async def test_an_entry_refused_in_a_later_call_is_refused_alone() -> None:
    store = PickyStore()
    jobs = [await store.create_job("t", ["a"]) for _ in range(8)]
    coalescer = Coalescer(store, ProgressLog(50), flush_interval=60, max_write=4)
    receipts = [coalescer.add(job.id, "a", item_key="k", failed=False) for job in jobs[:6]]
    poison = coalescer.add("poison", "a", item_key="k", failed=False)
    receipts += [coalescer.add(job.id, "a", item_key="k", failed=False) for job in jobs[6:]]
    assert await coalescer.flush()
    # the second call (4 entries, the poison among them) is split until the
    # poison is alone; the third call (the last entry) goes as it was
    assert [len(b) for b in store.batches] == [4, 4, 2, 2, 1, 1, 1]
    assert (await poison, poison.refused) == (False, "engine says no")
    assert await asyncio.gather(*receipts) == [True] * 8
    await coalescer.aclose(max_wait=1.0)


def test_max_write_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_write must be at least 1"):
        Coalescer(InMemoryJobStore(), ProgressLog(50), max_write=0)


@pytest.mark.parametrize(
    ("entry", "counted", "split"),
    [
        (StageProgress("j", "s", 2, 1, ("a", "b"), ("c",)), 6, (4, 2)),  # all counted
        (StageProgress("j", "s", 0, 0, ("a", "b"), ()), 1, (1, 0)),  # one key counted before
        (StageProgress("j", "s", 0, 0, (), ("a", "b")), 0, (0, 0)),
        (StageProgress("j", "s", 0, 0, ("a",), ("a", "b")), 2, (1, 1)),  # "a" both ways
        (StageProgress("j", "s", 1, 1, (), ()), 2, (1, 1)),  # unkeyed: always counted
    ],
)
def test_the_counted_items_of_an_entry_split_into_done_and_failed(
    entry: StageProgress, counted: int, split: tuple[int, int]
) -> None:
    assert counted_split(entry, counted) == split


async def test_a_receipt_tells_what_the_store_counted_of_its_items() -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["s"])
    tracker = ProgressTracker(store)
    first = tracker.add(job.id, "s", item_key="a")
    tracker.add(job.id, "s", item_key="b", failed=True)
    assert await tracker.flush(max_wait=5.0)
    again = tracker.add(job.id, "s", item_key="a")  # counted before
    tracker.add(job.id, "s", item_key="c")
    assert await tracker.flush(max_wait=5.0)
    outcomes: list[Outcome] = []
    first.when_known(outcomes.append)
    again.when_known(outcomes.append)
    await asyncio.sleep(0)

    assert [(o.durable, o.done, o.failed) for o in outcomes] == [(True, 1, 1), (True, 1, 0)]
