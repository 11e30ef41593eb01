"""Real ``jobtrack worker`` and ``jobtrack monitor`` processes on a user's
app, for the integration tests of users' jobs: start and stop workers, run
one monitor cycle and read its report, produce jobs through the app, wait
for jobs to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jobtrack.model import Job
from jobtrack.runtime import App, Settings
from jobtrack.store import JobStore
from tests.postgres import database_url, scratch_database
from tests.postgres import require_server as require_postgres
from tests.rabbitmq import require_server as require_rabbitmq
from tests.rabbitmq import scratch_vhost, vhost_url

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    """A ``jobtrack -v worker --app APP …`` process, its output in ``log``."""

    app: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[str] | None = None
    args: list[str] = field(default_factory=list)

    def start(self, *args: str) -> None:
        """Start it and wait until it says it is ready."""
        self.log.touch()
        stream: IO[str] = self.log.open("a")
        before = self.log.read_text().count("worker ready")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobtrack", "-v", "worker", "--app", self.app, *args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        stream.close()
        deadline = time.monotonic() + 60
        while self.log.read_text().count("worker ready") == before:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, then wait; its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, then wait: a worker that dies at once, whatever it held."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None


@contextmanager
def scratch_env(base: Path, name: str, **extra: str) -> Iterator[dict[str, str]]:
    """The environment of processes on a PostgreSQL database and a RabbitMQ
    virtual host of their own (``name``), with their data under ``base``
    and none of the caller's ``JOBTRACK_*``; ``extra`` added. Skips the test
    when either server is missing; both are dropped afterwards."""
    require_postgres()
    require_rabbitmq()
    with scratch_database(name) as database, scratch_vhost(name) as vhost:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        env |= {
            "JOBTRACK_STORE_URL": database_url(database),
            "JOBTRACK_BROKER_URL": vhost_url(vhost),
            "JOBTRACK_DATA_DIR": str(base / "state"),
            **extra,
        }
        yield env


def monitor_once(app: str, env: Mapping[str, str], *args: str) -> dict[str, Any]:
    """Run ``jobtrack monitor --once --json --app APP …``; its cycle report."""
    done = subprocess.run(
        [sys.executable, "-m", "jobtrack", "monitor", "--app", app, "--once", "--json", *args],
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def settings(env: Mapping[str, str]) -> Settings:
    """The settings the processes of ``env`` run with."""
    return Settings.from_env(env)


async def produce(
    app: App, job_type: str, stage: str, batches: Iterable[Mapping[str, Any]]
) -> list[str]:
    """One job of ``job_type`` per batch of ``{key: payload}`` items of
    ``stage``, through the app's producer; the jobs' ids, in order."""
    ids = []
    for payloads in batches:
        async with app.start_job(job_type) as producer:
            await producer.add(stage, list(payloads.items()))
        ids.append(producer.job.id)
    return ids


async def ended(store: JobStore, job_id: str, within: float = 60) -> Job:
    """The job once it has ended; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (job := await store.get_job(job_id)).status.terminal:
        assert time.monotonic() < deadline, job.to_dict()
        await asyncio.sleep(0.1)
    return job


def counts(job: Job, stage: str) -> tuple[int, int, int, bool]:
    """A stage's (total, completed, failed, sealed)."""
    current = job.stage(stage)
    return current.total_items, current.completed_items, current.failed_items, current.total_final
