"""The monitor's reading of the change feed ends, however fast jobs are
written while it reads: it stops at the newest write there was when it
began, and reads the rest next time."""

from __future__ import annotations

from jobtrack.monitor.backlog import BacklogWatch
from jobtrack.store import CHANGES_LIMIT, ChangeCursor, InMemoryJobStore
from jobtrack.store.base import Changes
from tests.conftest import FrozenClock

JOB_TYPE = "busy"
STAGE = "work"


class BusyStore(InMemoryJobStore):
    """Writes ``per_read`` jobs before each page of the change feed, as busy
    workers would while the monitor reads."""

    def __init__(self, clock: FrozenClock) -> None:
        super().__init__(clock=clock)
        self.per_read = 0
        self.jobs: list[str] = []
        self.reads = 0
        self.read_up_to: list[int] = []

    async def list_changed(self, *, after: ChangeCursor | None = None, limit: int = 500) -> Changes:
        self.reads += 1
        if self.reads > 20:
            raise AssertionError("the reading goes on while jobs are written")
        await self.write(self.per_read)
        changes = await super().list_changed(after=after, limit=limit)
        self.read_up_to.append(changes[1].seq)
        return changes

    async def write(self, count: int) -> None:
        for n in range(count):
            await self.increment(self.jobs[n % len(self.jobs)], STAGE, completed=1)


async def _busy(clock: FrozenClock) -> tuple[BusyStore, BacklogWatch]:
    store = BusyStore(clock)
    for _ in range(2 * CHANGES_LIMIT):
        job = await store.create_job(JOB_TYPE, [STAGE])
        await store.raise_total(job.id, STAGE, by=1_000_000)
        store.jobs.append(job.id)
    watch = BacklogWatch(300.0)
    await watch.read_counts(store, [JOB_TYPE], clock())  # the first reading: from now on
    return store, watch


async def test_a_reading_stops_at_the_newest_write_there_was_when_it_began() -> None:
    clock = FrozenClock()
    store, watch = await _busy(clock)
    await store.write(1_200)  # written since the last reading
    head = (await store.last_change()).seq
    store.per_read = CHANGES_LIMIT + 100  # faster than the feed is read
    store.reads = 0

    await watch.read_counts(store, [JOB_TYPE], clock())

    # Pages until the head was passed, and no more (a job written again
    # moves to the end of the feed, so the head comes within a page or two).
    assert store.read_up_to[-1] >= head
    assert all(seq < head for seq in store.read_up_to[:-1])
    assert store.reads <= 3


async def test_what_was_written_meanwhile_is_read_next_time() -> None:
    clock = FrozenClock()
    store, watch = await _busy(clock)
    await store.write(700)
    store.per_read = 300
    await watch.read_counts(store, [JOB_TYPE], clock())  # stops with writes still unread
    unread_from = store.read_up_to[-1]
    store.per_read = 0
    store.read_up_to.clear()

    await watch.read_counts(store, [JOB_TYPE], clock())

    last = (await store.last_change()).seq
    assert store.read_up_to[-1] == last > unread_from  # caught up, from where it stopped
