"""What a ``jobtrack worker`` process does with messages it must not work:
poison that no store can hold, and items of jobs that have ended.

One worker process on RabbitMQ and PostgreSQL (a virtual host and a database
of this module's own) serves the module's tests, each with a small
collection of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aio_pika
import pytest
from PIL import Image

from jobtrack.broker import dead_letter_queue
from jobtrack.broker.rabbitmq import REASON_HEADER, RabbitMQBroker
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import Job, JobStatus
from jobtrack.pipeline.catalog import catalog_for
from jobtrack.pipeline.stages import THUMBNAIL, queue_for
from jobtrack.store import JobStore, open_store
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.rabbitmq import require_server as require_rabbitmq
from tests.rabbitmq import scratch_vhost, vhost_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

JOBTRACK = [sys.executable, "-m", "jobtrack"]
IMAGES = 3


@dataclass
class Worker:
    """A ``jobtrack -v worker`` process and the settings it shares with scans."""

    env: dict[str, str]
    data_dir: Path
    log: Path
    process: subprocess.Popen[str] | None = None

    def jobtrack(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*JOBTRACK, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def start(self) -> None:
        stream: IO[str] = self.log.open("w")
        self.process = subprocess.Popen(
            [*JOBTRACK, "-v", "worker", "--concurrency", "1"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        stream.close()
        deadline = time.monotonic() + 60
        while "worker ready" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    require_postgres()
    require_rabbitmq()
    base = tmp_path_factory.mktemp("worker-messages")
    with scratch_database("wmessages") as database, scratch_vhost("wmessages") as vhost:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        env |= {
            "JOBTRACK_STORE_URL": database_url(database),
            "JOBTRACK_BROKER_URL": vhost_url(vhost),
            "JOBTRACK_DATA_DIR": str(base / "state"),
            "COLUMNS": "300",
        }
        worker = Worker(env, base / "state", base / "worker.log")
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()


@pytest.fixture
async def store(worker: Worker) -> AsyncIterator[JobStore]:
    store = open_store(worker.env["JOBTRACK_STORE_URL"])
    yield store
    await store.aclose()


@pytest.fixture
async def broker(worker: Worker) -> AsyncIterator[RabbitMQBroker]:
    broker = RabbitMQBroker(worker.env["JOBTRACK_BROKER_URL"])
    yield broker
    await broker.aclose()


def collection(root: Path) -> Path:
    root.mkdir()
    for index in range(IMAGES):
        Image.new("RGB", (64, 48), (index * 80, 0, 0)).save(root / f"{index}.jpg")
    return root


def enqueue(worker: Worker, root: Path) -> dict[str, Any]:
    done = worker.jobtrack("scan", str(root), "--no-wait", "--json")
    assert done.returncode == 0, done.stderr
    job: dict[str, Any] = json.loads(done.stdout)
    return job


async def ended(store: JobStore, job_id: str, within: float = 120) -> Job:
    deadline = time.monotonic() + within
    while not (job := await store.get_job(job_id)).status.terminal:
        assert time.monotonic() < deadline, job.to_dict()
        await asyncio.sleep(0.05)
    return job


async def until(check: Callable[[], Awaitable[bool]], within: float = 60) -> None:
    """Wait until ``check()`` holds (what another process holds unacked, AMQP
    does not tell: tests wait for what the worker leaves behind instead)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 (polling other processes)
            await asyncio.sleep(0.1)


async def take_dead_letters(url: str, stage: str) -> list[tuple[bytes, str]]:
    connection = await aio_pika.connect(url)
    found = []
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(dead_letter_queue(queue_for(stage)), ensure=False)
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            found.append((message.body, str(message.headers[REASON_HEADER])))
            await message.ack()
    finally:
        await connection.close()
    return found


def assert_exact(job: Job) -> None:
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    for stage in job.stages.values():
        assert (stage.total_items, stage.completed_items, stage.failed_items) == (
            IMAGES,
            IMAGES,
            0,
        ), stage


async def test_poison_messages_are_dead_lettered_with_their_reason_and_logged_briefly(
    worker: Worker, store: JobStore, broker: RabbitMQBroker, tmp_path: Path
) -> None:
    log_before = worker.log.stat().st_size
    job = enqueue(worker, collection(tmp_path / "photos"))
    real = ItemMessage(job["id"], "collection-scan", THUMBNAIL, "0" * 24)
    poison = [
        encode_item(real).replace(job["id"].encode(), job["id"].encode() + b"\\u0000"),
        encode_item(real).replace(b'"' + b"0" * 24, b'"' + b"\xed\xa0\x80"),
        encode_item(real).replace(job["id"].encode(), b"j" * 300),
        b'{"job_id": "' + b"x" * 10_000_000 + b'\xff"}',  # 10 MB, not UTF-8
    ]
    await broker.publish_many(queue_for(THUMBNAIL), poison)
    assert_exact(await ended(store, job["id"]))
    dead_queue = dead_letter_queue(queue_for(THUMBNAIL))

    async def all_dead() -> bool:
        return await broker.in_flight(dead_queue) == len(poison)

    await until(all_dead)
    dead = await take_dead_letters(worker.env["JOBTRACK_BROKER_URL"], THUMBNAIL)
    assert [body for body, _ in dead] == poison
    reasons = [reason for _, reason in dead]
    assert reasons[0] == "item message: job_id must not contain NUL characters"
    assert reasons[1].startswith("malformed item message: 'utf-8' codec can't decode byte 0xed")
    assert reasons[2] == "item message whose job_id has 300 characters (1 to 200)"
    assert reasons[3].startswith("malformed item message: 'utf-8' codec can't decode byte 0xff")
    assert worker.process is not None
    assert worker.process.poll() is None  # the worker goes on
    logged = worker.log.stat().st_size - log_before
    assert logged < 20_000, logged


async def test_items_of_a_job_that_has_ended_are_acked_without_work(
    worker: Worker, store: JobStore, broker: RabbitMQBroker, tmp_path: Path
) -> None:
    job = await ended(store, enqueue(worker, collection(tmp_path / "photos"))["id"])
    assert_exact(job)
    collection_id = job.attributes["collection"]["id"]
    states = await catalog_for(store).images_of_job(collection_id, job.id)
    thumbnails = [Path(str(state.artifacts[THUMBNAIL].path)) for state in states]
    for path in thumbnails:
        path.unlink()
    await asyncio.sleep(1.5)  # past the gate's ttl: a worker sees an end within 1 s
    log_before = worker.log.stat().st_size
    again = [
        encode_item(ItemMessage(job.id, "collection-scan", THUMBNAIL, state.image.id))
        for state in states
    ]
    await broker.publish_many(queue_for(THUMBNAIL), again)  # as a redelivery would
    skipped = f"skipped: job {job.id} has ended (completed)"

    async def all_skipped() -> bool:
        return worker.log.read_bytes()[log_before:].count(skipped.encode()) == IMAGES

    await until(all_skipped)
    assert [path.exists() for path in thumbnails] == [False] * IMAGES  # not rendered again
    assert await take_dead_letters(worker.env["JOBTRACK_BROKER_URL"], THUMBNAIL) == []
    assert await store.get_job(job.id) == job
