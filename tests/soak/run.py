"""The chaos soak: ``python -m tests.soak.run --minutes N --seed S --out DIR``.

It starts a private PostgreSQL server and a private RabbitMQ node (never
the machine's shared ones), then real ``jobtrack`` processes on them: four
workers of the soak's no-op job type and one of the collection scan's
renditions (all on ``tests.soak.app:app``), the monitor with a short stuck
threshold, and ``jobtrack serve`` with twenty stream clients. Jobs of the
no-op type are produced in waves over the run, and a small hostile
collection is scanned again and again through the command line, while
the faults of :mod:`tests.soak.faults` happen on schedule. After the run
the faults stop, every job is awaited, and :mod:`tests.soak.checks`
checks the end state exactly and writes ``soak.json`` and ``soak.md``.
Exits 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from jobtrack.errors import BrokerUnavailable, JobtrackError, StoreUnavailable
from jobtrack.jobs.producer import JobProducer
from jobtrack.model import JobStatus, utc_now
from jobtrack.runtime import App, Settings
from jobtrack.store import JobQuery
from tests.services.postgres_private import (
    PrivatePostgres,
    ServiceError,
    free_port,
    private_postgres,
)
from tests.soak import checks
from tests.soak.app import JOB_TYPE, STAGE, TRUTH_ENV, TRUTH_SCHEMA
from tests.soak.app import app as soak_app
from tests.soak.brokers import SoakBroker, soak_broker
from tests.soak.clients import StreamClient
from tests.soak.faults import MAJOR, Fault, schedule
from tests.soak.procs import ROOT, JobtrackProcess

__all__ = ["Plan", "ServicesUnavailable", "Soak", "main", "plan_for", "run_soak"]

logger = logging.getLogger("soak")

APP = "tests.soak.app:app"
#: Seconds the end waits for every job to end, at most.
QUIESCE = 300.0


@dataclass(frozen=True)
class Plan:
    """What a soak does: its length, seed, jobs and items, processes."""

    minutes: float
    seed: int
    jobs: int
    items: int
    workers: int = 4
    clients: int = 20
    stuck_after: int = 10
    monitor_interval: int = 2
    scan_every: float = 20.0
    produce_until: float = 0.75
    waves: int = 4
    node_lost: bool = False

    @property
    def seconds(self) -> float:
        """The length of the fault window."""
        return self.minutes * 60


def plan_for(
    minutes: float,
    seed: int,
    *,
    jobs: int | None = None,
    items: int | None = None,
    cluster: bool = False,
) -> Plan:
    """The plan of a soak of ``minutes``: 100 jobs of 1,000 items over 30
    minutes, in a wave every 90 s or so (as many jobs per minute in a longer
    run); fewer in a shorter one (a 2-minute run: 12 jobs of 1,000 in 4
    waves). With ``cluster`` the broker is a private cluster of three nodes
    and the faults include ``node_lost``."""
    if jobs is None:
        jobs = max(4, round(100 * minutes / 30)) if minutes >= 10 else max(4, round(6 * minutes))
    if items is None:
        items = 1000
    waves = max(4, round(minutes * 60 * 0.75 / 90))
    return Plan(minutes=minutes, seed=seed, jobs=jobs, items=items, waves=waves, node_lost=cluster)


class ServicesUnavailable(ServiceError):
    """The soak's private PostgreSQL server or RabbitMQ node could not start."""


@dataclass
class FaultLog:
    """What was injected and whether the system came back from it."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, fault: Fault, started: float, ended: float, recovered: bool, note: str) -> None:
        """Record one fault."""
        self.entries.append(
            {
                "kind": fault.kind,
                "at": round(started, 2),
                "took": round(ended - started, 2),
                "params": fault.params,
                "recovered": recovered,
                "note": note,
            }
        )


class Soak:
    """One soak run on a private PostgreSQL server and RabbitMQ node."""

    def __init__(
        self, plan: Plan, work: Path, postgres: PrivatePostgres, broker: SoakBroker
    ) -> None:
        self.plan = plan
        self.work = work
        self.postgres = postgres
        self.broker = broker
        self.rng = random.Random(plan.seed)
        self.faults = FaultLog()
        self.store_url = postgres.create_database("jobtrack")
        self.truth_url = postgres.create_database("truth")
        with psycopg.connect(self.truth_url, autocommit=True) as conn:
            conn.execute(TRUTH_SCHEMA)
        self.port = free_port()
        self.env = self.env_for(0)
        self.workers: list[JobtrackProcess] = []
        self.others: list[JobtrackProcess] = []
        self.clients: list[StreamClient] = []
        self.soak_jobs: list[str] = []
        self.scan_jobs: list[str] = []
        self.production_retries = 0
        self.production_failures: list[str] = []
        self.scan_failures: list[str] = []
        self.started = 0.0
        self.window_end = 0.0
        self._major = asyncio.Lock()  # the large faults, one at a time
        self.hostile = work / "hostile"

    def env_for(self, number: int) -> dict[str, str]:
        """The environment of process ``number`` (its broker URL may start
        with another node of a cluster than the next process's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACK_")}
        env |= {
            "JOBTRACK_STORE_URL": self.store_url,
            "JOBTRACK_BROKER_URL": self.broker.url_for(number),
            "JOBTRACK_DATA_DIR": str(self.work / "state"),
            "JOBTRACK_APP": APP,
            "JOBTRACK_STUCK_AFTER": str(self.plan.stuck_after),
            "JOBTRACK_MONITOR_INTERVAL": str(self.plan.monitor_interval),
            TRUTH_ENV: self.truth_url,
        }
        return env

    def settings(self) -> Settings:
        """The settings of the runner's own app (producer and checks)."""
        return Settings.from_env(self.env)

    # -- processes ---------------------------------------------------------

    def start_processes(self) -> None:
        """The workers, the monitor and the server."""
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        for n in range(self.plan.workers):
            args = ["worker", "--stage", f"{JOB_TYPE}.{STAGE}", "--concurrency", "8"]
            self.workers.append(
                JobtrackProcess(f"worker-{n}", args, self.env_for(n), logs / f"worker-{n}.log")
            )
        scan_args = ["worker", "--stage", "thumbnail", "--stage", "cache", "--concurrency", "2"]
        self.workers.append(
            JobtrackProcess(
                "scan-worker", scan_args, self.env_for(self.plan.workers), logs / "scan-worker.log"
            )
        )
        self.others.append(
            JobtrackProcess(
                "monitor",
                ["monitor", "--interval", str(self.plan.monitor_interval)],
                self.env_for(1),
                logs / "monitor.log",
            )
        )
        self.others.append(
            JobtrackProcess(
                "serve",
                ["serve", "--port", str(self.port), "--root", str(self.work)],
                self.env_for(2),
                logs / "serve.log",
            )
        )
        for process in [*self.workers, *self.others]:
            process.start()

    async def wait_served(self, within: float = 60) -> None:
        """Wait until the server answers ``/healthz``.

        :raises ServiceError: it did not in time.
        """
        import httpx

        deadline = time.monotonic() + within
        async with httpx.AsyncClient() as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    answer = await http.get(f"http://127.0.0.1:{self.port}/healthz")
                    if answer.status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ServiceError("jobtrack serve did not answer /healthz")
                await asyncio.sleep(0.3)

    async def supervise(self) -> None:
        """Start again any process that exits by itself (as a service
        manager would); each such exit is recorded and reported."""
        while True:
            for process in [*self.workers, *self.others]:
                code = process.exited_by_itself()
                if code is not None:
                    logger.warning("%s exited by itself (%s): started again", process.name, code)
                    process.start()
            await asyncio.sleep(0.5)

    # -- work ----------------------------------------------------------------

    async def produce(self, app: App) -> None:
        """The soak's jobs, in :attr:`Plan.waves` waves spread over the
        first part of the run, the jobs of a wave produced together."""
        span = self.plan.seconds * self.plan.produce_until
        waves = max(1, min(self.plan.waves, self.plan.jobs))
        numbers = list(range(self.plan.jobs))
        for wave in range(waves):
            await self._until(span * wave / waves)
            mine = numbers[wave::waves]
            made = await asyncio.gather(*(self._produced(app, n) for n in mine))
            self.soak_jobs.extend(job_id for job_id in made if job_id is not None)

    async def _produced(self, app: App, number: int) -> str | None:
        """Job ``number`` produced; its id (None: it could not be created).
        A job that could not be produced whole is recorded, and fails the run."""
        try:
            return await self._produce_one(app, number)
        except RuntimeError as exc:
            self.production_failures.append(f"job {number}: {exc}")
            return None

    async def _produce_one(self, app: App, number: int) -> str:
        producer = app.start_job(JOB_TYPE, attributes={"soak": number})
        await self._retrying(producer.start)
        try:
            keys = [f"item-{k:05d}" for k in range(self.plan.items)]
            for start in range(0, len(keys), 250):
                batch = keys[start : start + 250]
                await self._retrying(functools.partial(self._add, producer, batch))
            await self._retrying(producer.seal)
        except RuntimeError as exc:
            self.production_failures.append(f"job {producer.job.id}: {exc}")
        return producer.job.id

    @staticmethod
    async def _add(producer: JobProducer, keys: list[str]) -> int:
        return await producer.add(STAGE, [(key, {"n": i}) for i, key in enumerate(keys)])

    async def _retrying(self, call: Any) -> Any:
        """``call()``, tried again through outages (as a user's producer
        would), for up to 5 minutes; any other error (a refusal) is raised
        as a RuntimeError, which fails the job's production and the run.

        :raises RuntimeError: an error that is not an outage, or an outage
            that lasted 5 minutes.
        """
        for attempt in range(600):
            try:
                return await call()
            except (StoreUnavailable, BrokerUnavailable) as exc:
                self.production_retries += 1
                if attempt % 10 == 0:
                    logger.info("producer: %s: trying again", exc)
                await asyncio.sleep(0.5)
            except JobtrackError as exc:
                raise RuntimeError(f"the producer failed: {type(exc).__name__}: {exc}") from exc
        raise RuntimeError("the producer could not reach the store or broker for 5 minutes")

    async def scans(self) -> None:
        """Scans of the hostile collection through ``jobtrack scan --no-wait``."""
        at = 5.0
        while at < self.plan.seconds:
            await self._until(at)
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "jobtrack", "scan", str(self.hostile), "--no-wait"],
                capture_output=True,
                text=True,
                env={k: v for k, v in self.env.items() if k != "JOBTRACK_APP"},
                cwd=ROOT,
                timeout=120,
                check=False,
            )
            if done.returncode == 0:
                job_id = done.stdout.strip().split()[-1]
                if job_id not in self.scan_jobs:
                    self.scan_jobs.append(job_id)
            else:
                self.scan_failures.append(
                    f"at {self.now():.1f}s exit {done.returncode}: {done.stderr.strip()[-300:]}"
                )
            at += self.plan.scan_every

    # -- faults --------------------------------------------------------------

    async def inject(self, faults: list[Fault]) -> None:
        """Each fault at its time, in a task of its own."""
        running: set[asyncio.Task[None]] = set()
        for fault in faults:
            await self._until(fault.at)
            task = asyncio.create_task(self._inject(fault))
            running.add(task)
            task.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)

    async def _inject(self, fault: Fault) -> None:
        if fault.kind in MAJOR:  # one at a time: each is over before the next begins
            async with self._major:
                await self._inject_now(fault)
        else:
            await self._inject_now(fault)

    async def _inject_now(self, fault: Fault) -> None:
        started = self.now()
        recovered, note = True, ""
        try:
            note = await self._do(fault)
        except Exception as exc:  # a fault that could not be undone is reported
            recovered, note = False, f"{type(exc).__name__}: {exc}"
            logger.exception("fault %s failed", fault.kind)
        self.faults.add(fault, started, self.now(), recovered, note)

    async def _do(self, fault: Fault) -> str:
        params = fault.params
        if fault.kind == "worker_kill":
            worker = self.workers[params["worker"] % len(self.workers)]
            if not worker.running() or worker.stopped:
                return "skipped: not running, or stopped"
            worker.kill()
            await asyncio.sleep(params["down_for"])
            worker.start()
            return str(worker.name)
        if fault.kind == "stream_cut":
            for n in params["clients"]:
                self.clients[n].cut()
            return f"{len(params['clients'])} clients"
        if fault.kind == "rabbitmq_restart":
            return await asyncio.to_thread(
                functools.partial(
                    self.broker.restart, kill=params["kill"], down_for=params["down_for"]
                )
            )
        if fault.kind == "postgres_restart":
            await asyncio.to_thread(
                self.postgres.restart, params["mode"], down_for=params["down_for"]
            )
            return str(params["mode"])
        if fault.kind == "worker_pause":
            worker = self.workers[params["worker"] % len(self.workers)]
            if not worker.running():
                return "skipped: not running"
            worker.pause()
            await asyncio.sleep(params["seconds"])
            if worker.running() and worker.stopped:
                worker.cont()
            return f"{worker.name} for {params['seconds']} s"
        queue = soak_app.get_type(JOB_TYPE).queue(STAGE)
        return await asyncio.to_thread(self.broker.lose_leader, queue, params["down_for"])

    # -- the run -------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    async def _until(self, at: float) -> None:
        delay = at - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def run(self) -> dict[str, Any]:
        """The whole run; the report."""
        make_hostile(self.hostile)
        faults = schedule(
            self.plan.seconds,
            self.plan.seed,
            workers=self.plan.workers + 1,
            clients=self.plan.clients,
            stuck_after=self.plan.stuck_after,
            node_lost=self.plan.node_lost,
        )
        self.start_processes()
        reading: list[asyncio.Task[None]] = []
        supervisor = asyncio.create_task(self.supervise())
        try:
            await self.wait_served()
            self.clients = [
                StreamClient(n, f"http://127.0.0.1:{self.port}", random.Random(self.plan.seed + n))
                for n in range(self.plan.clients)
            ]
            reading = [asyncio.create_task(client.run()) for client in self.clients]
            report = await self._run(faults)
        finally:
            supervisor.cancel()
            for client in self.clients:
                client.stop()
            await asyncio.gather(*reading, supervisor, return_exceptions=True)
            processes = self.stop_processes()  # whatever happened: none is left running
        report["processes"] = processes
        report["plan"] = asdict(self.plan)
        report["checks"].append(checks.faults_undone(self.faults.entries))
        report["ok"] = all(check["ok"] for check in report["checks"])
        report["faults"] = checks.fault_summary(self.faults.entries, ok=report["ok"])
        report["fault_log"] = self.faults.entries
        return report

    async def _run(self, faults: list[Fault]) -> dict[str, Any]:
        """The faults, the work and the end checks, on the runner's own app."""
        async with soak_app.with_settings(self.settings()) as app:
            await asyncio.sleep(1.0)  # every client has its first snapshot
            self.started = time.monotonic()
            started_at = utc_now()
            await asyncio.gather(self.produce(app), self.scans(), self.inject(faults))
            self.window_end = self.now()
            ended_at = utc_now()
            for worker in self.workers:
                if worker.stopped:
                    worker.cont()
            quiet = await self.quiesce(app)
            return await checks.check(
                self,
                app,
                started_at=started_at,
                window_end_at=ended_at,
                quiesced_in=quiet,
            )

    async def quiesce(self, app: App) -> float:
        """Wait until every job has ended (at most :data:`QUIESCE` s); the wait."""
        began = time.monotonic()
        while time.monotonic() - began < QUIESCE:
            with contextlib.suppress(JobtrackError):
                active = [
                    job
                    for status in (JobStatus.PENDING, JobStatus.IN_PROGRESS)
                    for job in await app.store.list_jobs(JobQuery(status=status, limit=10))
                ]
                if not active:
                    break
            await asyncio.sleep(1.0)
        return round(time.monotonic() - began, 1)

    def stop_processes(self) -> dict[str, Any]:
        """SIGTERM every process; what each did over the run."""
        summary: dict[str, Any] = {}
        for process in [*self.workers, *self.others]:
            code = process.terminate()
            summary[process.name] = {
                "starts": process.starts,
                "exited_by_itself": process.exits,
                "last_exit": code,
                "tracebacks": process.tracebacks(),
            }
        return summary


def make_hostile(root: Path) -> None:
    """A small hostile collection: three good images, two decompression
    bombs, an empty file and a symlink that escapes the collection."""
    from PIL import Image

    from jobtrack.pipeline.sample import generate_sample

    generate_sample(root, count=3, broken=0, max_megapixels=0.3)
    Image.new("1", (40000, 40000)).save(root / "bomb.png", optimize=True)
    Image.new("1", (9000, 8000)).save(root / "bomb-72mp.png", optimize=True)
    (root / "empty.jpg").write_bytes(b"")
    outside = root.parent / "outside.jpg"
    outside.write_bytes(b"not inside the collection")
    (root / "escape.jpg").symlink_to(outside)


def run_soak(plan: Plan, out: Path, *, keep: bool = False) -> dict[str, Any]:
    """Run a soak on private services and write its report under ``out``;
    the report.

    :raises ServicesUnavailable: a private service could not be started.
    """
    work = Path(tempfile.mkdtemp(prefix="jobtrack-soak-"))
    try:
        with contextlib.ExitStack() as services:
            try:
                postgres = services.enter_context(private_postgres())
                broker = services.enter_context(soak_broker(cluster=plan.node_lost))
            except (ServiceError, OSError, subprocess.SubprocessError) as exc:
                raise ServicesUnavailable(str(exc)) from exc
            soak = Soak(plan, work, postgres, broker)
            report = asyncio.run(soak.run())
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out / "soak.md").write_text(checks.markdown(report))
        if not report["ok"] or keep:
            logs = out / "logs"
            logs.mkdir(exist_ok=True)
            for log in (work / "logs").glob("*.log"):  # whole: a failure's start matters
                (logs / f"{log.name}.gz").write_bytes(gzip.compress(log.read_bytes()))
        return report
    finally:
        if not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """The command line; 0 when every check passed."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak.run", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="the fault window's length")
    parser.add_argument("--seed", type=int, default=1, help="the fault schedule's seed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak")
    parser.add_argument("--jobs", type=int, default=None, help="jobs of the no-op type")
    parser.add_argument("--items", type=int, default=None, help="items per job")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="a private cluster of three RabbitMQ nodes, and the node-loss fault",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="SOAK_JSON",
        help="run nothing: write soak.md again beside this soak.json (its fault summary too)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder and logs")
    args = parser.parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        report["faults"] = checks.fault_summary(report["fault_log"], ok=report["ok"])
        args.render.write_text(json.dumps(report, indent=2, default=str) + "\n")
        (args.render.parent / "soak.md").write_text(checks.markdown(report))
        return 0 if report["ok"] else 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    plan = plan_for(args.minutes, args.seed, jobs=args.jobs, items=args.items, cluster=args.cluster)
    report = run_soak(plan, args.out, keep=args.keep)
    print(checks.markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
