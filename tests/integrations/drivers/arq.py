"""The contract's driver for arq on Redis: two ``arq`` worker processes of
``tests.integrations.apps.arq_app``, a queue and a raw counter key of the
test's own, the store a PostgreSQL database of its own."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import redis
from arq.connections import RedisSettings

import jobtrack
from jobtrack.integrations import TaskCall, TaskRef
from jobtrack.integrations.arq import ArqTracking
from jobtrack.runtime import App, Settings
from tests.apps.harness import ROOT, scratch_env
from tests.integrations.contract import STAGE, TYPE, key

REDIS_URL = "redis://127.0.0.1:6379/0"
WORKERS = 2
READY = "arq worker ready"

# Drop the queue's jobs no worker runs (no in-progress key), their bodies
# too (a worker that read the id just before runs nothing: arq finds no
# body); how many.
_PURGE = """
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', 'arq:job:' .. id)
    n = n + 1
  end
end
return n
"""


class ArqDriver:
    """arq under the contract (see :class:`tests.integrations.contract.Driver`)."""

    app_spec = "tests.integrations.apps.arq_app:app"
    # arq runs a job again once the in-progress key of its killed worker
    # expires (the app's job timeout plus 10 s).
    slots = WORKERS * 20  # the app's WorkerSettings.max_jobs per worker
    kill_redelivers = True
    acks_after_count = False  # arq deletes a job once it returns; counts flush at the interval

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name = name
        self._tmp = tmp_path
        self._stack = contextlib.ExitStack()
        tag = uuid.uuid4().hex[:12]
        self.queue = f"jobtrack-test:arq:{tag}"
        self.raw_key = f"jobtrack-test:arq:{tag}:raw"
        self.env: dict[str, str] = self._stack.enter_context(
            scratch_env(
                tmp_path,
                "arq",
                JOBTRACK_TEST_REDIS_URL=REDIS_URL,
                JOBTRACK_TEST_ARQ_QUEUE=self.queue,
                JOBTRACK_TEST_RAW_KEY=self.raw_key,
            )
        )
        self.redis: redis.Redis = redis.Redis.from_url(REDIS_URL)
        self.workers: list[tuple[subprocess.Popen[str], Path]] = []
        self.job_ids: list[str] = []
        self._started = 0

    def _tracking(self) -> tuple[App, ArqTracking]:
        app = jobtrack.App(Settings.from_env(self.env))
        tracking = ArqTracking(app, RedisSettings.from_dsn(REDIS_URL), queue_name=self.queue)
        tracking.job_type(TYPE, [STAGE])
        return app, tracking

    def app(self) -> App:
        """A jobtrack App (unopened) with the contract's job type."""
        return self._tracking()[0]

    def produce(self, n: int, *, task: str = "ok", pause: float = 0.0) -> str:
        """Send ``n`` tasks ``task`` as the items of a new job; its id."""

        async def produce() -> str:
            app, tracking = self._tracking()
            try:
                async with app, tracking.start_job(TYPE) as job:
                    for i in range(n):
                        args = (i, pause) if task == "ok" else (i,)
                        await job.send(STAGE, task, *args, _key=key(i))
                return job.job.id
            finally:
                await tracking.aclose()

        job_id: str = asyncio.run(produce())
        self.job_ids.append(job_id)
        return job_id

    def send_again(self, job_id: str, item: str) -> None:
        """Enqueue a copy of ``item``'s task with its reference. arq holds
        one job per id, and the item's is queued: the copy has the id with
        ``:again`` after it."""

        async def send() -> None:
            app, tracking = self._tracking()
            try:
                async with app:
                    (entry,) = await app.store.ledger_items(job_id, STAGE, [item])
                call = TaskCall.from_payload(entry.payload)
                pool = await tracking.redis()
                sent = await pool.enqueue_job(
                    call.task,
                    *call.args,
                    _job_id=call.id_for(item) + ":again",
                    _queue_name=self.queue,
                    jobtrack=TaskRef(job_id, STAGE, item).header(),
                    **call.kwargs,
                )
                assert sent is not None
            finally:
                await tracking.aclose()

        asyncio.run(send())

    def _start_one(self) -> None:
        self._started += 1
        log = self._tmp / f"arq-worker-{self._started}.log"
        stream: IO[str] = log.open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "arq", "tests.integrations.apps.arq_app.WorkerSettings"],
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(self.env),
            cwd=ROOT,
        )
        stream.close()
        self.workers.append((process, log))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        for process, log in self.workers:
            while READY not in log.read_text():
                assert process.poll() is None, self.logs()
                assert time.monotonic() < deadline, self.logs()
                time.sleep(0.05)

    def logs(self) -> str:
        """The tail of every worker's log."""
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.workers)

    def start_workers(self) -> None:
        """Start 2 worker processes; return once both take jobs."""
        self.workers = [(p, log) for p, log in self.workers if p.poll() is None]
        while len(self.workers) < WORKERS:
            self._start_one()
        self._wait_ready()

    def kill_worker(self) -> None:
        """SIGKILL the first worker (it runs jobs: they are spread over
        both), and start a replacement."""
        process, _ = self.workers.pop(0)
        process.kill()
        process.wait()
        self.start_workers()

    def kill_all(self) -> None:
        """SIGKILL every worker."""
        for process, _ in self.workers:
            process.kill()
            process.wait()
        self.workers = []

    def stop_workers(self) -> None:
        """SIGTERM every worker (they flush their counts) and wait."""
        for process, _ in self.workers:
            process.send_signal(signal.SIGTERM)
        for process, _ in self.workers:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers = []

    def purge(self) -> int:
        """Drop the jobs waiting in the queue (not those being run); how many."""
        purged = self.redis.eval(_PURGE, 1, self.queue)
        return int(purged)

    def raw_count(self) -> int:
        """How many times ``ok`` ran."""
        value = self.redis.hget(self.raw_key, "ok")
        return int(value) if value is not None else 0

    def close(self) -> None:
        """Kill the workers, drop the test's keys, the database and vhost."""
        try:
            self.kill_all()
            keys = [self.queue, self.raw_key, f"{self.queue}:health-check"]
            for job_id in self.job_ids:
                keys += list(self.redis.scan_iter(match=f"arq:*:jobtrack:{job_id}:*", count=1000))
            for start in range(0, len(keys), 1000):
                self.redis.delete(*keys[start : start + 1000])
            self.redis.close()
        finally:
            self._stack.close()


def make(tmp_path: Path, name: str) -> ArqDriver:
    """The driver of one test."""
    return ArqDriver(tmp_path, name)
