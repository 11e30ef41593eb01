"""The cancel service on every store: of two cancels racing, exactly one
cancels the job and exactly one ``cancelled`` event is recorded."""

from __future__ import annotations

import asyncio

from jobtrack.model import JobStatus
from jobtrack.runtime.cancel import CancelOutcome, cancel_job
from jobtrack.store import JobStore


async def test_two_cancels_racing_one_cancels_one_event(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    await store.raise_total(job.id, "a", by=2)
    results = await asyncio.gather(
        cancel_job(store, job.id, message="from the CLI", source="cli"),
        cancel_job(store, job.id, message="from the API", source="api"),
    )
    assert sorted(r.outcome for r in results) == [CancelOutcome.CANCELLED, CancelOutcome.ENDED]
    [winner] = [r for r in results if r.cancelled]
    [loser] = [r for r in results if not r.cancelled]
    assert loser.to_dict()["ended_as"] == "cancelled"
    assert loser.job == winner.job == await store.get_job(job.id)
    events = await store.list_events(job.id)
    assert [(e.kind, e.message) for e in events] == [("cancelled", winner.job.message)]
    assert winner.job.status is JobStatus.CANCELLED


async def test_a_cancelled_job_answers_ended_and_records_nothing_more(store: JobStore) -> None:
    job = await store.create_job("t", ["a"])
    first = await cancel_job(store, job.id, message="m", source="cli")
    second = await cancel_job(store, job.id, message="again", source="api")
    assert (first.outcome, second.outcome) == (CancelOutcome.CANCELLED, CancelOutcome.ENDED)
    assert (second.job.message, second.to_dict()["ended_as"]) == ("m", "cancelled")
    assert [e.kind for e in await store.list_events(job.id)] == ["cancelled"]
