"""The contract's driver for Celery, on RabbitMQ (``celery-rabbitmq``: the
test's virtual host, py-amqp) or on Redis (``celery-redis``: a queue and a
transport key prefix of the test's own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from celery import Celery  # type: ignore[import-untyped]

import jobtrack
from jobtrack.integrations.celery import CeleryTracking
from jobtrack.model import Job
from tests.apps.harness import ROOT, scratch_env, settings
from tests.integrations.apps.celery_app import RAW_FIELD, REDIS_URL, make_celery
from tests.integrations.contract import STAGE, TYPE, key

APP_SPEC = "tests.integrations.apps.celery_app:app"
CELERY_SPEC = "tests.integrations.apps.celery_app:celery_app"
CELERY = [sys.executable, "-m", "celery", "-A", CELERY_SPEC, "worker"]
#: ``celery … worker`` arguments: prefork, 2 processes, nothing but tasks.
WORKER_ARGS = [
    "--pool",
    "prefork",
    "--concurrency",
    "2",
    "--loglevel",
    "INFO",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
]
#: A worker's log line once it consumes.
READY = " ready."


def children(pid: int) -> list[int]:
    """The ids of ``pid``'s child processes (none if it is gone)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(child) for child in f.read().split())
    return found


class CeleryDriver:
    """A Celery worker (prefork, concurrency 2) on the test's broker."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.app_spec = APP_SPEC
        self.slots = 2  # one prefork worker of concurrency 2
        self.kill_redelivers = True  # acks late, rejects with requeue when its process is lost
        # The contract app flushes at the interval (the library default, a flush
        # before each late ack, has a test of its own in test_celery.py).
        self.acks_after_count = os.environ.get("JOBTRACK_TEST_FLUSH_BEFORE_ACK") == "1"
        self.log = tmp_path / "celery-worker.log"
        self._stack = contextlib.ExitStack()
        self.queue = f"jt-celery-{uuid.uuid4().hex[:10]}"
        self.raw_key = f"{self.queue}:raw"
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.process: subprocess.Popen[bytes] | None = None
        extra = {"JOBTRACK_TEST_CELERY_QUEUE": self.queue, "JOBTRACK_TEST_RAW_KEY": self.raw_key}
        self.env: dict[str, str] = self._stack.enter_context(
            scratch_env(tmp_path, "celery", **extra)
        )
        if name == "celery-redis":
            self.key_prefix = f"{self.queue}:"
            broker = REDIS_URL
            self.env["JOBTRACK_TEST_CELERY_KEYPREFIX"] = self.key_prefix
        else:
            self.key_prefix = ""
            broker = "py" + self.env["JOBTRACK_BROKER_URL"]  # pyamqp://…/vhost
        self.env["JOBTRACK_TEST_CELERY_BROKER"] = broker
        self.celery: Celery = make_celery(broker, self.queue, self.key_prefix)
        self.tracking = CeleryTracking(
            jobtrack.App(settings(self.env)), self.celery, queues=self.queue
        )
        self.tracking.job_type(TYPE, [STAGE])

    def app(self) -> jobtrack.App:
        """A jobtrack App on the test's store, with the contract's type."""
        return self.tracking.app.with_settings(settings(self.env))

    def produce(self, n: int, *, task: str = "ok", pause: float = 0.0) -> str:
        """One job of ``n`` tasks ``contract.<task>`` sent as one group."""
        signatures = (
            self.celery.signature(f"contract.{task}", args=(i, pause) if task == "ok" else (i,))
            for i in range(n)
        )
        with self.tracking.start_job(TYPE) as job:
            job.send_group(STAGE, signatures, keys=(key(i) for i in range(n)))
        return job.job.id

    def send_again(self, job_id: str, item: str) -> None:
        """Send the item's task from its ledger entry, as the monitor does."""

        async def again() -> None:
            async with self.app() as app:
                job: Job = await app.store.get_job(job_id)
                items = await app.store.ledger_items(job_id, STAGE, [item])
                assert [found.key for found in items] == [item]
                await self.tracking.sender.send(job, STAGE, items)

        asyncio.run(again())

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def start_workers(self) -> None:
        """Start one worker, 2 prefork processes; return once it consumes."""
        assert self.process is None or self.process.poll() is not None
        self.log.touch()
        before = self.log.read_text(errors="replace").count(READY)
        with self.log.open("ab") as stream:
            self.process = subprocess.Popen(
                [*CELERY, *WORKER_ARGS, "-Q", self.queue, "-n", f"{self.queue}@%h"],
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 60
        while self.log.read_text(errors="replace").count(READY) == before:
            assert self.process.poll() is None, self._tail()
            assert time.monotonic() < deadline, self._tail()
            time.sleep(0.05)

    def _pool(self) -> list[int]:
        assert self.process is not None, "no worker started"
        assert self.process.poll() is None, self._tail()
        deadline = time.monotonic() + 30
        while not (pool := children(self.process.pid)):
            assert time.monotonic() < deadline, self._tail()
            time.sleep(0.05)
        return pool

    def kill_worker(self) -> None:
        """SIGKILL one prefork process; the worker starts another itself."""
        pool = self._pool()
        os.kill(pool[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pool[0] in (current := children(self.process.pid if self.process else 0)) or len(
            current
        ) < len(pool):
            assert time.monotonic() < deadline, self._tail()
            time.sleep(0.05)

    def kill_all(self) -> None:
        """SIGKILL the worker and its prefork processes."""
        if self.process is None or self.process.poll() is not None:
            return
        for pid in [*children(self.process.pid), self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def stop_workers(self) -> None:
        """SIGTERM (a warm shutdown: running tasks end), then wait."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.kill_all()

    def purge(self) -> int:
        """Drop the tasks waiting in the test's queue; how many."""
        with self.celery.connection_for_write() as connection:
            purged = connection.default_channel.queue_purge(self.queue)
        return int(purged or 0)

    def raw_count(self) -> int:
        """How many times ``ok`` tasks ran."""
        value = self.redis.hget(self.raw_key, RAW_FIELD)
        return int(value) if value is not None else 0

    def close(self) -> None:
        """Stop the worker; drop the test's Redis keys, database and vhost."""
        try:
            self.stop_workers()
        finally:
            try:
                names = [self.raw_key]
                if self.key_prefix:
                    names.extend(
                        str(k, "utf-8") for k in self.redis.scan_iter(f"{self.key_prefix}*")
                    )
                self.redis.delete(*names)
                self.redis.close()
            finally:
                self._stack.close()


def make(tmp_path: Path, name: str) -> CeleryDriver:
    """The driver ``celery-rabbitmq`` or ``celery-redis``."""
    return CeleryDriver(tmp_path, name)
