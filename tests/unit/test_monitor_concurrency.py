"""The monitor's cycle handling several stuck jobs of a page at once: the
same outcome and report as one after another, never more at once than asked."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from jobtrack.errors import InvalidRequest
from jobtrack.model import Job, JobStatus, StageCounts
from jobtrack.monitor import Monitor, Truth
from jobtrack.store import InMemoryJobStore
from tests.conftest import FrozenClock

JOB_TYPE = "lost-counts"
STAGE = "work"


class LostCounts:
    """Every item of every job was done; the counts were lost. Counts how
    many truths are being read at once."""

    job_type = JOB_TYPE
    can_redrive = False

    def __init__(self) -> None:
        self.reading = 0
        self.most = 0

    async def truth(self, job: Job) -> Truth:
        self.reading += 1
        self.most = max(self.most, self.reading)
        for _ in range(3):  # a read that takes a while: other jobs may start meanwhile
            await asyncio.sleep(0)
        self.reading -= 1
        keys = [str(n) for n in range(2)]
        return Truth({STAGE: StageCounts(2, 2, 0)}, done={STAGE: keys}, missing={STAGE: []})

    async def backlog(self) -> Mapping[str, int]:
        return {}

    async def redrive(self, job: Job, missing: Mapping[str, Sequence[str]]) -> int:
        return 0


async def _stuck_jobs(store: InMemoryJobStore, clock: FrozenClock, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        job = await store.create_job(JOB_TYPE, [STAGE])
        await store.raise_total(job.id, STAGE, by=2)
        await store.seal_total(job.id, STAGE)
        ids.append(job.id)
        clock.advance(1)
    clock.advance(600)
    return ids


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_a_cycle_completes_every_stuck_job_in_the_pages_order(concurrency: int) -> None:
    clock = FrozenClock()
    store = InMemoryJobStore(clock=clock)
    ids = await _stuck_jobs(store, clock, 250)
    truth = LostCounts()
    monitor = Monitor(store, [truth], stuck_after=300.0, clock=clock, concurrency=concurrency)

    report = await monitor.cycle()

    assert (report.stuck, report.reconciled, report.completed, report.errors) == (250, 250, 250, 0)
    assert report.queries == 4  # three pages of at most 100, then an empty one
    assert report.jobs == ids  # the stuck query's order, whatever finished first
    assert truth.most == concurrency
    for job_id in ids:
        job = await store.get_job(job_id)
        assert job.status is JobStatus.COMPLETED
        assert job.stage(STAGE).completed_items == 2
        assert [event.kind for event in await store.list_events(job_id)] == ["reconciled"]
    assert (await monitor.cycle()).stuck == 0


async def test_a_concurrency_below_one_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="concurrency must be at least 1, not 0"):
        Monitor(InMemoryJobStore(), [LostCounts()], concurrency=0)
