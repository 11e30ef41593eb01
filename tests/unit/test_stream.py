"""The stream's snapshots, built once and shared, on the in-memory store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jobtrack.api.feed import ChangeFeed
from jobtrack.api.stream import STALE, EventCache, job_events_stream, since_header
from jobtrack.store import ChangeCursor, InMemoryJobStore
from tests.conftest import FrozenClock


def _counting(store: InMemoryJobStore) -> list[str]:
    calls: list[str] = []
    for name in ("list_jobs", "list_changed"):
        real = getattr(store, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return await _real(*args, **kw)

        setattr(store, name, counted)
    return calls


def _jobs(frame: bytes) -> list[str]:
    [data] = [line for line in frame.decode().split("\n") if line.startswith("data: ")]
    return [job["id"] for job in json.loads(data.removeprefix("data: "))["jobs"]]


async def test_clients_that_connect_together_share_one_snapshot() -> None:
    clock = FrozenClock()
    store = InMemoryJobStore(clock=clock)
    first = await store.create_job("t", ["a"])
    feed = ChangeFeed(store)
    await feed.start()
    calls = _counting(store)
    snapshots = EventCache(store, feed, clock=clock)
    taken = await asyncio.gather(*(snapshots.snapshot(None) for _ in range(50)))
    assert calls == ["list_jobs", "list_jobs", "list_jobs"]  # one build for all 50
    assert all(shot.frame is taken[0].frame for shot in taken)  # the same bytes, not copies
    assert _jobs(taken[0].frame) == [first.id]
    assert taken[0].cursor == feed.cursor == ChangeCursor(first.seq)

    calls.clear()
    assert (await snapshots.snapshot(None)).frame is taken[0].frame  # nothing new: still that one
    assert calls == []

    clock.advance(1)
    second = await store.create_job("t", ["a"])
    await feed.poll()  # news: the snapshot and the feed's batch since stand for a new one
    calls.clear()
    again = await snapshots.snapshot(None)
    assert calls == []
    assert again.frame is taken[0].frame
    [since] = feed.batches(again.version, feed.version) or []
    assert [job.id for job in since.jobs] == [second.id]

    for _ in range(STALE):  # too many batches since: built again
        clock.advance(1)
        await store.increment(second.id, "a")
        await feed.poll()
    calls.clear()
    fresh = await snapshots.snapshot(None)
    assert calls == ["list_jobs", "list_jobs", "list_jobs"]
    assert _jobs(fresh.frame) == [second.id, first.id]
    assert (fresh.version, feed.batches(fresh.version, feed.version)) == (feed.version, [])


async def test_a_failed_build_is_not_kept() -> None:
    clock = FrozenClock()
    store = InMemoryJobStore(clock=clock)
    feed = ChangeFeed(store)
    snapshots = EventCache(store, feed, clock=clock)
    real = store.list_jobs
    failing = True

    async def flaky(*args: Any, **kw: Any) -> Any:
        if failing:
            raise RuntimeError("the store went away")
        return await real(*args, **kw)

    store.list_jobs = flaky  # type: ignore[method-assign]
    results = await asyncio.gather(snapshots.snapshot(None), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    failing = False
    assert _jobs((await snapshots.snapshot(None)).frame) == []


async def test_a_slow_build_is_shared_however_far_the_feed_moves_meanwhile() -> None:
    clock = FrozenClock()
    store = InMemoryJobStore(clock=clock)
    job = await store.create_job("t", ["a"])
    feed = ChangeFeed(store)
    await feed.start()
    snapshots = EventCache(store, feed, clock=clock)
    real = store.list_jobs
    release = asyncio.Event()
    builds = 0

    async def slow(*args: Any, **kw: Any) -> Any:
        nonlocal builds
        builds += 1
        await release.wait()  # a store that takes its time
        return await real(*args, **kw)

    store.list_jobs = slow  # type: ignore[method-assign]
    first = asyncio.ensure_future(snapshots.snapshot(None))
    await asyncio.sleep(0)
    for _ in range(STALE + 5):  # the feed moves on while the build waits
        clock.advance(1)
        await store.increment(job.id, "a")
        await feed.poll()
    later = [asyncio.ensure_future(snapshots.snapshot(None)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    taken = await asyncio.gather(first, *later)
    assert builds == 3  # one build (its three list_jobs reads), however long it took, for all 21
    assert all(shot.frame is taken[0].frame for shot in taken)


async def _events_until(stream: Any, count: int) -> list[tuple[str | None, str | None, Any]]:
    """The first ``count`` events (kind, id, data) of a stream's bytes."""
    text, events = "", []
    async for chunk in stream:
        text += chunk.decode()
        while "\n\n" in text:
            block, text = text.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
            if "data" in fields:
                events.append((fields.get("event"), fields.get("id"), json.loads(fields["data"])))
            if len(events) == count:
                return events
    raise AssertionError("the stream ended")


async def test_a_write_stamped_before_the_newest_seen_reaches_every_client() -> None:
    """A write whose ``updated_at`` is older than the newest the feed has
    passed on (its writer's clock went back) reaches every client, and the
    event ids are the feed's cursors."""
    clock = FrozenClock()
    store = InMemoryJobStore(clock=clock)
    feed = ChangeFeed(store)
    await feed.start()
    events = EventCache(store, feed, clock=clock)
    clients = [job_events_stream(feed, events, None) for _ in range(2)]
    firsts = [asyncio.ensure_future(_events_until(client, 3)) for client in clients]
    await asyncio.sleep(0.05)  # both have their snapshot and wait for news
    clock.advance(10)
    newest = await store.create_job("t", ["a"])
    await feed.poll()
    clock.advance(-3600)  # the next writer's clock is an hour behind
    late = await store.create_job("t", ["a"])
    assert late.updated_at < newest.updated_at
    await feed.poll()
    for first in firsts:
        snapshot, news, older = await asyncio.wait_for(first, 5)
        assert snapshot[0] == "snapshot"
        assert (news[0], news[2]["id"], news[1]) == ("job", newest.id, str(newest.seq))
        assert (older[0], older[2]["id"], older[1]) == ("job", late.id, str(late.seq))
    for client in clients:
        await client.aclose()  # type: ignore[attr-defined]  # (an async generator)


def test_a_malformed_last_event_id_is_a_first_connection() -> None:
    assert since_header("1234") == ChangeCursor(1234)
    assert since_header("1234-5001:5004:5001,5002") == ChangeCursor(1234, "5001:5004:5001,5002")
    assert since_header("1234-7:7:") == ChangeCursor(1234, "7:7:")
    for nonsense in (
        None,
        "",
        "x",
        "-5",
        "9" * 30,
        "12-",
        "12-x",
        "012",
        "1 2",
        "1-2..3",
        "1-5001.5002",  # an old form
        "1-9:8:",  # xmin past xmax
        "1-5:9:4",  # a running xid below xmin
        "1-5:9:9",  # ... or at xmax
        "1-5:9:7,6",  # not in order
        "1-5:9:6,6",  # twice
        f"1-5:{2**63}:",  # past any xid8 PostgreSQL hands out
        f"{2**63}",
    ):
        assert since_header(nonsense) is None
