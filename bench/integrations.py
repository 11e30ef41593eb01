"""Celery, Dramatiq, arq and RQ each bare, against the same framework with
jobtrack's integration, on the same fan-out of trivial tasks.

Usage::

    python -m bench.integrations [--tasks 10000,50000] [--runs 1 | --runs 5,1]
                                 [--kill-tasks 2000] [--only NAME,...] [--out DIR]

Each run sends N tasks of a task that returns at once, to 2 worker
processes: Celery prefork ``--concurrency 2`` (Redis broker, tasks acked
early: Celery's default); ``dramatiq --processes 2 --threads 8`` (RabbitMQ,
Dramatiq's default thread count, the same bare and tracked); 2 ``arq``
worker processes (Redis, polling every 0.05 s: see
:mod:`bench.integrations_apps.arq_app`); 2 ``rq worker`` processes, each
forking a work horse per job (Redis). The configurations:

- ``<framework>-bare``: no tracking, the framework's floor;
- ``celery-raw-counter``: the Sidekiq-style counter, a Redis ``INCR`` per
  task read with ``GET``: it is the bare run's own probe (below) read as
  progress, so it runs the bare run's code;
- ``celery-chord``: the tasks as a chord's header (Redis result backend),
  progress read with ``GroupResult.completed_count()``, the callback records
  when it ran;
- ``<framework>-jobtrack``: the framework's jobtrack integration with its
  defaults (PostgreSQL store), progress read with ``store.get_job``.

Every task, in every configuration, runs the same probe: one Redis
``INCR`` of the run's counter; the task that brings it to N records its end
time. A bare run is complete when the counter reaches N (polled every
5 ms): the least another process can see a task's end by, one round trip
per task, paid by the tracked runs too. A tracked run is complete when its
job's status is ``completed`` (polled every 5 ms once the probe's counter
has reached N, before which no job can complete: until then the counter is
polled, as in a bare run, so that the completion poll loads the machine
no more in a tracked run than in a bare one); a chord when its callback
has run. items/s is N over the time from the first send to the
completion seen; the delay is the completion seen minus the last task's
end time.

The runs go in rounds: each configuration once per round (``--runs``
rounds at each N: one count for every N, or one per N in ``--tasks``'s
order, ``--runs 5,1``), the order reversed every other round, so that a
framework's bare and tracked runs meet the same machine, back to back;
items/s is the median run's. tracked/bare is the median, over the rounds,
of the ratio of the tracked run to the bare run of the same round (the
machine's speed drifts between rounds more than between two runs of one
round); for configurations whose figures come from different invocations
(``--keep``), the ratio of the median runs. ``--keep`` adds to the
figures already in ``--out``: a configuration's figures are replaced only
at the N it runs again, and ``--kill-tasks 0`` keeps the kill runs.

The progress read is measured in a run of its own at the largest N, after
the timed ones (so that no timed run bears a reader, as no bare run does):
another process (forked) reads in a loop, 2 ms apart, from the job's
creation (the chord: its send) to the completion seen; the median of its
reads, and that run's items/s beside it.

The kill runs (``--kill-tasks`` N, jobtrack configurations and the raw
counter): once a quarter of the tasks have ended, one worker process is
SIGKILLed (Celery starts another itself; ``dramatiq`` exits and is started
again; arq's killed worker is replaced), then the run waits for the job to
complete, or for 3 s without a change, after which ``jobtrack monitor --app
... --once --stuck-after 2`` runs (up to 3 times). Counted is the job's
completed items (the raw counter's value for ``celery-raw-counter``), the
probe's counter beside it (how many times tasks ran).

Every timed run checks its counts exactly (the probe's counter is N; a
tracked job completed with N items done, none failed) and raises otherwise.
PostgreSQL runs in a database of its own, created and dropped here; Redis
keys are under a prefix of each run's own and RabbitMQ queues have names
of their own, all deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pika  # type: ignore[import-untyped]
import redis

from bench.integrations_apps.celery_app import READY, chord_key
from bench.integrations_apps.probe import REDIS_URL, STAGE, TYPE, count_key, end_key
from bench.progress import backend
from bench.report import RESULTS, table, write
from jobtrack.model import JobStatus
from jobtrack.store import open_store

ROOT = Path(__file__).resolve().parent.parent
NAME = "integrations"
POLL = 0.005  # seconds between two looks at completion
READ_PAUSE = 0.002  # seconds between two progress reads
STARTUP = 90.0  # seconds workers have to start
STALL_TIMEOUT = 180.0  # seconds a timed run may go without a task ending
QUIET = 3.0  # seconds without a change before the monitor runs (kill runs)
MONITOR_RUNS = 3

CONFIGS: dict[str, tuple[str, str]] = {
    "celery-bare": ("celery", "bare"),
    "celery-raw-counter": ("celery", "raw"),
    "celery-chord": ("celery", "chord"),
    "celery-jobtrack": ("celery", "tracked"),
    "dramatiq-bare": ("dramatiq", "bare"),
    "dramatiq-jobtrack": ("dramatiq", "tracked"),
    "arq-bare": ("arq", "bare"),
    "arq-jobtrack": ("arq", "tracked"),
    "rq-bare": ("rq", "bare"),
    "rq-jobtrack": ("rq", "tracked"),
}
"""Each configuration's framework and mode."""
FLOORS = {
    "celery": "celery-bare",
    "dramatiq": "dramatiq-bare",
    "arq": "arq-bare",
    "rq": "rq-bare",
}
"""The bare configuration of each framework."""
APP_SPECS = {
    "celery": "bench.integrations_apps.celery_app:app",
    "dramatiq": "bench.integrations_apps.dramatiq_app:app",
    "arq": "bench.integrations_apps.arq_app:app",
    "rq": "bench.integrations_apps.rq_app:app",
}
"""The jobtrack app of each framework, for ``jobtrack monitor --app``."""


class NotExact(RuntimeError):
    """A run whose counts are not exactly what was sent."""


# -- workers ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(child) for child in f.read().split())
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class Workers:
    """A framework's 2 worker processes for one run (see the module)."""

    framework: str
    mode: str
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def _log(self, name: str) -> Path:
        return self.logs / f"{self.framework}-{self.mode}-{name}.log"

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as stream:
            return subprocess.Popen(
                command,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )

    def _count(self, log: Path, text: str) -> int:
        return log.read_text(errors="replace").count(text) if log.exists() else 0

    def _ready(self, log: Path, text: str) -> bool:
        return self._count(log, text) >= 1

    def start(self) -> None:
        """Start the workers; return once they take tasks.

        :raises TimeoutError: they did not start within ``STARTUP`` seconds.
        """
        if self.framework == "celery":
            log = self._log("worker")
            before = self._count(log, READY)
            queue = self.env["JOBTRACK_BENCH_QUEUE"]
            command = [sys.executable, "-m", "celery", "-A"]
            command += ["bench.integrations_apps.celery_app:celery_app", "worker"]
            command += ["--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"]
            command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            command += ["-Q", queue, "-n", f"{queue}@%h"]
            self.processes = [self._spawn(command, log)]
            _wait_for(lambda: self._count(log, READY) > before, STARTUP, "celery worker")
        elif self.framework == "dramatiq":
            log = self._log("worker")
            ready = "Worker process is ready for action."
            before = self._count(log, ready)
            command = [sys.executable, "-m", "dramatiq"]
            command += ["bench.integrations_apps.dramatiq_app:broker"]
            command += ["--processes", "2", "--threads", "8"]
            self.processes = [self._spawn(command, log)]
            _wait_for(lambda: self._count(log, ready) >= before + 2, STARTUP, "dramatiq workers")
            found = re.findall(r"\[PID (\d+)\].*" + re.escape(ready), log.read_text())
            self.pids = [int(pid) for pid in found[-2:]]
        else:
            self.processes = [p for p in self.processes if p.poll() is None]
            while len(self.processes) < 2:
                log = self._log(f"worker-{uuid.uuid4().hex[:6]}")
                tracked = self.mode == "tracked"
                if self.framework == "arq":
                    settings = "TrackedSettings" if tracked else "BareSettings"
                    command = [sys.executable, "-m", "arq"]
                    command += [f"bench.integrations_apps.arq_app.{settings}"]
                    ready = "arq worker ready"
                else:
                    worker = "TrackedWorker" if tracked else "BareWorker"
                    command = [sys.executable, "-m", "rq.cli", "worker", "--url", REDIS_URL]
                    command += ["--worker-class", f"bench.integrations_apps.rq_app.{worker}"]
                    command += [self.env["JOBTRACK_BENCH_QUEUE"]]
                    ready = "Listening on"
                process = self._spawn(command, log)
                self.processes.append(process)
                _wait_for(partial(self._ready, log, ready), STARTUP, f"{self.framework} worker")

    def kill_one(self) -> None:
        """SIGKILL one worker process and have it replaced."""
        if self.framework == "celery":
            pool = _children(self.processes[0].pid)
            os.kill(pool[0], signal.SIGKILL)
            _wait_for(
                lambda: pool[0] not in (now := _children(self.processes[0].pid)) and len(now) >= 2,
                STARTUP,
                "replaced pool process",
            )
        elif self.framework == "dramatiq":
            os.kill(self.pids[0], signal.SIGKILL)
            self.processes[0].wait(60)  # dramatiq stops the other process and exits
            _wait_for(lambda: not any(_alive(p) for p in self.pids), 30, "dramatiq exit")
            self.start()
        else:  # arq, rq: the worker and its work horse, if any
            killed = self.processes.pop(0)
            horses = _children(killed.pid)
            killed.kill()
            for horse in horses:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(horse, signal.SIGKILL)
            killed.wait()
            self.start()

    def stop(self) -> None:
        """SIGTERM the workers and wait (SIGKILL after 60 s)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes = []


# -- runs -------------------------------------------------------------------


@dataclass
class Run:
    """One run's names and environment."""

    config: str
    items: int
    store_url: str
    data_dir: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def framework(self) -> str:
        """The run's framework."""
        return CONFIGS[self.config][0]

    @property
    def mode(self) -> str:
        """``bare``, ``raw``, ``chord`` or ``tracked``."""
        return CONFIGS[self.config][1]

    @property
    def prefix(self) -> str:
        """The run's Redis key prefix."""
        return f"jobtrack-bench-int:{self.tag}:"

    @property
    def queue(self) -> str:
        """The run's queue (arq's queue is a Redis key: under the prefix)."""
        if self.framework == "arq":
            return f"{self.prefix}arq"
        return f"jobtrack-bench-int-{self.tag}"

    def env(self) -> dict[str, str]:
        """The workers' environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        mode = "bare" if self.mode == "raw" else self.mode
        env |= {
            "JOBTRACK_BENCH_MODE": mode,
            "JOBTRACK_BENCH_QUEUE": self.queue,
            "JOBTRACK_BENCH_PREFIX": self.prefix,
            "JOBTRACK_BENCH_ITEMS": str(self.items),
            "JOBTRACK_STORE_URL": self.store_url,
            "JOBTRACK_DATA_DIR": self.data_dir,
            "PYTHONPATH": str(ROOT),
        }
        for name in ("JOBTRACK_BENCH_AMQP_URL", "JOBTRACK_BENCH_REDIS_URL"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env


def _celery(run: Run) -> Any:
    from bench.integrations_apps import celery_app

    return celery_app.build(run.env())


def _dramatiq(run: Run) -> Any:
    from bench.integrations_apps import dramatiq_app

    return dramatiq_app.build(run.env())


def produce(run: Run, started: Callable[[Any], None]) -> str | None:
    """Send the run's tasks; the tracked job's id (None untracked).
    ``started`` gets what a progress read reads (the job's id, the chord's
    task ids, the counter's key) before the first task is sent.

    :raises Exception: whatever the framework's send raises.
    """
    n = run.items
    if run.framework == "celery":
        from celery import chord, group  # type: ignore[import-untyped]

        parts = _celery(run)
        if run.mode == "tracked":
            with parts.tracking.start_job(TYPE) as job:
                started(job.job.id)
                job.send_group(STAGE, group(parts.noop.s(i) for i in range(n)))
            return str(job.job.id)
        if run.mode == "chord":
            ids = [str(uuid.uuid4()) for _ in range(n)]
            started(ids)
            header = group(parts.noop.s(i).set(task_id=ids[i]) for i in range(n))
            chord(header)(parts.chord_done.s())
            return None
        started(count_key(run.prefix))
        group(parts.noop.s(i) for i in range(n)).apply_async()
        return None
    if run.framework == "dramatiq":
        parts = _dramatiq(run)
        try:
            if run.mode == "tracked":
                with parts.tracking.start_job(TYPE) as job:
                    started(job.job.id)
                    for i in range(n):
                        job.send(STAGE, parts.noop.message(i))
                return str(job.job.id)
            started(count_key(run.prefix))
            for i in range(n):
                parts.noop.send(i)
            return None
        finally:
            parts.broker.close()
    if run.framework == "rq":
        return _produce_rq(run, started)
    return asyncio.run(_produce_arq(run, started))


def _produce_rq(run: Run, started: Callable[[Any], None]) -> str | None:
    from rq import Queue

    import jobtrack
    from bench.integrations_apps.rq_app import KEEP
    from jobtrack.integrations.rq import RQTracking

    func = "bench.integrations_apps.rq_app.noop"
    connection = redis.Redis.from_url(REDIS_URL)
    queue = Queue(run.queue, connection=connection)
    try:
        if run.mode != "tracked":
            started(count_key(run.prefix))
            for start in range(0, run.items, 1000):
                batch = range(start, min(start + 1000, run.items))
                queue.enqueue_many([Queue.prepare_data(func, (i,), result_ttl=KEEP) for i in batch])
            return None
        tracking = RQTracking(jobtrack.App(jobtrack.Settings.from_env(run.env())), queue)
        tracking.job_type(TYPE, [STAGE])
        with tracking.start_job(TYPE) as job:
            started(job.job.id)
            for i in range(run.items):
                job.send(STAGE, func, i, result_ttl=KEEP)
        return str(job.job.id)
    finally:
        connection.close()


async def _produce_arq(run: Run, started: Callable[[Any], None]) -> str | None:
    from arq.connections import RedisSettings, create_pool

    import jobtrack
    from jobtrack.integrations.arq import ArqTracking

    settings = RedisSettings.from_dsn(REDIS_URL)
    if run.mode != "tracked":
        pool = await create_pool(settings, default_queue_name=run.queue)
        try:
            started(count_key(run.prefix))
            for i in range(run.items):
                await pool.enqueue_job("noop", i)
        finally:
            await pool.aclose()
        return None
    app = jobtrack.App(jobtrack.Settings.from_env(run.env()))
    tracking = ArqTracking(app, settings, queue_name=run.queue)
    tracking.job_type(TYPE, [STAGE])
    try:
        async with app, tracking.start_job(TYPE) as job:
            started(job.job.id)
            for i in range(run.items):
                await job.send(STAGE, "noop", i)
        return str(job.job.id)
    finally:
        await tracking.aclose()


@contextlib.contextmanager
def _timing(reads: list[float], cpus: list[float]) -> Iterator[None]:
    """Append the block's wall time to ``reads`` and its thread's CPU time
    to ``cpus``, in µs."""
    spent, began = time.thread_time(), time.perf_counter()
    yield
    reads.append((time.perf_counter() - began) * 1e6)
    cpus.append((time.thread_time() - spent) * 1e6)


def _reader(run: Run, conn: Connection) -> None:
    """A forked process's progress reads: gets its target, reads until told
    to stop (a byte on ``conn``), sends back each read's µs, then each
    read's CPU µs in the reader (its thread's time: what the read cost it,
    without the waits for the server and to be scheduled)."""
    target = conn.recv()
    reads: list[float] = []
    cpus: list[float] = []
    if run.mode == "tracked":

        async def loop() -> None:
            store = open_store(run.store_url)
            try:
                while not conn.poll():
                    with _timing(reads, cpus):
                        await store.get_job(target)
                    await asyncio.sleep(READ_PAUSE)
            finally:
                await store.aclose()

        asyncio.run(loop())
    elif run.mode == "chord":
        from celery.result import AsyncResult, GroupResult  # type: ignore[import-untyped]

        parts = _celery(run)
        result = GroupResult(
            str(uuid.uuid4()), [AsyncResult(i, app=parts.celery_app) for i in target]
        )
        while not conn.poll():
            with _timing(reads, cpus):
                result.completed_count()
            time.sleep(READ_PAUSE)
    else:
        client = redis.Redis.from_url(REDIS_URL)
        while not conn.poll():
            with _timing(reads, cpus):
                client.get(target)
            time.sleep(READ_PAUSE)
        client.close()
    conn.recv()
    conn.send((reads, cpus))
    conn.close()


def _job(run: Run, job_id: str) -> Any:
    async def get() -> Any:
        store = open_store(run.store_url)
        try:
            return await store.get_job(job_id)
        finally:
            await store.aclose()

    return asyncio.run(get())


class _Stall:
    """A deadline that moves on each time another task ends (the probe's
    counter went up): a slow run goes on, a stalled one times out."""

    def __init__(self, client: redis.Redis, run: Run, timeout: float) -> None:
        self.client, self.key, self.timeout = client, count_key(run.prefix), timeout
        self.ended = 0
        self.deadline = time.monotonic() + timeout
        self.checked = 0.0

    def seen(self, value: bytes | str | None) -> bool:
        """Move the deadline on if ``value`` (the probe's counter, just
        read) went up; whether the run has not stalled."""
        ended = int(value or 0)
        if ended > self.ended:
            self.ended, self.deadline = ended, time.monotonic() + self.timeout
        return time.monotonic() < self.deadline

    def alive(self) -> bool:
        """Whether the run has not stalled, for a caller that does not read
        the probe's counter itself: read here once a second at most."""
        now = time.monotonic()
        if now >= self.checked + 1.0:
            self.checked = now
            return self.seen(self.client.get(self.key))
        return now < self.deadline


def _wait_complete(run: Run, job_id: str | None, timeout: float) -> float:
    """Poll every 5 ms until the run is complete; the time (``time.time()``)
    it was seen.

    :raises TimeoutError: ``timeout`` seconds went by without a task ending,
        or without the job completing after its last task.
    """
    client = redis.Redis.from_url(REDIS_URL)
    stall = _Stall(client, run, timeout)
    try:
        if run.mode == "tracked":
            assert job_id is not None
            # No job completes before its last task has run: until then the
            # probe's counter is polled, as a bare run's (a read of the store
            # every 5 ms for the whole run would load the machine, and so the
            # tracked run, more than the bare run's GET does).
            while True:
                value = client.get(count_key(run.prefix))
                if value is not None and int(value) >= run.items:
                    break
                if not stall.seen(value):
                    raise TimeoutError(f"{run.config}: not complete")
                time.sleep(POLL)
            deadline = time.monotonic() + timeout

            async def poll() -> float:
                store = open_store(run.store_url)
                try:
                    while time.monotonic() < deadline:
                        job = await store.get_job(job_id)
                        if job.status == JobStatus.COMPLETED:
                            return time.time()
                        await asyncio.sleep(POLL)
                finally:
                    await store.aclose()
                raise TimeoutError(f"{run.config}: job {job_id} not completed")

            return asyncio.run(poll())
        chord = run.mode == "chord"
        key = chord_key(run.prefix) if chord else count_key(run.prefix)
        while True:
            value = client.get(key)
            if value is not None and (chord or int(value) >= run.items):
                return time.time()
            # The chord's key is set at its end only: the probe is read apart.
            if not (stall.alive() if chord else stall.seen(value)):
                break
            time.sleep(POLL)
        raise TimeoutError(f"{run.config}: not complete")
    finally:
        client.close()


def _probe_count(run: Run) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        value = client.get(count_key(run.prefix))
        return int(value) if value is not None else 0
    finally:
        client.close()


def cleanup(run: Run) -> None:
    """Delete the run's Redis keys (those whose name has the run's tag: its
    prefix's and its queue's) and RabbitMQ queues."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        names = list(client.scan_iter(f"*{run.tag}*", count=1000))
        for start in range(0, len(names), 1000):
            client.delete(*names[start : start + 1000])
    finally:
        client.close()
    if run.framework == "dramatiq":
        from bench.integrations_apps.dramatiq_app import AMQP_URL

        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = connection.channel()
            for name in (run.queue, f"{run.queue}.DQ", f"{run.queue}.XQ"):
                channel.queue_delete(name)
        finally:
            connection.close()


@contextlib.contextmanager
def _workers(run: Run, logs: Path) -> Iterator[Workers]:
    workers = Workers(run.framework, run.mode, run.env(), logs)
    try:
        workers.start()
        yield workers
    finally:
        try:
            workers.stop()
        finally:
            cleanup(run)


def timed(run: Run, logs: Path, *, read: bool) -> dict[str, Any]:
    """One timed run (see the module): its items/s, delay, reads and checks.

    :raises NotExact: counts not exactly N.
    :raises TimeoutError: workers that did not start, a run that did not end.
    """
    load = os.getloadavg()[0]
    with _workers(run, logs):
        reader: multiprocessing.process.BaseProcess | None = None
        ours: Connection | None = None
        if read:
            ours, theirs = multiprocessing.get_context("fork").Pipe()
            reader = multiprocessing.get_context("fork").Process(
                target=_reader, args=(run, theirs), daemon=True
            )
            reader.start()

        def started(target: Any) -> None:
            if ours is not None:
                ours.send(target)

        began = time.time()
        job_id = produce(run, started)
        seen = _wait_complete(run, job_id, STALL_TIMEOUT)
        reads: list[float] = []
        cpus: list[float] = []
        if ours is not None and reader is not None:
            ours.send(b"stop")
            reads, cpus = ours.recv()
            reader.join(60)
        result = _check(run, job_id)
        client = redis.Redis.from_url(REDIS_URL)
        ended = float(client.get(end_key(run.prefix)) or 0.0)
        client.close()
    result |= {
        "items": run.items,
        "seconds": seen - began,
        "items_per_second": run.items / (seen - began),
        "delay_ms": (seen - ended) * 1000,
        "load": [load, os.getloadavg()[0]],
    }
    if reads:
        result |= {
            "read_us": statistics.median(reads),
            "read_cpu_us": statistics.median(cpus),
            "reads": len(reads),
        }
    return result


def _check(run: Run, job_id: str | None) -> dict[str, Any]:
    probe = _probe_count(run)
    if probe != run.items:
        raise NotExact(f"{run.config}: {probe} task ends counted by the probe, not {run.items}")
    if job_id is None:
        return {"probe": probe}
    job = _job(run, job_id)
    stage = job.stage(STAGE)
    if (
        job.status != JobStatus.COMPLETED
        or stage.completed_items != run.items
        or stage.failed_items != 0
    ):
        raise NotExact(
            f"{run.config}: job {job.status}, {stage.completed_items} done, "
            f"{stage.failed_items} failed, not {run.items} done"
        )
    return {"probe": probe, "completed": stage.completed_items}


def killed(run: Run, logs: Path) -> dict[str, Any]:
    """One kill run (see the module): counted vs N, and the probe's count.

    :raises TimeoutError: workers that did not start again.
    """
    with _workers(run, logs) as workers:
        job: list[str | None] = []
        errors: list[BaseException] = []

        def send() -> None:
            try:
                job.append(produce(run, lambda _: None))
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        _wait_for(lambda: _probe_count(run) >= run.items // 4 or bool(errors), 120, "a quarter")
        at = _probe_count(run)
        workers.kill_one()
        sender.join()
        if errors:
            raise errors[0]
        job_id = job[0]
        monitors = 0
        while True:
            _settle(run, job_id)
            done = job_id is None or _job(run, job_id).status == JobStatus.COMPLETED
            if done or monitors == MONITOR_RUNS:
                break
            _monitor(run)
            monitors += 1
        probe = _probe_count(run)
        result: dict[str, Any] = {"items": run.items, "killed_at": at, "probe": probe}
        if job_id is None:
            result |= {"counted": probe, "exact": probe == run.items}
        else:
            found = _job(run, job_id)
            stage = found.stage(STAGE)
            result |= {
                "counted": stage.completed_items,
                "failed": stage.failed_items,
                "status": str(found.status.value),
                "monitor_runs": monitors,
                "exact": found.status == JobStatus.COMPLETED
                and stage.completed_items == run.items
                and stage.failed_items == 0,
            }
        return result


def _state(run: Run, job_id: str | None) -> tuple[int, int, str]:
    if job_id is None:
        return (_probe_count(run), 0, "")
    job = _job(run, job_id)
    return (_probe_count(run), job.stage(STAGE).completed_items, str(job.status.value))


def _settle(run: Run, job_id: str | None) -> None:
    """Wait for completion, or for ``QUIET`` seconds without a change."""
    last, since = _state(run, job_id), time.monotonic()
    while time.monotonic() - since < QUIET:
        if job_id is not None and last[2] == JobStatus.COMPLETED.value:
            return
        time.sleep(0.1)
        now = _state(run, job_id)
        if now != last:
            last, since = now, time.monotonic()


def _monitor(run: Run) -> None:
    command = [sys.executable, "-m", "jobtrack", "monitor", "--app", APP_SPECS[run.framework]]
    command += ["--once", "--stuck-after", "2"]
    done = subprocess.run(
        command, env=run.env(), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"monitor failed: {done.stderr[-2000:]}")


# -- report -----------------------------------------------------------------


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(tracked: dict[str, Any], bare: dict[str, Any]) -> float:
    """tracked/bare at one N: the median of the rounds' paired ratios when
    both ran in the same rounds of one invocation, else of the median runs."""
    rounds = tracked.get("rounds_items_per_second")
    floor = bare.get("rounds_items_per_second")
    same = tracked.get("invocation") is not None and tracked.get("invocation") == bare.get(
        "invocation"
    )
    if same and rounds and floor and len(rounds) == len(floor):
        return float(statistics.median(t / b for t, b in zip(rounds, floor, strict=True)))
    return float(tracked["items_per_second"]) / float(bare["items_per_second"])


def targets(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per configuration, the figures and the targets met (None: not
    applicable): a cost of at most 10% of the bare throughput at every N
    both ran, and at the configuration's largest N a progress read under
    1 ms and completion seen within 200 ms of the last task's end; exact
    counts after a SIGKILL."""
    runs: dict[str, dict[str, dict[str, Any]]] = data["runs"]
    kills: dict[str, dict[str, Any]] = data.get("kills", {})
    out: dict[str, dict[str, Any]] = {}
    for config, by_n in runs.items():
        framework, mode = CONFIGS[config]
        floor = runs.get(FLOORS[framework], {})
        ratios = [_ratio(by_n[n], floor[n]) for n in by_n if n in floor and mode != "bare"]
        largest = max(by_n, key=int)
        big = by_n[largest]
        timed = mode != "bare"
        row: dict[str, Any] = {
            "largest": int(largest),
            "ratio": min(ratios) if ratios else None,
            "within_10pct": (min(ratios) >= 0.9) if ratios else None,
            "read_us": big.get("read_us"),
            "read_cpu_us": big.get("read_cpu_us"),
            "reads": big.get("reads"),
            "read_under_1ms": (big["read_us"] < 1000) if "read_us" in big else None,
            "delay_ms": big["delay_ms"] if timed else None,
            "delay_under_200ms": (big["delay_ms"] < 200) if timed else None,
            "kill": kills.get(config),
            "kill_exact": kills[config]["exact"] if config in kills else None,
        }
        out[config] = row
    return out


METHOD = """\
Each task returns at once after one Redis `INCR` of the run's counter (the
probe, in every configuration; the task reaching N records its end time).
items/s: N over the time from the first send to the completion seen (a
bare run: the probe's counter at N, polled every 5 ms; a jobtrack run: the
job's status `completed`, polled every 5 ms once the probe's counter is at
N; the chord: its callback ran).
The raw counter is that same probe read as progress (`GET`), so its run is
the bare run's code. The configurations run in rounds, each once per
round, the order reversed every other round; items/s is the median run's.
tracked/bare: at each N, the median over the rounds of the tracked run's
items/s over the bare run's of the same round; the lowest over the N both
ran. Progress read: in a run of its own at the configuration's
largest N (the timed runs bear no reader), the median of the reads another
process takes, 2 ms apart, while the run is in progress (jobtrack
`store.get_job`, the counter's `GET`, the chord's
`GroupResult.completed_count()`); its CPU: the median of the reader
thread's CPU time per read (measured from this column's first run on;
"-" where a configuration's reads are older). Delay: completion seen minus the last
task's end. SIGKILL: one worker process killed once a quarter of the tasks
ended, replaced, then `jobtrack monitor --once --stuck-after 2` (up to 3
times) if the job had not completed after 3 s without a change; counted is
the job's completed items (the raw counter's value for the raw counter),
probe the number of task runs.
"""


def _paired_lines(runs: dict[str, dict[str, dict[str, Any]]], tasks: Sequence[str]) -> list[str]:
    """A line per tracked configuration and N run in the same rounds as its
    bare run: each round's ratio, then their median."""
    lines = []
    for config, by_n in runs.items():
        framework, mode = CONFIGS[config]
        floor = runs.get(FLOORS[framework], {})
        if mode == "bare":
            continue
        for n in tasks:
            if n not in by_n or n not in floor:
                continue
            mine, bare = by_n[n], floor[n]
            rounds, floors = (
                mine.get("rounds_items_per_second"),
                bare.get("rounds_items_per_second"),
            )
            if (
                mine.get("invocation") is None
                or mine.get("invocation") != bare.get("invocation")
                or not rounds
                or not floors
                or len(rounds) != len(floors)
            ):
                continue
            each = ", ".join(f"{t / b:.2f}" for t, b in zip(rounds, floors, strict=True))
            lines.append(f"- {config}, N={int(n):,}: {each} (median {_ratio(mine, bare):.3f})")
    return lines


def markdown(data: dict[str, Any]) -> str:
    """The report: items/s per configuration and N, then the targets."""
    tasks = [str(n) for n in data["tasks"]]
    runs: dict[str, dict[str, dict[str, Any]]] = data["runs"]
    met = targets(data)
    lines = [
        f"# jobtrack's integrations against their frameworks, bare ({data['workers']})\n",
        METHOD,
    ]
    header = ["configuration", *[f"items/s N={n}" for n in tasks], "tracked/bare", "≤10% cost"]
    rows = []
    for config, by_n in runs.items():
        row = met[config]
        rows.append(
            [
                config,
                *[_num(by_n[n]["items_per_second"]) if n in by_n else "-" for n in tasks],
                _num(row["ratio"], 3),
                _yes(row["within_10pct"]),
            ]
        )
    lines.append(table(header, rows))
    paired = _paired_lines(runs, tasks)
    if paired:
        lines.append("tracked/bare in each round (bare and tracked back to back):\n")
        lines.append("\n".join(paired) + "\n")
    header = [
        "configuration",
        "at N",
        "progress read µs (reads)",
        "its CPU µs",
        "read < 1 ms",
        "delay ms",
        "delay < 200 ms",
        f"SIGKILL counted/N (N={data['kill_tasks']})",
        "probe",
        "monitor runs",
        "exact after SIGKILL",
    ]
    rows = []
    for config in runs:
        row = met[config]
        kill = row["kill"] or {}
        read = "-" if row["read_us"] is None else f"{_num(row['read_us'])} ({row['reads']})"
        rows.append(
            [
                config,
                f"{row['largest']:,}",
                read,
                _num(row["read_cpu_us"]),
                _yes(row["read_under_1ms"]),
                _num(row["delay_ms"], 1),
                _yes(row["delay_under_200ms"]),
                f"{kill['counted']}/{kill['items']}" if kill else "-",
                kill.get("probe", "-"),
                kill.get("monitor_runs", "-"),
                _yes(row["kill_exact"]),
            ]
        )
    lines.append(table(header, rows))
    load = [r["load"][0] for by_n in runs.values() for r in by_n.values()]
    lines.append(f"Load average (1 min) at the runs' start: {min(load):.2f} to {max(load):.2f}.\n")
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> None:
    """A bar chart of items/s per configuration and N, bare beside tracked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, dict[str, dict[str, Any]]] = data["runs"]
    tasks = [str(n) for n in data["tasks"]]
    configs = list(runs)
    width = 0.8 / len(tasks)
    figure, axes = plt.subplots(figsize=(11, 5))
    for index, n in enumerate(tasks):
        values = [runs[c][n]["items_per_second"] if n in runs[c] else 0.0 for c in configs]
        positions = [x + index * width for x in range(len(configs))]
        bars = axes.bar(positions, values, width, label=f"N={int(n):,}")
        for bar, config in zip(bars, configs, strict=True):
            if CONFIGS[config][1] == "bare":
                bar.set_hatch("//")
    axes.set_xticks([x + width * (len(tasks) - 1) / 2 for x in range(len(configs))])
    axes.set_xticklabels(configs, rotation=30, ha="right")
    axes.set_ylabel("items/s")
    axes.set_title("Trivial tasks on 2 worker processes (hatched: bare)")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- main -------------------------------------------------------------------


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: float(r["items_per_second"]))
    median = dict(ordered[len(ordered) // 2])
    median["rounds_items_per_second"] = [r["items_per_second"] for r in results]
    median.pop("all_items_per_second", None)
    return median


def _rounds(value: str, tasks: Sequence[int]) -> dict[int, int]:
    """Rounds at each N of ``tasks``: ``value`` is one count for all, or one
    per N in ``tasks``'s order.

    :raises ValueError: not counts of at least 1, or not one per N.
    """
    counts = [int(v) for v in value.split(",") if v.strip()]
    if len(counts) == 1:
        counts *= len(tasks)
    if len(counts) != len(tasks) or min(counts) < 1:
        raise ValueError(f"--runs {value!r}: one count of at least 1, or one per N")
    return dict(zip(tasks, counts, strict=True))


def _kept(before: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a new invocation's, before its runs) on top of ``before``
    (``--keep``): every N of both; every configuration's figures kept, to
    be replaced only at the N run again; the kill runs kept unless run
    again (``--kill-tasks`` 0 keeps them all)."""
    merged = dict(data)
    merged["tasks"] = sorted({*before["tasks"], *data["tasks"]})
    merged["runs"] = {config: dict(by_n) for config, by_n in before["runs"].items()}
    merged["kills"] = dict(before.get("kills", {}))
    if not data["kill_tasks"]:
        merged["kill_tasks"] = before["kill_tasks"]
    rounds = before.get("runs_per_config")
    if isinstance(rounds, dict):
        merged["runs_per_config"] = rounds | data["runs_per_config"]
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write ``integrations.{json,md,png}``.

    :raises NotExact: a timed run whose counts are not exact.
    """
    parser = argparse.ArgumentParser(
        description="jobtrack's integrations against their frameworks, bare"
    )
    parser.add_argument("--tasks", default="10000,50000")
    parser.add_argument("--runs", default="1", help="rounds: one count, or one per N")
    parser.add_argument("--kill-tasks", type=int, default=2000)
    parser.add_argument("--only", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=RESULTS / NAME)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="add to --out's figures: only the configurations and N run again are replaced",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the report of --out's JSON again"
    )
    args = parser.parse_args(argv)
    given = [int(n) for n in args.tasks.split(",")]
    try:
        rounds = _rounds(args.runs, given)
    except ValueError as exc:
        parser.error(str(exc))
    tasks = sorted(given)
    configs = [c for c in args.only.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations: {sorted(unknown)}")
    data: dict[str, Any] = {
        "tasks": tasks,
        "runs_per_config": {str(n): rounds[n] for n in tasks},
        "kill_tasks": args.kill_tasks,
        "workers": "2 worker processes each",
        "runs": {},
        "kills": {},
    }
    kept = args.out / f"{NAME}.json"
    if args.report_only:
        report(json.loads(kept.read_text(encoding="utf-8")), args.out)
        return 0
    if args.keep and kept.exists():
        before = json.loads(kept.read_text(encoding="utf-8"))
        if args.kill_tasks and before["kill_tasks"] != args.kill_tasks:
            parser.error(f"{kept} has another --kill-tasks (0: keep its kill runs)")
        data = _kept(before, data)
    invocation = f"{time.time():.0f}-{os.getpid()}"
    with backend("postgres") as url, tempfile.TemporaryDirectory() as folder:
        logs = Path(folder)
        results: dict[str, dict[int, list[dict[str, Any]]]] = {c: {} for c in configs}
        for n in tasks:
            # Interleaved (each configuration once per round), so that a
            # framework's bare and tracked runs see the same machine.
            for round_ in range(rounds[n]):
                for config in configs if round_ % 2 == 0 else configs[::-1]:
                    result = timed(Run(config, n, url, folder), logs, read=False)
                    results[config].setdefault(n, []).append(result)
                    print(config, n, f"{result['items_per_second']:.0f}/s", flush=True)
        for config in configs:
            by_n = {
                str(n): _median_run(results[config][n]) | {"invocation": invocation} for n in tasks
            }
            if CONFIGS[config][1] != "bare":
                # The reads in a run of their own, so that the timed runs'
                # items/s bear no reader, as the bare runs bear none.
                reading = timed(Run(config, tasks[-1], url, folder), logs, read=True)
                by_n[str(tasks[-1])] |= {
                    "read_us": reading["read_us"],
                    "read_cpu_us": reading["read_cpu_us"],
                    "reads": reading["reads"],
                    "load_while_read": reading["load"],
                    "items_per_second_while_read": reading["items_per_second"],
                }
                print(
                    config,
                    "reads",
                    f"{reading['read_us']:.0f} µs ({reading['read_cpu_us']:.0f} µs CPU)",
                    flush=True,
                )
            earlier = data["runs"].get(config, {})
            data["runs"][config] = {n: r for n, r in earlier.items() if n not in by_n} | by_n
            if CONFIGS[config][1] in {"tracked", "raw"} and args.kill_tasks:
                data["kills"][config] = killed(Run(config, args.kill_tasks, url, folder), logs)
                print(config, "kill", data["kills"][config], flush=True)
    report(data, args.out)
    return 0


def report(data: dict[str, Any], out: Path) -> None:
    """Write ``integrations.{json,md,png}`` of ``data`` under ``out``."""
    data = {k: v for k, v in data.items() if k not in {"benchmark", "machine"}}
    data["targets"] = targets(data)
    write(NAME, data, markdown(data), out=out)
    chart(data, out / f"{NAME}.png")


if __name__ == "__main__":
    raise SystemExit(main())
