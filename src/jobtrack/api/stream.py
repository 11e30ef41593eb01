"""``GET /api/stream``: a snapshot, then every change.

The snapshot makes a client true at once: on a first connection the active
jobs and every job written in the last ``RECENT`` (the page it just loaded
may show a job that ended since); after a reconnect with ``Last-Event-ID``
(a write time in microseconds), every job written since then. A subscriber
that fell behind (it had more than the feed's ``QUEUE_JOBS`` jobs waiting)
gets a snapshot again, from the last change it was sent.

Built once, sent to many (:class:`EventCache`): a snapshot is built and
encoded once for every client that needs the same one while the feed has
passed nothing new on, and each batch of changes is encoded once. Events go
out as shared bytes, ``CHUNK`` bytes a write, each written once the client
took the one before (and cut after ``send_timeout``), so that a slow client
holds one chunk of the server's memory, not a copy of a snapshot. The stream
sends its own keep-alive comments, between events, never inside one.

Event ids are write times, so the feed's limit holds here too: writers'
clocks must agree within the feed's overlap (2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jobtrack.api.feed import Batch, ChangeFeed
from jobtrack.model import Clock, Job, JobStatus
from jobtrack.store import JobQuery, JobStore

__all__ = ["SNAPSHOT_LIMIT", "EventCache", "Snapshot", "job_events_stream", "since_header"]

#: At most this many jobs in a snapshot (the event says when it is cut).
SNAPSHOT_LIMIT = 1000
#: A first snapshot also holds the jobs written this recently.
RECENT = timedelta(minutes=1)
OVERLAP = timedelta(seconds=2)
#: Bytes per write of an event.
CHUNK = 64 * 1024
#: A snapshot this many feed versions old (two seconds of busy polls) is
#: built again; younger, it is sent with the batches since.
STALE = 10
#: Seconds between keep-alive comments on a quiet stream.
KEEPALIVE = 15.0
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


@dataclass(frozen=True)
class Snapshot:
    """A snapshot event, encoded but for its id (which depends on where the
    client was: it is sent after, as the event's last line); ``newest``:
    the newest write in it; ``version``: the feed's when it was read (the
    feed's batches after that one bring it up to date)."""

    frame: bytes
    newest: datetime | None
    version: int


class EventCache:
    """The stream's events built once and shared by every client: snapshots
    (one per starting point, reused while under ``STALE`` feed versions old,
    at most ``builds`` built at once, ``kept`` kept) and batches of changes
    (the last ``kept_batches`` encoded)."""

    def __init__(
        self,
        store: JobStore,
        feed: ChangeFeed,
        *,
        clock: Clock,
        builds: int = 2,
        kept: int = 8,
        kept_batches: int = 64,
    ) -> None:
        self._store = store
        self._feed = feed
        self._clock = clock
        self._gate = asyncio.Semaphore(builds)
        self._kept = kept
        self._snapshots: dict[datetime | None, tuple[int, asyncio.Future[Snapshot]]] = {}
        self._kept_batches = kept_batches
        self._batches: OrderedDict[int, bytes] = OrderedDict()

    async def snapshot(self, since: datetime | None) -> Snapshot:
        """The snapshot for a client that subscribed to the feed before
        asking and was sent every change up to ``since`` (None: nothing
        yet); with the feed's batches after its ``version`` it is up to date.
        Raises what the store raises."""
        version = self._feed.version
        held = self._snapshots.pop(since, None)
        # A build still under way is shared whatever its age: a slow store
        # must not make every new client start one more.
        if (
            held is None
            or _failed(held[1])
            or (held[1].done() and not self._usable(held[0], version))
        ):
            held = (version, asyncio.ensure_future(self._build(since, version)))
            held[1].add_done_callback(_retrieve)
        self._snapshots[since] = held  # the newest last
        self._forget(version)
        return await asyncio.shield(held[1])

    def _usable(self, built: int, version: int) -> bool:
        """A snapshot read at feed version ``built`` is fresh enough now."""
        return version - built <= STALE and self._feed.batches(built, version) is not None

    def changes(self, batch: Batch) -> bytes:
        """The ``job`` events of one batch of changes."""
        frame = self._batches.get(batch.version)
        if frame is None:
            frame = b"".join(
                _event("job", json.dumps(job.to_dict()), str(micros(job.updated_at)))
                for job in batch.jobs
            )
            self._batches[batch.version] = frame
            while len(self._batches) > self._kept_batches:
                self._batches.popitem(last=False)
        return frame

    async def _build(self, since: datetime | None, version: int) -> Snapshot:
        async with self._gate:
            version = max(version, self._feed.version)  # read after all of these
            jobs, complete = await snapshot(self._store, since, clock=self._clock)
            # A thousand jobs take a while to encode: the loop keeps serving.
            return await asyncio.to_thread(_encode_snapshot, jobs, complete, version)

    def _forget(self, version: int) -> None:
        """Snapshots no client can use again, and the oldest past ``kept``."""
        for key, (built, future) in list(self._snapshots.items()):
            if future.done() and not self._usable(built, version):
                del self._snapshots[key]
        while len(self._snapshots) > self._kept:
            del self._snapshots[next(iter(self._snapshots))]


async def job_events_stream(
    feed: ChangeFeed, events: EventCache, since: datetime | None
) -> AsyncIterator[bytes]:
    """The events of one client's stream, as bytes (the response ends it
    when the client goes: sse-starlette listens for the disconnect)."""
    subscriber = feed.subscribe()
    try:
        cursor = since
        while True:
            subscriber.resume()  # all of what it held is in the snapshot
            joined = feed.version  # later batches come through the queue
            taken = await events.snapshot(cursor)
            missed = feed.batches(taken.version, joined)
            if missed is None:  # the build took that long: the feed moved on
                continue
            cursor = _later(cursor, taken.newest)
            for chunk in _chunks(taken.frame):
                yield chunk
            yield f"id: {micros(cursor) if cursor else 0}\n\n".encode()
            for batch in missed:
                cursor = _later(cursor, batch.jobs[-1].updated_at)
                for chunk in _chunks(events.changes(batch)):
                    yield chunk
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        batch = await subscriber.next()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if subscriber.lagging or not batch.jobs:  # dropped: again from the store
                    break
                cursor = _later(cursor, batch.jobs[-1].updated_at)  # (in write order)
                for chunk in _chunks(events.changes(batch)):
                    yield chunk
    finally:
        feed.unsubscribe(subscriber)


def _encode_snapshot(jobs: list[Job], complete: bool, version: int) -> Snapshot:
    data = json.dumps({"jobs": [job.to_dict() for job in jobs], "complete": complete})
    newest = max((job.updated_at for job in jobs), default=None)
    return Snapshot(f"event: snapshot\ndata: {data}\n".encode(), newest, version)


def _event(kind: str, data: str, event_id: str) -> bytes:
    return f"event: {kind}\ndata: {data}\nid: {event_id}\n\n".encode()


def _chunks(frame: bytes) -> Iterator[bytes]:
    for start in range(0, len(frame), CHUNK):
        yield frame[start : start + CHUNK]


def _later(cursor: datetime | None, moment: datetime | None) -> datetime | None:
    if cursor is None or moment is None:
        return moment if cursor is None else cursor
    return max(cursor, moment)


def _failed(future: asyncio.Future[Snapshot]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _retrieve(future: asyncio.Future[Snapshot]) -> None:
    if not future.cancelled():
        future.exception()  # the waiters have it; no "never retrieved" warning
