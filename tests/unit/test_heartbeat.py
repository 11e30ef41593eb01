"""The worker's heartbeat: counts kept in memory, written each beat, kept
when a write fails, and a last beat with stopped_at."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import pytest

from jobtrack.errors import ConfigurationError, StoreUnavailable
from jobtrack.jobs.heartbeat import Heartbeat, ItemCounter
from jobtrack.monitor import Monitor
from jobtrack.runtime.settings import Settings
from jobtrack.store import InMemoryJobStore, StageCount, WorkerBeat, WorkerState
from jobtrack.store.workers import MAX_WORKER_STAGES
from tests.conftest import SteppingClock


class FlakyStore(InMemoryJobStore):
    """Refuses the next ``down`` beats as an unreachable store would."""

    def __init__(self, clock: SteppingClock) -> None:
        super().__init__(clock=clock)
        self.down = 0

    async def beat_worker(self, beat: WorkerBeat, counts: Sequence[StageCount] = ()) -> None:
        if self.down:
            self.down -= 1
            raise StoreUnavailable("down")
        await super().beat_worker(beat, counts)


def _heartbeat(store: InMemoryJobStore, clock: SteppingClock) -> Heartbeat:
    return Heartbeat(
        store,
        ItemCounter(clock=clock),
        stages=["t/a"],
        concurrency=2,
        prefetch=4,
        interval=5.0,
        worker_id="w1",
        clock=clock,
    )


def test_the_counter_counts_per_stage_and_in_total() -> None:
    counter = ItemCounter()
    counter.count("t", "a")
    counter.count("t", "a", error="boom")
    counter.count("t", "b")

    taken = counter.take()

    assert sorted(taken, key=lambda c: c.stage) == [
        StageCount("t", "a", 1, 1),
        StageCount("t", "b", 1, 0),
    ]
    assert (counter.done, counter.failed, counter.last_error) == (2, 1, "boom")
    assert counter.take() == []


async def test_a_failed_beat_keeps_its_counts_for_the_next(clock: SteppingClock) -> None:
    store = FlakyStore(clock)
    heartbeat = _heartbeat(store, clock)
    heartbeat.counter.count("t", "a")
    store.down = 1

    assert await heartbeat.beat() is False
    heartbeat.counter.count("t", "a", error="bad")
    assert await heartbeat.beat() is True

    (worker,) = await store.list_workers()
    points = await store.throughput(since=clock.now.replace(hour=0))
    assert (worker.beat.done, worker.beat.failed, worker.beat.last_error) == (1, 1, "bad")
    assert [(p.done, p.failed) for p in points] == [(1, 1)]
    assert heartbeat.beats == 1


async def test_run_beats_and_stop_writes_stopped_at(clock: SteppingClock) -> None:
    store = FlakyStore(clock)
    heartbeat = _heartbeat(store, clock)
    heartbeat.interval = 0.01
    task = heartbeat.start()
    await asyncio.sleep(0.1)  # about ten intervals

    await heartbeat.stop(task)

    (worker,) = await store.list_workers()
    assert heartbeat.beats >= 3
    assert task.cancelled()
    assert worker.state is WorkerState.STOPPED
    assert worker.beat.stopped_at == worker.beat.beat_at


@pytest.mark.parametrize("raw", ["0", "x", "3601"])
def test_the_interval_setting_is_checked(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="JOBTRACK_HEARTBEAT_INTERVAL"):
        Settings.from_env({"JOBTRACK_HEARTBEAT_INTERVAL": raw, "HOME": "/tmp"})
    assert (
        Settings.from_env({"JOBTRACK_HEARTBEAT_INTERVAL": "2", "HOME": "/tmp"}).heartbeat_interval
        == 2
    )


async def test_the_monitor_purges_workers_silent_for_a_day(clock: SteppingClock) -> None:
    store = InMemoryJobStore(clock=clock)
    old = _heartbeat(store, clock)
    await old.beat()
    clock.advance(24 * 3600 + 1)
    recent = _heartbeat(store, clock)
    recent.worker_id = "w2"
    recent.counter.count("t", "a")
    await recent.beat()
    monitor = Monitor(store, [], clock=clock, ledger_retention=timedelta(days=7))

    await monitor.cycle()

    assert [w.beat.worker_id for w in await store.list_workers()] == ["w2"]
    assert len(await store.throughput(since=clock.now - timedelta(hours=1))) == 1


class LostAnswerStore(InMemoryJobStore):
    """Writes the next ``lost`` beats, then fails as if the answer were lost."""

    def __init__(self, clock: SteppingClock) -> None:
        super().__init__(clock=clock)
        self.lost = 0
        self.written = 0

    async def beat_worker(self, beat: WorkerBeat, counts: Sequence[StageCount] = ()) -> None:
        await super().beat_worker(beat, counts)
        self.written += 1
        if self.lost:
            self.lost -= 1
            raise StoreUnavailable("connection lost after the commit")


async def test_a_beat_committed_but_reported_failed_counts_once(clock: SteppingClock) -> None:
    store = LostAnswerStore(clock)
    heartbeat = _heartbeat(store, clock)
    for _ in range(10):
        heartbeat.counter.count("t", "a")
    store.lost = 1

    assert await heartbeat.beat() is False
    heartbeat.counter.count("t", "a", error="bad")
    assert await heartbeat.beat() is True  # the first beat again, then the new one
    assert await heartbeat.beat() is True

    (worker,) = await store.list_workers()
    points = await store.throughput(since=clock.now.replace(hour=0))
    assert [(p.done, p.failed) for p in points] == [(10, 1)]
    assert (worker.beat.done, worker.beat.failed, worker.beat.seq) == (10, 1, 3)
    assert store.written == 4


class SlowStore(InMemoryJobStore):
    """Commits each beat, then takes ``delay`` seconds to answer."""

    def __init__(self, clock: SteppingClock) -> None:
        super().__init__(clock=clock)
        self.delay = 0.0

    async def beat_worker(self, beat: WorkerBeat, counts: Sequence[StageCount] = ()) -> None:
        await super().beat_worker(beat, counts)
        await asyncio.sleep(self.delay)


async def test_a_stop_during_a_committed_beat_counts_once(clock: SteppingClock) -> None:
    store = SlowStore(clock)
    heartbeat = _heartbeat(store, clock)
    for _ in range(10):
        heartbeat.counter.count("t", "a")
    store.delay = 0.5
    task = heartbeat.start()
    await asyncio.sleep(0.05)  # the first beat is written, its answer not yet back
    store.delay = 0.0

    await heartbeat.stop(task)

    (worker,) = await store.list_workers()
    points = await store.throughput(since=clock.now.replace(hour=0))
    assert [p.done for p in points] == [10]
    assert worker.state is WorkerState.STOPPED


async def test_counts_a_store_refuses_are_dropped_not_kept(
    clock: SteppingClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = InMemoryJobStore(clock=clock)
    heartbeat = _heartbeat(store, clock)
    heartbeat.counter.count("t", "s" * 201)
    heartbeat.counter.count("t", "a")

    assert await heartbeat.beat() is True
    heartbeat.counter.count("t", "s" * 201)
    heartbeat.counter.count("t", "a")
    assert await heartbeat.beat() is True

    (worker,) = await store.list_workers()
    points = await store.throughput(since=clock.now.replace(hour=0))
    assert [(p.stage, p.done) for p in points] == [("a", 2)]
    assert worker.beat.done == 4  # every item the worker did, in its own total
    assert len([r for r in caplog.records if "drops the throughput" in r.message]) == 1


async def test_a_beat_the_store_refuses_is_not_written_again(clock: SteppingClock) -> None:
    store = InMemoryJobStore(clock=clock)
    heartbeat = _heartbeat(store, clock)
    heartbeat.counter.count("t", "a")
    heartbeat.worker_id = "w\x00"  # a beat no store takes

    assert await heartbeat.beat() is False
    heartbeat.worker_id = "w1"
    heartbeat.counter.count("t", "a")
    assert await heartbeat.beat() is True

    points = await store.throughput(since=clock.now.replace(hour=0))
    assert [p.done for p in points] == [1]


def test_stage_names_a_store_refuses_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    names = ["t/a", "t/" + "x" * 300, *(f"t/s{i}" for i in range(250))]

    heartbeat = Heartbeat(
        InMemoryJobStore(), ItemCounter(), stages=names, concurrency=1, prefetch=1, interval=1
    )

    assert len(heartbeat.stages) == MAX_WORKER_STAGES
    assert heartbeat.stages[:2] == ("t/a", "t/s0")
    assert len(caplog.records) == 1
