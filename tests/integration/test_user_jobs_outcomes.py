"""The outcomes a worker records in the ledger with its progress off
(:class:`~jobtrack.jobs.consumer.OutcomeWriter`), on a real SQLite store:
the outcomes of the moment go in one write, a key's last outcome wins, an
outage holds the batch until the store is back, and another error reaches
every caller of the batch. The monitor raises a job's counts to the
recorded outcomes and makes them counted keys, so they count once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import InvalidRequest, StoreUnavailable
from jobtrack.jobs.consumer import OutcomeWriter
from jobtrack.jobs.reconciler import LedgerReconciler
from jobtrack.model import JobStatus
from jobtrack.monitor import Monitor
from jobtrack.store import (
    InMemoryJobStore,
    JobStore,
    SqliteDatabase,
    SqliteJobStore,
    StageProgress,
)
from jobtrack.store.ledger import LedgerItem, LedgerTally
from tests.apps.tally import app as tally_app
from tests.conftest import SteppingClock


class CountingStore(SqliteJobStore):
    """A SQLite store that counts ``record_outcomes`` calls and can fail the
    next ones."""

    calls: list[tuple[list[str], list[str]]]
    fail_next: list[Exception]

    async def record_outcomes(
        self,
        job_id: str,
        stage: str,
        done_keys: Collection[str],
        failed_keys: Collection[str] = (),
    ) -> int:
        self.calls.append((sorted(done_keys), sorted(failed_keys)))
        if self.fail_next:
            raise self.fail_next.pop(0)
        return await super().record_outcomes(job_id, stage, done_keys, failed_keys)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(SqliteDatabase(tmp_path / "jobs.db"))
    store.calls, store.fail_next = [], []
    yield store
    await store.aclose()


async def job_with(store: CountingStore, keys: list[str]) -> str:
    job = await store.create_job("tally", ["work"])
    await store.add_items(job.id, "work", [LedgerItem(key) for key in keys], seal=True)
    return job.id


async def test_the_outcomes_of_the_moment_go_in_one_write(store: CountingStore) -> None:
    keys = [f"k{n:03}" for n in range(100)]
    job_id = await job_with(store, keys)
    writer = OutcomeWriter(store)
    await asyncio.gather(
        *(writer.record(job_id, "work", key, failed=n % 10 == 0) for n, key in enumerate(keys))
    )
    assert len(store.calls) == 1
    assert len(store.calls[0][0]) == 90
    assert await store.tally_ledger(job_id) == {"work": LedgerTally(100, 100, 10, 100)}
    assert await store.missing_items(job_id, "work") == []


async def test_a_key_given_twice_meanwhile_keeps_its_last_outcome(store: CountingStore) -> None:
    job_id = await job_with(store, ["a", "b"])
    writer = OutcomeWriter(store)
    await asyncio.gather(
        writer.record(job_id, "work", "a", failed=True),
        writer.record(job_id, "work", "a", failed=False),
        writer.record(job_id, "work", "b", failed=False),
        writer.record(job_id, "work", "b", failed=True),
    )
    assert store.calls == [(["a"], ["b"])]
    assert await store.tally_ledger(job_id) == {"work": LedgerTally(2, 2, 1, 2)}


async def test_an_outage_holds_the_batch_until_the_store_is_back(store: CountingStore) -> None:
    job_id = await job_with(store, ["a", "b"])
    store.fail_next = [StoreUnavailable("down"), StoreUnavailable("still down")]
    writer = OutcomeWriter(store, retry_delay=0.01)
    await asyncio.gather(
        writer.record(job_id, "work", "a", failed=False),
        writer.record(job_id, "work", "b", failed=True),
    )
    assert store.calls == [(["a"], ["b"])] * 3
    assert await store.tally_ledger(job_id) == {"work": LedgerTally(2, 2, 1, 2)}


async def test_another_error_reaches_every_caller_of_the_batch(store: CountingStore) -> None:
    job_id = await job_with(store, ["a", "b", "c"])
    store.fail_next = [InvalidRequest("refused")]
    writer = OutcomeWriter(store)
    results = await asyncio.gather(
        writer.record(job_id, "work", "a", failed=False),
        writer.record(job_id, "work", "b", failed=False),
        return_exceptions=True,
    )
    assert [type(result) for result in results] == [InvalidRequest, InvalidRequest]
    assert await store.tally_ledger(job_id) == {"work": LedgerTally(3, 0, 0, 0)}
    # The writer goes on: a later outcome is written.
    await writer.record(job_id, "work", "c", failed=False)
    assert await store.tally_ledger(job_id) == {"work": LedgerTally(3, 1, 0, 1)}


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_the_monitor_counts_recorded_outcomes_once_even_if_counted_later(
    tmp_path: Path, backend: str
) -> None:
    clock = SteppingClock()
    store: JobStore = (
        InMemoryJobStore(clock=clock)
        if backend == "memory"
        else SqliteJobStore(SqliteDatabase(tmp_path / "jobs.db"), clock=clock)
    )
    tally = tally_app.get_type("tally")
    try:
        job = await store.create_job("tally", tally.stages)
        await store.add_items(job.id, "work", [LedgerItem(k) for k in "abc"], seal=True)
        await store.add_items(job.id, "extra", [], seal=True)
        await store.record_outcomes(job.id, "work", ["a"], ["b"])
        broker = InMemoryBroker()
        monitor = Monitor(store, [LedgerReconciler(tally, store, broker)], clock=clock)
        clock.advance(monitor.stuck_after + 1)
        report = await monitor.cycle()
        assert (report.reconciled, report.redriven, report.items_redriven) == (1, 1, 1)
        job = await store.get_job(job.id)
        assert (job.stage("work").completed_items, job.stage("work").failed_items) == (1, 1)
        assert await store.missing_items(job.id, "work") == [LedgerItem("c")]
        # The items recorded are counted keys now: counting them again counts nothing.
        [result] = await store.add_progress(
            [StageProgress(job.id, "work", completed_keys=["a"], failed_keys=["b"])]
        )
        assert result.counted == 0
        await store.increment(job.id, "work", item_key="c")
        job = await store.get_job(job.id)
        assert job.status is JobStatus.COMPLETED, job.to_dict()
        assert (job.stage("work").completed_items, job.stage("work").failed_items) == (2, 1)
    finally:
        await store.aclose()
