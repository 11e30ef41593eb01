"""``GET /api/stream``: a snapshot, then every change.

The snapshot makes a client true at once: on a first connection the active
jobs and every job written in the last ``RECENT`` (the page it just loaded
may show a job that ended since); after a reconnect with ``Last-Event-ID``
(a :class:`~jobtrack.store.base.ChangeCursor`'s text, ``1234`` or
``1234-5001:5004:5001,5002``), every job written since then. A malformed or unknown
``Last-Event-ID`` gets a first snapshot. A subscriber that fell behind (it
had more than the feed's ``QUEUE_JOBS`` jobs waiting) gets a snapshot
again, from the last cursor it was sent.

Built once, sent to many (:class:`EventCache`): a snapshot is built and
encoded once for every client that needs the same one while the feed has
passed nothing new on, and each batch of changes is encoded once. Events go
out as shared bytes, ``CHUNK`` bytes a write, each written once the client
took the one before (and cut after ``send_timeout``), so that a slow client
holds one chunk of the server's memory, not a copy of a snapshot. The stream
sends its own keep-alive comments, between events, never inside one.

Event ids are the feed's cursors: the snapshot's, and the last event of
each batch of changes carries the cursor after the batch (the events before
it carry none, so a client cut off within a batch is sent it again). No
clock is compared: a write reaches every client whatever its ``updated_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta

from jobtrack.api.feed import Batch, ChangeFeed
from jobtrack.errors import InvalidRequest
from jobtrack.model import Clock, Job, JobStatus
from jobtrack.store import ChangeCursor, JobQuery, JobStore

__all__ = ["SNAPSHOT_LIMIT", "EventCache", "Snapshot", "job_events_stream", "since_header"]

#: At most this many jobs in a snapshot (the event says when it is cut).
SNAPSHOT_LIMIT = 1000
#: A first snapshot also holds the jobs written this recently.
RECENT = timedelta(minutes=1)
#: Bytes per write of an event.
CHUNK = 64 * 1024
#: A snapshot this many feed versions old (two seconds of busy polls) is
#: built again; younger, it is sent with the batches since.
STALE = 10
#: Seconds between keep-alive comments on a quiet stream.
KEEPALIVE = 15.0


def since_header(value: str | None) -> ChangeCursor | None:
    """The cursor a ``Last-Event-ID`` names; None (a first snapshot) for
    none or anything malformed."""
    if not value:
        return None
    with contextlib.suppress(InvalidRequest):
        return ChangeCursor.parse(value)
    return None


async def snapshot(
    store: JobStore, since: ChangeCursor | None, *, clock: Clock
) -> tuple[list[Job], bool]:
    """The jobs a client needs first, and whether they are all there. A
    cursor past the store's newest write (another store's, or no cursor at
    all) counts as none."""
    if since is not None and since.seq > (await store.last_change()).seq:
        since = None
    if since is not None:
        changed = (await store.list_changed(after=since, limit=SNAPSHOT_LIMIT + 1)).jobs
        return changed[:SNAPSHOT_LIMIT], len(changed) <= SNAPSHOT_LIMIT
    found: dict[str, Job] = {}
    complete = True
    recent = JobQuery(updated_since=clock() - RECENT, limit=SNAPSHOT_LIMIT + 1)
    every = []
    for query in (
        JobQuery(status=JobStatus.IN_PROGRESS, limit=SNAPSHOT_LIMIT + 1),
        JobQuery(status=JobStatus.PENDING, limit=SNAPSHOT_LIMIT + 1),
        recent,
    ):
        some = await store.list_jobs(query)
        complete = complete and len(some) <= SNAPSHOT_LIMIT
        every += some
    for job in every:
        known = found.get(job.id)
        if known is None or job.seq > known.seq:
            found[job.id] = job
    jobs = sorted(found.values(), key=lambda job: job.seq, reverse=True)
    return jobs[:SNAPSHOT_LIMIT], complete and len(jobs) <= SNAPSHOT_LIMIT


@dataclass(frozen=True)
class Snapshot:
    """A snapshot event, encoded but for its id (which depends on the
    batches sent after it: it is sent after them); ``version`` and
    ``cursor``: the feed's when it was read (the feed's batches after that
    version bring it up to date; the cursor is the event's id without them)."""

    frame: bytes
    version: int
    cursor: ChangeCursor | None


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
        self._snapshots: dict[ChangeCursor | None, tuple[int, asyncio.Future[Snapshot]]] = {}
        self._kept_batches = kept_batches
        self._batches: OrderedDict[int, bytes] = OrderedDict()

    async def snapshot(self, since: ChangeCursor | None) -> Snapshot:
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
        """The ``job`` events of one batch of changes; the last carries the
        batch's cursor as its id."""
        frame = self._batches.get(batch.version)
        if frame is None:
            last = len(batch.jobs) - 1
            frame = b"".join(
                _event("job", json.dumps(job.to_dict()), batch.cursor if i == last else None)
                for i, job in enumerate(batch.jobs)
            )
            self._batches[batch.version] = frame
            while len(self._batches) > self._kept_batches:
                self._batches.popitem(last=False)
        return frame

    async def _build(self, since: ChangeCursor | None, version: int) -> Snapshot:
        async with self._gate:
            # Read after all of these (and together: the cursor is the version's).
            version, cursor = max(version, self._feed.version), self._feed.cursor
            jobs, complete = await snapshot(self._store, since, clock=self._clock)
            # A thousand jobs take a while to encode: the loop keeps serving.
            frame = await asyncio.to_thread(_encode_snapshot, jobs, complete)
            return Snapshot(frame, version, cursor)

    def _forget(self, version: int) -> None:
        """Snapshots no client can use again, and the oldest past ``kept``."""
        for key, (built, future) in list(self._snapshots.items()):
            if future.done() and not self._usable(built, version):
                del self._snapshots[key]
        while len(self._snapshots) > self._kept:
            del self._snapshots[next(iter(self._snapshots))]


async def job_events_stream(
    feed: ChangeFeed, events: EventCache, since: ChangeCursor | None
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
            cursor = taken.cursor or cursor
            for chunk in _chunks(taken.frame):
                yield chunk
            yield f"id: {cursor or ''}\n\n".encode()
            for batch in missed:
                cursor = batch.cursor or cursor
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
                cursor = batch.cursor or cursor
                for chunk in _chunks(events.changes(batch)):
                    yield chunk
    finally:
        feed.unsubscribe(subscriber)


def _encode_snapshot(jobs: list[Job], complete: bool) -> bytes:
    data = json.dumps({"jobs": [job.to_dict() for job in jobs], "complete": complete})
    return f"event: snapshot\ndata: {data}\n".encode()


def _event(kind: str, data: str, event_id: ChangeCursor | None) -> bytes:
    last = "" if event_id is None else f"id: {event_id}\n"
    return f"event: {kind}\ndata: {data}\n{last}\n".encode()


def _chunks(frame: bytes) -> Iterator[bytes]:
    for start in range(0, len(frame), CHUNK):
        yield frame[start : start + CHUNK]


def _failed(future: asyncio.Future[Snapshot]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


def _retrieve(future: asyncio.Future[Snapshot]) -> None:
    if not future.cancelled():
        future.exception()  # the waiters have it; no "never retrieved" warning
