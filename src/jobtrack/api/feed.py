"""Every change of every job, from the store itself: each API process polls
the store's change feed (``JobStore.list_changed``, on an index of its own),
so that with several processes each sees every change, whoever wrote it.

The feed reads by the store's change sequence, from a
:class:`~jobtrack.store.base.ChangeCursor`: every job write takes the next
``seq`` in its own transaction, and the cursor also names the writes still
in flight at the last read (PostgreSQL, where a lower seq may commit after
a higher one), so no write is missed whatever the writers' clocks or the
order their transactions commit, and none is read twice.

A subscriber holds at most ``QUEUE_JOBS`` jobs not yet sent: one that falls
further behind is cut loose at once (its queue emptied, so a slow client
holds no memory) and starts again from a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from jobtrack.errors import JobtrackError
from jobtrack.model import Job
from jobtrack.store import CHANGES_LIMIT, ChangeCursor, JobStore

__all__ = ["QUEUE_JOBS", "Batch", "ChangeFeed", "Subscriber"]

logger = logging.getLogger(__name__)

#: At most this many jobs wait in one subscriber's queue.
QUEUE_JOBS = 5000
#: The feed keeps its last this many batches (a snapshot and what came after
#: it stand for a newer snapshot).
KEPT_BATCHES = 64


class Batch(NamedTuple):
    """What one poll passed on: the feed's version after it, the jobs in
    write order (the same objects for every subscriber), and the feed's
    cursor after it (a stream's ``Last-Event-ID``)."""

    version: int
    jobs: list[Job]
    cursor: ChangeCursor | None = None


@dataclass(eq=False)
class Subscriber:
    """One listener: batches of changed jobs, at most ``limit`` jobs in all,
    and whether it fell behind (then its queue is emptied at once, but for an
    empty batch that wakes its reader: it must start again from a snapshot)."""

    limit: int = QUEUE_JOBS
    queue: asyncio.Queue[Batch] = field(default_factory=asyncio.Queue)
    lagging: bool = False
    queued_jobs: int = 0

    def offer(self, batch: Batch) -> None:
        """Queue ``batch``, or cut the subscriber loose if it would hold too many."""
        if self.lagging:
            return
        if self.queued_jobs + len(batch.jobs) <= self.limit:
            self.queue.put_nowait(batch)
            self.queued_jobs += len(batch.jobs)
            return
        self.lagging = True
        self._empty()
        self.queue.put_nowait(Batch(batch.version, [], batch.cursor))

    async def next(self) -> Batch:
        """The next batch, waiting for one."""
        batch = await self.queue.get()
        self.queued_jobs -= len(batch.jobs)
        return batch

    def resume(self) -> None:
        """Taken up again from a snapshot: what is queued is in it."""
        self._empty()
        self.lagging = False

    def _empty(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_jobs = 0


class ChangeFeed:
    """Polls the store every ``interval`` seconds and fans the changes out."""

    def __init__(self, store: JobStore, *, interval: float = 0.2) -> None:
        self._store = store
        self._interval = interval
        self._subscribers: set[Subscriber] = set()
        #: Where the next poll reads from (None: from the store's first write);
        #: everything before it has been passed on, in batches up to ``version``.
        self.cursor: ChangeCursor | None = None
        #: Grows with every poll that passes something on.
        self.version = 0
        self._kept: deque[Batch] = deque(maxlen=KEPT_BATCHES)

    def batches(self, after: int, upto: int) -> list[Batch] | None:
        """The batches passed on after version ``after`` up to ``upto``, in
        order; None if the feed no longer keeps them all."""
        if upto <= after:
            return []
        if not self._kept or self._kept[0].version > after + 1:
            return None
        return [batch for batch in self._kept if after < batch.version <= upto]

    def subscribe(self) -> Subscriber:
        """A new listener; changes from the next poll on reach it."""
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop passing changes to ``subscriber``."""
        self._subscribers.discard(subscriber)

    async def start(self) -> None:
        """Begin after the newest write in the store: what came before is
        every client's snapshot, not news. Raises what the store raises."""
        self.cursor = await self._store.last_change()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a store outage only delays the news."""
        while not stop.is_set():
            try:
                await self.poll()
            except JobtrackError as exc:
                logger.warning("change feed: %s", exc, extra={"action": "feed_error"})
            except Exception:
                logger.exception("change feed failed", extra={"action": "feed_error"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def poll(self) -> list[Job]:
        """Read what changed since the last poll and pass it on; returns it.
        Nothing counts as passed on unless the whole read succeeded."""
        cursor = self.cursor
        latest: dict[str, Job] = {}
        while True:
            jobs, cursor = await self._store.list_changed(after=cursor, limit=CHANGES_LIMIT)
            for job in jobs:
                latest[job.id] = job  # the feed is in write order: the last is the latest
            if len(jobs) < CHANGES_LIMIT:
                break
        changed = sorted(latest.values(), key=lambda job: job.seq)
        self.cursor = cursor
        if changed:
            self.version += 1
            batch = Batch(self.version, changed, cursor)
            self._kept.append(batch)
            for subscriber in list(self._subscribers):
                subscriber.offer(batch)
        return changed
