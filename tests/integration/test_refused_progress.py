"""A message whose item the store refuses is dead-lettered, with the store's
reason, by a real ``jobtrack worker`` on RabbitMQ and PostgreSQL; the other
messages are counted exactly and the worker goes on. Among them, a message
whose job id holds a NUL byte: before, its flush failed on PostgreSQL and
took the job's own items in the same flush down with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import pytest

from jobtrack.broker import dead_letter_queue
from jobtrack.broker.rabbitmq import REASON_HEADER, RabbitMQBroker
from jobtrack.jobs.messages import ItemMessage, encode_item
from jobtrack.model import JobStatus
from jobtrack.pipeline.catalog import catalog_for
from jobtrack.pipeline.stages import queue_for
from jobtrack.store import open_store
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.rabbitmq import require_server as require_rabbitmq
from tests.rabbitmq import scratch_vhost, vhost_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

JOBTRACK = [sys.executable, "-m", "jobtrack"]
IMAGES = 4


def run(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*JOBTRACK, *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as stream:
        return subprocess.Popen(
            [*JOBTRACK, "-v", "worker", "--concurrency", "1"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )


async def dead_letters(url: str, queue: str) -> list[tuple[bytes, str]]:
    connection = await aio_pika.connect(url)
    found = []
    try:
        channel = await connection.channel()
        dead = await channel.get_queue(dead_letter_queue(queue), ensure=False)
        while (message := await dead.get(fail=False, timeout=5)) is not None:
            found.append((message.body, str(message.headers[REASON_HEADER])))
            await message.ack()
    finally:
        await connection.close()
    return found


async def test_a_worker_dead_letters_an_item_the_store_refuses(tmp_path: Path) -> None:
    require_postgres()
    require_rabbitmq()
    root = tmp_path / "photos"
    with scratch_database("refused") as database, scratch_vhost("refused") as vhost:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")} | {
            "JOBTRACK_STORE_URL": database_url(database),
            "JOBTRACK_BROKER_URL": vhost_url(vhost),
            "JOBTRACK_DATA_DIR": str(tmp_path / "state"),
        }
        run(
            env,
            "sample",
            str(root),
            "--count",
            str(IMAGES),
            "--broken",
            "0",
            "--max-megapixels",
            "1",
        )
        job_id = json.loads(run(env, "scan", str(root), "--no-wait", "--json"))["id"]
        store = open_store(env["JOBTRACK_STORE_URL"])
        broker = RabbitMQBroker(env["JOBTRACK_BROKER_URL"])
        log = tmp_path / "worker.log"
        worker = None
        try:
            job = await store.get_job(job_id)
            [state, *_] = await catalog_for(store).images_of_job(
                job.attributes["collection"]["id"], job_id
            )
            # Decodes fine; only the store can tell the job is gone.
            orphan = ItemMessage("gone", "collection-scan", "thumbnail", state.image.id)
            await broker.publish(queue_for("thumbnail"), encode_item(orphan))
            # A job id no store can hold, among the job's own cache items.
            poison = ItemMessage("poison\x00job", "collection-scan", "cache", state.image.id)
            await broker.publish(queue_for("cache"), encode_item(poison))
            worker = start_worker(env, log)
            deadline = time.monotonic() + 120
            while not (job := await store.get_job(job_id)).status.terminal or (
                await broker.in_flight(queue_for("thumbnail"))
            ):
                assert worker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, job.to_dict()
                await asyncio.sleep(0.1)
            assert job.status is JobStatus.COMPLETED
            for name in ("thumbnail", "cache"):
                stage = job.stages[name]
                assert (stage.total_items, stage.completed_items) == (IMAGES, IMAGES)
            # Another process holds the orphan unacked until it is settled:
            # wait for its dead letter.
            dead: list[tuple[bytes, str]] = []
            while not dead:
                assert time.monotonic() < deadline, log.read_text()
                dead = await dead_letters(env["JOBTRACK_BROKER_URL"], queue_for("thumbnail"))
            assert dead == [(encode_item(orphan), "job 'gone' not found")]
            # Refused by the message's decoder or by the tracker: dead either way.
            dead = []
            while not dead:
                assert time.monotonic() < deadline, log.read_text()
                dead = await dead_letters(env["JOBTRACK_BROKER_URL"], queue_for("cache"))
            [(body, reason)] = dead
            assert body == encode_item(poison)
            assert reason
            assert worker.poll() is None
            assert "job 'gone' not found" in log.read_text()
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
            await broker.aclose()
            await store.aclose()
