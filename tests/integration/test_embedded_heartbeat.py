"""A scan on the in-process broker beats as a worker: its consumers' items
counted per stage, the last error kept, and stopped_at when it closes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from jobtrack.model import utc_now
from jobtrack.pipeline.sample import generate_sample
from jobtrack.runtime import EmbeddedRuntime, Settings
from jobtrack.store import SqliteJobStore, WorkerState

GOOD, BROKEN = 6, 2


async def test_a_scan_writes_a_heartbeat_and_stops_it(tmp_path: Path) -> None:
    root = tmp_path / "album"
    generate_sample(root, count=GOOD + BROKEN, broken=BROKEN, max_megapixels=0.3)
    data = tmp_path / "state"
    settings = Settings(data_dir=data, store_url=f"sqlite:///{data / 'jobtrack.db'}", workers=2)
    async with EmbeddedRuntime(settings) as runtime:
        outcome = await runtime.scan(root)
        assert runtime.heartbeat is not None
        worker_id = runtime.heartbeat.worker_id
    store = SqliteJobStore.open(str(data / "jobtrack.db"))
    try:
        (info,) = await store.list_workers()
        points = await store.throughput(since=utc_now() - timedelta(minutes=5))
    finally:
        await store.aclose()

    assert outcome.job.stage("cache").completed_items == GOOD
    assert info.beat.worker_id == worker_id
    assert info.state is WorkerState.STOPPED
    assert info.beat.stages == ("collection-scan/thumbnail", "collection-scan/cache")
    assert (info.beat.done, info.beat.failed) == (2 * GOOD, 2 * BROKEN)
    assert info.beat.last_error
    assert info.beat.last_error_at is not None
    sums = {(p.stage): (0, 0) for p in points}
    for p in points:
        sums[p.stage] = (sums[p.stage][0] + p.done, sums[p.stage][1] + p.failed)
    assert sums == {"thumbnail": (GOOD, BROKEN), "cache": (GOOD, BROKEN)}
