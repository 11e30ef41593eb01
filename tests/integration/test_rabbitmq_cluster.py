"""A RabbitMQ node lost for real: a private three-node cluster
(:class:`~tests.services.rabbitmq_nodes.RabbitCluster`, nodes ``jt1``,
``jt2`` and ``jt3`` beside the machine's own node, which is never touched),
whose node leading the quorum queues is SIGKILLed mid-run and started
again later.

- Publishing: 5,000 messages published through the leader, which is
  killed halfway; every message confirmed is consumed through another node.
- A scan across processes: ``jobtrack worker`` processes each connected
  first to another node (the setting lists every node, in another order),
  a scan publishing through a third, PostgreSQL as the store; the node
  leading the stage queues is killed while the workers consume, and every
  count ends exact.

The nodes run as the ``rabbitmq`` user, started by root: without root the
module is skipped, and in CI (``$CI`` set) it fails instead, as it does
whenever the cluster cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from jobtrack.broker import Delivery, dead_letter_queue
from jobtrack.broker.rabbitmq import RabbitMQBroker
from jobtrack.errors import masked_url
from jobtrack.model import Job, JobStatus, StageCounts
from jobtrack.pipeline.catalog import ArtifactStatus, catalog_for
from jobtrack.pipeline.reconciler import CollectionScanReconciler
from jobtrack.pipeline.stages import queue_for
from jobtrack.store import JobStore, open_store
from tests.integration.test_distributed import counted, wait_for
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.services.rabbitmq_nodes import RabbitCluster, cluster_unavailable

# The time limit counts the fixtures too: starting the cluster (up to a few
# minutes on a busy machine), the sample collection and the database.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NODES = ("jt1", "jt2", "jt3")
FIRST_PORT = 5701
JOBTRACK = [sys.executable, "-m", "jobtrack"]
IMAGES, BROKEN = 400, 2
RENDITIONS = ("thumbnail", "cache")
MESSAGES = 5000
SAMPLE = ("--count", f"{IMAGES}", "--broken", f"{BROKEN}", "--max-megapixels", "1")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    """The private cluster, started for the module and removed after it."""
    why = cluster_unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"cannot start a private RabbitMQ cluster: {why}")
        pytest.skip(f"cannot start a private RabbitMQ cluster: {why}")
    with RabbitCluster(NODES, FIRST_PORT) as started:
        yield started


@pytest.fixture
def all_up(cluster: RabbitCluster) -> Iterator[RabbitCluster]:
    """The cluster with every node running, before and after the test."""
    for name in NODES:
        if not cluster.running(name):
            cluster.restart(name)
    yield cluster
    for name in NODES:
        if not cluster.running(name):
            cluster.restart(name)


async def test_every_confirmed_message_is_consumed_after_the_leader_is_killed(
    all_up: RabbitCluster,
) -> None:
    cluster = all_up
    queue = f"published-{uuid.uuid4().hex[:8]}"
    publisher = RabbitMQBroker(cluster.broker_url(first="jt1"), publish_timeout=120)
    confirmed: list[bytes] = []
    try:
        await publisher.publish(queue, b"0")  # declared through jt1, which leads it
        confirmed.append(b"0")
        leader = await asyncio.to_thread(cluster.leader_of, queue)
        assert leader == "jt1"

        async def publish_all() -> None:
            for start in range(1, MESSAGES, 100):
                batch = [f"{n}".encode() for n in range(start, min(start + 100, MESSAGES))]
                await publisher.publish_many(queue, batch)
                confirmed.extend(batch)

        publishing = asyncio.create_task(publish_all())
        while len(confirmed) < MESSAGES // 5:
            assert not publishing.done(), publishing
            await asyncio.sleep(0.01)
        await asyncio.to_thread(cluster.kill, leader)
        killed_at = len(confirmed)
        await publishing
        assert killed_at < MESSAGES, "the publishing ended before the node was down"
        # It moved on to the next node and published the rest there.
        assert publisher.connections == 2, publisher.connections
        assert publisher.node == masked_url(cluster.url("jt2"))
    finally:
        await publisher.aclose()

    consumer = RabbitMQBroker(cluster.broker_url(first="jt3"))
    received: set[bytes] = set()
    everything = asyncio.Event()

    async def take(delivery: Delivery) -> None:
        received.add(delivery.body)
        await delivery.ack()
        if len(received) == MESSAGES:
            everything.set()

    try:
        subscription = await consumer.consume(queue, take, prefetch=200)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything.wait(), 60)
        # Copies sent again (their confirm lost with the node) may follow.
        deadline = time.monotonic() + 30
        while await consumer.in_flight(queue):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await subscription.cancel()
        # The publisher may have sent a message twice (its confirm lost with
        # the node): never one less.
        assert sorted(set(confirmed)) == sorted(f"{n}".encode() for n in range(MESSAGES))
        missing = sorted(int(body) for body in set(confirmed) - received)
        assert (len(missing), missing[:20]) == (0, [])
        assert len(received) == MESSAGES
    finally:
        await consumer.aclose()


@dataclass
class Processes:
    """The store, data folder and processes of a scan across the cluster."""

    store_url: str
    data_dir: Path
    workers: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def env(self, broker_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        return env | {
            "JOBTRACK_STORE_URL": self.store_url,
            "JOBTRACK_BROKER_URL": broker_url,
            "JOBTRACK_DATA_DIR": str(self.data_dir),
            "COLUMNS": "200",
        }

    def start_worker(self, broker_url: str) -> None:
        """A ``jobtrack -v worker`` process on ``broker_url``, once it consumes."""
        log = self.data_dir.parent / f"worker-{len(self.workers)}.log"
        self.logs.append(log)
        stream: IO[str] = log.open("w")
        worker = subprocess.Popen(
            [*JOBTRACK, "-v", "worker", "--concurrency", "1", "--prefetch", "8"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(broker_url),
        )
        stream.close()
        self.workers.append(worker)
        deadline = time.monotonic() + 60
        while "worker ready" not in log.read_text():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    def enqueue(self, collection: Path, broker_url: str) -> str:
        """Scan ``collection`` (publishing only); the job's id."""
        done = subprocess.run(
            [*JOBTRACK, "scan", str(collection), "--no-wait", "--json"],
            capture_output=True,
            text=True,
            env=self.env(broker_url),
            check=False,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr
        job: dict[str, Any] = json.loads(done.stdout)
        assert {job["stages"][s]["total_items"] for s in RENDITIONS} == {IMAGES}
        return str(job["id"])

    def stop_all(self) -> None:
        """SIGTERM every worker and give them 30 s; then SIGKILL whatever
        is left, whatever failed (or timed out) meanwhile."""
        try:
            for worker in self.workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            for worker in self.workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(max(deadline - time.monotonic(), 0.1))
        finally:
            for worker in self.workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_postgres()
    root = tmp_path_factory.mktemp("cluster") / "photos"
    done = subprocess.run(
        [*JOBTRACK, "sample", str(root), *SAMPLE],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    with scratch_database("cluster") as database:
        running = Processes(database_url(database), tmp_path / "state")
        try:
            yield running
        finally:
            running.stop_all()


@pytest.fixture
async def store(processes: Processes) -> AsyncIterator[JobStore]:
    store = open_store(processes.store_url)
    yield store
    await store.aclose()


async def assert_exact(store: JobStore, job: Job) -> None:
    """The job completed once, each stage at the catalog's true count, and no
    rendition made after its stage completed (a double count completes a
    stage early)."""
    assert job.status is JobStatus.COMPLETED, job.to_dict()
    for name in RENDITIONS:
        stage = job.stages[name]
        assert (stage.total_items, stage.completed_items, stage.failed_items) == (
            IMAGES,
            IMAGES - BROKEN,
            BROKEN,
        ), name
    catalog = catalog_for(store)
    truth = await CollectionScanReconciler(catalog=catalog).count(job)
    states = await catalog.images_of_job(job.attributes["collection"]["id"], job.id)
    assert len(states) == IMAGES
    for name in RENDITIONS:
        stage = job.stages[name]
        assert truth[name] == StageCounts(
            stage.total_items, stage.completed_items, stage.failed_items, stage.total_final
        ), name
        assert stage.completed_at is not None
        assert max(state.artifacts[name].produced_at for state in states) <= stage.completed_at
        failed = [s for s in states if s.artifacts[name].status is ArtifactStatus.FAILED]
        assert len(failed) == BROKEN


async def test_a_scan_ends_exact_when_the_node_leading_its_queues_is_killed(
    all_up: RabbitCluster, processes: Processes, collection: Path, store: JobStore
) -> None:
    cluster = all_up
    # Each worker goes to another node first; the first worker declares the
    # stage queues through jt1, which then leads them.
    for first in NODES:
        processes.start_worker(cluster.broker_url(first=first))
    leaders = {q: cluster.leader_of(queue_for(q)) for q in RENDITIONS}
    assert set(leaders.values()) == {"jt1"}, leaders
    job_id = await asyncio.to_thread(processes.enqueue, collection, cluster.broker_url(first="jt2"))
    before = await wait_for(store, job_id, done=2 * IMAGES // 5, within=150)
    assert not before.status.terminal
    await asyncio.to_thread(cluster.kill, "jt1")
    after_kill = await wait_for(store, job_id, done=counted(before) + 60, within=150)
    assert not after_kill.status.terminal  # the work went on without jt1
    await asyncio.to_thread(cluster.restart, "jt1")
    job = await wait_for(store, job_id, within=150)
    await assert_exact(store, job)
    logs = [log.read_text() for log in processes.logs]
    # The worker connected to jt1 moved to the next node, jt2; the others
    # kept their connections.
    assert f"reconnected to RabbitMQ at {masked_url(cluster.url('jt2'))};" in logs[0]
    assert ["reconnected to RabbitMQ" in log for log in logs[1:]] == [False, False]
    assert all(worker.poll() is None for worker in processes.workers)
    broker = RabbitMQBroker(cluster.broker_url(first="jt3"))
    try:
        for name in RENDITIONS:
            # A message whose ack was lost with jt1 comes again after its
            # item was counted, and is acked then: the queues drain.
            deadline = time.monotonic() + 60
            while await broker.in_flight(queue_for(name)):
                assert time.monotonic() < deadline, name
                await asyncio.sleep(0.2)
            assert await broker.in_flight(dead_letter_queue(queue_for(name))) == 0
    finally:
        await broker.aclose()
    assert await store.get_job(job_id) == job  # and changed nothing
