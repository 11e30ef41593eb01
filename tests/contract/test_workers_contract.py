"""Worker heartbeats and throughput, the same on every store backend."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jobtrack.errors import InvalidRequest
from jobtrack.store import JobStore, StageCount, WorkerBeat, WorkerState
from jobtrack.store.workers import MAX_WORKER_ERROR, THROUGHPUT_BUCKET, bucket_start
from tests.conftest import SteppingClock


def _beat(clock: SteppingClock, worker_id: str = "h1:10:ab", **changes: object) -> WorkerBeat:
    now = clock.now
    beat = WorkerBeat(
        worker_id=worker_id,
        host="h1",
        pid=10,
        stages=("collection-scan/thumbnail", "collection-scan/cache"),
        concurrency=4,
        prefetch=8,
        interval=5.0,
        started_at=now,
        beat_at=now,
    )
    return replace(beat, **changes)  # type: ignore[arg-type]


async def test_a_beat_is_read_back_whole_and_replaced_by_the_next(
    store: JobStore, clock: SteppingClock
) -> None:
    first = _beat(clock)
    await store.beat_worker(first)
    clock.advance(5)
    error_at = clock.now
    second = replace(
        first, beat_at=clock.now, done=12, failed=1, last_error="boom", last_error_at=error_at
    )
    await store.beat_worker(second)
    stamped = clock.now  # the store's clock, read once by the beat

    workers = await store.list_workers()

    assert len(workers) == 1
    assert workers[0].beat == replace(second, beat_at=stamped)
    assert workers[0].state is WorkerState.LIVE


async def test_states_follow_the_clock_and_a_graceful_stop(
    store: JobStore, clock: SteppingClock
) -> None:
    await store.beat_worker(_beat(clock, "silent"))
    silent_at = clock.now
    clock.advance(3)
    start = clock.now
    await store.beat_worker(_beat(clock, "live"))
    await store.beat_worker(_beat(clock, "stopped", stopped_at=start))

    first = {w.beat.worker_id: w.state for w in await store.list_workers()}
    clock.advance(9)  # 2 intervals of 5 s plus the grace have passed for "silent" only
    workers = await store.list_workers()

    assert first == {
        "live": WorkerState.LIVE,
        "silent": WorkerState.LIVE,
        "stopped": WorkerState.STOPPED,
    }
    assert [(w.beat.worker_id, w.state) for w in workers] == [
        ("live", WorkerState.LIVE),
        ("silent", WorkerState.DEAD),
        ("stopped", WorkerState.STOPPED),
    ]
    assert workers[1].beat.beat_at == silent_at  # when it stopped beating


async def test_the_store_stamps_a_beat_with_its_own_clock(
    store: JobStore, clock: SteppingClock
) -> None:
    ahead = clock.now + timedelta(minutes=10)  # a worker whose clock runs 10 minutes fast
    behind = clock.now - timedelta(minutes=10)  # and one 10 minutes slow
    await store.beat_worker(_beat(clock, "fast", beat_at=ahead), [StageCount("t", "s", 1)])
    await store.beat_worker(_beat(clock, "slow", beat_at=behind, stopped_at=behind))
    stamped = clock.now

    first = {w.beat.worker_id: (w.state, w.beat.beat_at) for w in await store.list_workers()}
    clock.advance(12)  # more than two intervals and the grace since the store heard of "fast"
    (fast, slow) = await store.list_workers()

    assert first["fast"][0] is WorkerState.LIVE
    assert first["slow"] == (WorkerState.STOPPED, stamped)
    assert (fast.beat.worker_id, fast.state) == ("fast", WorkerState.DEAD)
    assert slow.beat.stopped_at == slow.beat.beat_at == stamped
    points = await store.throughput(since=stamped - timedelta(minutes=1))
    assert [(p.bucket_start, p.done) for p in points] == [(bucket_start(stamped), 1)]


async def test_a_beat_written_again_adds_its_counts_once(
    store: JobStore, clock: SteppingClock
) -> None:
    counts = [StageCount("t", "s", done=10, failed=1)]
    await store.beat_worker(_beat(clock, done=10, failed=1, seq=1), counts)
    await store.beat_worker(_beat(clock, done=10, failed=1, seq=1), counts)  # again
    await store.beat_worker(_beat(clock, done=12, failed=1, seq=2), [StageCount("t", "s", 2)])
    await store.beat_worker(_beat(clock, done=10, failed=1, seq=1), counts)  # late, again

    (worker,) = await store.list_workers()
    points = await store.throughput(since=clock.now - timedelta(minutes=1))

    assert [(p.done, p.failed) for p in points] == [(12, 1)]
    assert (worker.beat.seq, worker.beat.done) == (2, 12)


async def test_beats_without_a_number_always_add(store: JobStore, clock: SteppingClock) -> None:
    await store.beat_worker(_beat(clock, seq=3), [StageCount("t", "s", 1)])
    await store.beat_worker(_beat(clock), [StageCount("t", "s", 1)])
    await store.beat_worker(_beat(clock), [StageCount("t", "s", 1)])

    (worker,) = await store.list_workers()
    points = await store.throughput(since=clock.now - timedelta(minutes=1))

    assert [p.done for p in points] == [3]
    assert worker.beat.seq == 3


async def test_throughput_sums_two_workers_per_bucket_and_stage(
    store: JobStore, clock: SteppingClock
) -> None:
    clock.now = datetime(2026, 11, 28, 14, 0, 1, tzinfo=UTC)
    bucket = bucket_start(clock.now)
    thumbs = StageCount("collection-scan", "thumbnail", done=3, failed=1)
    await store.beat_worker(_beat(clock, "a"), [thumbs, StageCount("collection-scan", "cache", 2)])
    await store.beat_worker(_beat(clock, "b"), [thumbs])
    clock.advance(1)  # the same bucket: added to it
    await store.beat_worker(_beat(clock, "a", beat_at=clock.now), [thumbs])
    clock.advance(THROUGHPUT_BUCKET)
    await store.beat_worker(
        _beat(clock, "b", beat_at=clock.now), [StageCount("collection-scan", "cache", 0, 5)]
    )
    await store.beat_worker(_beat(clock, "b", beat_at=clock.now), [StageCount("x", "y")])

    points = await store.throughput(since=bucket + timedelta(seconds=3))
    later = await store.throughput(since=bucket + timedelta(seconds=THROUGHPUT_BUCKET))

    nxt = bucket + timedelta(seconds=THROUGHPUT_BUCKET)
    assert [(p.bucket_start, p.job_type, p.stage, p.done, p.failed) for p in points] == [
        (bucket, "collection-scan", "cache", 2, 0),
        (bucket, "collection-scan", "thumbnail", 9, 3),
        (nxt, "collection-scan", "cache", 0, 5),
    ]
    assert [(p.bucket_start, p.done, p.failed) for p in later] == [(nxt, 0, 5)]


async def test_purge_drops_old_workers_and_buckets_only(
    store: JobStore, clock: SteppingClock
) -> None:
    old = clock.now
    await store.beat_worker(_beat(clock, "gone", stopped_at=old), [StageCount("t", "s", done=1)])
    clock.advance(25 * 3600)
    await store.beat_worker(_beat(clock, "here", beat_at=clock.now), [StageCount("t", "s", 2)])

    purged = await store.purge_workers(before=clock.now - timedelta(hours=24))

    assert purged == 1
    assert [w.beat.worker_id for w in await store.list_workers()] == ["here"]
    points = await store.throughput(since=old - timedelta(hours=1))
    assert [(p.job_type, p.done) for p in points] == [("t", 2)]


async def test_a_long_error_is_cut_and_bad_beats_refused(
    store: JobStore, clock: SteppingClock
) -> None:
    await store.beat_worker(_beat(clock, last_error="x" * 5000, last_error_at=clock.now))
    (worker,) = await store.list_workers()
    assert worker.beat.last_error == "x" * MAX_WORKER_ERROR

    for bad in (
        _beat(clock, ""),
        _beat(clock, "a\x00b"),
        _beat(clock, host="h\ud800"),
        _beat(clock, done=-1),
        _beat(clock, interval=0),
        _beat(clock, interval=float("inf")),
        _beat(clock, interval=float("nan")),
    ):
        with pytest.raises(InvalidRequest):
            await store.beat_worker(bad)
    with pytest.raises(InvalidRequest):
        await store.beat_worker(_beat(clock, "ok"), [StageCount("", "s", 1)])
    assert [w.beat.worker_id for w in await store.list_workers()] == ["h1:10:ab"]
