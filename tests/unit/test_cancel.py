"""The one cancel service of the command line and the API: it says what
really happened (cancelled, already ended as X, or busy) and records one
event only when it cancelled."""

from __future__ import annotations

from typing import Any

import pytest

from jobtrack.errors import JobNotFound
from jobtrack.model import Job, JobStatus
from jobtrack.runtime.cancel import CancelOutcome, cancel_job
from jobtrack.store import InMemoryJobStore
from tests.conftest import SteppingClock


class WrittenAfterEachRead:
    """The store, with a consumer's increment landing between every read of
    the job and the cancel's write (``writes`` of them; then it is calm)."""

    def __init__(self, store: InMemoryJobStore, *, writes: int, stage: str = "a") -> None:
        self._store = store
        self.writes = writes
        self.reads = 0
        self._stage = stage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_job(self, job_id: str) -> Job:
        job = await self._store.get_job(job_id)
        self.reads += 1
        if self.writes:
            self.writes -= 1
            await self._store.increment(job_id, self._stage)
        return job


async def test_an_active_job_is_cancelled_with_one_event(clock: SteppingClock) -> None:
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    result = await cancel_job(store, job.id, message="cancelled by the user", source="cli")
    assert (result.outcome, result.cancelled, result.attempts) == (CancelOutcome.CANCELLED, True, 1)
    assert (result.job.status, result.job.message) == (JobStatus.CANCELLED, "cancelled by the user")
    [event] = await store.list_events(job.id)
    assert (event.kind, event.message, dict(event.data)) == (
        "cancelled",
        "cancelled by the user",
        {"source": "cli"},
    )
    assert result.describe() == f"job {job.id} cancelled"
    answer = result.to_dict()
    assert (answer["outcome"], answer["cancelled"], answer["job"]["status"]) == (
        "cancelled",
        True,
        "cancelled",
    )


async def test_a_job_that_completed_meanwhile_is_reported_as_ended_and_gets_no_event(
    clock: SteppingClock,
) -> None:
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=1)
    await store.seal_total(job.id, "a")
    # The last item is counted between the cancel's read and its write: the job completes.
    racing = WrittenAfterEachRead(store, writes=1)
    result = await cancel_job(racing, job.id, message="cancelled by the user", source="cli")
    assert (result.outcome, result.cancelled, result.job.status) == (
        CancelOutcome.ENDED,
        False,
        JobStatus.COMPLETED,
    )
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    assert await store.list_events(job.id) == []
    assert result.describe() == f"job {job.id} had already ended: completed"
    assert result.to_dict()["ended_as"] == "completed"


async def test_a_job_written_between_reads_is_retried_then_cancelled(
    clock: SteppingClock,
) -> None:
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    racing = WrittenAfterEachRead(store, writes=2)
    result = await cancel_job(racing, job.id, message="m", source="api", backoff=0)
    assert (result.outcome, result.attempts) == (CancelOutcome.CANCELLED, 3)
    after = await store.get_job(job.id)
    assert (after.status, after.stages["a"].completed_items) == (JobStatus.CANCELLED, 2)
    assert [e.kind for e in await store.list_events(job.id)] == ["cancelled"]


async def test_a_job_written_all_the_time_is_busy_after_a_bounded_number_of_tries(
    clock: SteppingClock,
) -> None:
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    racing = WrittenAfterEachRead(store, writes=1_000_000)
    result = await cancel_job(racing, job.id, message="m", source="api", attempts=4, backoff=0)
    assert (result.outcome, result.cancelled, result.attempts) == (CancelOutcome.BUSY, False, 4)
    assert racing.reads == 5  # four tries, and the job as it is now
    assert (await store.get_job(job.id)).status is JobStatus.IN_PROGRESS
    assert await store.list_events(job.id) == []
    assert result.describe() == (
        f"job {job.id} was written during each of 4 tries to cancel it: not cancelled, try again"
    )


async def test_an_unknown_job_raises_not_found() -> None:
    with pytest.raises(JobNotFound):
        await cancel_job(InMemoryJobStore(), "nope", message="m", source="cli")
