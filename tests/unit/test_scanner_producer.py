"""The scanner is the collection scan's producer: each image that needs a
rendition goes to the stage's ledger, then out as an item message keyed by
the image's id; an image whose renditions are current is counted on the
spot; a job that loses the collection's compare-and-set is cancelled."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from jobtrack.broker import InMemoryBroker
from jobtrack.jobs.messages import decode_item
from jobtrack.model import JobStatus
from jobtrack.pipeline.catalog import Artifact, ArtifactStatus, InMemoryCatalog
from jobtrack.pipeline.scanner import Scanner
from jobtrack.pipeline.stages import CACHE, DEFAULT_RENDITIONS, SCAN, THUMBNAIL, queue_for
from jobtrack.runtime.builtin import collection_scan_type
from jobtrack.store import InMemoryJobStore

IMAGES = 5


def queued(broker: InMemoryBroker, stage: str) -> list[tuple[str, str, str, str]]:
    ready = broker.queue(queue_for(stage)).ready
    bodies = [decode_item(m.body) for m in list(ready._queue)]  # type: ignore[attr-defined]
    return sorted((m.job_id, m.job_type, m.stage, m.key) for m in bodies)


async def test_the_walk_adds_the_renditions_to_the_ledger_then_publishes_them(
    tmp_path: Path,
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for n in range(IMAGES):
        Image.new("RGB", (32, 24), "teal").save(root / f"{n}.jpg")
    store, catalog, broker = InMemoryJobStore(), InMemoryCatalog(), InMemoryBroker()
    scanner = Scanner(
        store=store, catalog=catalog, broker=broker, job_type=collection_scan_type(), batch_size=2
    )
    start = await scanner.start(root)
    report = await scanner.run(start.job, start.collection)
    job = await store.get_job(start.job.id)
    states = await catalog.images_of_job(start.collection.id, job.id)
    ids = sorted(state.image.id for state in states)
    assert (report.images, report.published, report.up_to_date) == (IMAGES, 2 * IMAGES, 0)
    for stage in (THUMBNAIL, CACHE):
        ledger = await store.ledger_items(job.id, stage, ids)
        assert [(item.key, item.payload) for item in ledger] == [(key, None) for key in ids]
        assert queued(broker, stage) == [(job.id, "collection-scan", stage, key) for key in ids]
        counts = job.stage(stage)
        assert (counts.total_items, counts.completed_items, counts.total_final) == (
            IMAGES,
            0,
            True,
        )
    scan = job.stage(SCAN)
    assert (scan.total_items, scan.completed_items, scan.status.value) == (
        IMAGES,
        IMAGES,
        "completed",
    )

    # A second scan: the thumbnails are current, so only the cache copies go out.
    await broker.aclose()
    for state in states:
        spec = DEFAULT_RENDITIONS[0]
        path = tmp_path / f"{state.image.id}.jpg"
        path.write_bytes(b"made")
        await catalog.record_artifact(
            Artifact(
                image_id=state.image.id,
                kind=spec.stage,
                status=ArtifactStatus.OK,
                variant=spec.variant,
                source_size=state.image.size,
                source_mtime_ns=state.image.mtime_ns,
                produced_at=job.created_at,
                path=str(path),
            )
        )
    await store.end_job(job.id, JobStatus.CANCELLED)
    broker = InMemoryBroker()
    scanner = Scanner(store=store, catalog=catalog, broker=broker, job_type=collection_scan_type())
    again = await scanner.start(root)
    report = await scanner.run(again.job, again.collection)
    job = await store.get_job(again.job.id)
    assert (report.published, report.up_to_date) == (IMAGES, 0)
    assert queued(broker, THUMBNAIL) == []
    assert len(queued(broker, CACHE)) == IMAGES
    thumbnail = job.stage(THUMBNAIL)
    assert (thumbnail.total_items, thumbnail.completed_items, thumbnail.status.value) == (
        IMAGES,
        IMAGES,
        "completed",
    )
    assert await store.ledger_items(job.id, THUMBNAIL, ids) == []  # counted, not produced
    await broker.aclose()


async def test_a_scan_that_loses_the_collection_cancels_its_job(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    store, catalog = InMemoryJobStore(), InMemoryCatalog()
    scanner = Scanner(
        store=store, catalog=catalog, broker=InMemoryBroker(), job_type=collection_scan_type()
    )
    collection = await catalog.ensure_collection(str(root.resolve()))
    swap = catalog.swap_job
    lost: list[str] = []

    async def first_loses(collection_id: str, *, expected: str | None, job_id: str) -> bool:
        if not lost:  # another scan swaps its job in first
            lost.append(job_id)
            other = await store.create_job("collection-scan", ["scan", "thumbnail", "cache"])
            await swap(collection_id, expected=expected, job_id=other.id)
            await store.end_job(other.id, JobStatus.COMPLETED)
            return False
        return await swap(collection_id, expected=expected, job_id=job_id)

    catalog.swap_job = first_loses  # type: ignore[method-assign]
    start = await scanner.start(root)
    assert start.created
    assert start.collection.id == collection.id
    loser = await store.get_job(lost[0])
    assert (loser.status, loser.message) == (JobStatus.CANCELLED, "another scan won")
    assert start.job.id != loser.id
