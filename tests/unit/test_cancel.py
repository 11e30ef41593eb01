"""The one cancel service of the command line and the API: it says what
really happened (cancelled, or already ended as X), cancels a job however
often it is written, and records one event only when it cancelled."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from jobtrack.errors import JobNotFound, StoreUnavailable
from jobtrack.model import Job, JobEvent, JobStatus
from jobtrack.runtime.cancel import CancelOutcome, cancel_job
from jobtrack.store import InMemoryJobStore
from tests.conftest import SteppingClock


class WrittenBeforeEachCall:
    """The store, with a consumer's increment landing before every call the
    cancel makes (a job written more often than one round trip)."""

    backend: ClassVar[str] = "memory"

    def __init__(self, store: InMemoryJobStore, job_id: str) -> None:
        self._store = store
        self._job_id = job_id
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def written_first(*args: Any, **kwargs: Any) -> Any:
            if not (await self._store.get_job(self._job_id)).status.terminal:
                await self._store.increment(self._job_id, "a")
                self.writes += 1
            return await method(*args, **kwargs)

        return written_first


class EventsRefused(InMemoryJobStore):
    """A store that ends jobs but cannot record events (it went away between
    the two writes)."""

    async def add_event(
        self, job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> JobEvent:
        raise StoreUnavailable("the store went away")


async def test_an_active_job_is_cancelled_with_one_event(clock: SteppingClock) -> None:
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    result = await cancel_job(store, job.id, message="cancelled by the user", source="cli")
    assert (result.outcome, result.cancelled) == (CancelOutcome.CANCELLED, True)
    assert (result.job.status, result.job.message) == (JobStatus.CANCELLED, "cancelled by the user")
    [event] = await store.list_events(job.id)
    assert (event.kind, event.message, dict(event.data)) == (
        "cancelled",
        "cancelled by the user",
        {"source": "cli"},
    )
    assert result.describe() == f"job {job.id} cancelled"
    answer = result.to_dict()
    assert (answer["outcome"], answer["cancelled"], answer["ended_as"]) == ("cancelled", True, None)
    assert answer["job"]["status"] == "cancelled"


async def test_a_job_written_before_every_call_is_cancelled_at_once(
    clock: SteppingClock,
) -> None:
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=100)
    racing = WrittenBeforeEachCall(store, job.id)
    result = await cancel_job(racing, job.id, message="m", source="api")
    assert (result.outcome, racing.writes) == (CancelOutcome.CANCELLED, 1)
    after = await store.get_job(job.id)
    assert (after.status, after.stages["a"].completed_items) == (JobStatus.CANCELLED, 1)
    assert result.job == after
    assert [e.kind for e in await store.list_events(job.id)] == ["cancelled"]


async def test_a_job_that_had_completed_is_reported_as_ended_and_gets_no_event(
    clock: SteppingClock,
) -> None:
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=1)
    await store.seal_total(job.id, "a")
    await store.increment(job.id, "a")
    result = await cancel_job(store, job.id, message="cancelled by the user", source="cli")
    assert (result.outcome, result.cancelled, result.job.status) == (
        CancelOutcome.ENDED,
        False,
        JobStatus.COMPLETED,
    )
    assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
    assert await store.list_events(job.id) == []
    assert result.describe() == f"job {job.id} had already ended: completed"
    assert result.to_dict()["ended_as"] == "completed"


async def test_an_event_that_cannot_be_recorded_still_answers_cancelled(
    clock: SteppingClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = EventsRefused(clock=clock)
    job: Job = await store.create_job("t", ["a"])
    with caplog.at_level(logging.WARNING, logger="jobtrack.runtime.cancel"):
        result = await cancel_job(store, job.id, message="m", source="api")
    assert (result.outcome, result.job.status) == (CancelOutcome.CANCELLED, JobStatus.CANCELLED)
    assert (await store.get_job(job.id)).status is JobStatus.CANCELLED
    [record] = caplog.records
    assert record.getMessage() == (
        f"job {job.id} cancelled, but its cancelled event was not recorded: the store went away"
    )
    assert record.__dict__["action"] == "cancel_event_lost"


async def test_an_unknown_job_raises_not_found() -> None:
    with pytest.raises(JobNotFound):
        await cancel_job(InMemoryJobStore(), "nope", message="m", source="cli")
