"""``GET /api/stream``: a snapshot, then every change.

The snapshot makes a client true at once: on a first connection the active
jobs and every job written in the last ``RECENT`` (the page it just loaded
may show a job that ended since); after a reconnect with ``Last-Event-ID``
(a write time in microseconds), every job written since then. A subscriber
that fell behind (its queue overflowed) gets a snapshot again, from the last
change it was sent, and its queue is emptied first.

Event ids are write times, so the feed's limit holds here too: writers'
clocks must agree within the feed's overlap (2 s).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sse_starlette import ServerSentEvent
from starlette.requests import Request

from jobtrack.api.feed import ChangeFeed
from jobtrack.model import Clock, Job, JobStatus
from jobtrack.store import JobQuery, JobStore

__all__ = ["SNAPSHOT_LIMIT", "job_events_stream", "since_header"]

#: At most this many jobs in a snapshot (the event says when it is cut).
SNAPSHOT_LIMIT = 1000
#: A first snapshot also holds the jobs written this recently.
RECENT = timedelta(minutes=1)
OVERLAP = timedelta(seconds=2)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """A write time as an event id."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def since_header(value: str | None) -> datetime | None:
    """The moment a ``Last-Event-ID`` names; None for anything else."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        number = int(value)
        if 0 < number < micros(_LATEST):
            return _EPOCH + timedelta(microseconds=number)
    return None


async def snapshot(
    store: JobStore, since: datetime | None, *, clock: Clock
) -> tuple[list[Job], bool]:
    """The jobs a client needs first, and whether they are all there."""
    if since is not None:
        changed = await store.list_changed(after=(since - OVERLAP, ""), limit=SNAPSHOT_LIMIT + 1)
        return changed[:SNAPSHOT_LIMIT], len(changed) <= SNAPSHOT_LIMIT
    found: dict[str, Job] = {}
    complete = True
    recent = await store.list_changed(after=(clock() - RECENT, ""), limit=SNAPSHOT_LIMIT + 1)
    active = []
    for status in (JobStatus.IN_PROGRESS, JobStatus.PENDING):
        some = await store.list_jobs(JobQuery(status=status, limit=SNAPSHOT_LIMIT + 1))
        complete = complete and len(some) <= SNAPSHOT_LIMIT
        active += some
    complete = complete and len(recent) <= SNAPSHOT_LIMIT
    for job in [*active, *recent]:
        known = found.get(job.id)
        if known is None or job.updated_at > known.updated_at:
            found[job.id] = job
    jobs = sorted(found.values(), key=lambda job: job.updated_at, reverse=True)
    return jobs[:SNAPSHOT_LIMIT], complete and len(jobs) <= SNAPSHOT_LIMIT


async def job_events_stream(
    request: Request,
    feed: ChangeFeed,
    store: JobStore,
    since: datetime | None,
    *,
    clock: Clock,
) -> AsyncIterator[ServerSentEvent]:
    """The events of one client's stream."""
    subscriber = feed.subscribe()
    try:
        cursor = since
        resync = True
        while True:
            if resync:
                while not subscriber.queue.empty():  # all of it is in the snapshot
                    subscriber.queue.get_nowait()
                subscriber.lagging = False
                jobs, complete = await snapshot(store, cursor, clock=clock)
                for job in jobs:
                    cursor = job.updated_at if cursor is None else max(cursor, job.updated_at)
                data = {"jobs": [job.to_dict() for job in jobs], "complete": complete}
                event_id = str(micros(cursor)) if cursor else "0"
                yield ServerSentEvent(data=json.dumps(data), event="snapshot", id=event_id)
                resync = False
            batch = await subscriber.queue.get()
            if subscriber.lagging:  # changes were dropped: again from the store
                resync = True
                continue
            for job in batch:
                cursor = job.updated_at if cursor is None else max(cursor, job.updated_at)
                yield ServerSentEvent(
                    data=json.dumps(job.to_dict()), event="job", id=str(micros(job.updated_at))
                )
            if await request.is_disconnected():
                break
    finally:
        feed.unsubscribe(subscriber)
