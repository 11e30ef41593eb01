"""A cancelled scan stops walking: on a real folder of 40,000 files, the walk
ends within a second of the cancel, registers little after it, and leaves
the collection as it was (no image retired, no total sealed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from jobtrack.broker import InMemoryBroker
from jobtrack.model import JobStatus
from jobtrack.pipeline.catalog import InMemoryCatalog
from jobtrack.pipeline.scanner import Scanner
from jobtrack.pipeline.stages import SCAN, THUMBNAIL
from jobtrack.runtime import cancel_job
from jobtrack.runtime.builtin import collection_scan_type
from jobtrack.store import InMemoryJobStore

pytestmark = pytest.mark.slow

FILES, FOLDERS = 40_000, 8


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big") / "photos"
    for folder in range(FOLDERS):
        sub = root / f"f{folder}"
        sub.mkdir(parents=True)
        for n in range(FILES // FOLDERS):
            (sub / f"{n:05}.jpg").touch()
    return root


async def _total(store: InMemoryJobStore, job_id: str) -> int:
    return (await store.get_job(job_id)).stages[SCAN].total_items


async def test_a_cancel_stops_the_walk_within_a_second(big_folder: Path) -> None:
    store, catalog = InMemoryJobStore(), InMemoryCatalog()
    scanner = Scanner(
        store=store, catalog=catalog, broker=InMemoryBroker(), job_type=collection_scan_type()
    )
    start = await scanner.start(big_folder)
    walk = asyncio.create_task(scanner.run(start.job, start.collection))
    while await _total(store, start.job.id) < 2_000:
        assert not walk.done()
        await asyncio.sleep(0.01)
    result = await cancel_job(store, start.job.id, message="stop", source="cli")
    cancelled_at, at_cancel = time.monotonic(), await _total(store, start.job.id)
    assert result.cancelled
    report = await asyncio.wait_for(walk, timeout=1.0)  # stopped, the walk thread included
    elapsed = time.monotonic() - cancelled_at
    walked_after = report.images - at_cancel
    print(f"walk ended {elapsed:.3f} s after the cancel, {walked_after} images after it")
    assert report.ended is JobStatus.CANCELLED
    assert report.images < FILES
    # The old walk went on to the end: everything left after the cancel. A
    # stopped walk registers at most a status check's worth (0.25 s), which on
    # a fast disk is a few thousand files: far below what was left.
    assert walked_after < (FILES - at_cancel) // 4
    assert report.removed == 0
    job = await store.get_job(start.job.id)
    assert job.status is JobStatus.CANCELLED
    assert not job.stages[SCAN].total_final
    assert not job.stages[THUMBNAIL].total_final
    seen = await catalog.images_of_job(start.collection.id, start.job.id)
    assert len(seen) == report.images  # what was registered stays, nothing retired


async def test_a_walk_that_is_not_cancelled_walks_everything(big_folder: Path) -> None:
    store = InMemoryJobStore()
    scanner = Scanner(
        store=store,
        catalog=InMemoryCatalog(),
        broker=InMemoryBroker(),
        job_type=collection_scan_type(),
    )
    start = await scanner.start(big_folder)
    report = await scanner.run(start.job, start.collection)
    assert (report.images, report.ended) == (FILES, None)
    assert (await store.get_job(start.job.id)).stages[SCAN].total_final
