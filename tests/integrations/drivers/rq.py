"""The contract's driver for RQ on Redis: two ``rq worker`` processes of
:class:`tests.integrations.apps.rq_app.Worker` (a forking
:class:`~jobtrack.integrations.rq.JobtrackWorker`) on a queue of the test's
own, every task sent with 2 retries."""

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
from typing import IO

from redis import Redis
from rq import Queue

import jobtrack
from jobtrack.integrations.rq import RQTracking
from tests.apps.harness import ROOT, scratch_env, settings
from tests.integrations.apps import rq_app
from tests.integrations.contract import STAGE, TYPE, key

REDIS_URL = "redis://127.0.0.1:6379/0"
WORKERS = 2
WORKER_CLASS = "tests.integrations.apps.rq_app.Worker"
READY = "Listening on"


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (a worker's work horse, its
    counter's writer)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class RQDriver:
    """RQ under the contract (see :class:`tests.integrations.contract.Driver`)."""

    slots = WORKERS
    kill_redelivers = True
    """A killed work horse's job is retried by its worker (every task has retries)."""
    acks_after_count = False
    """Counted in the worker's main process once the work horse has ended."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self.app_spec = "tests.integrations.apps.rq_app:app"
        self.tmp_path = tmp_path
        self.queue_name = f"jobtrack-test-{name}-{uuid.uuid4().hex[:10]}"
        self.raw_key = f"{self.queue_name}:raw"
        self._stack = contextlib.ExitStack()
        self.env = self._stack.enter_context(
            scratch_env(
                tmp_path,
                name,
                JOBTRACK_TEST_REDIS_URL=REDIS_URL,
                JOBTRACK_TEST_RQ_QUEUE=self.queue_name,
                JOBTRACK_TEST_RAW_KEY=self.raw_key,
            )
        )
        self.redis = Redis.from_url(REDIS_URL)
        self.queue = Queue(self.queue_name, connection=self.redis)
        self.workers: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []
        self._started = 0

    def tracking(self) -> RQTracking:
        """The contract's job type on a new app of the test's store and queue."""
        tracking = RQTracking(jobtrack.App(settings(self.env)), self.queue)
        tracking.job_type(TYPE, [STAGE])
        return tracking

    def app(self) -> jobtrack.App:
        """A new, unopened app of the test's store, queue and job type."""
        return self.tracking().app

    def produce(self, n: int, *, task: str = "ok", pause: float = 0.0) -> str:
        """Send ``n`` tasks ``task`` as the items of one job; its id."""
        func = f"{rq_app.__name__}.{task}"
        with self.tracking().start_job(TYPE) as job:
            for i in range(n):
                args = (i, pause) if task == "ok" else (i,)
                job.send(
                    STAGE,
                    func,
                    *args,
                    key=key(i),
                    retry=rq_app.RETRY,
                    result_ttl=rq_app.KEEP,
                    failure_ttl=rq_app.KEEP,
                )
        return job.job.id

    def send_again(self, job_id: str, item: str) -> None:
        """Enqueue the item's RQ job again, from the ledger, as the monitor does."""
        tracking = self.tracking()

        async def again() -> None:
            async with tracking.app as app:
                job = await app.store.get_job(job_id)
                items = await app.store.ledger_items(job_id, STAGE, [item])
                assert [i.key for i in items] == [item]
                await tracking.sender.send(job, STAGE, items)

        asyncio.run(again())

    def tail(self) -> str:
        """The end of the workers' output."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.logs if log.exists()
        )

    def start_workers(self) -> None:
        """Start 2 ``rq worker`` processes; return once both listen."""
        started: list[tuple[subprocess.Popen[str], Path]] = []
        for _ in range(WORKERS):
            self._started += 1
            log = self.tmp_path / f"rq-worker-{self._started}.log"
            stream: IO[str] = log.open("w")
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rq.cli",
                    "worker",
                    "--url",
                    REDIS_URL,
                    "--worker-class",
                    WORKER_CLASS,
                    self.queue_name,
                ],
                stdout=stream,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.env,
                cwd=ROOT,
            )
            stream.close()
            self.workers.append(process)
            self.logs.append(log)
            started.append((process, log))
        deadline = time.monotonic() + 60
        for process, log in started:
            while READY not in log.read_text():
                assert process.poll() is None, self.tail()
                assert time.monotonic() < deadline, self.tail()
                time.sleep(0.05)

    def kill_worker(self) -> None:
        """SIGKILL a work horse in the middle of an ``ok`` task (one that
        holds still once it is in the raw counter); its worker retries it."""
        held = rq_app.held_key(self.raw_key)
        self.redis.delete(held)
        self.redis.set(rq_app.hold_key(self.raw_key), 1)
        deadline = time.monotonic() + 30
        while (pid := self.redis.get(held)) is None:
            assert time.monotonic() < deadline, self.tail()
            time.sleep(0.01)
        _kill(int(pid))

    def kill_all(self) -> None:
        """SIGKILL every worker, work horse and counter's writer: what
        none of them wrote is lost, as when the machine goes down."""
        for process in self.workers:
            horses = _children(process.pid)
            process.kill()
            for horse in horses:
                _kill(horse)
            process.wait()
        self.workers = []

    def stop_workers(self) -> None:
        """SIGTERM the workers (a warm shutdown) and wait for them."""
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_all()
                break
        self.workers = []

    def purge(self) -> int:
        """Empty the queue (its jobs dropped); how many it held."""
        return int(self.queue.empty())  # type: ignore[no-untyped-call]

    def raw_count(self) -> int:
        """How many times ``ok`` tasks ran."""
        value = self.redis.hget(self.raw_key, rq_app.RAN)
        return int(value) if value is not None else 0

    def close(self) -> None:
        """Stop the workers, drop the test's queue, jobs and keys, and the store."""
        try:
            self.stop_workers()
            queue = self.queue
            registries = (
                queue.started_job_registry,
                queue.finished_job_registry,
                queue.failed_job_registry,
                queue.scheduled_job_registry,
                queue.deferred_job_registry,
                queue.canceled_job_registry,
            )
            ids = {job_id for registry in registries for job_id in registry.get_job_ids()}
            queue.delete(delete_jobs=True)
            doomed = [f"rq:job:{job_id}" for job_id in ids]
            doomed += [f"rq:results:{job_id}" for job_id in ids]
            doomed += [k.decode() for k in self.redis.scan_iter(match=f"*{self.queue_name}*")]
            for start in range(0, len(doomed), 1000):
                self.redis.delete(*doomed[start : start + 1000])
        finally:
            self.redis.close()
            self._stack.close()


def make(tmp_path: Path, name: str) -> RQDriver:
    """The driver for one test."""
    return RQDriver(tmp_path, name)
