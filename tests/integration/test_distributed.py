"""Scans across processes: ``jobtrack worker`` processes on RabbitMQ and
PostgreSQL, the real CLI in subprocesses, every count checked exactly.

Each test gets a virtual host and a database of its own; the collection of
500 image files (2 of them broken) is written once for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aio_pika
import httpx
import pytest

from jobtrack.broker import dead_letter_queue
from jobtrack.broker.rabbitmq import REASON_HEADER, RabbitMQBroker
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import Job, JobStatus, StageCounts
from jobtrack.pipeline.catalog import ArtifactStatus, catalog_for
from jobtrack.pipeline.reconciler import CollectionScanReconciler
from jobtrack.pipeline.sample import generate_sample
from jobtrack.pipeline.stages import queue_for
from jobtrack.runtime import EmbeddedRuntime, Settings
from jobtrack.store import JobStore, open_store
from tests.api.server import free_port
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.rabbitmq import require_server as require_rabbitmq
from tests.rabbitmq import restart_app, scratch_vhost, vhost_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JOBTRACK = [sys.executable, "-m", "jobtrack"]
IMAGES, BROKEN = 500, 2
RENDITIONS = ("thumbnail", "cache")
MP = ("--max-megapixels", "1")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_postgres()
    require_rabbitmq()
    root = tmp_path_factory.mktemp("distributed") / "photos"
    done = subprocess.run(
        [*JOBTRACK, "sample", str(root), "--count", f"{IMAGES}", "--broken", f"{BROKEN}", *MP],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root


@dataclass
class Cluster:
    """A store, a broker and a data folder shared by the processes of a test."""

    store_url: str
    broker_url: str
    data_dir: Path
    workers: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        return env | {
            "JOBTRACK_STORE_URL": self.store_url,
            "JOBTRACK_BROKER_URL": self.broker_url,
            "JOBTRACK_DATA_DIR": str(self.data_dir),
            "COLUMNS": "200",
        }

    def jobtrack(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*JOBTRACK, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=240,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def start_worker(self, *args: str) -> subprocess.Popen[str]:
        """A ``jobtrack -v worker`` process, returned once it consumes."""
        log = self.data_dir.parent / f"worker-{len(self.workers)}.log"
        self.logs.append(log)
        stream: IO[str] = log.open("w")
        worker = subprocess.Popen(
            [*JOBTRACK, "-v", "worker", "--concurrency", "1", *args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        stream.close()
        self.workers.append(worker)
        deadline = time.monotonic() + 60
        while "worker ready" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return worker

    def log(self, index: int) -> str:
        return self.logs[index].read_text()

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    name = request.node.name.removeprefix("test_")[:12]
    with scratch_database(name) as database, scratch_vhost(name) as vhost:
        cluster = Cluster(database_url(database), vhost_url(vhost), tmp_path / "state")
        try:
            yield cluster
        finally:
            cluster.stop_all()


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[JobStore]:
    store = open_store(cluster.store_url)
    yield store
    await store.aclose()


def counted(job: Job) -> int:
    """Rendition items counted, done or failed, over both stages."""
    return sum(job.stages[s].completed_items + job.stages[s].failed_items for s in RENDITIONS)


async def wait_for(
    store: JobStore, job_id: str, *, done: int | None = None, within: float = 180
) -> Job:
    """The job once it has ended, or once ``done`` rendition items are counted."""
    deadline = time.monotonic() + within
    while True:
        job = await store.get_job(job_id)
        if job.status.terminal or (done is not None and counted(job) >= done):
            return job
        assert time.monotonic() < deadline, job.to_dict()
        await asyncio.sleep(0.05)


async def assert_exact(store: JobStore, job: Job, *, redone_after: bool = False) -> None:
    """The job completed with every stage at its true count, and no item was
    counted before it was really done (a double count completes a stage
    early), unless items are known to be ``redone_after`` the end."""
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    for name in RENDITIONS:
        stage = job.stages[name]
        assert (stage.total_items, stage.completed_items, stage.failed_items) == (
            IMAGES,
            IMAGES - BROKEN,
            BROKEN,
        ), name
    assert (job.stages["scan"].total_items, job.stages["scan"].completed_items) == (IMAGES, IMAGES)
    catalog = catalog_for(store)
    truth = await CollectionScanReconciler(catalog=catalog).count(job)
    for name in RENDITIONS:
        stage = job.stages[name]
        assert truth[name] == StageCounts(
            stage.total_items, stage.completed_items, stage.failed_items, stage.total_final
        ), name
    states = await catalog.images_of_job(job.attributes["collection"]["id"], job.id)
    for name in RENDITIONS:
        completed_at = job.stages[name].completed_at
        assert completed_at is not None
        produced = [state.artifacts[name].produced_at for state in states]
        assert len(produced) == IMAGES
        assert redone_after or max(produced) <= completed_at, name
        failed = [s for s in states if s.artifacts[name].status is ArtifactStatus.FAILED]
        assert len(failed) == BROKEN


def enqueue(cluster: Cluster, collection: Path) -> str:
    done = cluster.jobtrack("scan", str(collection), "--no-wait", "--json")
    assert done.returncode == 0, done.stderr
    job: dict[str, Any] = json.loads(done.stdout)
    assert job["stages"]["scan"]["status"] == "completed"
    assert {job["stages"][s]["total_items"] for s in RENDITIONS} == {IMAGES}
    return str(job["id"])


async def test_three_workers_and_a_followed_scan_end_exact(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    for _ in range(3):
        cluster.start_worker()
    done = await asyncio.to_thread(cluster.jobtrack, "scan", str(collection), "--json")
    assert done.returncode == 0, done.stderr
    job = await store.get_job(json.loads(done.stdout)["id"])
    await assert_exact(store, job)
    for index in range(3):  # nothing needed a second delivery
        assert "delivered again" not in cluster.log(index)
    thumbnails = cluster.data_dir / "renditions"
    assert len(list(thumbnails.rglob("*.jpg"))) == 2 * (IMAGES - BROKEN)


async def test_a_killed_worker_s_items_are_redelivered_and_counted_once(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    workers = [cluster.start_worker("--prefetch", "8") for _ in range(3)]
    job_id = await asyncio.to_thread(enqueue, cluster, collection)
    await wait_for(store, job_id, done=300)
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait(10)
    cluster.start_worker("--prefetch", "8")
    job = await wait_for(store, job_id)
    await assert_exact(store, job)
    # What the killed worker held unacked went to the others.
    assert sum(cluster.log(i).count("delivered again") for i in (1, 2, 3)) >= 1


async def test_workers_resume_after_a_broker_restart(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    for _ in range(2):
        cluster.start_worker("--prefetch", "4")
    job_id = await asyncio.to_thread(enqueue, cluster, collection)
    before = await wait_for(store, job_id, done=200)
    assert not before.status.terminal
    restarted = time.monotonic()
    await asyncio.to_thread(restart_app, 1.0)
    counted = sum(
        before.stages[s].completed_items + before.stages[s].failed_items for s in RENDITIONS
    )
    resumed = await wait_for(store, job_id, done=counted + 250)
    assert not resumed.status.terminal
    assert time.monotonic() - restarted < 30
    job = await wait_for(store, job_id)
    await assert_exact(store, job)
    for index in range(2):
        assert "reconnected to RabbitMQ" in cluster.log(index)


async def test_a_message_published_twice_counts_once(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    job_id = await asyncio.to_thread(enqueue, cluster, collection)
    catalog = catalog_for(store)
    job = await store.get_job(job_id)
    states = await catalog.images_of_job(job.attributes["collection"]["id"], job_id)
    broker = RabbitMQBroker(cluster.broker_url)
    try:  # a publisher that resends: each is a new message, not a redelivery
        for name in RENDITIONS:
            again = [
                ItemMessage(job_id, "collection-scan", name, state.image.id)
                for state in states[:50]
            ]
            await broker.publish_many(queue_for(name), map(encode_item, again))
        assert await broker.in_flight(queue_for("thumbnail")) == IMAGES + 50
        cluster.start_worker("--concurrency", "2")
        job = await wait_for(store, job_id)
        # The copies queue behind the originals, so they are made again after the end.
        await assert_exact(store, job, redone_after=True)
        for name in RENDITIONS:  # every copy was consumed
            deadline = time.monotonic() + 60
            while await broker.in_flight(queue_for(name)):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert await store.get_job(job_id) == job  # and changed nothing
    finally:
        await broker.aclose()


async def test_a_malformed_message_is_dead_lettered_and_the_worker_goes_on(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    broker = RabbitMQBroker(cluster.broker_url)
    try:
        await broker.publish(queue_for("thumbnail"), b'{"v": 1, "job_id": 7}')
        await broker.publish(queue_for("cache"), b"\xff not json")
        cluster.start_worker("--concurrency", "2")
        job_id = await asyncio.to_thread(enqueue, cluster, collection)
        job = await wait_for(store, job_id)
        await assert_exact(store, job)  # the broken images are failed items
        assert cluster.workers[0].poll() is None
        dead = await dead_letters(cluster.broker_url)
    finally:
        await broker.aclose()
    assert [(body, reason.split(":")[0]) for body, reason in dead["thumbnail"]] == [
        (b'{"v": 1, "job_id": 7}', "malformed item message")
    ]
    assert [(body, reason.split(":")[0]) for body, reason in dead["cache"]] == [
        (b"\xff not json", "malformed item message")
    ]


async def dead_letters(url: str) -> dict[str, list[tuple[bytes, str]]]:
    connection = await aio_pika.connect(url)
    found: dict[str, list[tuple[bytes, str]]] = {}
    try:
        channel = await connection.channel()
        for name in RENDITIONS:
            queue = await channel.get_queue(dead_letter_queue(queue_for(name)), ensure=False)
            found[name] = []
            while (message := await queue.get(fail=False, timeout=5)) is not None:
                found[name].append((message.body, str(message.headers[REASON_HEADER])))
                await message.ack()
    finally:
        await connection.close()
    return found


async def test_sigterm_finishes_or_hands_back_every_message(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    worker = cluster.start_worker("--prefetch", "6")
    job_id = await asyncio.to_thread(enqueue, cluster, collection)
    await wait_for(store, job_id, done=40)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 60) == 0
    assert "worker stopped" in cluster.log(0)
    job = await store.get_job(job_id)
    broker = RabbitMQBroker(cluster.broker_url)
    try:
        waiting = sum([await broker.in_flight(queue_for(s)) for s in RENDITIONS])
    finally:
        await broker.aclose()
    # Every message is either counted or back in its queue: none lost, none both.
    assert (counted(job) + waiting, job.status) == (2 * IMAGES, JobStatus.IN_PROGRESS)
    cluster.start_worker("--concurrency", "2")
    await assert_exact(store, await wait_for(store, job_id))


async def test_a_followed_scan_without_workers_says_so_and_an_interrupt_leaves_the_job(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture, store: JobStore
) -> None:
    root = tmp_path / "few"
    generate_sample(root, count=3, broken=0, max_megapixels=0.1)
    settings = Settings.from_env(
        {}, data_dir=cluster.data_dir, store_url=cluster.store_url, broker_url=cluster.broker_url
    )
    async with EmbeddedRuntime(settings) as runtime:
        runtime.idle_hint = 0.3
        scan = asyncio.create_task(runtime.scan(root))
        deadline = time.monotonic() + 30
        while "is a `jobtrack worker` running" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
        scan.cancel()
        with pytest.raises(asyncio.CancelledError):
            await scan
        assert runtime.current_job_id is not None
        assert not runtime.cancelled  # all published: the job waits for workers
    job = await store.get_job(runtime.current_job_id)
    assert (job.status, job.stages["thumbnail"].total_items) == (JobStatus.IN_PROGRESS, 3)
    port = free_port()
    cluster.start_worker("--metrics-port", str(port))
    job = await wait_for(store, job.id)
    assert (job.status, counted(job)) == (JobStatus.COMPLETED, 6)
    # The worker's own progress writes, as Prometheus text: its 6 items.
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert "jobtrack_progress_items_total 6.0" in text.splitlines()
    assert "jobtrack_progress_write_failures_total 0.0" in text.splitlines()


async def drained(broker_url: str, within: float = 120) -> None:
    """Wait until both rendition queues are empty and settled."""
    broker = RabbitMQBroker(broker_url)
    try:
        deadline = time.monotonic() + within
        while sum([await broker.in_flight(queue_for(s)) for s in RENDITIONS]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        await broker.aclose()


async def test_with_consumer_progress_off_the_monitor_alone_completes_the_job(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    cluster.start_worker("--concurrency", "2", "--no-progress")
    job_id = await asyncio.to_thread(enqueue, cluster, collection)
    await drained(cluster.broker_url)
    job = await store.get_job(job_id)
    assert counted(job) == 0  # the workers reported nothing
    await asyncio.sleep(1.1)
    done = await asyncio.to_thread(
        cluster.jobtrack, "monitor", "--once", "--stuck-after", "1", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["stuck"], report["reconciled"], report["completed"]) == (1, 1, 1)
    job = await store.get_job(job_id)
    await assert_exact(store, job)
    [event] = await store.list_events(job_id)
    assert event.message == "thumbnail 0 → 500, cache 0 → 500 reconciled"
    shown = json.loads(cluster.jobtrack("jobs", "show", job_id, "--json").stdout)
    assert [e["kind"] for e in shown["events"]] == ["reconciled"]


async def test_lost_messages_are_redriven_and_the_job_completes(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    job_id = await asyncio.to_thread(enqueue, cluster, collection)
    connection = await aio_pika.connect(cluster.broker_url)
    try:  # every message is lost before any worker takes it
        channel = await connection.channel()
        for name in RENDITIONS:
            queue = await channel.get_queue(queue_for(name), ensure=False)
            await queue.purge()
    finally:
        await connection.close()
    await asyncio.sleep(1.1)
    done = await asyncio.to_thread(
        cluster.jobtrack, "monitor", "--once", "--stuck-after", "1", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["redriven"], report["items_redriven"]) == (1, 2 * IMAGES)
    await asyncio.sleep(1.1)  # stuck again, as far as the clock goes
    again = json.loads(
        (
            await asyncio.to_thread(
                cluster.jobtrack, "monitor", "--once", "--stuck-after", "1", "--json"
            )
        ).stdout
    )
    # Its re-driven messages now wait in the queue: slow, not stuck; nothing twice.
    assert (again["stuck"], again["slow"], again["redriven"]) == (1, 1, 0)
    cluster.start_worker("--concurrency", "2")
    job = await wait_for(store, job_id)
    await assert_exact(store, job)
    # Left alone, visibly: the second monitor recorded that the job waited.
    assert [e.kind for e in await store.list_events(job_id)] == ["redriven", "waiting"]


async def test_a_cancelled_jobs_queued_items_are_acked_without_work(
    cluster: Cluster, collection: Path, store: JobStore
) -> None:
    job_id = await asyncio.to_thread(enqueue, cluster, collection)  # no worker yet
    cancel = await asyncio.to_thread(cluster.jobtrack, "jobs", "cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    cluster.start_worker("--concurrency", "2")
    await drained(cluster.broker_url)  # every message taken and acked...
    job = await store.get_job(job_id)
    assert job.status is JobStatus.CANCELLED
    assert counted(job) == 0  # ...none of them counted...
    assert list(cluster.data_dir.rglob("*.jpg")) == []  # ...or rendered
    assert cluster.log(0).count("skipped: job") == 2 * IMAGES
    assert await dead_letters(cluster.broker_url) == {s: [] for s in RENDITIONS}


async def test_a_worker_whose_queue_is_refused_stops_and_says_why(cluster: Cluster) -> None:
    worker = cluster.start_worker("--stage", "thumbnail")
    queue = queue_for("thumbnail")
    # Someone deletes the queue and declares it classic: the server cancels the
    # worker's consumer, and declaring it again as a quorum queue is refused.
    connection = await aio_pika.connect(cluster.broker_url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await channel.declare_queue(queue, durable=True)
    finally:
        await connection.close()
    returncode = await asyncio.to_thread(worker.wait, 60)
    log = cluster.log(0)
    assert returncode == 1, log
    assert f"RabbitMQ refused consuming {queue}" in log
    assert "worker stopping because the broker failed" in log
    assert "Traceback" not in log.split("worker stopping")[-1]
