"""The contract's driver for Dramatiq on RabbitMQ: ``python -m dramatiq``
with 2 worker processes of 4 threads on the test's virtual host (see
``contract.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import pika  # type: ignore[import-untyped]
import redis

from jobtrack.integrations import TaskCall
from jobtrack.integrations.dramatiq import DramatiqSender
from jobtrack.runtime import App
from jobtrack.store.ledger import LedgerItem
from tests.apps.harness import ROOT, scratch_env
from tests.integrations.apps import dramatiq_app
from tests.integrations.contract import STAGE, TYPE, key

APP_MODULE = "tests.integrations.apps.dramatiq_app"
READY = "Worker process is ready for action."
PROCESSES = 2
THREADS = 4
"""Worker threads per process. Their acks do not wait for the store, so 16
threads run the purge test's 300 tasks of 10 ms in about 0.2 s, before the
test, polling the store, can purge what is left; 8 threads leave it time."""
_PID = re.compile(r"\[PID (\d+)\].*" + re.escape(READY))


class DramatiqDriver:
    """Dramatiq workers (one ``dramatiq`` command, 2 processes) on RabbitMQ."""

    slots = PROCESSES * THREADS
    kill_redelivers = True
    """RabbitMQ delivers again what a killed process held unacked."""
    acks_after_count = True
    """The middleware acks a message once its count is durable."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.app_spec = f"{APP_MODULE}:app"
        self._stack = contextlib.ExitStack()
        tag = uuid.uuid4().hex[:8]
        self.queue = f"contract-{tag}"
        self.raw_key = f"jobtrack-test:dramatiq:{tag}"
        self.env: dict[str, str] = self._stack.enter_context(
            scratch_env(
                tmp_path,
                "dramatiq",
                JOBTRACK_TEST_QUEUE=self.queue,
                JOBTRACK_TEST_RAW_KEY=self.raw_key,
            )
        )
        self.env["PYTHONPATH"] = str(ROOT)
        self.log = tmp_path / "dramatiq.log"
        self.log.touch()
        self.parts = dramatiq_app.build(self.env)
        self.redis = redis.Redis.from_url(dramatiq_app.REDIS_URL)
        self.process: subprocess.Popen[str] | None = None
        self.workers: list[int] = []

    def tail(self) -> str:
        """The end of the workers' log."""
        return self.log.read_text()[-3000:]

    def app(self) -> App:
        """An unopened app with the workers' job type, store and sender."""
        return self.parts.app.with_settings(self.parts.app.settings)

    def produce(self, n: int, *, task: str = "ok", pause: float = 0.0) -> str:
        """A job of ``n`` messages of ``task``, keyed ``key(i)``, sealed."""
        with self.parts.tracking.start_job(TYPE) as job:
            for i in range(n):
                message = (
                    self.parts.ok.message(i, pause) if task == "ok" else self.parts.fail.message(i)
                )
                job.send(STAGE, message, key=key(i))
        return job.id

    def send_again(self, job_id: str, item: str) -> None:
        """Enqueue ``item``'s message again from its ledger payload (its
        ``message_id`` and reference the same)."""

        async def again() -> None:
            async with self.app() as app:
                job = await app.store.get_job(job_id)
                (found,) = await app.store.ledger_items(job_id, STAGE, [item])
                TaskCall.from_payload(found.payload)  # a task's payload
                sender = DramatiqSender(self.parts.broker)
                await sender.send(job, STAGE, [LedgerItem(found.key, found.payload)])

        asyncio.run(again())

    def start_workers(self) -> None:
        """Start ``dramatiq`` (2 processes); return once both consume the queue."""
        before = self.log.read_text().count(READY)
        stream: IO[str] = self.log.open("a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                f"{APP_MODULE}:broker",
                "--processes",
                str(PROCESSES),
                "--threads",
                str(THREADS),
            ],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
        )
        stream.close()
        deadline = time.monotonic() + 60
        while self.log.read_text().count(READY) < before + PROCESSES:
            assert self.process.poll() is None, self.tail()
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.05)
        self.workers = [int(pid) for pid in _PID.findall(self.log.read_text())][-PROCESSES:]
        while self._consumers() < PROCESSES:
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.05)

    def _consumers(self) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(self.env["JOBTRACK_BROKER_URL"]))
        try:
            declared = connection.channel().queue_declare(self.queue, passive=True)
            return int(declared.method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            connection.close()

    def kill_worker(self) -> None:
        """SIGKILL one worker process. The ``dramatiq`` command then stops
        the other and exits (it restarts no process); start it again, as a
        supervisor would."""
        assert self.process is not None
        os.kill(self.workers[0], signal.SIGKILL)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(self.tail()) from None
        self._gone(self.workers)
        self.start_workers()

    def kill_all(self) -> None:
        """SIGKILL the ``dramatiq`` command and its worker processes."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._gone(self.workers)

    def _gone(self, pids: list[int]) -> None:
        deadline = time.monotonic() + 30
        for pid in pids:
            while _alive(pid):
                assert time.monotonic() < deadline, f"process {pid} still runs"
                time.sleep(0.05)

    def stop_workers(self) -> None:
        """SIGTERM the ``dramatiq`` command (it stops its processes) and wait."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._gone(self.workers)

    def purge(self) -> int:
        """Purge the queue and its delay queue; how many messages went."""
        connection = pika.BlockingConnection(pika.URLParameters(self.env["JOBTRACK_BROKER_URL"]))
        try:
            channel = connection.channel()
            return sum(
                int(channel.queue_purge(name).method.message_count)
                for name in (self.queue, f"{self.queue}.DQ")
            )
        finally:
            connection.close()

    def raw_count(self) -> int:
        """How many times ``ok`` ran."""
        value = self.redis.hget(self.raw_key, dramatiq_app.RAW_FIELD)
        return int(value) if value is not None else 0

    def close(self) -> None:
        """Stop the workers, drop the raw counter, the database and vhost."""
        try:
            self.stop_workers()
            self.redis.delete(self.raw_key)
            self.redis.close()
            self.parts.broker.close()
        finally:
            self._stack.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def make(tmp_path: Path, name: str) -> DramatiqDriver:
    """The driver of one test."""
    return DramatiqDriver(tmp_path, name)
