"""The rendition consumer settles every delivery and never crashes."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest
from PIL import Image

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import StoreUnavailable
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.catalog import Artifact, InMemoryCatalog, ScannedFile
from jobtrack.pipeline.consumer import RenditionConsumer
from jobtrack.pipeline.gate import JobGate
from jobtrack.pipeline.messages import StageMessage, decode_message, encode_message
from jobtrack.pipeline.pool import RenderPool
from jobtrack.pipeline.stages import STAGES, THUMBNAIL, RenditionSpec, queue_for
from jobtrack.store import InMemoryJobStore
from jobtrack.tracking import ProgressTracker

QUEUE = queue_for(THUMBNAIL)


class BrokenCatalog(InMemoryCatalog):
    async def record_artifact(self, artifact: Artifact) -> None:
        raise OSError("no space left on device")


class FlakyCatalog(InMemoryCatalog):
    """Unreachable for the first ``outage`` calls of record_artifact."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage
        self.calls = 0

    async def record_artifact(self, artifact: Artifact) -> None:
        self.calls += 1
        if self.calls <= self.outage:
            raise StoreUnavailable("catalog is down")
        await super().record_artifact(artifact)


async def setup(
    tmp_path: Path, catalog: InMemoryCatalog | None = None
) -> tuple[InMemoryBroker, InMemoryJobStore, str, StageMessage]:
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (640, 480), "teal").save(root / "a.jpg")
    catalog = catalog or InMemoryCatalog()
    store = InMemoryJobStore()
    collection = await catalog.ensure_collection(str(root))
    job = await store.create_job("collection-scan", STAGES)
    [state] = await catalog.register_images(collection.id, job.id, [ScannedFile("a.jpg", 1, 1)])
    broker = InMemoryBroker()
    consumer = RenditionConsumer(
        spec=RenditionSpec(THUMBNAIL, 300),
        catalog=catalog,
        tracker=ProgressTracker(store),
        data_dir=tmp_path / "data",
        pool=RenderPool(ThreadPoolExecutor),
        retry_delay=0.0,
        ack_when_durable=True,  # drained means counted
        gate=JobGate(store, ttl=0.0),
    )
    await broker.consume(QUEUE, consumer.handle, prefetch=1)
    message = StageMessage(
        job_id=job.id, collection_id=collection.id, image_id=state.image.id, stage=THUMBNAIL
    )
    return broker, store, job.id, message


async def drain(broker: InMemoryBroker) -> None:
    for _ in range(500):
        if await broker.in_flight(QUEUE) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("queue did not drain")


async def test_malformed_messages_are_dead_lettered_and_work_goes_on(tmp_path: Path) -> None:
    broker, store, job_id, message = await setup(tmp_path)
    wrong_stage = StageMessage(job_id=job_id, collection_id="c", image_id="i", stage="cache")
    for body in [b"not json", b'{"job_id": 1}', b"{}", encode_message(wrong_stage)]:
        await broker.publish(QUEUE, body)
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    dead = broker.dead_letters[f"{QUEUE}.dead"]
    assert [d.body for d in dead][:3] == [b"not json", b'{"job_id": 1}', b"{}"]
    assert all(d.reason.startswith("malformed stage message") for d in dead[:3])
    assert dead[3].reason == "a 'cache' message on the 'thumbnail' queue"
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()


async def test_message_delivered_twice_counts_once(tmp_path: Path) -> None:
    broker, store, job_id, message = await setup(tmp_path)
    await broker.publish(QUEUE, encode_message(message))
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()


async def test_unknown_image_is_dead_lettered(tmp_path: Path) -> None:
    broker, _store, job_id, _message = await setup(tmp_path)
    ghost = StageMessage(job_id=job_id, collection_id="c", image_id="ghost", stage=THUMBNAIL)
    await broker.publish(QUEUE, encode_message(ghost))
    await drain(broker)
    [dead] = broker.dead_letters[f"{QUEUE}.dead"]
    assert dead.reason == "image 'ghost' not found"
    await broker.aclose()


async def test_other_errors_requeue_until_the_delivery_limit(tmp_path: Path) -> None:
    broker, store, job_id, message = await setup(tmp_path, BrokenCatalog())
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    [dead] = broker.dead_letters[f"{QUEUE}.dead"]
    assert decode_message(dead.body).attempt == 5  # each retry republished, its attempt raised
    assert dead.reason == "OSError: no space left on device"
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 0
    await broker.aclose()


async def test_an_unreachable_store_holds_the_message_without_spending_deliveries(
    tmp_path: Path,
) -> None:
    catalog = FlakyCatalog(outage=7)  # more failures than the delivery limit
    broker, store, job_id, message = await setup(tmp_path, catalog)
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    assert broker.dead_letters == {}
    assert catalog.calls == 8  # seven refusals, then it took the artifact
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()


async def test_a_cancelled_jobs_items_are_acked_without_work(tmp_path: Path) -> None:
    broker, store, job_id, message = await setup(tmp_path)
    await store.end_job(job_id, JobStatus.CANCELLED)
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    assert list((tmp_path / "data").rglob("*.jpg")) == []  # nothing rendered
    assert broker.dead_letters.get(f"{QUEUE}.dead", []) == []  # acked, not dead-lettered
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 0


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED])
async def test_an_ended_jobs_redelivered_items_are_acked_without_work(
    tmp_path: Path, status: JobStatus, caplog: pytest.LogCaptureFixture
) -> None:
    broker, store, job_id, message = await setup(tmp_path)
    await store.end_job(job_id, status)
    with caplog.at_level(logging.INFO):
        await broker.publish(QUEUE, encode_message(message))
        await drain(broker)
    assert list((tmp_path / "data").rglob("*.jpg")) == []  # nothing rendered
    assert broker.dead_letters.get(f"{QUEUE}.dead", []) == []  # acked, not dead-lettered
    assert f"skipped: job {job_id} has ended ({status})" in caplog.text
    await broker.aclose()


async def test_the_gate_reads_a_job_once_a_ttl_and_keeps_an_end() -> None:
    store = InMemoryJobStore()
    job = await store.create_job("t", ["a"])
    now = [0.0]
    gate = JobGate(store, ttl=1.0, monotonic=lambda: now[0])
    assert await gate.ended(job.id) is None
    await store.end_job(job.id, JobStatus.CANCELLED)
    assert await gate.ended(job.id) is None  # the answer read 0 s ago still holds
    now[0] = 1.0
    assert await gate.ended(job.id) is JobStatus.CANCELLED
    assert await gate.ended("no-such-job") is None  # unknown: the work is done
    done = await store.create_job("t", ["a"])
    await store.end_job(done.id, JobStatus.COMPLETED)
    assert await gate.ended(done.id) is JobStatus.COMPLETED
    reads = []
    read = store.get_job

    async def counting_get_job(job_id: str) -> Job:
        reads.append(job_id)
        return await read(job_id)

    store.get_job = counting_get_job  # type: ignore[method-assign]
    now[0] = 100.0
    assert await gate.ended(done.id) is JobStatus.COMPLETED
    assert reads == []  # an end is final: kept, not read again


async def test_messages_no_store_can_hold_are_dead_lettered_with_their_reason(
    tmp_path: Path,
) -> None:
    broker, store, job_id, message = await setup(tmp_path)
    poison = [
        encode_message(msgspec.structs.replace(message, job_id=job_id + "\x00")),
        encode_message(msgspec.structs.replace(message, image_id="x" * 10_000)),
        encode_message(message).replace(job_id.encode(), b"\xed\xa0\x80"),  # a surrogate in UTF-8
    ]
    for body in poison:
        await broker.publish(QUEUE, body)
    await broker.publish(QUEUE, encode_message(message))
    await drain(broker)
    dead = broker.dead_letters[f"{QUEUE}.dead"]
    assert [d.body for d in dead] == poison
    assert [d.reason.split(" (")[0] for d in dead[:2]] == [
        "stage message with a NUL byte in job_id",
        "stage message whose image_id has 10000 characters",
    ]
    assert dead[2].reason.startswith("malformed stage message: 'utf-8' codec can't decode")
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()


async def test_a_huge_malformed_message_logs_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker, store, job_id, message = await setup(tmp_path)
    huge = [
        b'{"job_id": "' + b"x" * 10_000_000 + b'\xff"}',  # not UTF-8
        encode_message(msgspec.structs.replace(message, stage="x" * 10_000_000)),
    ]
    with caplog.at_level(logging.DEBUG):
        for body in huge:
            await broker.publish(QUEUE, body)
        await broker.publish(QUEUE, encode_message(message))
        await drain(broker)
    logged = sum(len(record.getMessage()) + len(record.exc_text or "") for record in caplog.records)
    assert logged < 2_000, logged
    reasons = [d.reason for d in broker.dead_letters[f"{QUEUE}.dead"]]
    assert len(reasons) == 2
    assert all(len(reason) < 300 for reason in reasons), reasons
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()


async def test_the_consumer_sweeps_stale_temporaries_of_the_folder_it_writes(
    tmp_path: Path,
) -> None:
    broker, store, job_id, message = await setup(tmp_path)
    folder = tmp_path / "data" / "renditions" / message.collection_id / THUMBNAIL
    folder.mkdir(parents=True)
    debris, working = folder / ".a.jpg.0123456789ab.tmp", folder / ".b.jpg.0123456789ab.tmp"
    hour_ago = time.time() - 3600
    for path in (debris, working):
        path.write_bytes(b"partial")
        os.utime(path, (hour_ago, hour_ago))
    with working.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a live writer holds it
        await broker.publish(QUEUE, encode_message(message))
        await drain(broker)
        assert sorted(p.name for p in folder.iterdir()) == [
            working.name,
            f"{message.image_id}.jpg",
        ]
    assert (await store.get_job(job_id)).stage(THUMBNAIL).completed_items == 1
    await broker.aclose()
