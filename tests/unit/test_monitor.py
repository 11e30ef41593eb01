"""The fallback monitor on the in-memory store, catalog and broker, with a
clock moved by hand: every scenario of the design, counts checked exactly."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import InvalidRequest, StoreUnavailable
from jobtrack.jobs.messages import ItemMessage, decode_item
from jobtrack.model import Job, JobStatus, StageCounts
from jobtrack.monitor import Monitor, Truth
from jobtrack.pipeline.catalog import (
    Artifact,
    ArtifactStatus,
    Catalog,
    InMemoryCatalog,
    ScannedFile,
)
from jobtrack.pipeline.reconciler import CollectionScanReconciler
from jobtrack.pipeline.stages import (
    CACHE,
    DEFAULT_RENDITIONS,
    JOB_TYPE,
    SCAN,
    STAGES,
    THUMBNAIL,
    queue_for,
)
from jobtrack.store import InMemoryJobStore, JobStore
from tests.conftest import FrozenClock

STUCK_AFTER = 300.0
RENDITIONS = (THUMBNAIL, CACHE)


class World:
    """A store, catalog and broker, and collection-scan jobs made by hand."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        clock: FrozenClock | None = None,
        store: JobStore | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.clock = clock or FrozenClock()
        self.store = store or InMemoryJobStore(clock=self.clock)
        self.catalog = catalog or InMemoryCatalog(clock=self.clock)
        self.broker = InMemoryBroker()
        self.folder = tmp_path
        self.reconciler = CollectionScanReconciler(catalog=self.catalog, broker=self.broker)

    def monitor(self, **options: float | str) -> Monitor:
        return Monitor(
            self.store,
            [self.reconciler],
            stuck_after=STUCK_AFTER,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )

    async def job(self, images: int, *, made: int, counted: int, name: str = "c") -> Job:
        """A sealed job of ``images`` images: ``made`` renditions of each stage
        really produced, ``counted`` of them counted by the consumers."""
        root = self.folder / name
        root.mkdir()
        collection = await self.catalog.ensure_collection(str(root))
        job = await self.store.create_job(
            JOB_TYPE, STAGES, attributes={"collection": {"id": collection.id, "path": str(root)}}
        )
        await self.catalog.swap_job(collection.id, expected=None, job_id=job.id)
        files = [ScannedFile(f"{n:04}.jpg", 1, 1) for n in range(images)]
        states = await self.catalog.register_images(collection.id, job.id, files)
        for stage in STAGES:
            await self.store.raise_total(job.id, stage, by=images)
            await self.store.seal_total(job.id, stage)
        await self.store.increment(job.id, SCAN, completed=images)
        for spec in DEFAULT_RENDITIONS:
            for state in states[:made]:
                await self.make(root, state.image.id, spec.stage)
            for state in states[:counted]:
                await self.store.increment(job.id, spec.stage, item_key=state.image.id)
        return await self.store.get_job(job.id)

    async def make(self, root: Path, image_id: str, stage: str) -> None:
        """Write one rendition and record it in the catalog, as a consumer does."""
        [spec] = [spec for spec in DEFAULT_RENDITIONS if spec.stage == stage]
        path = root / f"{stage}-{image_id}.jpg"
        path.write_bytes(b"x")
        await self.catalog.record_artifact(
            Artifact(
                image_id=image_id,
                kind=stage,
                status=ArtifactStatus.OK,
                variant=spec.variant,
                source_size=1,
                source_mtime_ns=1,
                produced_at=self.clock(),
                path=str(path),
            )
        )

    def lose(self, stage: str) -> None:
        """The queued messages of a stage are lost (a broker without durability, say)."""
        queue = self.broker.queue(queue_for(stage)).ready
        while not queue.empty():
            queue.get_nowait()

    def consume(self, stage: str, count: int) -> None:
        """Workers take ``count`` queued messages of a stage."""
        queue = self.broker.queue(queue_for(stage)).ready
        for _ in range(count):
            queue.get_nowait()

    def queued(self, stage: str) -> list[ItemMessage]:
        queue = self.broker.queue(queue_for(stage)).ready
        return [decode_item(m.body) for m in list(queue._queue)]  # type: ignore[attr-defined]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def counts(job: Job) -> dict[str, tuple[int, int, int]]:
    return {
        name: (s.total_items, s.completed_items, s.failed_items) for name, s in job.stages.items()
    }


async def test_a_moving_job_is_never_touched(world: World) -> None:
    job = await world.job(10, made=4, counted=4)
    monitor = world.monitor()
    world.clock.advance(STUCK_AFTER - 1)
    report = await monitor.cycle()
    assert (report.stuck, report.queries) == (0, 1)
    assert await world.store.get_job(job.id) == job
    assert await world.store.list_events(job.id) == []


async def test_the_threshold_is_exact(world: World) -> None:
    job = await world.job(4, made=4, counted=3)  # one count lost
    monitor = world.monitor()
    world.clock.now = job.updated_at + timedelta(seconds=STUCK_AFTER)  # not older: untouched
    assert (await monitor.cycle()).stuck == 0
    world.clock.now += timedelta(microseconds=1)  # now older than the threshold
    report = await monitor.cycle()
    assert (report.stuck, report.reconciled, report.completed) == (1, 1, 1)
    assert (await world.store.get_job(job.id)).status is JobStatus.COMPLETED


async def test_a_consumer_crash_is_reconciled_and_the_job_completes(world: World) -> None:
    # Every rendition was written, but 3 of each stage's counts were lost.
    job = await world.job(10, made=10, counted=7)
    world.clock.advance(STUCK_AFTER + 1)
    report = await world.monitor().cycle()
    assert (report.stuck, report.reconciled, report.completed, report.redriven) == (1, 1, 1, 0)
    job = await world.store.get_job(job.id)
    assert job.status is JobStatus.COMPLETED
    assert counts(job) == {SCAN: (10, 10, 0), THUMBNAIL: (10, 10, 0), CACHE: (10, 10, 0)}
    [event] = await world.store.list_events(job.id)
    assert (event.kind, event.message) == (
        "reconciled",
        "thumbnail 7 → 10, cache 7 → 10 reconciled",
    )
    assert event.data[THUMBNAIL] == {"before": [7, 0, 10], "after": [10, 0, 10]}


async def test_missing_items_are_redriven_then_the_job_fails_without_progress(
    world: World,
) -> None:
    job = await world.job(10, made=8, counted=8)  # two images never made
    monitor = world.monitor(max_redrives=2)
    for _ in range(2):
        world.clock.advance(STUCK_AFTER + 1)
        report = await monitor.cycle()
        assert (report.redriven, report.items_redriven, report.failed) == (1, 4, 0)
        again = await monitor.cycle()  # at once: the job was claimed, nothing changes
        assert (again.stuck, again.redriven) == (0, 0)
        for stage in RENDITIONS:  # exactly the missing items, published again...
            queued = world.queued(stage)
            assert len(queued) == 2
            assert {m.key for m in queued} == set(
                (await world.reconciler.truth(job)).missing[stage]
            )
            world.lose(stage)  # ...and lost again
    world.clock.advance(STUCK_AFTER + 1)
    report = await monitor.cycle()
    assert (report.redriven, report.failed) == (0, 1)
    job = await world.store.get_job(job.id)
    assert job.status is JobStatus.FAILED
    assert job.message == "items still missing after 2 re-drives: thumbnail 2, cache 2"
    events = await world.store.list_events(job.id)
    assert [e.kind for e in events] == ["redriven", "redriven", "failed"]
    assert events[0].message == (
        "4 missing items published again (thumbnail 2, cache 2), round 1 of 2"
    )


async def test_no_item_is_redriven_more_than_max_redrives_times(world: World) -> None:
    job = await world.job(10, made=8, counted=8)
    monitor = world.monitor(max_redrives=2)
    published: dict[str, int] = {}
    for round_ in (1, 2):
        world.clock.advance(STUCK_AFTER + 1)
        report = await monitor.cycle()
        assert (report.redriven, report.failed) == (1, 0)
        queued = [m for stage in RENDITIONS for m in world.queued(stage)]
        for message in queued:
            key = f"{message.stage}/{message.key}"
            published[key] = published.get(key, 0) + 1
        if round_ == 1:  # one re-driven item comes through, the others are lost
            assert report.items_redriven == 4
            message = world.queued(THUMBNAIL)[0]
            root = Path(job.attributes["collection"]["path"])
            await world.make(root, message.key, THUMBNAIL)
            await world.store.increment(job.id, THUMBNAIL, item_key=message.key)
        else:  # progress in round 1 does not buy the rest a third publish
            assert report.items_redriven == 3
        for stage in RENDITIONS:
            world.lose(stage)
    world.clock.advance(STUCK_AFTER + 1)
    report = await monitor.cycle()
    assert (report.redriven, report.failed) == (0, 1)
    assert sorted(published.values()) == [1, 2, 2, 2]  # at most max_redrives each
    failed = await world.store.get_job(job.id)
    assert failed.message == "items still missing after 2 re-drives: thumbnail 1, cache 2"


async def test_slow_is_not_stuck_while_the_backlog_is_consumed(world: World) -> None:
    job = await world.job(10, made=6, counted=6)
    # The job's remaining work waits behind a backlog of other jobs' messages,
    # which the workers consume: 50 messages between two cycles.
    await world.broker.publish_many(queue_for(THUMBNAIL), [b"other job"] * 1000)
    await world.broker.publish_many(queue_for(CACHE), [b"other job"] * 1000)
    monitor = world.monitor(max_redrives=1)
    for _ in range(14):  # 70 min: much longer than stuck_after, and than the re-drives allow
        world.clock.advance(STUCK_AFTER + 1)
        report = await monitor.cycle()
        assert (report.stuck, report.slow, report.redriven, report.failed) == (1, 1, 0, 0)
        for stage in RENDITIONS:
            world.consume(stage, 50)
    job = await world.store.get_job(job.id)
    assert job.status is JobStatus.IN_PROGRESS
    assert counts(job)[THUMBNAIL] == (10, 6, 0)
    # Visible, but at most once an hour: at the first cycle, then 12 cycles (60.2 min) later.
    events = await world.store.list_events(job.id)
    assert [e.kind for e in events] == ["waiting", "waiting"]
    assert events[1].at - events[0].at == timedelta(seconds=12 * (STUCK_AFTER + 1))
    assert events[0].message == (
        "left alone, waiting behind a backlog being consumed: thumbnail 1000, cache 1000"
        " queued or in flight"
    )
    assert events[0].data["backlog"] == {THUMBNAIL: 1000, CACHE: 1000}
    assert await world.broker.in_flight(queue_for(THUMBNAIL)) == 1000 - 14 * 50  # nothing added
    assert (await world.store.stats(stuck_before=world.clock.now)).waiting == 1


async def test_a_backlog_that_has_not_shrunk_for_stuck_after_is_stuck(world: World) -> None:
    job = await world.job(10, made=8, counted=8)
    # A backlog whose workers are gone: it never moves.
    await world.broker.publish_many(queue_for(THUMBNAIL), [b"other job"] * 1000)
    await world.broker.publish_many(queue_for(CACHE), [b"other job"] * 1000)
    monitor = world.monitor(max_redrives=1)
    world.clock.advance(STUCK_AFTER + 1)
    first = await monitor.cycle()  # the backlog is new to this monitor: waiting
    assert (first.slow, first.stalled, first.redriven) == (1, 0, 0)
    world.clock.advance(STUCK_AFTER + 1)  # the backlog has not shrunk for stuck_after
    second = await monitor.cycle()
    assert (second.slow, second.stalled, second.redriven, second.items_redriven) == (0, 1, 1, 4)
    assert (await world.store.stats(stuck_before=world.clock.now)).waiting == 0
    world.clock.advance(STUCK_AFTER + 1)  # still nothing: the re-drives are spent
    third = await monitor.cycle()
    assert (third.stalled, third.failed) == (1, 1)
    failed = await world.store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.message == "items still missing after 1 re-drives: thumbnail 2, cache 2"
    events = await world.store.list_events(job.id)
    assert [e.kind for e in events] == ["waiting", "redriven", "failed"]
    assert events[1].data["stalled"] == {THUMBNAIL: 1000, CACHE: 1000}


async def consumed_but_not_shrinking(world: World, *, arriving: int, once: bool = False) -> None:
    """A stuck job behind a backlog its workers consume, 50 messages between
    two cycles (the items of another job of the type are counted), while
    ``arriving`` new messages are published meanwhile: the backlog grows
    (100) or stays the same size (50), and the job is slow all along. With
    ``once``, every cycle is a monitor of its own (``--once`` from a scheduler)."""
    job = await world.job(10, made=8, counted=8)
    others = await world.job(2000, made=0, counted=0, name="others")
    for stage in RENDITIONS:
        await world.broker.publish_many(queue_for(stage), [b"other job"] * 1000)
    monitor = world.monitor(max_redrives=2)
    for cycle in range(14):  # 70 min: much longer than stuck_after, and the re-drives
        world.clock.advance(STUCK_AFTER + 1)
        for stage in RENDITIONS:
            world.consume(stage, 50)
            for n in range(50):
                await world.store.increment(others.id, stage, item_key=f"{cycle}-{n}")
            await world.broker.publish_many(queue_for(stage), [b"other job"] * arriving)
        report = await (world.monitor(max_redrives=2) if once else monitor).cycle()
        assert (report.stuck, report.slow, report.stalled) == (1, 1, 0)
        assert (report.redriven, report.failed) == (0, 0)
    job = await world.store.get_job(job.id)
    assert job.status is JobStatus.IN_PROGRESS
    assert counts(job)[THUMBNAIL] == (10, 8, 0)
    events = await world.store.list_events(job.id)
    assert [e.kind for e in events] == ["waiting", "waiting"]  # once an hour
    assert events[1].at - events[0].at == timedelta(seconds=12 * (STUCK_AFTER + 1))
    size = 1000 + 14 * (arriving - 50)
    assert await world.broker.in_flight(queue_for(THUMBNAIL)) == size  # nothing re-driven
    assert counts(await world.store.get_job(others.id))[CACHE] == (2000, 700, 0)


@pytest.mark.parametrize("arriving", [100, 50], ids=["growing", "steady"])
async def test_a_backlog_consumed_but_not_shrinking_is_slow_not_stuck(
    world: World, arriving: int
) -> None:
    await consumed_but_not_shrinking(world, arriving=arriving)


async def test_a_growing_backlog_consumed_is_slow_for_a_monitor_run_once(world: World) -> None:
    await consumed_but_not_shrinking(world, arriving=100, once=True)


async def test_a_refilled_backlog_is_new_and_holds_the_job_for_stuck_after(
    world: World,
) -> None:
    for stage in RENDITIONS:
        await world.broker.publish_many(queue_for(stage), [b"other job"] * 10)
    monitor = world.monitor(max_redrives=1)
    world.clock.advance(STUCK_AFTER + 1)
    await monitor.cycle()
    for stage in RENDITIONS:  # drained...
        world.consume(stage, 10)
    for _ in range(5):  # ...and empty for 25 minutes
        world.clock.advance(STUCK_AFTER + 1)
        assert (await monitor.cycle()).stuck == 0
    job = await world.job(10, made=8, counted=8)
    for stage in RENDITIONS:  # refilled: another scan published, its workers gone
        await world.broker.publish_many(queue_for(stage), [b"other job"] * 1000)
    world.clock.advance(STUCK_AFTER + 1)
    first = await monitor.cycle()  # the backlog is new: the job waits behind it
    assert (first.slow, first.stalled, first.redriven) == (1, 0, 0)
    world.clock.advance(STUCK_AFTER + 1)  # neither shrunk nor consumed since: stuck
    second = await monitor.cycle()
    assert (second.slow, second.stalled, second.redriven, second.items_redriven) == (0, 1, 1, 4)
    assert [e.kind for e in await world.store.list_events(job.id)] == ["waiting", "redriven"]


async def test_a_growing_backlog_nobody_consumes_is_stuck(world: World) -> None:
    job = await world.job(10, made=8, counted=8)
    monitor = world.monitor(max_redrives=1)
    for stage in RENDITIONS:  # a scan publishes on, its workers are gone
        await world.broker.publish_many(queue_for(stage), [b"other job"] * 1000)
    world.clock.advance(STUCK_AFTER + 1)
    assert (await monitor.cycle()).slow == 1
    for stage in RENDITIONS:
        await world.broker.publish_many(queue_for(stage), [b"other job"] * 100)
    world.clock.advance(STUCK_AFTER + 1)
    report = await monitor.cycle()
    assert (report.slow, report.stalled, report.redriven) == (0, 1, 1)
    assert [e.kind for e in await world.store.list_events(job.id)] == ["waiting", "redriven"]


async def test_the_monitors_own_reconciliation_is_no_consumption(world: World) -> None:
    lost = await world.job(10, made=9, counted=7, name="lost")  # 2 counts lost
    world.clock.advance(100)
    behind = await world.job(10, made=8, counted=8, name="behind")
    for stage in RENDITIONS:  # a backlog whose workers are gone
        await world.broker.publish_many(queue_for(stage), [b"other job"] * 1000)
    monitor = world.monitor(max_redrives=1)
    world.clock.advance(1)
    assert (await monitor.cycle()).stuck == 0  # the monitor sees both jobs and the backlog
    world.clock.advance(200)
    first = await monitor.cycle()  # "lost" is set to 9 counted: the monitor's doing
    assert (first.stuck, first.reconciled, first.slow) == (1, 1, 1)
    assert counts(await world.store.get_job(lost.id))[THUMBNAIL] == (10, 9, 0)
    world.clock.advance(101)  # "behind" is stuck, the backlog idle for stuck_after
    second = await monitor.cycle()
    assert (second.stuck, second.stalled, second.redriven) == (1, 1, 1)
    assert [e.kind for e in await world.store.list_events(behind.id)] == ["redriven"]


async def test_a_new_monitor_remembers_the_backlog_through_the_waiting_event(
    world: World,
) -> None:
    stalled = await world.job(10, made=8, counted=8, name="stalled")
    await world.broker.publish_many(queue_for(THUMBNAIL), [b"other job"] * 1000)
    world.clock.advance(STUCK_AFTER + 1)
    assert (await world.monitor().cycle()).slow == 1  # one process: waiting
    world.clock.advance(STUCK_AFTER + 1)
    report = await world.monitor().cycle()  # another (a restart, or --once from cron)
    assert (report.slow, report.stalled, report.redriven) == (0, 1, 1)
    kinds = [e.kind for e in await world.store.list_events(stalled.id)]
    assert kinds == ["waiting", "redriven"]


async def test_a_new_monitor_sees_a_backlog_that_shrank_since_the_waiting_event(
    world: World,
) -> None:
    job = await world.job(10, made=8, counted=8)
    await world.broker.publish_many(queue_for(THUMBNAIL), [b"other job"] * 1000)
    await world.broker.publish_many(queue_for(CACHE), [b"other job"] * 1000)
    world.clock.advance(STUCK_AFTER + 1)
    assert (await world.monitor().cycle()).slow == 1
    world.consume(THUMBNAIL, 10)
    world.clock.advance(STUCK_AFTER + 1)
    report = await world.monitor().cycle()
    assert (report.slow, report.stalled, report.redriven) == (1, 0, 0)
    assert [e.kind for e in await world.store.list_events(job.id)] == ["waiting"]


class Yielding:
    """The store, giving the event loop a turn around every call, so that two
    monitors in one loop interleave as two processes would."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            result = await method(*args, **kwargs)
            await asyncio.sleep(0)
            return result

        return call


async def test_two_monitors_never_redrive_a_job_twice(world: World) -> None:
    jobs = [await world.job(5, made=3, counted=3, name=f"c{n}") for n in range(20)]
    world.clock.advance(STUCK_AFTER + 1)
    store: Any = Yielding(world.store)
    monitors = [
        Monitor(store, [world.reconciler], stuck_after=STUCK_AFTER, clock=world.clock)
        for _ in range(2)
    ]
    first, second = await asyncio.gather(*(m.cycle() for m in monitors))
    assert (first.stuck, second.stuck) == (20, 20)  # both found every job...
    assert first.redriven + second.redriven == 20  # ...and each was re-driven once
    assert first.claimed_elsewhere + second.claimed_elsewhere == 20
    assert min(first.redriven, second.redriven) > 0  # they really raced
    assert len(world.queued(THUMBNAIL)) == 20 * 2  # two missing images a job, once each
    for job in jobs:
        assert [e.kind for e in await world.store.list_events(job.id)] == ["redriven"]


async def test_an_increment_during_the_reconciliation_is_never_overwritten(
    world: World,
) -> None:
    job = await world.job(10, made=10, counted=5)
    store, clock = world.store, world.clock

    class Racing(CollectionScanReconciler):
        async def truth(self, job: Job) -> Truth:
            truth = await super().truth(job)
            # A consumer reports an item while the truth is being read.
            clock.advance(0.001)
            await store.increment(job.id, THUMBNAIL, item_key="late")
            return truth

    monitor = Monitor(
        store, [Racing(catalog=world.catalog)], stuck_after=STUCK_AFTER, clock=world.clock
    )
    world.clock.advance(STUCK_AFTER + 1)
    report = await monitor.cycle()
    assert (report.moving, report.reconciled) == (1, 0)
    assert counts(await store.get_job(job.id))[THUMBNAIL] == (10, 6, 0)  # 5 + the late one
    assert await store.list_events(job.id) == []


async def test_a_job_that_moves_before_it_is_failed_is_not_failed(world: World) -> None:
    job = await world.job(10, made=8, counted=8)
    monitor = world.monitor(max_redrives=0)  # missing items fail the job at once
    real = world.store.list_events

    async def racing(job_id: str, **options: Any) -> list[Any]:
        # The monitor reads the job's rounds, then fails it: a consumer
        # reports an item in between.
        world.clock.advance(0.001)
        await world.store.increment(job_id, THUMBNAIL, item_key="late")
        return await real(job_id, **options)

    world.store.list_events = racing  # type: ignore[method-assign]
    world.clock.advance(STUCK_AFTER + 1)
    report = await monitor.cycle()
    world.store.list_events = real  # type: ignore[method-assign]
    assert (report.failed, report.moving) == (0, 1)
    moving = await world.store.get_job(job.id)
    assert moving.status is JobStatus.IN_PROGRESS
    assert counts(moving)[THUMBNAIL] == (10, 9, 0)
    assert [e.kind for e in await world.store.list_events(job.id)] == []
    world.clock.advance(STUCK_AFTER + 1)  # still stuck a window later: now failed
    report = await monitor.cycle()
    assert (report.failed, report.moving) == (1, 0)
    assert (await world.store.get_job(job.id)).status is JobStatus.FAILED


async def test_a_job_whose_scan_stopped_before_sealing_is_failed(world: World) -> None:
    root = world.folder / "half"
    root.mkdir()
    collection = await world.catalog.ensure_collection(str(root))
    job = await world.store.create_job(
        JOB_TYPE, STAGES, attributes={"collection": {"id": collection.id, "path": str(root)}}
    )
    await world.store.raise_total(job.id, SCAN, by=64)  # one batch, then the walk died
    world.clock.advance(STUCK_AFTER + 1)
    report = await world.monitor().cycle()
    assert report.failed == 1
    job = await world.store.get_job(job.id)
    assert (job.status, job.message) == (
        JobStatus.FAILED,
        "stopped before its end: the totals of scan, thumbnail, cache never sealed",
    )


async def test_a_thousand_jobs_with_progress_off_all_complete_exact(world: World) -> None:
    # Consumers reported nothing (the rollback switch): the monitor alone counts.
    jobs = [await world.job(3, made=3, counted=0, name=f"j{n}") for n in range(1000)]
    world.clock.advance(STUCK_AFTER + 1)
    report = await world.monitor().cycle()
    assert (report.stuck, report.reconciled, report.completed, report.queries) == (
        1000,
        1000,
        1000,
        11,  # ten full pages of 100, then an empty one
    )
    for job in jobs:
        after = await world.store.get_job(job.id)
        assert after.status is JobStatus.COMPLETED
        assert counts(after)[CACHE] == (3, 3, 0)
    assert (await world.monitor().cycle()).stuck == 0  # a second cycle finds nothing


async def test_a_store_outage_fails_the_cycle_gracefully_and_the_next_one_reconciles(
    world: World,
) -> None:
    job = await world.job(4, made=4, counted=2)
    down = True
    find_stuck = world.store.find_stuck

    async def flaky(*args: object, **kwargs: object) -> list[Job]:
        if down:
            raise StoreUnavailable("connection refused")
        return await find_stuck(*args, **kwargs)  # type: ignore[arg-type]

    world.store.find_stuck = flaky  # type: ignore[method-assign]
    world.clock.advance(STUCK_AFTER + 1)
    stop = asyncio.Event()
    monitor = world.monitor()
    runner = asyncio.create_task(monitor.run(stop, interval=0.01))
    await asyncio.sleep(0.05)  # several cycles fail, the loop goes on
    assert not runner.done()
    down = False
    for _ in range(200):
        if (await world.store.get_job(job.id)).status is JobStatus.COMPLETED:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await runner
    assert counts(await world.store.get_job(job.id))[THUMBNAIL] == (4, 4, 0)


async def test_reconciliation_sets_the_counted_keys_with_the_counts(world: World) -> None:
    # Image 2 was made but its count is late; image 3 was never made.
    job = await world.job(4, made=3, counted=2)
    states = await world.catalog.images_of_job(job.attributes["collection"]["id"], job.id)
    world.clock.advance(STUCK_AFTER + 1)
    await world.monitor().cycle()
    assert counts(await world.store.get_job(job.id))[THUMBNAIL] == (4, 3, 0)  # still active
    late = await world.store.increment(job.id, THUMBNAIL, item_key=states[2].image.id)
    assert not late.counted  # the reconciliation counted it already
    assert counts(await world.store.get_job(job.id))[THUMBNAIL] == (4, 3, 0)
    redone = await world.store.increment(job.id, THUMBNAIL, item_key=states[3].image.id)
    assert redone.counted
    assert counts(await world.store.get_job(job.id))[THUMBNAIL] == (4, 4, 0)


def test_truth_counts_items_once() -> None:
    truth = Truth({THUMBNAIL: StageCounts(3, 1, 0)}, missing={THUMBNAIL: ["a", "b"]})
    assert truth.missing_items == 2


async def test_centralized_mode_recounts_every_active_job_each_cycle(world: World) -> None:
    moving = await world.job(6, made=4, counted=0, name="moving")  # consumers report nothing
    done = await world.job(6, made=6, counted=0, name="done")
    monitor = world.monitor(mode="centralized")
    world.clock.advance(1)
    report = await monitor.cycle()  # no stuck_after wait: every active job
    assert (report.stuck, report.reconciled, report.completed) == (2, 2, 1)
    assert counts(await world.store.get_job(moving.id))[THUMBNAIL] == (6, 4, 0)
    assert (await world.store.get_job(done.id)).status is JobStatus.COMPLETED
    world.clock.advance(5)
    for _ in range(2):  # two more renditions of each stage appear
        state = (await world.reconciler.truth(moving)).missing[THUMBNAIL][0]
        for stage in RENDITIONS:
            await world.make(Path(moving.attributes["collection"]["path"]), state, stage)
    report = await monitor.cycle()
    assert (report.stuck, report.reconciled, report.completed) == (1, 1, 1)
    assert await world.store.list_events(moving.id) == []  # the old service kept no history
    assert not world.queued(THUMBNAIL)  # and re-drove nothing


def test_an_unknown_mode_is_refused(world: World) -> None:
    with pytest.raises(InvalidRequest, match="mode"):
        world.monitor(mode="psychic")
