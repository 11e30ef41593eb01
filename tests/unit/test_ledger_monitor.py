"""The monitor on a job type whose truth is its ledger, on the in-memory
store and broker with a clock moved by hand: lost messages re-driven item by
item, at most ``max_redrives`` times each, then the job failed with those
items recorded as failures; counts never destroyed; discovered stages
sealed before judging; old ledgers purged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import StoreUnavailable
from jobtrack.jobs.messages import ItemMessage, decode_item
from jobtrack.jobs.producer import JobProducer
from jobtrack.jobs.reconciler import LedgerReconciler
from jobtrack.jobs.types import Item, JobType
from jobtrack.model import Job, JobStatus
from jobtrack.monitor import CycleReport, Monitor
from jobtrack.pipeline.reconciler import CollectionScanReconciler
from jobtrack.runtime import App, Settings
from jobtrack.store import InMemoryJobStore
from jobtrack.store.ledger import LedgerItem
from tests.conftest import FrozenClock

STUCK_AFTER = 300.0


def pipeline_type() -> JobType:
    """fetch (the producer's) feeds save (discovered); notify (the producer's)."""
    job_type = JobType("mirror", ["fetch", "save", "notify"])

    @job_type.handler("fetch", feeds=["save"])
    def fetch(item: Item) -> None: ...

    @job_type.handler("save")
    def save(item: Item) -> None: ...

    @job_type.handler("notify")
    def notify(item: Item) -> None: ...

    return job_type


class PurgeCounting(InMemoryJobStore):
    """The in-memory store, recording when the ledger was purged."""

    def __init__(self, clock: FrozenClock) -> None:
        super().__init__(clock=clock)
        self.purges: list[datetime] = []
        self.limits: list[int] = []

    async def purge_ledger(self, *, ended_before: datetime, limit: int = 10_000) -> int:
        self.purges.append(ended_before)
        self.limits.append(limit)
        return await super().purge_ledger(ended_before=ended_before, limit=limit)


class World:
    """A store, a broker, a ledger job type and its monitor on one clock."""

    def __init__(self, *, broker: bool = True) -> None:
        self.clock = FrozenClock()
        self.store = PurgeCounting(self.clock)
        self.broker = InMemoryBroker()
        self.type = pipeline_type()
        self.reconciler = LedgerReconciler(self.type, self.store, self.broker if broker else None)

    def monitor(self, **options: object) -> Monitor:
        return Monitor(
            self.store,
            [self.reconciler],
            stuck_after=STUCK_AFTER,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )

    async def produce(self, stage: str, keys: Sequence[str], *, seal: bool = True) -> Job:
        """A job whose ``stage`` got these items (payload: the key's upper case)."""
        producer = JobProducer(self.store, self.broker, self.type)
        await producer.start()
        await producer.add(stage, [(key, {"up": key.upper()}) for key in keys])
        if seal:
            await producer.seal()
        return await self.store.get_job(producer.job.id)

    def drain(self, stage: str) -> list[ItemMessage]:
        """Take (and so lose) every message of the stage's queue."""
        ready = self.broker.queue(self.type.queue(stage)).ready
        taken = []
        while not ready.empty():
            taken.append(decode_item(ready.get_nowait().body))
        return taken

    async def count(
        self, job: Job, stage: str, keys: Sequence[str], *, failed: bool = False
    ) -> None:
        """What a worker does once an item is done (or failed)."""
        for key in keys:
            if failed:
                await self.store.record_failure(job.id, stage, key, "boom")
                await self.store.increment(job.id, stage, completed=0, failed=1, item_key=key)
            else:
                await self.store.increment(job.id, stage, item_key=key)

    async def later(self, monitor: Monitor) -> CycleReport:
        self.clock.advance(STUCK_AFTER + 1)
        return await monitor.cycle()


@pytest.fixture
def world() -> World:
    return World()


KEYS = [f"k{n}" for n in range(6)]


async def test_lost_messages_are_redriven_item_by_item_then_the_job_fails(world: World) -> None:
    job = await world.produce("fetch", KEYS)
    assert len(world.drain("fetch")) == 6  # the messages are lost: never consumed
    await world.count(job, "fetch", ["k0", "k1"])
    await world.count(job, "fetch", ["k2"], failed=True)
    monitor = world.monitor(max_redrives=3)
    published: dict[str, int] = {}
    for round_ in (1, 2, 3):
        report = await world.later(monitor)
        assert (report.stuck, report.redriven, report.items_redriven) == (1, 1, 3)
        messages = world.drain("fetch")
        assert sorted(m.key for m in messages) == ["k3", "k4", "k5"]
        assert {(m.job_id, m.stage, m.attempt) for m in messages} == {(job.id, "fetch", 1)}
        assert {m.key: m.payload for m in messages} == {
            "k3": {"up": "K3"},
            "k4": {"up": "K4"},
            "k5": {"up": "K5"},
        }
        for message in messages:
            published[message.key] = published.get(message.key, 0) + 1
        events = await world.store.list_events(job.id)
        assert events[-1].kind == "redriven"
        assert events[-1].data["round"] == round_
    assert published == {"k3": 3, "k4": 3, "k5": 3}
    report = await world.later(monitor)
    assert (report.failed, report.redriven, report.items_failed) == (1, 0, 3)
    assert world.drain("fetch") == []
    failed = await world.store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.message == "items still missing after 3 re-drives: fetch 3"
    failures = await world.store.list_failures(job.id)
    assert [(f.stage, f.key, f.error, f.payload) for f in failures] == [
        ("fetch", "k2", "boom", {"up": "K2"}),
        ("fetch", "k3", "not done after 3 re-drives", {"up": "K3"}),
        ("fetch", "k4", "not done after 3 re-drives", {"up": "K4"}),
        ("fetch", "k5", "not done after 3 re-drives", {"up": "K5"}),
    ]
    # The counts are the workers' own: never set down, nor moved between
    # completed and failed, and the job was never "reconciled".
    fetch = failed.stages["fetch"]
    assert (fetch.total_items, fetch.completed_items, fetch.failed_items) == (6, 2, 1)
    kinds = [e.kind for e in await world.store.list_events(job.id)]
    assert kinds == ["redriven", "redriven", "redriven", "failed"]
    assert (await world.later(monitor)).stuck == 0


async def test_an_item_done_between_rounds_is_not_published_again(world: World) -> None:
    job = await world.produce("fetch", KEYS[:3])
    world.drain("fetch")
    monitor = world.monitor(max_redrives=3)
    await world.later(monitor)
    assert sorted(m.key for m in world.drain("fetch")) == ["k0", "k1", "k2"]
    await world.count(job, "fetch", ["k1"])
    world.clock.advance(STUCK_AFTER + 1)  # stuck again: nothing moved since the count
    report = await world.later(monitor)
    assert report.items_redriven == 2
    assert sorted(m.key for m in world.drain("fetch")) == ["k0", "k2"]
    await world.count(job, "fetch", ["k0", "k2"])
    done = await world.store.get_job(job.id)
    assert done.stages["fetch"].status.terminal
    assert not done.status.terminal  # save waits for its seal
    report = await world.later(monitor)
    assert report.completed == 1
    assert (await world.store.get_job(job.id)).status is JobStatus.COMPLETED
    assert await world.store.list_failures(job.id) == []


async def test_counts_without_keys_and_failures_not_yet_recorded_are_kept(world: World) -> None:
    job = await world.produce("fetch", KEYS)
    world.drain("fetch")
    await world.store.increment(job.id, "fetch", completed=2)  # counted without keys
    await world.store.increment(job.id, "fetch", completed=0, failed=1, item_key="k0")
    # k0 failed, its failure not (yet) recorded: the ledger's tally says 0 failed.
    before = (await world.store.get_job(job.id)).stages["fetch"]
    report = await world.later(world.monitor())
    assert report.reconciled == 0
    after = (await world.store.get_job(job.id)).stages["fetch"]
    assert (after.total_items, after.completed_items, after.failed_items) == (6, 2, 1)
    assert (before.completed_items, before.failed_items) == (2, 1)
    assert sorted(m.key for m in world.drain("fetch")) == ["k1", "k2", "k3", "k4", "k5"]


async def test_ready_discovered_stages_are_sealed_before_the_job_is_judged(world: World) -> None:
    job = await world.produce("fetch", ["a", "b"])
    world.drain("fetch")
    # The workers did fetch and added save's items, but nobody sealed save.
    await world.store.add_items(job.id, "save", [LedgerItem("a1", 1), LedgerItem("b1", 2)])
    await world.count(job, "fetch", ["a", "b"])
    await world.count(job, "save", ["a1"])
    report = await world.later(world.monitor())
    assert (report.failed, report.redriven, report.items_redriven) == (0, 1, 1)
    assert [(m.key, m.payload) for m in world.drain("save")] == [("b1", 2)]
    sealed = await world.store.get_job(job.id)
    assert sealed.stages["save"].total_final
    assert sealed.stages["save"].total_items == 2


async def test_a_discovered_stage_waiting_for_its_feeders_does_not_fail_the_job(
    world: World,
) -> None:
    job = await world.produce("fetch", ["a", "b"])
    world.drain("fetch")
    await world.count(job, "fetch", ["a"])
    report = await world.later(world.monitor())
    assert (report.failed, report.items_redriven) == (0, 1)
    assert [m.key for m in world.drain("fetch")] == ["b"]
    assert not (await world.store.get_job(job.id)).stages["save"].total_final


async def test_a_job_whose_producer_stopped_before_sealing_fails(world: World) -> None:
    job = await world.produce("fetch", ["a"], seal=False)
    report = await world.later(world.monitor())
    assert report.failed == 1
    failed = await world.store.get_job(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.message == "stopped before its end: the totals of fetch, notify never sealed"
    assert report.items_failed == 1
    [kept] = await world.store.list_failures(job.id)
    assert (kept.stage, kept.key, kept.error, kept.payload) == (
        "fetch",
        "a",
        "not done: its job stopped before its end",
        {"up": "A"},
    )


async def test_a_sealing_that_completes_the_job_ends_the_handling(world: World) -> None:
    job = await world.produce("fetch", ["a"])
    await world.count(job, "fetch", ["a"])  # save is ready to seal, at 0: the job completes
    report = await world.later(world.monitor())
    assert (report.completed, report.redriven, report.failed) == (1, 0, 0)
    assert (await world.store.get_job(job.id)).status is JobStatus.COMPLETED


async def test_without_a_broker_the_missing_items_fail_the_job_as_failures() -> None:
    world = World(broker=False)
    job = await world.produce("notify", ["n1", "n2"])
    await world.count(job, "notify", ["n1"])
    report = await world.later(world.monitor())
    assert (report.failed, report.redriven, report.items_failed) == (1, 0, 1)
    failures = await world.store.list_failures(job.id)
    assert [(f.key, f.error) for f in failures] == [
        ("n2", "missing, and no broker to publish it again")
    ]


async def test_a_backlog_being_consumed_holds_the_job(world: World) -> None:
    job = await world.produce("fetch", KEYS)  # the messages stay queued
    assert await world.reconciler.backlog() == {"fetch": 6, "save": 0, "notify": 0}
    report = await world.later(world.monitor())
    assert (report.slow, report.redriven) == (1, 0)
    assert [e.kind for e in await world.store.list_events(job.id)] == ["waiting"]


async def test_redrive_publishes_only_the_items_given_that_are_in_the_ledger(
    world: World,
) -> None:
    job = await world.produce("fetch", ["a", "b", "c"])
    world.drain("fetch")
    published = await world.reconciler.redrive(job, {"fetch": ["c", "a", "zz", "a"]})
    assert published == 2
    assert [(m.key, m.payload) for m in world.drain("fetch")] == [
        ("a", {"up": "A"}),
        ("c", {"up": "C"}),
    ]


async def test_the_truth_pages_through_every_missing_item(world: World) -> None:
    keys = [f"i{n:05}" for n in range(2_345)]
    job = await world.produce("fetch", keys)
    await world.count(job, "fetch", keys[:5])
    truth = await world.reconciler.truth(await world.store.get_job(job.id))
    assert list(truth.missing["fetch"]) == keys[5:]
    assert truth.done == {}
    assert truth.waiting_to_seal == frozenset({"save"})
    assert truth.counts["fetch"].completed_items == 5
    assert truth.counts["fetch"].total_items == 2_345


async def test_old_ledgers_are_purged_on_the_first_cycle_then_at_most_hourly(
    world: World,
) -> None:
    monitor = world.monitor(ledger_retention=timedelta(days=7))
    old = await world.produce("notify", ["x"])
    await world.store.end_job(old.id, JobStatus.CANCELLED)
    kept = await world.produce("notify", ["y"])  # active: kept whatever its age
    start = world.clock.now
    assert (await monitor.cycle()).purged == 0
    assert world.store.purges == [start - timedelta(days=7)]
    world.clock.advance(3_599)
    await monitor.cycle()
    assert len(world.store.purges) == 1  # within the hour of the last purge
    world.clock.advance(1)
    assert (await monitor.cycle()).purged == 0  # ended 1 hour ago: kept
    assert world.store.purges[-1] == start + timedelta(hours=1) - timedelta(days=7)
    world.clock.advance(7 * 86_400 - 3_600 + 1)  # ended 7 days and 1 second ago
    assert (await monitor.cycle()).purged == 1
    assert len(world.store.purges) == 3
    assert await world.store.ledger_items(old.id, "notify", ["x"]) == []
    assert await world.store.ledger_items(kept.id, "notify", ["y"]) == [
        LedgerItem("y", {"up": "Y"})
    ]


async def test_a_backlog_of_ended_jobs_is_purged_batch_after_batch(world: World) -> None:
    monitor = world.monitor(ledger_retention=timedelta(days=1))
    for n in range(2_500):
        old = await world.store.create_job(world.type.name, world.type.stages)
        await world.store.add_items(old.id, "notify", [LedgerItem(f"k{n}")])
        await world.store.end_job(old.id, JobStatus.CANCELLED)
    world.clock.advance(2 * 86_400)
    assert (await monitor.cycle()).purged == 2_500
    assert [limit for limit in world.store.limits] == [1_000, 1_000, 1_000]


async def test_a_failed_purge_stops_nothing_and_is_tried_again(world: World) -> None:
    class Failing(PurgeCounting):
        async def purge_ledger(self, *, ended_before: datetime, limit: int = 10_000) -> int:
            self.purges.append(ended_before)
            raise StoreUnavailable("the database is away")

    world.store = Failing(world.clock)
    world.reconciler = LedgerReconciler(world.type, world.store, world.broker)
    monitor = world.monitor(ledger_retention=timedelta(days=1))
    job = await world.produce("notify", ["a"])
    world.drain("notify")
    report = await world.later(monitor)
    assert (report.purged, report.redriven, report.errors) == (0, 1, 0)
    assert [m.key for m in world.drain("notify")] == ["a"]
    assert len(world.store.purges) == 1
    world.clock.advance(1)
    await monitor.cycle()
    assert len(world.store.purges) == 2  # not held off for an hour: it never ran
    assert not (await world.store.get_job(job.id)).status.terminal


async def test_without_a_retention_nothing_is_purged(world: World) -> None:
    await world.monitor().cycle()
    assert world.store.purges == []


# The app's monitor.


def settings(tmp_path: Path, **options: object) -> Settings:
    return Settings(data_dir=tmp_path, store_url="memory://", **options)  # type: ignore[arg-type]


async def test_the_apps_monitor_has_a_reconciler_per_job_type(tmp_path: Path) -> None:
    made: list[str] = []

    def own_truth(app: object, job_type: JobType) -> LedgerReconciler:
        made.append(job_type.name)
        assert isinstance(app, App)
        return LedgerReconciler(job_type, app.store)

    custom = JobType("custom", ["one"], truth=own_truth)
    async with App(
        settings(tmp_path, ledger_retention=3), job_types=[pipeline_type(), custom]
    ) as app:
        reconcilers = app.reconcilers()
        assert [r.job_type for r in reconcilers] == ["mirror", "custom"]
        assert made == ["custom"]
        assert not reconcilers[0].can_redrive  # the in-process broker is out of another's reach
        monitor = app.monitor()
        assert monitor.ledger_retention == timedelta(days=3)
    async with App(settings(tmp_path)) as plain:
        (only,) = plain.reconcilers()
        assert isinstance(only, CollectionScanReconciler)
    both = App(
        settings(tmp_path, broker_url="amqp://guest:guest@127.0.0.1:5672/"),
        job_types=[pipeline_type(), JobType("collection-scan", ["scan"])],
    )
    async with both:
        kinds = [type(r) for r in both.reconcilers()]
        assert kinds == [LedgerReconciler, CollectionScanReconciler]
        assert both.reconcilers()[0].can_redrive


def test_the_ledger_retention_is_read_from_the_environment(tmp_path: Path) -> None:
    env = {"JOBTRACK_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(env).ledger_retention == 7
    assert Settings.from_env(env | {"JOBTRACK_LEDGER_RETENTION": "30"}).ledger_retention == 30
    with pytest.raises(ValueError, match="JOBTRACK_LEDGER_RETENTION must be at least 1"):
        Settings.from_env(env | {"JOBTRACK_LEDGER_RETENTION": "0"})
