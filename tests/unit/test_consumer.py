"""The collection scan's rendition handlers, on the item consumer, settle
every delivery and never crash."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from PIL import Image

from jobtrack.broker import InMemoryBroker
from jobtrack.errors import StoreUnavailable
from jobtrack.jobs.consumer import ItemConsumer
from jobtrack.jobs.executors import HandlerRunner
from jobtrack.jobs.gate import JobGate
from jobtrack.jobs.heartbeat import ItemCounter
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.catalog import Artifact, ScannedFile
from jobtrack.pipeline.stages import JOB_TYPE, STAGES, THUMBNAIL, queue_for
from jobtrack.runtime import App, Settings
from jobtrack.runtime.builtin import builtin_app, close_rendition_work, rendition_work
from jobtrack.store import InMemoryJobStore, StageCount
from jobtrack.tracking import ProgressTracker

QUEUE = queue_for(THUMBNAIL)


@dataclass
class Rig:
    """A collection-scan job of one image, ``a.jpg``, and its thumbnail consumer."""

    app: App
    broker: InMemoryBroker
    store: InMemoryJobStore
    job_id: str
    collection_id: str
    message: ItemMessage


def broken(_: Artifact) -> Any:
    raise OSError("no space left on device")


def flaky(app: App, outage: int) -> list[int]:
    """The catalog unreachable for the first ``outage`` artifact writes; the calls so far."""
    calls: list[int] = []
    real = app.catalog.record_artifact

    async def record_artifact(artifact: Artifact) -> None:
        calls.append(1)
        if len(calls) <= outage:
            raise StoreUnavailable("catalog is down")
        await real(artifact)

    app.catalog.record_artifact = record_artifact  # type: ignore[method-assign]
    return calls


async def setup(
    tmp_path: Path,
    fault: Callable[[App], object] | None = None,
    *,
    counter: ItemCounter | None = None,
    coalesce: bool = True,
) -> Rig:
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (640, 480), "teal").save(root / "a.jpg")
    settings = Settings(store_url="memory://", broker_url="memory://", data_dir=tmp_path / "data")
    app = builtin_app(settings)
    if fault is not None:
        fault(app)
    store, catalog, broker = app.store, app.catalog, app.broker
    assert isinstance(store, InMemoryJobStore)
    assert isinstance(broker, InMemoryBroker)
    rendition_work(app, processes=ThreadPoolExecutor, retry_delay=0.0)
    collection = await catalog.ensure_collection(str(root))
    job = await store.create_job(JOB_TYPE, STAGES)
    [state] = await catalog.register_images(collection.id, job.id, [ScannedFile("a.jpg", 1, 1)])
    job_type = app.get_type(JOB_TYPE)
    consumer = ItemConsumer(
        job_type,
        THUMBNAIL,
        store=store,
        broker=broker,
        tracker=ProgressTracker(store, coalesce=coalesce),
        runner=HandlerRunner(1),
        gate=JobGate(store, ttl=0.0),
        durable_within=None,  # drained means counted
        retry_delay=0.0,
        app=app,
        counter=counter,
    )
    await broker.consume(QUEUE, consumer.handle, prefetch=1)
    message = ItemMessage(job.id, JOB_TYPE, THUMBNAIL, state.image.id)
    return Rig(app, broker, store, job.id, collection.id, message)


async def close(rig: Rig) -> None:
    await rig.broker.aclose()
    close_rendition_work(rig.app)


async def drain(broker: InMemoryBroker) -> None:
    for _ in range(500):
        if await broker.in_flight(QUEUE) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("queue did not drain")


async def test_malformed_messages_are_dead_lettered_and_work_goes_on(tmp_path: Path) -> None:
    rig = await setup(tmp_path)
    wrong_stage = ItemMessage(rig.job_id, JOB_TYPE, "cache", "i")
    for body in [b"not json", b'{"job_id": 1}', b"{}", encode_item(wrong_stage)]:
        await rig.broker.publish(QUEUE, body)
    await rig.broker.publish(QUEUE, encode_item(rig.message))
    await drain(rig.broker)
    dead = rig.broker.dead_letters[f"{QUEUE}.dead"]
    assert [d.body for d in dead][:3] == [b"not json", b'{"job_id": 1}', b"{}"]
    assert all(d.reason.startswith("malformed item message") for d in dead[:3])
    assert dead[3].reason == (
        "a 'collection-scan' 'cache' message on the queue of 'collection-scan' 'thumbnail'"
    )
    assert (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL).completed_items == 1
    await close(rig)


async def test_message_delivered_twice_counts_once(tmp_path: Path) -> None:
    rig = await setup(tmp_path)
    await rig.broker.publish(QUEUE, encode_item(rig.message))
    await rig.broker.publish(QUEUE, encode_item(rig.message))
    await drain(rig.broker)
    assert (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL).completed_items == 1
    assert [p.name for p in (tmp_path / "data").rglob("*.jpg")] == [f"{rig.message.key}.jpg"]
    await close(rig)


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "per-item"])
async def test_a_message_delivered_twice_is_counted_once_for_the_heartbeat(
    tmp_path: Path, coalesce: bool
) -> None:
    counter = ItemCounter()
    rig = await setup(tmp_path, counter=counter, coalesce=coalesce)
    await rig.broker.publish(QUEUE, encode_item(rig.message))
    await drain(rig.broker)
    await rig.broker.publish(QUEUE, encode_item(rig.message))  # delivered again
    await drain(rig.broker)
    await asyncio.sleep(0.01)  # the receipts' callbacks

    assert (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL).completed_items == 1
    assert counter.take() == [StageCount(JOB_TYPE, THUMBNAIL, 1, 0)]
    assert (counter.done, counter.failed) == (1, 0)
    await close(rig)


async def test_an_unknown_image_fails_its_item_with_the_reason(tmp_path: Path) -> None:
    rig = await setup(tmp_path)
    ghost = msgspec.structs.replace(rig.message, key="ghost")
    await rig.broker.publish(QUEUE, encode_item(ghost))
    await drain(rig.broker)
    assert rig.broker.dead_letters == {}
    stage = (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL)
    assert (stage.completed_items, stage.failed_items) == (0, 1)
    [failure] = await rig.store.list_failures(rig.job_id)
    assert (failure.key, failure.error, failure.attempts) == (
        "ghost",
        "NotFound: image 'ghost' not found",
        1,
    )
    await close(rig)


async def test_other_errors_are_retried_then_fail_the_item(tmp_path: Path) -> None:
    def fault(app: App) -> None:
        app.catalog.record_artifact = broken  # type: ignore[method-assign,assignment]

    rig = await setup(tmp_path, fault)
    rig.app.get_type(JOB_TYPE).backoff = 0.0
    try:
        await rig.broker.publish(QUEUE, encode_item(rig.message))
        await drain(rig.broker)
    finally:
        rig.app.get_type(JOB_TYPE).backoff = 0.2
    assert rig.broker.dead_letters == {}
    stage = (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL)
    assert (stage.completed_items, stage.failed_items) == (0, 1)
    [failure] = await rig.store.list_failures(rig.job_id)
    # The last attempt's error: recording the failure met the same fault.
    assert (failure.error, failure.attempts) == ("OSError: no space left on device", 5)
    await close(rig)


async def test_an_unreachable_store_holds_the_message_without_spending_attempts(
    tmp_path: Path,
) -> None:
    writes: list[list[int]] = []  # more refusals than the type's attempts:
    rig = await setup(tmp_path, lambda app: writes.append(flaky(app, outage=7)))
    await rig.broker.publish(QUEUE, encode_item(rig.message))
    await drain(rig.broker)
    assert rig.broker.dead_letters == {}
    assert len(writes[0]) == 8  # seven refusals, then it took the artifact
    assert (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL).completed_items == 1
    assert await rig.store.list_failures(rig.job_id) == []
    await close(rig)


async def test_a_cancelled_jobs_items_are_acked_without_work(tmp_path: Path) -> None:
    rig = await setup(tmp_path)
    await rig.store.end_job(rig.job_id, JobStatus.CANCELLED)
    await rig.broker.publish(QUEUE, encode_item(rig.message))
    await drain(rig.broker)
    assert list((tmp_path / "data").rglob("*.jpg")) == []  # nothing rendered
    assert rig.broker.dead_letters.get(f"{QUEUE}.dead", []) == []  # acked, not dead-lettered
    assert (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL).completed_items == 0
    await close(rig)


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED])
async def test_an_ended_jobs_redelivered_items_are_acked_without_work(
    tmp_path: Path, status: JobStatus, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await setup(tmp_path)
    await rig.store.end_job(rig.job_id, status)
    with caplog.at_level(logging.INFO):
        await rig.broker.publish(QUEUE, encode_item(rig.message))
        await drain(rig.broker)
    assert list((tmp_path / "data").rglob("*.jpg")) == []  # nothing rendered
    assert rig.broker.dead_letters.get(f"{QUEUE}.dead", []) == []  # acked, not dead-lettered
    assert f"skipped: job {rig.job_id} has ended ({status})" in caplog.text
    await close(rig)


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
    rig = await setup(tmp_path)
    message, job_id = rig.message, rig.job_id
    poison = [
        encode_item(msgspec.structs.replace(message, job_id=job_id + "\x00")),
        encode_item(msgspec.structs.replace(message, key="x" * 10_000)),
        encode_item(message).replace(job_id.encode(), b"\xed\xa0\x80"),  # a surrogate in UTF-8
    ]
    for body in poison:
        await rig.broker.publish(QUEUE, body)
    await rig.broker.publish(QUEUE, encode_item(message))
    await drain(rig.broker)
    dead = rig.broker.dead_letters[f"{QUEUE}.dead"]
    assert [d.body for d in dead] == poison
    assert [d.reason for d in dead[:2]] == [
        "item message: job_id must not contain NUL characters",
        "item message: an item key must not exceed 1000 characters",
    ]
    assert dead[2].reason.startswith("malformed item message: 'utf-8' codec can't decode")
    assert (await rig.store.get_job(job_id)).stage(THUMBNAIL).completed_items == 1
    await close(rig)


async def test_a_huge_malformed_message_logs_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = await setup(tmp_path)
    huge = [
        b'{"job_id": "' + b"x" * 10_000_000 + b'\xff"}',  # not UTF-8
        encode_item(msgspec.structs.replace(rig.message, stage="x" * 10_000_000)),
    ]
    with caplog.at_level(logging.DEBUG):
        for body in huge:
            await rig.broker.publish(QUEUE, body)
        await rig.broker.publish(QUEUE, encode_item(rig.message))
        await drain(rig.broker)
    logged = sum(len(record.getMessage()) + len(record.exc_text or "") for record in caplog.records)
    assert logged < 2_000, logged
    reasons = [d.reason for d in rig.broker.dead_letters[f"{QUEUE}.dead"]]
    assert len(reasons) == 2
    assert all(len(reason) < 300 for reason in reasons), reasons
    assert (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL).completed_items == 1
    await close(rig)


async def test_the_handler_sweeps_stale_temporaries_of_the_folder_it_writes(
    tmp_path: Path,
) -> None:
    rig = await setup(tmp_path)
    folder = tmp_path / "data" / "renditions" / rig.collection_id / THUMBNAIL
    folder.mkdir(parents=True)
    debris, working = folder / ".a.jpg.0123456789ab.tmp", folder / ".b.jpg.0123456789ab.tmp"
    hour_ago = time.time() - 3600
    for path in (debris, working):
        path.write_bytes(b"partial")
        os.utime(path, (hour_ago, hour_ago))
    with working.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a live writer holds it
        await rig.broker.publish(QUEUE, encode_item(rig.message))
        await drain(rig.broker)
        assert sorted(p.name for p in folder.iterdir()) == [
            working.name,
            f"{rig.message.key}.jpg",
        ]
    assert (await rig.store.get_job(rig.job_id)).stage(THUMBNAIL).completed_items == 1
    await close(rig)
