"""The change feed on the in-memory store, with a clock moved by hand."""

from __future__ import annotations

from typing import Any

import pytest

from jobtrack.api.feed import KEPT_BATCHES, QUEUE_JOBS, Batch, ChangeFeed, Subscriber
from jobtrack.errors import StoreUnavailable
from jobtrack.store import CHANGES_LIMIT, InMemoryJobStore
from tests.conftest import FrozenClock


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


async def test_each_change_is_passed_on_once(clock: FrozenClock) -> None:
    store = InMemoryJobStore(clock=clock)
    old = await store.create_job("t", ["a"])
    feed = ChangeFeed(store)
    await feed.start()
    subscriber = feed.subscribe()
    assert await feed.poll() == []  # what was there before is no news
    clock.advance(0.5)
    await store.increment(old.id, "a")
    [changed] = await feed.poll()
    assert (changed.id, changed.stage("a").completed_items) == (old.id, 1)
    assert await feed.poll() == []  # passed on once
    assert [job.id for job in subscriber.queue.get_nowait().jobs] == [old.id]
    assert subscriber.queue.empty()


async def test_a_write_stamped_before_the_newest_seen_reaches_every_subscriber(
    clock: FrozenClock,
) -> None:
    """The feed reads by the store's change sequence: a write whose
    ``updated_at`` is older than the newest one passed on (its writer's
    clock went back, by an hour here) still reaches every subscriber."""
    store = InMemoryJobStore(clock=clock)
    feed = ChangeFeed(store)
    await feed.start()
    subscribers = [feed.subscribe(), feed.subscribe()]
    clock.advance(10)
    first = await store.create_job("t", ["a"])
    assert [job.id for job in await feed.poll()] == [first.id]
    clock.advance(-3600)
    late = await store.create_job("t", ["a"])
    assert late.updated_at < first.updated_at
    assert [job.id for job in await feed.poll()] == [late.id]
    assert feed.cursor is not None
    assert feed.cursor.seq == late.seq
    for subscriber in subscribers:
        assert [[job.id for job in batch.jobs] for batch in _drain(subscriber)] == [
            [first.id],
            [late.id],
        ]


async def test_a_failed_poll_loses_nothing(clock: FrozenClock) -> None:
    store = InMemoryJobStore(clock=clock)
    feed = ChangeFeed(store)
    await feed.start()
    clock.advance(1)
    made = []
    for _ in range(CHANGES_LIMIT + 3):  # two pages
        made.append((await store.create_job("t", ["a"])).id)
        clock.advance(0.001)
    real = store.list_changed
    calls = 0

    async def second_page_fails(**options: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StoreUnavailable("the store went away")
        return await real(**options)

    store.list_changed = second_page_fails  # type: ignore[method-assign]
    subscriber = feed.subscribe()
    with pytest.raises(StoreUnavailable):
        await feed.poll()
    assert subscriber.queue.empty()
    store.list_changed = real  # type: ignore[method-assign]
    assert [job.id for job in await feed.poll()] == made  # all of it, in write order
    assert [job.id for job in subscriber.queue.get_nowait().jobs] == made


async def test_a_subscriber_that_falls_behind_holds_a_bounded_queue(clock: FrozenClock) -> None:
    store = InMemoryJobStore(clock=clock)
    feed = ChangeFeed(store)
    await feed.start()
    slow, gone = feed.subscribe(), feed.subscribe()
    feed.unsubscribe(gone)
    jobs = [await store.create_job("t", ["a"]) for _ in range(50)]
    held = []
    for _ in range(2 * QUEUE_JOBS // len(jobs)):  # it never reads
        clock.advance(0.01)
        for job in jobs:
            await store.increment(job.id, "a")
        assert len(await feed.poll()) == len(jobs)
        held.append(slow.queued_jobs)
    assert max(held) == QUEUE_JOBS  # and no more: then it was cut loose at once
    assert held[-1] == 0
    assert slow.lagging
    [wake_up] = _drain(slow)  # only what tells the reader to start again
    assert wake_up.jobs == []
    assert gone.queued_jobs == 0
    assert _drain(gone) == []
    slow.resume()  # from a snapshot: then news again
    clock.advance(0.01)
    await store.increment(jobs[0].id, "a")
    await feed.poll()
    assert not slow.lagging
    assert [[job.id for job in batch.jobs] for batch in _drain(slow)] == [[jobs[0].id]]


def _drain(subscriber: Subscriber) -> list[Batch]:
    found = []
    while not subscriber.queue.empty():
        found.append(subscriber.queue.get_nowait())
    return found


async def test_two_feeds_on_one_store_each_see_every_change(clock: FrozenClock) -> None:
    store = InMemoryJobStore(clock=clock)  # as two API processes on one database
    feeds = [ChangeFeed(store), ChangeFeed(store)]
    for feed in feeds:
        await feed.start()
    clock.advance(1)
    job = await store.create_job("t", ["a"])
    for feed in feeds:
        assert [j.id for j in await feed.poll()] == [job.id]


async def test_the_feed_keeps_its_last_batches(clock: FrozenClock) -> None:
    store = InMemoryJobStore(clock=clock)
    feed = ChangeFeed(store)
    await feed.start()
    job = await store.create_job("t", ["a"])
    for _ in range(KEPT_BATCHES + 1):
        clock.advance(0.01)
        await store.increment(job.id, "a")
        await feed.poll()
    assert feed.version == KEPT_BATCHES + 1
    assert [b.version for b in feed.batches(feed.version - 2, feed.version) or []] == [
        feed.version - 1,
        feed.version,
    ]
    assert feed.batches(feed.version, feed.version) == []
    assert feed.batches(1, feed.version) is not None  # batches 2.. are all kept
    assert feed.batches(0, feed.version) is None  # batch 1 is forgotten
